"""``Run``: one execution of a training script — logged to from inside, inspected from outside.

Inside a script, ``Run.get_context()`` returns the submitted run (when started by
prefect-mltrain) or an offline run that logs to ``./.mltrain-offline`` (when started by
hand). Logging writes JSON lines to a local staging folder that the runner mirrors into
the workspace, so scripts never need store credentials and never wait on the network.

Outside, ``Run`` reads the run's folder in the workspace: status, details, metrics, files.
Only the standard library is imported at module load.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .errors import RunFailedError, RunNotFoundError, UnsafePathError
from .records import (
    DEPLOYED,
    RESERVED_NAMES,
    TERMINAL,
    RunStatus,
    check_name,
    new_record,
    new_run_id,
    process_alive,
    run_dir,
    set_status,
)

if TYPE_CHECKING:
    from .experiment import Experiment
    from .workspace import Workspace

OFFLINE_DIR = ".mltrain-offline"


def safe_relpath(name: str) -> str:
    """A run-relative file name, or ``UnsafePathError`` if it could leave the run's folder."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise UnsafePathError(f"invalid file name {name!r}: use a relative path like 'outputs/model.pkl'")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafePathError(
            f"file name {name!r} leaves the run's folder: use a path inside the run, "
            "like 'outputs/model.pkl' (see run.get_file_names())"
        )
    return str(path)


class _EventLog:
    """Append-only JSON lines of one run and one rank, in a local folder."""

    def __init__(self, folder: Path, rank: int):
        self.folder = folder
        self.path = folder / "events" / f"rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)

    def write(self, event: dict[str, Any]) -> None:
        event.setdefault("time", time.time())
        self._file.write(json.dumps(event, default=_jsonable) + "\n")

    def close(self) -> None:
        self._file.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


FLOW_CHECK_SECONDS = 5.0


