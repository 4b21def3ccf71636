"""Local process trees: start a command in its own group under a guard, stream, kill."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence


def kill_process_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class GuardedProcess:
    """A command running as a process-group leader under ``compute.guard``.

    Output (stdout and stderr, merged in order) is read by a thread into a queue, so the
    caller can poll lines without blocking on a quiet process.
    """

    def __init__(self, argv: Sequence[str], cwd: str, env: Mapping[str, str]):
        read_fd, self._lifeline = os.pipe()
        guard = [sys.executable, "-m", "prefect_mltrain.compute.guard", str(read_fd), "--", *argv]
        self.proc = subprocess.Popen(
            guard, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(read_fd,),
        )
        os.close(read_fd)
        os.set_inheritable(self._lifeline, False)
        self.pgid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            self._lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        self._lines.put(None)

    def read_lines(self, timeout: float) -> list[str]:
        """Lines printed since the last call; waits up to ``timeout`` for the first one."""
        out: list[str] = []
        try:
            line = self._lines.get(timeout=timeout)
            while True:
                if line is not None:
                    out.append(line)
                line = self._lines.get_nowait()
        except queue.Empty:
            return out

    def poll(self) -> int | None:
        return self.proc.poll()

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        """After exit: the remaining lines (a grandchild may hold the pipe; don't wait forever)."""
        self._reader.join(timeout)
        return self.read_lines(0)

    def terminate(self, grace: float = 10.0) -> None:
        kill_process_group(self.pgid, grace)
        try:
            self.proc.wait(timeout=grace + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.close()

    def close(self) -> None:
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
