"""Runs a command as the leader of its process group and takes the group down with the runner.

Started by the runner as ``python -m prefect_mltrain.compute.guard FD -- ARGV...`` with the
read end of a ``Lifeline`` as FD: when the runner dies for any reason (even SIGKILL) the
pipe closes and every process of the run is terminated, so a lost runner never leaves a
training script behind. Standard library only, for speed.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from .jobs import exit_code, wait_for_cut

GRACE_SECONDS = 5.0


def _kill_group_when_cut(fd: int) -> None:
    wait_for_cut(fd)
    group = os.getpgid(0)
    os.killpg(group, signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os.killpg(group, signal.SIGKILL)


def main() -> None:
    fd, argv = int(sys.argv[1]), sys.argv[3:]
    # The group gets SIGTERM from the runner on cancel; the guard outlives it to report the
    # script's exit code. (A handler, unlike SIG_IGN, is reset to default in the child.)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        proc = subprocess.Popen(argv)
    except OSError as exc:
        print(f"prefect-mltrain: cannot start {argv[0]!r}: {exc}", file=sys.stderr, flush=True)
        sys.exit(127)
    threading.Thread(target=_kill_group_when_cut, args=(fd,), daemon=True).start()
    sys.exit(exit_code(proc.wait()))


if __name__ == "__main__":
    main()
