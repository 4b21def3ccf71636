"""``Experiment`` and ``Run``: the two handles a user holds, on a group of runs and on one.

They refer to each other (a run knows its experiment; an experiment submits and lists its
runs), so they live together. The work behind them lives below: ``submission`` records
and starts runs, ``store`` keeps records, ``context`` writes what a script logs, ``watch``
follows runs (and ends those nobody else will), ``prefect_api`` talks to Prefect.

Only the standard library and the package's standard-library modules are imported here at
load: a training script imports ``Run``, possibly in an environment that holds nothing but
its own packages. Everything else is imported where a method needs it.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from . import events as event_lines
from .context import RunWriter, current, rank
from .errors import RunFailedError, UnsafePathError
from .layout import RESERVED_NAMES, check_name, new_run_id, run_dir, safe_relpath

OFFLINE_DIR = ".mltrain-offline"


class Experiment:
    """A named group of runs in a workspace.

    Example:
        ```python
        exp = Experiment(Workspace(), "demo")
        run = exp.submit(ScriptRunConfig(source_directory="proj", script="train.py"))
        ```
    """

    def __init__(self, workspace: Any, name: str):
        self._workspace = workspace
        self.name = check_name(name, "experiment name")

    @property
    def workspace(self) -> Any:
        """The experiment's ``Workspace`` (inside a script: the one its runner names)."""
        if self._workspace is None:
            from .workspace import Workspace

            self._workspace = Workspace.from_env()
        return self._workspace

    def __repr__(self) -> str:
        return f"Experiment({self._workspace!r}, {self.name!r})"

    @property
    def _store(self) -> Any:
        from .store import RunStore

        return RunStore(self.workspace)

    def submit(self, config: Any, tags: dict[str, Any] | None = None) -> Run:
        """Capture the source directory, record the run and start it; returns at once.

        ``config`` is a ``ScriptRunConfig`` (or anything with ``to_script_run_config()``,
        like an ``Estimator``). The run executes as a Prefect flow run, in a background
        process or on a worker of its compute target's work pool; follow it with
        ``run.wait_for_completion(show_output=True)``.
        """
        from .submission import submit

        return Run(self, submit(self.workspace, self.name, config, tags))

    def get_runs(self, include_children: bool = False, tags: dict[str, str] | None = None,
                 status: str | None = None) -> list[Run]:
        """Runs of this experiment, newest first."""
        runs = []
        for record in self._store.records(self.name):
            if record.parent_run_id and not include_children:
                continue
            if status and record.status != status:
                continue
            run = Run(self, record.run_id)
            if tags and any(run.get_tags().get(k) != v for k, v in tags.items()):
                continue
            runs.append(run)
        return runs

    @classmethod
    def list(cls, workspace: Any) -> list[Experiment]:
        from .store import RunStore

        return [cls(workspace, name) for name in RunStore(workspace).experiments()]

    def start_logging(self, display_name: str | None = None) -> Run:
        """An interactive run (e.g. in a notebook): log to it, then ``run.complete()``."""
        from .records import RunStatus

        record = self._store.create(self.name, display_name=display_name,
                                    status=RunStatus.RUNNING)
        return Run(self, record.run_id)


