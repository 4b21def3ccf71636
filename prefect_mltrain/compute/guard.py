"""Runs a command as the leader of its process group and the subreaper of everything it
starts, so that nothing the command started outlives it, or the runner.

Started by the runner as ``python -m prefect_mltrain.compute.guard FD -- ARGV...`` with the
read end of a ``Lifeline`` as FD. As the child subreaper (Linux), the guard stays the
ancestor of a process that leaves the group (``setsid``, a double fork). It stops the whole
tree — SIGTERM, a grace, then SIGKILL — when the command ends (whatever it left running),
when the runner stops the run (SIGTERM to the group: the guard passes it on to the
processes outside the group) and when the runner dies, even by SIGKILL (the lifeline
closes). Standard library, and ``psutil`` to walk the tree where it is installed (a
container's bare Python lacks it; there the container's end stops everything).
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

from .jobs import wait_for_cut
from .rank import exit_code

GRACE_SECONDS = 5.0  # when the runner died
LEFTOVER_GRACE_SECONDS = 2.0  # for what the command left running when it ended
PR_SET_CHILD_SUBREAPER = 36


def _descendants() -> list:
    try:
        import psutil

        return psutil.Process().children(recursive=True)
    except Exception:  # no psutil here, or the tree changed under us
        return []


def _signal_escaped(sig: int) -> None:
    """``sig`` to the descendants that left the guard's process group."""
    group = os.getpgid(0)
    for process in _descendants():
        with contextlib.suppress(Exception):
            if os.getpgid(process.pid) != group:
                process.send_signal(sig)


def _reap() -> bool:
    """Collect exited descendants, which a subreaper inherits; False once the guard has no
    child left (then no descendant is left either: a subreaper inherits every orphan)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        return False
    return True


def _stop_tree(grace: float) -> None:
    """SIGTERM to every descendant, SIGKILL to what is left after ``grace`` seconds."""
    if not _reap():  # the usual ending: nothing left, and no need to walk /proc
        return
    group = os.getpgid(0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)  # the guard's own handler ignores it
    _signal_escaped(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not _descendants():
            return
        time.sleep(0.05)
    for process in _descendants():
        with contextlib.suppress(Exception):
            process.kill()
    _reap()


def _stop_all_when_cut(fd: int) -> None:
    wait_for_cut(fd)
    _stop_tree(GRACE_SECONDS)
    os.killpg(os.getpgid(0), signal.SIGKILL)  # what psutil could not see, and the guard


def main() -> None:
    fd, argv = int(sys.argv[1]), sys.argv[3:]
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # The group gets SIGTERM from the runner on cancel; the guard outlives it to report the
    # script's exit code, and passes it on to what left the group. (A handler, unlike
    # SIG_IGN, is reset to default in the child.)
    signal.signal(signal.SIGTERM, lambda *_: _signal_escaped(signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        proc = subprocess.Popen(argv)
    except OSError as exc:
        print(f"prefect-mltrain: cannot start {argv[0]!r}: {exc}", file=sys.stderr, flush=True)
        sys.exit(127)
    threading.Thread(target=_stop_all_when_cut, args=(fd,), daemon=True).start()
    code = exit_code(proc.wait())
    _stop_tree(LEFTOVER_GRACE_SECONDS)
    sys.exit(code)


if __name__ == "__main__":
    main()
