"""Running a prepared script to its end: stream, sync, beat, and stop it when asked.

One loop serves every compute target: it reads the ``Job``'s output lines into the
Prefect logger and ``logs/std_log.txt``, mirrors the run's folders into the workspace
(recording the child runs the script started), writes a heartbeat, and ends the job on
``max_run_duration_seconds``, ``run.cancel()`` or a cancel from the Prefect UI.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import events as event_lines
from .compute.jobs import Job
from .distributed import FAILURE_RE, PREFIX_RE
from .errors import WorkspaceError
from .files import is_partial
from .layout import CANCEL, EVENTS, HEARTBEAT, LOGS, OUTPUTS, RECORD, run_dir, runs_dir
from .records import RunStatus
from .store import RunStore
from .sync import FolderSync

LOG_TAIL_LINES = 50
CANCEL_CHECK_SECONDS = 0.2  # how often the runner looks for a cancel request


@dataclass
class Outcome:
    """How the script ended."""

    status: RunStatus
    exit_code: int | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)


class Watchdog(threading.Thread):
    """Writes the heartbeat and notices cancel requests (``run.cancel()`` or Prefect's)."""

    def __init__(self, store: RunStore, experiment: str, run_id: str, flow_run_id: str | None):
        super().__init__(daemon=True, name=f"mltrain-watchdog-{run_id}")
        self.store, self.experiment, self.run_id = store, experiment, run_id
        self.flow_run_id = flow_run_id
        self.interval = store.ws.settings.heartbeat_interval_seconds
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
            self._stop.wait(CANCEL_CHECK_SECONDS)

    def tick(self) -> None:
        now = time.time()
        if now - self._last_beat >= self.interval:
            self._last_beat = now
            self.store.beat(self.experiment, self.run_id, pid=os.getpid(), pgid=self.pgid)
            if self.cancel_reason is None and self.flow_run_id:
                from .prefect_api import cancelling

                if cancelling(self.flow_run_id):
                    self.cancel_reason = "canceled from Prefect"
        if self.cancel_reason is None:
            request = self.store.cancel_request(self.experiment, self.run_id)
            if request is not None:
                self.cancel_reason = request.get("reason") or "canceled by request (run.cancel())"

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


def mask(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value (of 4 characters or more) replaced by ``[secret]``."""
    for value in sorted((v for v in secrets if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "[secret]")
    return text


def run_job(job: Job, *, sync: RunSync, std_log: Path, watchdog: Watchdog,
            max_seconds: int | None, logger: logging.Logger, grace: float = 10.0,
            secrets: list[str] = (), on_sync: Callable[[], None] | None = None) -> Outcome:
    """Drive ``job`` to its end; the final sync is the caller's (it must run after any end).

    Values of ``secrets`` are masked in every output line before it is stored or logged;
    ``on_sync()`` is called after each periodic sync.
    The first failing rank of a distributed job stops every rank and fails the run.
    """
    interval = sync.store.ws.settings.sync_interval_seconds
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
                line = mask(line, secrets)
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


class RunSync:
    """Mirrors a run's folders into the workspace: the script's ``./outputs`` and ``./logs``,
    and its stage (events, images, uploads, and the folders of child runs it started, whose
    records it writes from their events)."""

    def __init__(self, store: RunStore, experiment: str, run_id: str, cwd: Path, stage: Path):
        self.store, self.experiment, self.run_id = store, experiment, run_id
        folder = run_dir(experiment, run_id)
        self.stage_runs = stage / runs_dir(experiment)
        self.folders = FolderSync(store.ws, [
            (cwd / OUTPUTS, f"{folder}/{OUTPUTS}"),
            (cwd / LOGS, f"{folder}/{LOGS}"),
            (self.stage_runs, runs_dir(experiment), _owned_by_the_runner),
        ])
        self._children: dict[str, tuple[str, ...]] = {}  # child -> its last recorded life
        self._tails: dict[str, event_lines.EventTail] = {}  # run -> its events read so far
        self._lives: dict[str, list[dict[str, Any]]] = {}  # child -> its ``run`` events
        self._names: dict[str, str] = {}  # run -> the display name it last gave itself
        self._recorded_names: dict[str, str] = {}  # run -> the display name in its record

    def sync(self) -> None:
        self.folders.sync()
        self._record_children()

    def _record_children(self) -> None:
        """Create or move the record of each child run from its ``run`` events, and take
        a new display name any run of the stage gave itself."""
        if not self.stage_runs.is_dir():
            return
        for folder in sorted(self.stage_runs.iterdir()):
            files = [f for f in (folder / EVENTS).glob("*.jsonl") if not is_partial(f.name)]
            events = self._tails.setdefault(folder.name, event_lines.EventTail()).read(files)
            if folder.name != self.run_id:
                life = self._lives.setdefault(folder.name, [])
                life.extend(e for e in events if e.get("type") == "run")
                self._record_child(folder.name, life)
            if (name := event_lines.latest(events, "display_name")) is not None:
                self._names[folder.name] = name
            name = self._names.get(folder.name)
            if name is not None and self._recorded_names.get(folder.name) != name and (
                    folder.name == self.run_id or folder.name in self._children):
                self.store.set(self.experiment, folder.name, display_name=name)
                self._recorded_names[folder.name] = name

    def _record_child(self, child: str, life: list[dict[str, Any]]) -> None:
        if not life:
            return
        life.sort(key=lambda e: e.get("time", 0))
        seen = tuple(e["status"] for e in life)
        if self._children.get(child) == seen:
            return
        if child not in self._children:
            with contextlib.suppress(FileExistsError):  # recorded by an earlier attempt
                self.store.create(self.experiment, run_id=child,
                                  status=RunStatus.RUNNING,
                                  parent_run_id=life[0].get("parent_run_id"),
                                  display_name=life[0].get("display_name"))
        last = life[-1]
        if last["status"] != RunStatus.RUNNING:
            self.store.move(self.experiment, child, last["status"],
                            error=last.get("error"))
        self._children[child] = seen


def store_local_files(store: RunStore, experiment: str, run_id: str) -> int:
    """Store the files an ended run left on this machine (the workspace could not take them,
    or its runner died; see ``RunRecord.local_files``); returns how many were uploaded."""
    record = store.read(experiment, run_id)
    local = record.local_files
    if local is None or not record.finished:
        return 0  # nothing left behind, or the runner still has them
    if local.host != socket.gethostname():
        raise WorkspaceError(f"run {run_id}'s files are on {local.host}, in {local.path}: "
                             "store them from there")
    scratch = Path(local.path)
    sync = RunSync(store, experiment, run_id, scratch / "src", scratch / "stage")
    sync.sync()
    store.set(experiment, run_id, local_files=None)
    shutil.rmtree(scratch, ignore_errors=True)
    return sync.folders.uploaded_files


def _owned_by_the_runner(rel: str) -> bool:
    """A run's record, heartbeat or cancel request, which no script may write."""
    parts = rel.split("/")
    return len(parts) == 2 and parts[1] in (RECORD, HEARTBEAT, CANCEL)


def sync_quietly(sync: RunSync, logger: logging.Logger) -> None:
    try:
        sync.sync()
    except Exception as exc:  # keep running; the next pass retries these files
        logger.warning("could not sync run files yet: %s", exc)
