"""Running a prepared script to its end: stream, sync, beat, and stop it when asked.

One loop serves every compute target: it reads the ``Job``'s output lines into the
Prefect logger and ``logs/std_log.txt``, mirrors the run's folders into the workspace,
writes a heartbeat, and ends the job on ``max_run_duration_seconds``, ``run.cancel()``
or a cancel from the Prefect UI.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compute.base import Job
from .distributed import FAILURE_RE, PREFIX_RE
from .records import RunStatus, run_dir
from .sync import FolderSync
from .workspace import Workspace

LOG_TAIL_LINES = 50


@dataclass
class Outcome:
    """How the script ended."""

    status: RunStatus
    exit_code: int | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)


class Watchdog(threading.Thread):
    """Writes the heartbeat and notices cancel requests (workspace marker or Prefect UI)."""

    def __init__(self, ws: Workspace, experiment: str, run_id: str, flow_run_id: str | None):
        super().__init__(daemon=True, name=f"mltrain-watchdog-{run_id}")
        self.ws, self.dir, self.flow_run_id = ws, run_dir(experiment, run_id), flow_run_id
        self.interval = ws.settings.heartbeat_interval_seconds
        self.cancel_reason: str | None = None
        self.pgid: int | None = None
        self._stop = threading.Event()
        self._last_beat = 0.0
        # A thread starts with empty context variables, so it would not see the Prefect
        # settings of the flow that started it (a user's own flow, a test's server) and its
        # client would fall back to a temporary server: it runs in a copy of the creator's.
        self._context = contextvars.copy_context()

    def run(self) -> None:
        self._context.run(self._loop)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a flaky store must not kill the run
                logging.getLogger("prefect_mltrain").debug("watchdog: %s", exc)
            self._stop.wait(1.0)

    def tick(self) -> None:
        now = time.time()
        if now - self._last_beat >= self.interval:
            self._last_beat = now
            self.ws.write_json(f"{self.dir}/heartbeat.json", {
                "time": now, "host": socket.gethostname(), "pid": os.getpid(), "pgid": self.pgid})
            if self.cancel_reason is None and self._prefect_cancelling():
                self.cancel_reason = "canceled from Prefect"
        if self.cancel_reason is None and self.ws.exists(f"{self.dir}/cancel.json"):
            self.cancel_reason = "canceled by request (run.cancel())"

    def _prefect_cancelling(self) -> bool:
        if not self.flow_run_id:
            return False
        from prefect.client.orchestration import get_client
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(self.flow_run_id).state
        return state is not None and state.type.value in ("CANCELLING", "CANCELLED")

    def stop(self) -> None:
        self._stop.set()


class RankLogs:
    """A distributed run's output split by its ``[rank N]`` prefix: a log file and a tail
    per rank in ``logs/``, and the first rank that failed."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[int, Any] = {}
        self.tails: dict[int, deque[str]] = {}
        self.failure: tuple[int, int] | None = None

    def add(self, line: str) -> None:
        if not (m := PREFIX_RE.match(line)):
            return
        rank = int(m.group(1))
        if rank not in self.files:
            self.files[rank] = open(self.folder / f"std_log_rank{rank}.txt", "a", buffering=1)
            self.tails[rank] = deque(maxlen=LOG_TAIL_LINES)
        self.files[rank].write(line[m.end():] + "\n")
        self.tails[rank].append(line)
        if self.failure is None and (f := FAILURE_RE.match(line)):
            self.failure = (int(f.group(1)), int(f.group(2)))

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def run_job(job: Job, *, sync: FolderSync, std_log: Path, watchdog: Watchdog,
            max_seconds: int | None, logger: logging.Logger, grace: float = 10.0,
            secrets: list[str] = (), on_sync: Callable[[], None] | None = None) -> Outcome:
    """Drive ``job`` to its end; the final sync is the caller's (it must run after any end).

    Values of ``secrets`` are masked in every output line before it is stored or logged;
    ``on_sync()`` is called after each periodic sync.
    The first failing rank of a distributed job stops every rank and fails the run.
    """
    secrets = sorted((v for v in secrets if len(v) >= 4), key=len, reverse=True)
    interval = sync.ws.settings.sync_interval_seconds
    std_log.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    watchdog.pgid = getattr(job, "pgid", None)
    deadline = time.monotonic() + max_seconds if max_seconds else None
    last_sync = time.monotonic()
    stop_reason: tuple[RunStatus, str] | None = None
    ranks = RankLogs(std_log.parent)
    with open(std_log, "a", buffering=1) as out:
        def emit(lines: list[str]) -> None:
            for line in lines:
                for value in secrets:
                    line = line.replace(value, "[secret]")
                out.write(line + "\n")
                tail.append(line)
                ranks.add(line)
                logger.info(line)

        try:
            while (code := job.poll()) is None:
                emit(job.read_lines(timeout=0.25))
                if deadline is not None and time.monotonic() > deadline:
                    stop_reason = (RunStatus.CANCELED,
                                   f"exceeded max_run_duration_seconds={max_seconds}")
                elif watchdog.cancel_reason:
                    stop_reason = (RunStatus.CANCELED, watchdog.cancel_reason)
                elif ranks.failure:
                    stop_reason = (RunStatus.FAILED, "rank {} exited with code {}; stopping "
                                   "the other ranks".format(*ranks.failure))
                if stop_reason:
                    logger.warning("stopping the run: %s", stop_reason[1])
                    job.terminate(grace)
                    code = job.poll()
                    break
                if time.monotonic() - last_sync >= interval:
                    last_sync = time.monotonic()
                    sync_quietly(sync, logger)
                    if on_sync:
                        on_sync()
            emit(job.finish_output())
        finally:
            job.terminate(grace=0) if job.poll() is None else job.close()
            ranks.close()
    if ranks.failure and (stop_reason is None or stop_reason[0] == RunStatus.FAILED):
        rank, code = ranks.failure
        return Outcome(RunStatus.FAILED, code, f"rank {rank} exited with code {code}",
                       list(ranks.tails[rank]))
    if stop_reason:
        return Outcome(stop_reason[0], code, stop_reason[1], list(tail))
    if code == 0:
        return Outcome(RunStatus.COMPLETED, 0, None, list(tail))
    return Outcome(RunStatus.FAILED, code, f"the script exited with code {code}", list(tail))


def run_folder_sync(ws: Workspace, experiment: str, run_id: str, cwd: Path,
                    stage: Path) -> FolderSync:
    """What a run mirrors: ``./outputs`` and ``./logs`` of the script, and the staging runs."""
    folder = run_dir(experiment, run_id)
    return FolderSync(ws, [
        (cwd / "outputs", f"{folder}/outputs"),
        (cwd / "logs", f"{folder}/logs"),
        (stage / "runs", f"experiments/{experiment}/runs"),
    ])


def sync_quietly(sync: FolderSync, logger: logging.Logger) -> None:
    try:
        sync.sync()
    except Exception as exc:  # keep running; the next pass retries these files
        logger.warning("could not sync run files yet: %s", exc)