class Run:
    """A run of an experiment: logged to from inside its script, inspected from anywhere.

    Example:
        ```python
        run = experiment.submit(config)
        run.wait_for_completion(show_output=True)
        print(run.get_metrics()["accuracy"])
        run.download_file("outputs/model.pkl", "model.pkl")
        ```
    """

    def __init__(self, experiment: Experiment, run_id: str, *, _stage: Path | None = None,
                 _child: bool = False, _offline: bool = False):
        self.experiment = experiment
        self.id = run_id
        self._stage = _stage  # inside a script: the run's folder in the stage
        self._child = _child  # a child run started inside the script
        self._offline = _offline
        self._writer: RunWriter | None = None

    def __repr__(self) -> str:
        return f"Run(experiment={self.experiment.name!r}, id={self.id!r})"

    @property
    def _dir(self) -> str:
        return run_dir(self.experiment.name, self.id)

    @property
    def _store(self) -> Any:
        return self.experiment._store

    # -- inside the script ------------------------------------------------------------------

    @classmethod
    def get_context(cls) -> Run:
        """The run this script belongs to; an offline run when started by hand. Never raises."""
        ctx = current()
        if ctx is None:
            return cls._offline_run()
        return cls(Experiment(None, ctx.experiment), ctx.run_id, _stage=ctx.folder())

    @classmethod
    def _offline_run(cls) -> Run:
        """A run in a workspace of its own, ``./.mltrain-offline`` (else a temporary folder)."""
        from .records import RunStatus
        from .store import RunStore
        from .workspace import Workspace

        try:
            ws = Workspace(Path.cwd() / OFFLINE_DIR)
            record = RunStore(ws).create("offline", status=RunStatus.RUNNING)
        except OSError:
            ws = Workspace(tempfile.mkdtemp(prefix="mltrain-offline-"))
            record = RunStore(ws).create("offline", status=RunStatus.RUNNING)
        print(f"prefect-mltrain: offline run, logging to {ws.path(run_dir('offline', record.run_id))}",
              file=sys.stderr)
        return cls(Experiment(ws, "offline"), record.run_id, _offline=True)

    @property
    def is_offline(self) -> bool:
        return self._offline

    def _write(self) -> RunWriter:
        if self._writer is None:
            if self._stage is not None:
                self._writer = RunWriter(self._stage, rank())
            else:  # a handle outside any script: each file goes to the workspace at once
                ws, folder = self.experiment.workspace, self._dir
                self._writer = RunWriter(Path(tempfile.mkdtemp(prefix="mltrain-run-")), rank(),
                                         publish=lambda path, rel: ws.put_files(
                                             [(str(path), f"{folder}/{rel}")]))
        return self._writer

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Log a value; logging the same name again makes a series."""
        check_name(name, "metric name")
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        self._write().event({"type": "metric", "kind": "scalar", "name": name, "value": value,
                             "step": step, "description": description})

    def log_list(self, name: str, value: Iterable[Any], description: str = "") -> None:
        check_name(name, "metric name")
        self._write().event({"type": "metric", "kind": "list", "name": name,
                             "value": list(value), "description": description})

    def log_row(self, name: str, description: str = "", **kwargs: Any) -> None:
        """Add a row to a table metric: ``run.log_row("curve", epoch=1, loss=0.3)``."""
        check_name(name, "metric name")
        self._write().event({"type": "metric", "kind": "row", "name": name, "value": kwargs,
                             "description": description})

    def log_image(self, name: str, path: str | os.PathLike | None = None, plot: Any = None,
                  description: str = "") -> None:
        """Log an image file, or a matplotlib figure (``plot=fig``), under ``images/``."""
        check_name(name, "metric name")
        if (path is None) == (plot is None):
            raise ValueError("log_image needs exactly one of path= or plot=")
        rel = self._write().image(name, path, plot)
        self._write().event({"type": "metric", "kind": "image", "name": name, "value": rel,
                             "description": description})

    def tag(self, key: str, value: Any = "") -> None:
        check_name(key, "tag key")
        self._write().event({"type": "tag", "key": key, "value": str(value)})

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.tag(key, value)

    def add_properties(self, properties: dict[str, Any]) -> None:
        for key, value in properties.items():
            check_name(key, "property name")
            self._write().event({"type": "property", "key": key, "value": str(value)})

    def upload_file(self, name: str, path_or_stream: str | os.PathLike) -> None:
        """Store a file with the run under ``name`` (e.g. ``outputs/model.pkl``)."""
        name = safe_relpath(name)
        if PurePosixPath(name).parts[0] in RESERVED_NAMES:
            raise UnsafePathError(f"{name!r} is reserved for the run record: choose another name")
        self._write().copy(name, path_or_stream)

    def child_run(self, name: str | None = None, run_id: str | None = None) -> Run:
        """Start a child run; its metrics and files are kept separately."""
        child_id = run_id or new_run_id(self.experiment.name)
        if self._stage is not None:  # inside the script: the runner records it
            child = Run(self.experiment, child_id, _stage=self._stage.parent / child_id,
                        _child=True)
            child._write().event({"type": "run", "status": "Running", "parent_run_id": self.id,
                                  "display_name": name})
            return child
        from .records import RunStatus

        self._store.create(self.experiment.name, run_id=child_id, parent_run_id=self.id,
                           display_name=name, status=RunStatus.RUNNING)
        return Run(self.experiment, child_id, _offline=self._offline)

    def create_children(self, count: int) -> list[Run]:
        return [self.child_run() for _ in range(count)]

    def complete(self) -> None:
        self._finish("Completed")

    def fail(self, error: str | BaseException | None = None) -> None:
        self._finish("Failed", str(error) if error else None)

    def _finish(self, status: str, error: str | None = None) -> None:
        if self._stage is not None:  # a submitted run is ended by its runner
            if self._child:
                self._write().event({"type": "run", "status": status, "error": error})
        else:
            self._store.move(self.experiment.name, self.id, status, error=error)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def get(cls, workspace: Any, run_id: str) -> Run:
        """Find a run by id in any experiment of the workspace."""
        from .store import RunStore

        return cls(Experiment(workspace, RunStore(workspace).experiment_of(run_id)), run_id)

    def _record(self) -> Any:
        return self._store.read(self.experiment.name, self.id)

    def get_status(self) -> str:
        return self._record().status.value

    @property
    def status(self) -> str:
        return self.get_status()

    def get_details(self) -> dict[str, Any]:
        """The run record: status, timings, exit code, error, log tail, snapshot, flow run."""
        from .prefect_api import flow_run_url

        details = self._record().model_dump(mode="json")
        details["tags"] = self._tags(details["tags"])
        if details["flow_run_id"]:  # where the UI is now, if it moved since the run
            details["flow_run_url"] = flow_run_url(details["flow_run_id"]) \
                or details["flow_run_url"]
        if details.get("started_at") and details.get("ended_at"):
            details["duration_seconds"] = details["ended_at"] - details["started_at"]
        return details

    def _events(self) -> list[dict[str, Any]]:
        return self._store.events(self.experiment.name, self.id)

    def get_metrics(self, name: str | None = None) -> dict[str, Any]:
        """Logged metrics: a single value, a list for a series, a dict of columns for rows."""
        return event_lines.metrics(self._events(), name)

    def get_tags(self) -> dict[str, str]:
        return self._tags(self._record().tags)

    def _tags(self, submitted: dict[str, str]) -> dict[str, str]:
        """Tags given at submit, then every ``tag()`` since, in the order they were set."""
        logged = sorted(self._events(), key=lambda e: e.get("time", 0))
        return {**submitted, **event_lines.tags(logged)}

    def get_properties(self) -> dict[str, str]:
        logged = sorted(self._events(), key=lambda e: e.get("time", 0))
        return {**self._record().properties, **event_lines.properties(logged)}

    def get_file_names(self) -> list[str]:
        """Files stored with the run (``outputs/``, ``logs/``, uploads, images)."""
        return self._store.file_names(self.experiment.name, self.id)

    def download_file(self, name: str, output_file_path: str | os.PathLike | None = None) -> Path:
        """Download one stored file; the name must stay inside the run (no ``../``)."""
        name = safe_relpath(name)
        names = self.get_file_names()
        if name not in names:
            raise FileNotFoundError(f"run {self.id} has no file {name!r}; it has: "
                                    f"{', '.join(names[:20]) or 'no files'}")
        target = Path(output_file_path or PurePosixPath(name).name)
        if target.is_dir():
            target = target / PurePosixPath(name).name
        self.experiment.workspace.get_file(f"{self._dir}/{name}", target)
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
            for name in names:  # every listed name is a plain path inside the run
                target = out / (name if append_prefix else name[len(prefix):].lstrip("/"))
                self.experiment.workspace.get_file(f"{self._dir}/{name}", target)
                paths.append(target)
                advance(1)
        return paths

    def get_children(self) -> list[Run]:
        return [Run(self.experiment, r.run_id) for r in self._store.records(self.experiment.name)
                if r.parent_run_id == self.id]

    # -- control ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the run to stop; works from any process that can reach the workspace.

        A run that is running stops at its runner's next look (its script and every rank
        or container it started are stopped, its outputs kept); a run that has not started
        ends Canceled at once.
        """
        from .watch import cancel

        cancel(self._store, self.experiment.name, self.id)

    def wait_for_completion(self, show_output: bool = False, raise_on_error: bool = True,
                            poll_interval: float = 0.25, timeout: float | None = None
                            ) -> dict[str, Any]:
        """Block until the run ends; with ``show_output`` stream its output as it comes."""
        from .watch import follow_run

        record = follow_run(self._store, self.experiment.name, self.id, show_output=show_output,
                            poll_interval=poll_interval, timeout=timeout)
        if raise_on_error and record.status == "Failed":
            raise RunFailedError(f"run {self.id} failed: {record.error}\n{record.log_tail or ''}")
        return self.get_details()

    def resubmit(self) -> Run:
        """Submit the same snapshot and configuration again as a new run."""
        from .submission import resubmit

        return Run(self.experiment, resubmit(self._store, self._record(), self.get_tags()))
