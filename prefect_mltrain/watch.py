"""Following a run from outside: stream its output as it arrives, then summarise."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from .records import STD_LOG, TERMINAL

if TYPE_CHECKING:
    from .run import Run


class LogFollower:
    """Reads the new part of a run's ``logs/std_log.txt`` on each call."""

    def __init__(self, run: Run):
        self.ws = run.experiment.workspace
        self.path = run.experiment.workspace.path(f"{run._dir}/{STD_LOG}")
        self.offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            size = self.ws.fs.size(self.path)
            if size <= self.offset:
                return []
            data = self.ws.fs.cat_file(self.path, start=self.offset, end=size)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode(errors="replace") for line in lines]


def follow_run(run: Run, show_output: bool = False, poll_interval: float = 0.25,
               timeout: float | None = None, out: TextIO | None = None) -> dict[str, Any]:
    """Wait for ``run`` to end; print its output lines as they come when ``show_output``."""
    out = out or sys.stdout
    follower = LogFollower(run) if show_output else None
    deadline = time.monotonic() + timeout if timeout else None
    if show_output:
        print(f"Run {run.id} ({run.experiment.name})", file=out, flush=True)
    while True:
        record = run._read_record()
        if follower:
            for line in follower.new_lines():
                print(line, file=out, flush=True)
        if record["status"] in TERMINAL:
            break
        if deadline and time.monotonic() > deadline:
            raise TimeoutError(f"run {run.id} still {record['status']} after {timeout} s")
        time.sleep(poll_interval)
    if follower:
        for line in follower.new_lines():
            print(line, file=out, flush=True)
        print(summary(run, record), file=out, flush=True)
    return record


def summary(run: Run, record: dict[str, Any]) -> str:
    lines = [f"\nRun {run.id}: {record['status']}"]
    if record.get("started_at") and record.get("ended_at"):
        lines.append(f"  duration: {record['ended_at'] - record['started_at']:.1f} s")
    if record.get("exit_code") is not None:
        lines.append(f"  exit code: {record['exit_code']}")
    if record.get("error"):
        lines.append(f"  error: {record['error']}")
    if record.get("flow_run_url"):
        lines.append(f"  Prefect: {record['flow_run_url']}")
    return "\n".join(lines)
