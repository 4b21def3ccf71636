"""Local process trees: start a command as its own process group under a guard, read its
output, and stop the whole group. Standard library only at import (the node launcher
uses this inside containers); ``psutil`` is used where it is installed, on the runner."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from .jobs import Lifeline, LineQueue

LEFTOVER_GRACE_SECONDS = 2.0  # for what a finished script left running in its group


def kill_process_group(pgid: int, grace: float = 10.0,
                       leader: subprocess.Popen | None = None) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after ``grace`` seconds.

    ``leader``, our child that leads the group, is reaped as soon as it exits: until then
    it counts as a member, and the whole grace would be waited for nothing.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()
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


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class GuardedProcess:
    """A command running as a process-group leader under ``compute.guard``.

    Its output (stdout and stderr, merged in order) is read into a ``LineQueue``. The
    guard holds a ``Lifeline``: when this process dies, the guard takes the group down.
    When the command ends, whatever it left running in its group (a background child,
    which would also hold the output pipe open) is stopped at once.
    """

    def __init__(self, argv: Sequence[str], cwd: str, env: Mapping[str, str]):
        lifeline = Lifeline()
        guard = [sys.executable, "-m", "prefect_mltrain.compute.guard", str(lifeline.fd), "--",
                 *argv]
        self.proc = subprocess.Popen(
            guard, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lifeline.fd,),
        )
        lifeline.handed_over()
        self._lifeline = lifeline
        self.pgid = self.proc.pid
        self._ended = False
        self._lines = LineQueue()
        self._lines.follow(iter(self.proc.stdout.readline, b""))

    def read_lines(self, timeout: float) -> list[str]:
        if self._lines.ended.is_set():  # no more output: wait for the exit, not for lines
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
            return self._lines.take()
        return self._lines.take(timeout)

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and not self._ended:
            self._ended = True
            if group_alive(self.pgid):  # only what the command left behind is in it now
                kill_process_group(self.pgid, LEFTOVER_GRACE_SECONDS)
        return code

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        return self._lines.finish(timeout)

    def terminate(self, grace: float = 10.0) -> None:
        kill_process_group(self.pgid, grace, leader=self.proc)
        try:
            self.proc.wait(timeout=grace + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.close()

    def close(self) -> None:
        """Let the guard go (once the command has ended, its group is already stopped)."""
        self.poll()
        self._lifeline.cut()
