"""``RunStore``: where runs live in a workspace, and the only writer of their records.

Every creation or change of a ``run.json`` goes through here, as a read-modify-write
under the workspace's lock of that record (``Workspace.lock``), so two writers — the
runner moving its run along, a watcher ending a run whose runner died, a submitter adding
where it sent the run — never lose each other's update. Reading never writes. The store
also reads what a run's processes left in its folder (events, files) and keeps the
smaller files a run has: the runner's heartbeat and cancel requests.

Each experiment has an index beside its records, so finding runs reads no record: one
empty object per run, whose name holds what never changes about it (when it was created,
whether it is a sweep, its id), under ``index/top/`` or its parent's ``index/children/``.
Names sort newest first, so one listing gives a page of runs or a parent's children. The
records stay the system of record: ``reindex`` makes the index again from them, and an
experiment recorded before the index existed is read record by record until its next run
is created (which builds its index).
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

from . import events as event_lines
from .compute.registry import target_name
from .config import ScriptRunConfig
from .errors import RunNotFoundError, UnsafePathError, WorkspaceError
from .files import is_partial
from .git import git_properties
from .layout import (
    CANCEL,
    EVENTS,
    GIT_DIFF,
    HEARTBEAT,
    RECORD,
    RESERVED_NAMES,
    check_metric_name,
    check_name,
    experiment_dir,
    index_dir,
    new_run_id,
    run_dir,
    runs_dir,
    safe_relpath,
)
from .records import RunRecord, RunStatus
from .workspace import Workspace

INDEX_VERSION = 1  # experiment.json's "index": every run of the experiment is in its index
_NEWEST = 10**16  # µs; an entry's name starts with _NEWEST - created µs: newest sorts first
DANGLING_ENTRY_SECONDS = 600.0  # an entry without a record, older than this, is removed


@dataclass(frozen=True)
class Entry:
    """A run as the index names it: what never changes about it."""

    run_id: str
    created_at: float
    sweep: bool
    parent_run_id: str | None = None

    @classmethod
    def of(cls, record: RunRecord) -> Entry:
        return cls(record.run_id, record.created_at, record.hyperdrive is not None,
                   record.parent_run_id)

    @property
    def name(self) -> str:
        when = _NEWEST - round(self.created_at * 1e6)
        return f"{when:016d}_{'h' if self.sweep else 'r'}_{self.run_id}"

    def path(self, experiment: str) -> str:
        return f"{index_dir(experiment, self.parent_run_id)}/{self.name}"

    @classmethod
    def parse(cls, name: str, parent_run_id: str | None) -> Entry | None:
        when, _, rest = name.partition("_")
        kind, _, run_id = rest.partition("_")
        if not (when.isdigit() and kind in ("h", "r") and run_id):  # a partial file: ".x.tmp"
            return None
        return cls(run_id, (_NEWEST - int(when)) / 1e6, kind == "h", parent_run_id)


class RunStore:
    """The runs of one workspace.

    Example:
        ```python
        store = RunStore(Workspace())
        record = store.create("demo", config=config)
        store.move("demo", record.run_id, RunStatus.QUEUED)
        ```
    """

    def __init__(self, ws: Workspace):
        self.ws = ws

    def __repr__(self) -> str:
        return f"RunStore({self.ws!r})"

    # -- records ------------------------------------------------------------------------------

    def create(self, experiment: str, *, config: ScriptRunConfig | None = None,
               tags: dict[str, Any] | None = None, git: dict[str, Any] | None = None,
               status: RunStatus = RunStatus.NOT_STARTED, run_id: str | None = None,
               properties: dict[str, Any] | None = None, **fields: Any) -> RunRecord:
        """Record a new run of ``experiment``: its configuration (the compute target by
        name), tags, properties, git provenance (the diff goes beside the record; the rest
        also as ``azureml.git.*`` properties), who submitted it, its number in the
        experiment, and ``fields``."""
        check_name(experiment, "experiment name")
        tags = {check_name(str(k), "tag key"): str(v) for k, v in (tags or {}).items()}
        properties = {check_metric_name(k, "property name"): str(v)
                      for k, v in (properties or {}).items()}
        if config is not None:
            config = config.model_copy(update={
                "compute_target": target_name(config.compute_target)})
        fields.setdefault("submitted_by", _user())
        record = RunRecord(run_id=run_id or new_run_id(experiment), experiment=experiment,
                           config=config, tags=tags, properties={
                               **properties, **git_properties(git)}, **fields)
        record.move_to(RunStatus.NOT_STARTED)
        if status != RunStatus.NOT_STARTED:
            record.move_to(status)
        folder = run_dir(experiment, record.run_id)
        if git:
            git = dict(git)
            if diff := git.pop("diff", ""):
                self.ws.write_bytes(f"{folder}/{GIT_DIFF}", diff.encode())
            record.git = git
        record.number = self._next_number(experiment)
        entry = Entry.of(record).path(experiment)
        with self.ws.lock(f"{folder}/{RECORD}"):
            if self.ws.exists(f"{folder}/{RECORD}"):
                raise FileExistsError(f"run {record.run_id} exists already in {self.ws}")
            self.ws.write_bytes(entry, b"")  # first: a run is never recorded unlisted
            try:
                self.ws.write_bytes(f"{folder}/{RECORD}", record.to_json())
            except BaseException:
                self.ws.delete(entry)
                raise
        return record

    def _next_number(self, experiment: str) -> int:
        """The next run number of ``experiment`` (1, 2, ...), counted in its
        ``experiment.json`` under the lock, so concurrent submits never share one."""
        marker = f"{experiment_dir(experiment)}/experiment.json"
        with self.ws.lock(marker):
            info = self.ws.read_json(marker, None) or {"name": experiment,
                                                       "created_at": time.time()}
            if "last_run_number" not in info:  # runs recorded before runs had numbers
                info["last_run_number"] = len(self.run_ids(experiment))
            if info.get("index") != INDEX_VERSION:  # runs recorded before the index
                self._rebuild_index(experiment)
                info["index"] = INDEX_VERSION
            info["last_run_number"] += 1
            self.ws.write_json(marker, info)
        return info["last_run_number"]

    def read(self, experiment: str, run_id: str) -> RunRecord:
        try:
            data: bytes | Exception = self.ws.read_bytes(f"{run_dir(experiment, run_id)}/{RECORD}")
        except Exception as exc:
            data = exc
        return self._parse(experiment, run_id, data)

    def read_many(self, experiment: str, run_ids: list[str]) -> list[RunRecord]:
        """The records of ``run_ids`` in that order, read at once; a run without a record
        (being created) is left out, and so is a damaged one, with a warning naming it."""
        got = self.ws.read_many([f"{run_dir(experiment, i)}/{RECORD}" for i in run_ids])
        found = []
        for run_id in run_ids:
            try:
                found.append(self._parse(experiment, run_id,
                                         got[f"{run_dir(experiment, run_id)}/{RECORD}"]))
            except RunNotFoundError:
                continue
            except WorkspaceError as exc:
                warnings.warn(str(exc), stacklevel=3)
        return found

    def _parse(self, experiment: str, run_id: str, data: bytes | Exception) -> RunRecord:
        try:
            if isinstance(data, Exception):
                raise data
            return RunRecord.from_json(data)
        except FileNotFoundError:
            raise RunNotFoundError(
                f"run {run_id!r} has no record in {self.ws}: list runs with `mltrain runs "
                "list`") from None
        except OSError as exc:
            raise WorkspaceError(f"cannot read run {run_id!r} from {self.ws}: {exc}. Check "
                                 "that the workspace is reachable and readable") from exc
        except ValueError as exc:  # not JSON, or not a run record
            problem = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc)}
            where = ".".join(str(p) for p in problem.get("loc", ()))
            what = f"{where}: {problem['msg']}" if where else problem["msg"]
            raise WorkspaceError(
                f"the record of run {run_id!r} in {self.ws} is damaged ({what}): restore "
                f"{run_dir(experiment, run_id)}/{RECORD} from a backup, or delete that run's "
                "folder") from None

    def update(self, experiment: str, run_id: str,
               change: Callable[[RunRecord], Any]) -> RunRecord:
        """Apply ``change`` to the current record and write it, under the record's lock.
        A ``change`` that returns False changes nothing (the record is not written)."""
        path = f"{run_dir(experiment, run_id)}/{RECORD}"
        try:
            with self.ws.lock(path):
                record = self.read(experiment, run_id)
                if change(record) is False:
                    return record
                record.revision += 1
                self.ws.write_bytes(path, record.to_json())
        except OSError as exc:  # the record as it was stays: writes are atomic
            raise WorkspaceError(f"cannot write run {run_id!r} to {self.ws}: {exc}. Check "
                                 "that the workspace is reachable and writable") from exc
        return record

    def move(self, experiment: str, run_id: str, status: RunStatus | str,
             **fields: Any) -> RunRecord:
        """Move the run to ``status`` with ``fields``; a run that has ended stays as it is."""
        return self.update(experiment, run_id, lambda r: r.move_to(status, **fields))

    def set(self, experiment: str, run_id: str, **fields: Any) -> RunRecord:
        """Set fields of the record without a change of status."""
        return self.update(experiment, run_id,
                           lambda r: [setattr(r, name, value) for name, value in fields.items()])

    def end_children(self, experiment: str, run_id: str, canceled: bool = False) -> list[str]:
        """End every descendant of an ended run that has not ended (Canceled when the parent
        was canceled, else Failed, with the error "parent run ended"), so no child is left
        Running; returns their ids. A child with a runner of its own (a sweep's trial) is
        left to it: its runner ends it, or the watcher when that runner dies."""
        status = RunStatus.CANCELED if canceled else RunStatus.FAILED
        below = self.read_many(experiment, [e.run_id for e in self.descendants(experiment, run_id)])
        return [child.run_id for child in below
                if not child.finished and child.config is None
                and self.move(experiment, child.run_id, status,
                              error="parent run ended").status == status]

    def reopen(self, experiment: str, run_id: str) -> RunRecord:
        """Queue again a sweep whose controller died (``HyperDriveRun.resume``): the one
        way out of an ended state, kept in the status history."""
        def change(record: RunRecord) -> None:
            if record.hyperdrive is None or record.status != RunStatus.FAILED:
                raise WorkspaceError(f"run {run_id} is {record.status.value}: only a sweep "
                                     "that failed (its controller died) can be resumed")
            record.status, record.ended_at, record.error = RunStatus.RUNNING, None, None
            record.runner = None
            record.move_to(RunStatus.QUEUED)
        record = self.update(experiment, run_id, change)
        self.ws.delete(f"{run_dir(experiment, run_id)}/{HEARTBEAT}")  # the dead controller's
        return record

    def descendants(self, experiment: str, run_id: str) -> list[Entry]:
        """Every run below ``run_id`` (children, theirs, ...), parents before their
        children, from one listing of the index (no record read)."""
        kids: dict[str, list[Entry]] = {}
        for entry in self.entries(experiment, every=True):
            if entry.parent_run_id:
                kids.setdefault(entry.parent_run_id, []).append(entry)
        found, todo = [], list(kids.get(run_id, []))
        while todo:
            child = todo.pop(0)
            found.append(child)
            todo.extend(kids.get(child.run_id, []))
        return found

    def children(self, experiment: str, run_id: str) -> list[RunRecord]:
        """The records of ``run_id``'s children, newest first."""
        return self.read_many(experiment, [e.run_id for e in self.entries(experiment, run_id)])

    # -- finding runs -------------------------------------------------------------------------

    def experiments(self) -> list[str]:
        return self.ws.list_dir("experiments")

    def run_ids(self, experiment: str) -> list[str]:
        return self.ws.list_dir(runs_dir(experiment))

    def records(self, experiment: str) -> list[RunRecord]:
        """Every readable record of ``experiment``, newest first; a damaged one is left out
        with a warning that names it."""
        found = self.read_many(experiment, self.run_ids(experiment))
        return sorted(found, key=lambda r: r.created_at, reverse=True)

    def entries(self, experiment: str, parent_run_id: str | None = None,
                every: bool = False, limit: int | None = None) -> list[Entry]:
        """The runs of ``experiment`` without a parent (or the children of
        ``parent_run_id``; or, with ``every``, all of them), newest first, from its index
        (``limit``: only the newest that many); in an experiment recorded before the
        index, from every record."""
        marker = self.ws.read_json(f"{experiment_dir(experiment)}/experiment.json", None)
        if (marker or {}).get("index") != INDEX_VERSION:
            return [Entry.of(r) for r in self.records(experiment)
                    if every or r.parent_run_id == parent_run_id][:limit]
        if limit is not None and not every:  # names sort newest first: the first names
            names = self.ws.list_first(index_dir(experiment, parent_run_id), limit)
            return [e for e in (Entry.parse(n, parent_run_id) for n in names) if e]
        if every:
            found = [Entry.parse(rel.rsplit("/", 1)[-1], rel.split("/")[1]
                                 if rel.startswith("children/") else None)
                     for rel in self.ws.find(f"{experiment_dir(experiment)}/index")]
        else:
            found = [Entry.parse(name, parent_run_id)
                     for name in self.ws.list_dir(index_dir(experiment, parent_run_id))]
        return sorted((e for e in found if e), key=lambda e: e.name)

    def reindex(self, experiment: str) -> tuple[int, int]:
        """Make ``experiment``'s index name exactly its recorded runs again (after runs were
        copied in by hand, or entries lost); returns (entries added, entries removed). An
        entry without a record is kept while its run may still be being created."""
        marker = f"{experiment_dir(experiment)}/experiment.json"
        with self.ws.lock(marker):
            counts = self._rebuild_index(experiment)
            info = self.ws.read_json(marker, None) or {"name": experiment,
                                                       "created_at": time.time()}
            if info.get("index") != INDEX_VERSION:
                self.ws.write_json(marker, {**info, "index": INDEX_VERSION})
        return counts

    def _rebuild_index(self, experiment: str) -> tuple[int, int]:
        base = f"{experiment_dir(experiment)}/index"
        have = {f"{base}/{rel}" for rel in self.ws.find(base)}
        want = {Entry.of(r).path(experiment) for r in self.records(experiment)}
        self.ws.write_many(dict.fromkeys(want - have, b""))
        old = time.time() - DANGLING_ENTRY_SECONDS
        gone = [path for path in have - want
                if (e := Entry.parse(path.rsplit("/", 1)[-1], None)) and e.created_at < old]
        for path in gone:
            self.ws.delete(path)
        return len(want - have), len(gone)

    def experiment_of(self, run_id: str) -> str:
        for name in self.experiments():
            if self.ws.exists(f"{run_dir(name, run_id)}/{RECORD}"):
                return name
        raise RunNotFoundError(f"no run {run_id!r} in {self.ws}: list runs with `mltrain runs list`")

    # -- the runner's pulse and requests to it --------------------------------------------------

    def beat(self, experiment: str, run_id: str, **info: Any) -> None:
        self.ws.write_json(f"{run_dir(experiment, run_id)}/{HEARTBEAT}", {
            "time": time.time(), "host": socket.gethostname(), **info})

    def heartbeat(self, experiment: str, run_id: str) -> dict[str, Any] | None:
        return self.ws.read_json(f"{run_dir(experiment, run_id)}/{HEARTBEAT}", None)

    def request_cancel(self, experiment: str, run_id: str, reason: str | None = None) -> None:
        self.ws.write_json(f"{run_dir(experiment, run_id)}/{CANCEL}",
                           {"time": time.time(), "host": socket.gethostname(),
                            "reason": reason})

    def cancel_request(self, experiment: str, run_id: str) -> dict[str, Any] | None:
        """The cancel request of a run (its ``reason`` may be None), or None."""
        return self.ws.read_json(f"{run_dir(experiment, run_id)}/{CANCEL}", None)

    def cancel_requested(self, experiment: str, run_id: str) -> bool:
        return self.ws.exists(f"{run_dir(experiment, run_id)}/{CANCEL}")

    # -- what the run's processes wrote -------------------------------------------------------

    def events(self, experiment: str, run_id: str) -> list[dict[str, Any]]:
        folder = f"{run_dir(experiment, run_id)}/{EVENTS}"
        names = [n for n in self.ws.list_dir(folder) if not is_partial(n)]
        return event_lines.parse(self.ws.read_bytes(f"{folder}/{n}") for n in names)

    def file_names(self, experiment: str, run_id: str) -> list[str]:
        """Files stored with the run (``outputs/``, ``logs/``, uploads, images). A stored
        name that would leave the run's folder (``..``, put there by hand in a shared
        bucket) is never listed, so it is never downloaded."""
        files = self.ws.find(run_dir(experiment, run_id))
        return sorted(f for f in files if _listed(f))



def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user without a passwd entry
        return os.environ.get("USER") or str(os.getuid())


def _listed(name: str) -> bool:
    try:
        safe_relpath(name)
    except UnsafePathError:
        return False
    path = PurePosixPath(name)
    return path.parts[0] not in RESERVED_NAMES and not is_partial(path.name)