class Run:
    """A run of an experiment.

    Example:
        ```python
        run = experiment.submit(config)
        run.wait_for_completion(show_output=True)
        print(run.get_metrics()["accuracy"])
        run.download_file("outputs/model.pkl", "model.pkl")
        ```
    """

    def __init__(self, experiment: Experiment, run_id: str, *, _stage: Path | None = None,
                 _rank: int = 0, _offline: bool = False):
        self.experiment = experiment
        self.id = run_id
        self._stage = _stage  # local staging folder that logging writes to
        self._rank = _rank
        self._offline = _offline
        self._events: _EventLog | None = None
        self._record: dict[str, Any] | None = None
        self._client = False  # staging for a handle outside any script, pushed at once
        self._flow_checked = 0.0  # when a deployed run's flow run was last looked at

    def __repr__(self) -> str:
        return f"Run(experiment={self.experiment.name!r}, id={self.id!r})"

    # -- inside the script ------------------------------------------------------------------

    @classmethod
    def get_context(cls) -> Run:
        """The run this script belongs to; an offline run when started by hand. Never raises."""
        stage = os.environ.get("MLTRAIN_CONTEXT_DIR")
        run_id = os.environ.get("MLTRAIN_RUN_ID")
        rank = int(os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")
                   or os.environ.get("PMI_RANK") or 0)
        if stage and run_id:
            experiment = _ContextExperiment(os.environ.get("MLTRAIN_EXPERIMENT", "default"))
            return cls(experiment, run_id, _stage=Path(stage) / "runs" / run_id, _rank=rank)
        return cls._offline_run(rank)

    @classmethod
    def _offline_run(cls, rank: int) -> Run:
        run_id = new_run_id("offline")
        folder = Path.cwd() / OFFLINE_DIR / run_id
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            import tempfile
            folder = Path(tempfile.mkdtemp(prefix="mltrain-offline-"))
        _write_json(folder / "run.json", new_record("offline", run_id, status="Running"))
        print(f"prefect-mltrain: offline run, logging to {folder}", file=sys.stderr)
        return cls(_ContextExperiment("offline"), run_id, _stage=folder, _rank=rank, _offline=True)

    @property
    def is_offline(self) -> bool:
        return self._offline

    def _log_event(self, event: dict[str, Any]) -> None:
        if self._stage is None:
            self._stage = self._client_stage()
        if self._events is None:
            self._events = _EventLog(self._stage, self._rank)
        event["rank"] = self._rank
        self._events.write(event)
        if self._client:
            self._push_client_stage()

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Log a value; logging the same name again makes a series."""
        check_name(name, "metric name")
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        self._log_event({"type": "metric", "kind": "scalar", "name": name, "value": value,
                         "step": step, "description": description})

    def log_list(self, name: str, value: Iterable[Any], description: str = "") -> None:
        check_name(name, "metric name")
        self._log_event({"type": "metric", "kind": "list", "name": name, "value": list(value),
                         "description": description})

    def log_row(self, name: str, description: str = "", **kwargs: Any) -> None:
        """Add a row to a table metric: ``run.log_row("curve", epoch=1, loss=0.3)``."""
        check_name(name, "metric name")
        self._log_event({"type": "metric", "kind": "row", "name": name, "value": kwargs,
                         "description": description})

    def log_image(self, name: str, path: str | os.PathLike | None = None, plot: Any = None,
                  description: str = "") -> None:
        """Log an image file, or a matplotlib figure (``plot=fig``), under ``images/``."""
        check_name(name, "metric name")
        if (path is None) == (plot is None):
            raise ValueError("log_image needs exactly one of path= or plot=")
        if self._stage is None:
            self._stage = self._client_stage()
        suffix = Path(path).suffix if path is not None else ".png"
        rel = f"images/{name}_{time.time_ns()}{suffix}"
        target = self._stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if plot is not None:
            plot.savefig(target, format="png")
        else:
            shutil.copyfile(path, target)
        self._log_event({"type": "metric", "kind": "image", "name": name, "value": rel,
                         "description": description})

    def tag(self, key: str, value: Any = "") -> None:
        check_name(key, "tag key")
        if self._stage is None:  # a handle outside the script: tags.json
            tags = self._ws.read_json(f"{self._dir}/tags.json", {})
            tags[key] = str(value)
            self._ws.write_json(f"{self._dir}/tags.json", tags)
        else:
            self._log_event({"type": "tag", "key": key, "value": str(value)})

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.tag(key, value)

    def add_properties(self, properties: dict[str, Any]) -> None:
        for key, value in properties.items():
            check_name(key, "property name")
            if self._stage is None:
                raise ValueError("properties are set from inside the run or at submit")
            self._log_event({"type": "property", "key": key, "value": str(value)})

    def upload_file(self, name: str, path_or_stream: str | os.PathLike) -> None:
        """Store a file with the run under ``name`` (e.g. ``outputs/model.pkl``)."""
        name = safe_relpath(name)
        if PurePosixPath(name).parts[0] in RESERVED_NAMES:
            raise UnsafePathError(f"{name!r} is reserved for the run record: choose another name")
        if self._stage is None:
            self._ws.put_files([(os.fspath(path_or_stream), f"{self._dir}/{name}")])
            return
        target = self._stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path_or_stream, target)

    def child_run(self, name: str | None = None, run_id: str | None = None) -> Run:
        """Start a child run; its metrics and files are kept separately."""
        child_id = run_id or new_run_id(self.experiment.name)
        stage = (self._stage.parent / child_id) if self._stage is not None else None
        child = Run(self.experiment, child_id, _stage=stage, _rank=self._rank,
                    _offline=self._offline)
        record = set_status(new_record(self.experiment.name, child_id, parent_run_id=self.id,
                                       display_name=name), RunStatus.RUNNING)
        if stage is not None:
            _write_json(stage / "run.json", record)
        else:
            self._ws.write_json(f"{run_dir(self.experiment.name, child_id)}/run.json", record)
        child._record = record
        return child

    def create_children(self, count: int) -> list[Run]:
        return [self.child_run() for _ in range(count)]

    def complete(self) -> None:
        self._finish(RunStatus.COMPLETED)

    def fail(self, error: str | BaseException | None = None) -> None:
        self._finish(RunStatus.FAILED, error=str(error) if error else None)

    def _finish(self, status: RunStatus, **fields: Any) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        record = self._record if self._record is not None else self._load_own_record()
        if record is None:
            return
        set_status(record, status, **fields)
        if self._stage is not None and not self._client:
            _write_json(self._stage / "run.json", record)
        else:
            self._ws.write_json(f"{self._dir}/run.json", record)

    def _load_own_record(self) -> dict[str, Any] | None:
        if self._stage is not None and not self._client:
            try:
                return json.loads((self._stage / "run.json").read_text())
            except (OSError, ValueError):
                return None  # the submitted run itself: the runner owns its record
        return self._ws.read_json(f"{self._dir}/run.json", None)

    # -- outside: reading the workspace -----------------------------------------------------

    @property
    def _ws(self) -> Workspace:
        return self.experiment.workspace

    @property
    def _dir(self) -> str:
        return run_dir(self.experiment.name, self.id)

    def _client_stage(self) -> Path:
        """Logging through a handle outside any script: stage locally, push at once."""
        import tempfile
        self._client = True
        return Path(tempfile.mkdtemp(prefix="mltrain-client-"))

    def _push_client_stage(self) -> None:
        events = self._stage / "events"
        pairs = []
        for path in self._stage.rglob("*"):
            if path.is_file():
                rel = path.relative_to(self._stage).as_posix()
                if path.parent == events:
                    rel = f"events/client-{socket.gethostname()}-{os.getpid()}-{id(self)}-{path.name}"
                pairs.append((str(path), f"{self._dir}/{rel}"))
        self._ws.put_files(pairs)

    @classmethod
    def get(cls, workspace: Workspace, run_id: str) -> Run:
        """Find a run by id in any experiment of the workspace."""
        from .experiment import Experiment
        for name in workspace.list_experiments():
            if workspace.exists(f"{run_dir(name, run_id)}/run.json"):
                return cls(Experiment(workspace, name), run_id)
        raise RunNotFoundError(f"no run {run_id!r} in {workspace}: list runs with `mltrain runs list`")

    def _read_record(self) -> dict[str, Any]:
        if self._offline:
            return json.loads((self._stage / "run.json").read_text())
        try:
            record = self._ws.read_json(f"{self._dir}/run.json")
        except FileNotFoundError:
            raise RunNotFoundError(f"run {self.id!r} has no record in {self._ws}") from None
        if record["status"] not in TERMINAL:
            record = self._detect_dead_runner(record)
        self._record = record
        return record

    def _detect_dead_runner(self, record: dict[str, Any]) -> dict[str, Any]:
        """A runner that died (killed, machine lost) cannot finish its run: end it Failed."""
        runner = record.get("runner") or {}
        beat = self._ws.read_json(f"{self._dir}/heartbeat.json", None) or {}
        host, pid = beat.get("host", runner.get("host")), beat.get("pid", runner.get("pid"))
        last = beat.get("time") or record.get("created_at") or 0
        timeout = self._ws.settings.heartbeat_timeout_seconds
        same_host = host == socket.gethostname()
        status = RunStatus.FAILED
        deployed = None if beat else self._ws.read_json(f"{self._dir}/{DEPLOYED}", None)
        if deployed:  # sent to a work pool, and no worker has started its flow yet
            if time.monotonic() - self._flow_checked < FLOW_CHECK_SECONDS:
                return record
            self._flow_checked = time.monotonic()
            state = self._flow_run_state(deployed["flow_run_id"])
            if not (state and state.is_final()):
                return record
            reason = f"its flow run ended {state.name} ({state.message or 'no message'})"
            status = RunStatus.CANCELED if state.is_cancelled() else RunStatus.FAILED
        elif same_host and pid:  # the process table is authoritative on the runner's host
            if process_alive(pid):
                return record
            reason = f"the runner process {pid} on {host} exited without finishing the run"
        elif beat and time.time() - last > timeout:
            reason = f"no heartbeat from the runner on {host} for {int(time.time() - last)} s"
        else:
            return record
        fresh = self._ws.read_json(f"{self._dir}/run.json")
        if fresh["status"] in TERMINAL:
            return fresh
        if same_host and beat.get("pgid"):
            from .compute.process import kill_process_group
            kill_process_group(beat["pgid"], grace=0)
        set_status(fresh, status,
                   error=f"{reason} (killed or crashed); outputs synced so far are kept")
        self._ws.write_json(f"{self._dir}/run.json", fresh)
        return fresh

    @staticmethod
    def _flow_run_state(flow_run_id: str) -> Any:
        from prefect.client.orchestration import get_client

        from .server import using_server

        with using_server(), get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state

    def get_status(self) -> str:
        return self._read_record()["status"]

    @property
    def status(self) -> str:
        return self.get_status()

    def get_details(self) -> dict[str, Any]:
        """The run record: status, timings, exit code, error, log tail, snapshot, flow run."""
        record = dict(self._read_record())
        record["tags"] = self.get_tags()
        if record.get("started_at") and record.get("ended_at"):
            record["duration_seconds"] = record["ended_at"] - record["started_at"]
        return record

    def _events_iter(self) -> Iterable[dict[str, Any]]:
        if self._offline:
            files = sorted((self._stage / "events").glob("*.jsonl"))
            texts = [f.read_bytes() for f in files]
        else:
            names = self._ws.list_dir(f"{self._dir}/events")
            texts = [self._ws.read_bytes(f"{self._dir}/events/{n}") for n in names]
        for text in texts:
            for line in text.decode(errors="replace").splitlines():
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # a line being written while we read

    def get_metrics(self, name: str | None = None) -> dict[str, Any]:
        """Logged metrics: a single value, a list for a series, a dict of columns for rows."""
        series: dict[str, list[dict[str, Any]]] = {}
        for event in self._events_iter():
            if event.get("type") == "metric" and (name is None or event["name"] == name):
                series.setdefault(event["name"], []).append(event)
        for events in series.values():
            events.sort(key=lambda e: (e.get("time", 0), e.get("rank", 0)))
        out: dict[str, Any] = {}
        for key, events in series.items():
            kind = events[0].get("kind")
            if kind == "row":
                columns: dict[str, list[Any]] = {}
                for e in events:
                    for col, val in e["value"].items():
                        columns.setdefault(col, []).append(val)
                out[key] = columns
            elif kind == "list" or len(events) == 1:
                out[key] = events[-1]["value"] if len(events) == 1 else [e["value"] for e in events]
            else:
                out[key] = [e["value"] for e in events]
        return out

    def get_tags(self) -> dict[str, str]:
        tags = {} if self._offline else dict(self._ws.read_json(f"{self._dir}/tags.json", {}))
        for event in self._events_iter():
            if event.get("type") == "tag":
                tags[event["key"]] = event["value"]
        return tags

    def get_properties(self) -> dict[str, str]:
        props = dict(self._read_record().get("properties") or {})
        for event in self._events_iter():
            if event.get("type") == "property":
                props[event["key"]] = event["value"]
        return props

    def get_file_names(self) -> list[str]:
        """Files stored with the run (``outputs/``, ``logs/``, uploads, images)."""
        files = self._ws.find(self._dir)
        return sorted(f for f in files if PurePosixPath(f).parts[0] not in RESERVED_NAMES)

    def download_file(self, name: str, output_file_path: str | os.PathLike | None = None) -> Path:
        """Download one stored file; the name must stay inside the run (no ``../``)."""
        name = safe_relpath(name)
        if name not in self.get_file_names():
            raise FileNotFoundError(f"run {self.id} has no file {name!r}; it has: "
                                    f"{', '.join(self.get_file_names()[:20]) or 'no files'}")
        target = Path(output_file_path or PurePosixPath(name).name)
        if target.is_dir():
            target = target / PurePosixPath(name).name
        self._ws.get_file(f"{self._dir}/{name}", target)
        return target

    def download_files(self, prefix: str = "", output_directory: str | os.PathLike = ".",
                       append_prefix: bool = True, progress: bool = False) -> list[Path]:
        """Download every stored file whose name starts with ``prefix``."""
        from .progress import progress_bar

        if prefix:
            safe_relpath(prefix)
        out = Path(output_directory)
        names = [name for name in self.get_file_names() if name.startswith(prefix)]
        paths = []
        with progress_bar(progress and bool(names), "Downloading", len(names), "files") as advance:
            for name in names:
                rel = name if append_prefix else name[len(prefix):].lstrip("/")
                target = out / rel
                self._ws.get_file(f"{self._dir}/{name}", target)
                paths.append(target)
                advance(1)
        return paths

    def get_children(self) -> list[Run]:
        return [r for r in self.experiment.get_runs(include_children=True)
                if r._read_record().get("parent_run_id") == self.id]

    # -- control ----------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the run to stop; works from any process that can reach the workspace."""
        record = self._read_record()
        if record["status"] in TERMINAL:
            return
        self._ws.write_json(f"{self._dir}/cancel.json", {"time": time.time(),
                                                         "host": socket.gethostname()})
        deployed = self._ws.read_json(f"{self._dir}/{DEPLOYED}", None)
        if record["status"] == RunStatus.NOT_STARTED.value or (
                record["status"] == RunStatus.QUEUED.value and deployed
                and self._cancel_flow_run(deployed["flow_run_id"])):
            set_status(record, RunStatus.CANCELED, error="canceled before it started")
            self._ws.write_json(f"{self._dir}/run.json", record)
            if deployed and deployed.get("private_block"):
                self._delete_block(deployed["private_block"])

    @staticmethod
    def _delete_block(name: str) -> None:
        from prefect.blocks.system import Secret

        from .server import using_server

        with using_server():
            try:
                Secret.delete(name)
            except Exception:  # taken by the flow meanwhile
                pass

    @staticmethod
    def _cancel_flow_run(flow_run_id: str) -> bool:
        """Cancel a flow run that no worker has taken yet; False when one has."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        from .server import using_server

        with using_server(), get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if not (state and state.is_scheduled()):
                return False
            result = client.set_flow_run_state(flow_run_id, Cancelled(message="canceled by request"))
        return result.status.value == "ACCEPT"

    def wait_for_completion(self, show_output: bool = False, raise_on_error: bool = True,
                            poll_interval: float = 0.25, timeout: float | None = None
                            ) -> dict[str, Any]:
        """Block until the run ends; with ``show_output`` stream its output as it comes."""
        from .watch import follow_run
        record = follow_run(self, show_output=show_output, poll_interval=poll_interval,
                            timeout=timeout)
        if raise_on_error and record["status"] == RunStatus.FAILED.value:
            raise RunFailedError(
                f"run {self.id} failed: {record.get('error')}\n{record.get('log_tail') or ''}"
            )
        return self.get_details()

    def resubmit(self) -> Run:
        """Submit the same snapshot and configuration again as a new run."""
        return self.experiment.resubmit(self)


class _ContextExperiment:
    """The experiment of a run seen from inside its script: the name, and lazily the store."""

    def __init__(self, name: str):
        self.name = name

    @property
    def workspace(self) -> Workspace:
        from .workspace import Workspace
        return Workspace.from_env()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
