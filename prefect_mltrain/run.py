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

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from . import events as event_lines
from .context import RunWriter, current, rank
from .errors import ImmutablePropertyError, RunContextError, RunFailedError, UnsafePathError
from .layout import (
    EVENTS,
    LOGS,
    RESERVED_NAMES,
    check_metric_name,
    check_name,
    new_run_id,
    run_dir,
    safe_relpath,
)

if TYPE_CHECKING:
    from .store import Entry

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

    def submit(self, config: Any, tags: dict[str, Any] | None = None,
               properties: dict[str, Any] | None = None) -> Run:
        """Capture the source directory, record the run and start it; returns at once.

        ``config`` is a ``ScriptRunConfig`` (or anything with ``to_script_run_config()``,
        like an ``Estimator``). ``tags`` may change later; ``properties`` never do. The run
        executes as a Prefect flow run, in a background process or on a worker of its
        compute target's work pool; follow it with ``run.wait_for_completion(show_output=True)``.
        """
        from .hyperdrive.config import HyperDriveConfig
        from .submission import submit

        kind = HyperDriveRun if isinstance(config, HyperDriveConfig) else Run
        return kind(self, submit(self.workspace, self.name, config, tags, properties))

    def get_runs(self, include_children: bool = False, tags: str | dict[str, str] | None = None,
                 properties: str | dict[str, str] | None = None, status: str | None = None
                 ) -> list[Run]:
        """Runs of this experiment, newest first; with ``include_children`` their children
        too. As in v1, ``tags`` and ``properties`` are a name the run must have, or names
        with the values it must have. Found in the experiment's index: no record is read
        unless a filter needs it."""
        return _matching(self, self._store.entries(self.name, every=include_children),
                         tags, properties, status)

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

    As in Azure ML v1: metric names are any non-empty string; tags change, properties
    never do once set (the same value again is fine); ``get_details()`` has Azure's
    camelCase keys (``runId``, ``target``, ``status``, ``startTimeUtc``, ``endTimeUtc``,
    ``properties``, ``inputDatasets``, ``runDefinition``, ``logFiles``, ``submittedBy``)
    beside the record's own. A run submitted from a git work tree has its provenance in
    the properties Azure ML wrote: ``azureml.git.repository_uri``, ``azureml.git.branch``,
    ``azureml.git.commit``, ``azureml.git.dirty`` (``"True"``/``"False"``) and MLflow's
    ``mlflow.source.git.repoURL``, ``.branch``, ``.commit``.

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
    def get_context(cls, allow_offline: bool = True, **kwargs: Any) -> Run:
        """The run this script belongs to; started by hand, an offline run logging to
        ``./.mltrain-offline`` — or, with ``allow_offline=False``, a ``RunContextError``."""
        ctx = current()
        if ctx is None:
            if not allow_offline:
                raise RunContextError(
                    "this process is not part of a submitted run (MLTRAIN_RUN_ID is not "
                    "set): submit the script with Experiment(...).submit(config), or call "
                    "Run.get_context(allow_offline=True) to log to an offline run")
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

    @property
    def input_datasets(self) -> dict[str, str]:
        """Inside a script: the local path of each named input (``as_named_input(name)``);
        a tabular dataset's path also reads as a table (``.to_pandas_dataframe()``)."""
        if self._stage is None:
            return {}
        paths = json.loads(os.environ.get("MLTRAIN_INPUT_DATASETS") or "{}")
        tables = json.loads(os.environ.get("MLTRAIN_INPUT_TABLES") or "{}")
        if tables:
            from .data.dataset import LocalTabularDataset

            paths.update({k: LocalTabularDataset(paths[k], r) for k, r in tables.items()})
        return paths

    @property
    def output_datasets(self) -> dict[str, str]:
        """Inside a script: the local folder of each ``OutputFileDatasetConfig``, by name."""
        return json.loads(os.environ.get("MLTRAIN_OUTPUT_DATASETS") or "{}") \
            if self._stage is not None else {}

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
        check_metric_name(name)
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        self._write().event({"type": "metric", "kind": "scalar", "name": name, "value": value,
                             "step": step, "description": description})

    def log_list(self, name: str, value: Iterable[Any], description: str = "") -> None:
        check_metric_name(name)
        self._write().event({"type": "metric", "kind": "list", "name": name,
                             "value": list(value), "description": description})

    def log_row(self, name: str, description: str = "", **kwargs: Any) -> None:
        """Add a row to a table metric: ``run.log_row("curve", epoch=1, loss=0.3)``."""
        check_metric_name(name)
        self._write().event({"type": "metric", "kind": "row", "name": name, "value": kwargs,
                             "description": description})

    def log_image(self, name: str, path: str | os.PathLike | None = None, plot: Any = None,
                  description: str = "") -> None:
        """Log an image file, or a matplotlib figure (``plot=fig``), under ``images/`` (in a
        file named after ``name``, encoded so that any name is one safe file name)."""
        check_metric_name(name)
        if (path is None) == (plot is None):
            raise ValueError("log_image needs exactly one of path= or plot=")
        rel = self._write().image(name, path, plot)
        self._write().event({"type": "metric", "kind": "image", "name": name, "value": rel,
                             "description": description})

    def log_table(self, name: str, value: dict[str, Iterable[Any]], description: str = ""
                  ) -> None:
        """Log a table as a dict of columns: ``run.log_table("curve", {"epoch": [1, 2],
        "loss": [0.5, 0.3]})``; more tables or rows under the same name add rows."""
        check_metric_name(name)
        if not isinstance(value, dict) or any(
                isinstance(col, str | bytes | dict) or not hasattr(col, "__iter__")
                for col in value.values()):
            raise ValueError(f"log_table({name!r}) takes a dict of columns, like "
                             f"{{'epoch': [1, 2], 'loss': [0.5, 0.3]}}, not {value!r:.80}")
        self._write().event({"type": "metric", "kind": "table", "name": name, "value": {
            str(col): [v.tolist() if hasattr(v, "tolist") else v for v in vals]
            for col, vals in value.items()}, "description": description})

    def log_confusion_matrix(self, name: str, value: dict[str, Any] | str,
                             description: str = "") -> None:
        """Log a confusion matrix: ``{"schema_type": "confusion_matrix", "schema_version":
        "1.0.0", "data": {"class_labels": [...], "matrix": [[...], ...]}}`` (or its JSON)."""
        self._log_document("confusion_matrix", name, value, description)

    def log_accuracy_table(self, name: str, value: dict[str, Any] | str,
                           description: str = "") -> None:
        """Log an accuracy table: ``{"schema_type": "accuracy_table", "schema_version":
        "1.0.1", "data": {"probability_tables": ..., "percentile_tables": ...,
        "probability_thresholds": ..., "percentile_thresholds": ..., "class_labels": ...}}``."""
        self._log_document("accuracy_table", name, value, description)

    def log_residuals(self, name: str, value: dict[str, Any] | str,
                      description: str = "") -> None:
        """Log residuals: ``{"schema_type": "residuals", "schema_version": "1.0.0",
        "data": {"bin_edges": [...], "bin_counts": [...]}}``."""
        self._log_document("residuals", name, value, description)

    def log_predictions(self, name: str, value: dict[str, Any] | str,
                        description: str = "") -> None:
        """Log predictions: ``{"schema_type": "predictions", "schema_version": "1.0.0",
        "data": {"bin_averages": [...], "bin_errors": [...], "bin_counts": [...],
        "bin_edges": [...]}}``."""
        self._log_document("predictions", name, value, description)

    def _log_document(self, kind: str, name: str, value: dict[str, Any] | str,
                      description: str) -> None:
        """One JSON document with Azure's ``schema_type``; ``get_metrics()`` returns it."""
        check_metric_name(name)
        example = f'{{"schema_type": "{kind}", "schema_version": "1.0.0", "data": {{...}}}}'
        if isinstance(value, str | bytes):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"log_{kind}({name!r}) got a string that is not JSON: pass "
                                 f"a dict like {example}") from None
        if not (isinstance(value, dict) and value.get("schema_type") == kind
                and isinstance(value.get("data"), dict)):
            raise ValueError(f"log_{kind}({name!r}) takes a dict like {example}, not "
                             f"{value!r:.80}")
        self._write().event({"type": "metric", "kind": kind, "name": name,
                             "value": json.loads(json.dumps(value, default=event_lines._jsonable)),
                             "description": description})

    def tag(self, key: str, value: Any = "") -> None:
        check_name(key, "tag key")
        self._write().event({"type": "tag", "key": key, "value": str(value)})

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.tag(key, value)

    def remove_tags(self, tags: Iterable[str]) -> None:
        """Remove tags (given at submit or set since); a tag the run lacks is no error."""
        for key in [tags] if isinstance(tags, str) else tags:
            self._write().event({"type": "tag", "key": key, "value": "", "removed": True})

    def add_properties(self, properties: dict[str, Any]) -> None:
        """Add properties, from the script or from anywhere. A property never changes once
        set: giving a key it has another value is an ``ImmutablePropertyError``."""
        now = self.get_properties()
        for key, value in properties.items():
            check_metric_name(key, "property name")
            if key in now and now[key] != str(value):
                raise ImmutablePropertyError(
                    f"property {key!r} of run {self.id} is {now[key]!r} already: properties "
                    "never change once set; use a tag (run.tag(key, value)) for a value that "
                    "changes")
        for key, value in properties.items():
            self._write().event({"type": "property", "key": key, "value": str(value)})

    def upload_file(self, name: str, path_or_stream: str | os.PathLike | Any) -> None:
        """Store a file, or a binary stream, with the run under ``name`` (e.g.
        ``outputs/model.pkl``); a handle outside a script stores it in the workspace before
        this returns."""
        name = safe_relpath(name)
        if PurePosixPath(name).parts[0] in RESERVED_NAMES:
            raise UnsafePathError(f"{name!r} is reserved for the run record: choose another name")
        self._write().copy(name, path_or_stream)

    def upload_folder(self, name: str, path: str | os.PathLike) -> None:
        """Store every file under the folder ``path`` with the run, under ``name/``."""
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"upload_folder({name!r}, {os.fspath(path)!r}): no such "
                                    "folder; pass the path of a folder to store")
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.upload_file(f"{name.rstrip('/')}/{file.relative_to(folder).as_posix()}", file)

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
            ended = self._store.move(self.experiment.name, self.id, status, error=error)
            self._store.end_children(self.experiment.name, self.id,
                                     canceled=ended.status.value == "Canceled")
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def get(cls, workspace: Any, run_id: str) -> Run:
        """Find a run by id in any experiment of the workspace (a sweep: a ``HyperDriveRun``)."""
        from .store import Entry, RunStore

        store = RunStore(workspace)
        experiment = Experiment(workspace, store.experiment_of(run_id))
        return _handle(experiment, Entry.of(store.read(experiment.name, run_id)))

    def _record(self) -> Any:
        return self._store.read(self.experiment.name, self.id)

    def get_status(self) -> str:
        return self._record().status.value

    @property
    def status(self) -> str:
        return self.get_status()

    def get_details(self) -> dict[str, Any]:
        """The run record (status, timings, exit code, error, log tail, snapshot, flow run),
        with Azure ML's camelCase keys beside it (see the class docstring)."""
        record, events = self._record(), self._events()  # each read once
        details = record.model_dump(mode="json")
        details["tags"] = event_lines.tags(events, record.tags)
        details["flow_run_url"] = self._portal_url(record)
        if details.get("started_at") and details.get("ended_at"):
            details["duration_seconds"] = details["ended_at"] - details["started_at"]
        details.update(self._azure_details(
            record, {**event_lines.properties(events), **record.properties}))
        return details

    def _azure_details(self, record: Any, properties: dict[str, str]) -> dict[str, Any]:
        target = record.compute_target
        if isinstance(target, dict):
            target = target.get("name") or target.get("type")
        ws, files = self.experiment.workspace, self.get_file_names()
        local = ws.protocol in ("file", "local")
        out = {"runId": self.id, "target": target or "local", "status": record.status.value,
               "properties": properties, **_v1_lineage(record.lineage),
               "runDefinition": record.config.model_dump(mode="json") if record.config else {},
               "logFiles": {name: ws.path(f"{self._dir}/{name}") if local
                            else ws.fs.unstrip_protocol(ws.path(f"{self._dir}/{name}"))
                            for name in files if name.startswith(f"{LOGS}/")},
               "submittedBy": record.submitted_by}
        if record.started_at:
            out["startTimeUtc"] = _utc(record.started_at)
        if record.ended_at:  # as in Azure: absent while the run is in progress
            out["endTimeUtc"] = _utc(record.ended_at)
        return out

    def _portal_url(self, record: Any) -> str | None:
        if record.flow_run_id:  # where the UI is now, if it moved since the run
            from .prefect_api import flow_run_url

            return flow_run_url(record.flow_run_id) or record.flow_run_url
        return record.flow_run_url

    def get_portal_url(self) -> str | None:
        """The run's flow run in the Prefect UI (None for a run without a flow run, like an
        interactive one)."""
        return self._portal_url(self._record())

    @property
    def display_name(self) -> str | None:
        if self._stage is not None and (named := event_lines.latest(self._events(),
                                                                    "display_name")):
            return named
        return self._record().display_name

    @display_name.setter
    def display_name(self, value: str) -> None:
        """Rename the run (kept in its record; from inside a script, once its runner syncs)."""
        check_metric_name(value, "display name")
        if self._stage is not None:
            self._write().event({"type": "display_name", "value": value})
        else:
            self._store.set(self.experiment.name, self.id, display_name=value)

    @property
    def number(self) -> int | None:
        """The run's sequence number in its experiment (1 for its first run), as in Azure."""
        return self._record().number

    @property
    def properties(self) -> dict[str, str]:
        return self.get_properties()

    @property
    def tags(self) -> dict[str, str]:
        return self.get_tags()

    def get_environment(self) -> Any:
        """The ``Environment`` the run was submitted with (secret values left out), or None
        when it had none (the default environment, an interactive or child run)."""
        config = self._record().config
        return config.environment if config else None

    def get_snapshot_id(self) -> str | None:
        """The id of the run's source snapshot (None for interactive and child runs)."""
        return self._record().snapshot_id

    def restore_snapshot(self, snapshot_id: str | None = None,
                         path: str | os.PathLike | None = None) -> str:
        """Write a snapshot (the run's by default) as a ZIP file and return its path, as
        Azure does: ``path`` is the ZIP's path; a folder, or a path ending in ``/``, gets
        ``<snapshot_id>.zip`` inside it; default: that name in the current folder."""
        import shutil

        from .errors import SnapshotError
        from .snapshot import restore_snapshot

        snapshot_id = snapshot_id or self.get_snapshot_id()
        if not snapshot_id:
            raise SnapshotError(f"run {self.id} has no snapshot (an interactive or child "
                                "run): pass snapshot_id= of a submitted run")
        target = _target_path(path, f"{snapshot_id}.zip")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mltrain-snapshot-") as scratch:
            restore_snapshot(self.experiment.workspace, snapshot_id, Path(scratch) / "src")
            made = shutil.make_archive(str(Path(scratch) / "snapshot"), "zip",
                                       Path(scratch) / "src")
            shutil.move(made, target)
        return str(target)

    def _events(self) -> list[dict[str, Any]]:
        """What was logged: inside the script, from its stage (all of it so far, before
        the runner syncs); elsewhere, from the workspace."""
        if self._stage is not None:
            return event_lines.parse(p.read_bytes() for p in sorted(
                (self._stage / EVENTS).glob("*.jsonl")))
        return self._store.events(self.experiment.name, self.id)

    def get_metrics(self, name: str | None = None, recursive: bool = False,
                    run_type: str | None = None, populate: bool = False) -> dict[str, Any]:
        """Logged metrics: a single value, a list for a series, a dict of columns for rows
        and tables, the logged document for a confusion matrix and the like (Azure's
        ``populate=True``). ``recursive``: ``{run_id: metrics}`` of this run and every
        descendant, as in Azure."""
        if recursive:  # the experiment's index listed once, not once per child
            runs = [self, *(Run(self.experiment, r.run_id) for r in
                            self._store.descendants(self.experiment.name, self.id))]
            return {run.id: run.get_metrics(name) for run in runs}
        return event_lines.metrics(self._events(), name)

    def get_tags(self) -> dict[str, str]:
        return self._tags(self._record().tags)

    def _tags(self, submitted: dict[str, str]) -> dict[str, str]:
        """Tags given at submit, then every tag set or removed since, in order."""
        return event_lines.tags(self._events(), submitted)

    def get_properties(self) -> dict[str, str]:
        """Properties given at submit (git provenance among them), then those added since;
        the first value of a key stands."""
        return {**event_lines.properties(self._events()), **self._recorded_properties()}

    def _recorded_properties(self) -> dict[str, str]:
        try:
            return self._record().properties
        except Exception:
            if self._stage is None:
                raise
            return {}  # inside a script whose environment may not reach the workspace

    def get_file_names(self) -> list[str]:
        """Files stored with the run (``outputs/``, ``logs/``, uploads, images)."""
        return self._store.file_names(self.experiment.name, self.id)

    def download_file(self, name: str, output_file_path: str | os.PathLike | None = None) -> Path:
        """Download one stored file; the name must stay inside the run (no ``../``).

        As in Azure, ``output_file_path`` is the file's path (missing folders are made);
        an existing folder, or a path ending in ``/``, gets the file inside it under its
        own name; default: its name in the current folder.
        """
        name = safe_relpath(name)
        names = self.get_file_names()
        if name not in names:
            raise FileNotFoundError(f"run {self.id} has no file {name!r}; it has: "
                                    f"{', '.join(names[:20]) or 'no files'}")
        target = _target_path(output_file_path, PurePosixPath(name).name)
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

    def get_children(self, recursive: bool = False, tags: str | dict[str, str] | None = None,
                     properties: str | dict[str, str] | None = None, status: str | None = None
                     ) -> list[Run]:
        """This run's children, newest first (``recursive``: theirs too), with v1's filters
        (as ``Experiment.get_runs``); one listing of the index when none is given."""
        store, name = self._store, self.experiment.name
        entries = store.descendants(name, self.id) if recursive else store.entries(name, self.id)
        return _matching(self.experiment, entries, tags, properties, status)

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


class HyperDriveRun(Run):
    """A hyperparameter sweep: its trials are its child runs (Azure ML v1's ``HyperDriveRun``).

    Example:
        ```python
        hd_run = experiment.submit(hyperdrive_config)
        hd_run.wait_for_completion(show_output=True)     # a live table of the trials
        best = hd_run.get_best_run_by_primary_metric()
        print(best.get_metrics(), hd_run.get_hyperparameters()[best.id])
        ```
    """

    def _spec(self) -> Any:
        return self._record().hyperdrive

    def _trials(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every trial of this sweep (or of ``run_id``): id, hyperparameters, best primary
        metric, status, in trial order."""
        from .hyperdrive.controller import DRAW, primary_values, trial_parameters

        spec, sweep_id = self._spec(), run_id or self.id
        store = self._store
        experiment = store.experiment_of(sweep_id) if run_id else self.experiment.name
        best = max if spec.maximize else min
        out = []
        for record in store.children(experiment, sweep_id):
            if DRAW not in record.properties:
                continue
            values = primary_values(store.events(experiment, record.run_id),
                                    spec.primary_metric_name)
            out.append({"run_id": record.run_id, "hyperparameters": trial_parameters(record),
                        "best_primary_metric": best(values) if values else None,
                        "status": record.status.value, "experiment": experiment,
                        "index": int(record.run_id.rsplit("_", 1)[1])})
        return sorted(out, key=lambda t: t["index"])

    def get_children_sorted_by_primary_metric(self, top: int = 0, reverse: bool = False,
                                              discard_no_metric: bool = False
                                              ) -> list[dict[str, Any]]:
        """Trials best first by their best primary metric (``reverse``: worst first);
        trials without it follow, unless ``discard_no_metric``; ``top``: at most that many."""
        maximize = self._spec().maximize
        trials = self._trials()
        scored = sorted((t for t in trials if t["best_primary_metric"] is not None),
                        key=lambda t: t["best_primary_metric"], reverse=maximize != reverse)
        rest = [] if discard_no_metric else [t for t in trials if t["best_primary_metric"] is None]
        rows = [{k: t[k] for k in ("run_id", "hyperparameters", "best_primary_metric", "status")}
                for t in scored + rest]
        return rows[:top] if top else rows

    def get_best_run_by_primary_metric(self, include_failed: bool = True,
                                       include_canceled: bool = True,
                                       include_resume_from_runs: bool = True) -> Run | None:
        """The trial with the best primary metric (of the sweeps resumed from too), or None."""
        spec = self._spec()
        trials = self._trials()
        if include_resume_from_runs:
            for earlier in spec.resume_from:
                trials += self._trials(earlier)
        trials = [t for t in trials if t["best_primary_metric"] is not None
                  and (include_failed or t["status"] != "Failed")
                  and (include_canceled or t["status"] != "Canceled")]
        if not trials:
            return None
        pick = (max if spec.maximize else min)(trials, key=lambda t: t["best_primary_metric"])
        return Run(Experiment(self.experiment.workspace, pick["experiment"]), pick["run_id"])

    def get_hyperparameters(self) -> dict[str, dict[str, Any]]:
        """``{trial run id: its hyperparameters}``."""
        return {t["run_id"]: t["hyperparameters"] for t in self._trials()}

    def get_metrics(self, name: str | None = None, recursive: bool = False,
                    run_type: str | None = None, populate: bool = False) -> dict[str, Any]:
        """``{trial run id: its metrics}``, as Azure's ``HyperDriveRun.get_metrics``."""
        return {t["run_id"]: Run(self.experiment, t["run_id"]).get_metrics(name)
                for t in self._trials()}

    def cancel(self) -> None:
        """Cancel the sweep and every trial that has not ended."""
        from .watch import cancel

        super().cancel()
        for trial in self._trials():
            if trial["status"] not in ("Completed", "Failed", "Canceled"):
                cancel(self._store, self.experiment.name, trial["run_id"], "sweep canceled")

    def resume(self) -> HyperDriveRun:
        """Continue a sweep whose controller died (killed, or its machine restarted): the
        trials that ended stay, those still going are followed again, those recorded but
        never started start, and sampling goes on up to ``max_total_runs``."""
        from .submission import SWEEP_FLOW, start
        from .watch import Watcher

        store = self._store
        record = Watcher(store).settle(self._record())
        if not record.finished:
            raise RunFailedError(f"sweep {self.id} is {record.status.value} and its "
                                 "controller is alive: nothing to resume")
        record = store.reopen(self.experiment.name, self.id)
        start(store, record, {}, None, flow=SWEEP_FLOW)
        return self

    def wait_for_completion(self, show_output: bool = False, raise_on_error: bool = True,
                            poll_interval: float = 1.0, timeout: float | None = None
                            ) -> dict[str, Any]:
        """Block until the sweep ends; with ``show_output`` a live table of its trials."""
        if not show_output:
            return super().wait_for_completion(False, raise_on_error, poll_interval, timeout)
        from rich.console import Console
        from rich.live import Live

        from .hyperdrive.report import rich_table
        from .watch import LogFollower, Watcher

        store, console = self._store, Console()
        follower, watcher = LogFollower(store, self.experiment.name, self.id), Watcher(store)
        deadline = time.monotonic() + timeout if timeout else None
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                record = watcher.settle(self._record())
                for line in follower.new_lines():
                    live.console.print(line, markup=False, highlight=False, soft_wrap=True)
                state = self._store.ws.read_json(f"{self._dir}/sweep.json", None)
                if state:
                    live.update(rich_table(state), refresh=True)
                if record.finished:
                    break
                if deadline and time.monotonic() > deadline:
                    raise TimeoutError(f"sweep {self.id} still {record.status.value} "
                                       f"after {timeout} s")
                time.sleep(poll_interval)
        console.print(f"\nSweep {self.id}: {record.status.value}"
                      + (f" ({record.error})" if record.error else ""), markup=False)
        if raise_on_error and record.status == "Failed":
            raise RunFailedError(f"sweep {self.id} failed: {record.error}")
        return self.get_details()


def _handle(experiment: Experiment, entry: Entry) -> Run:
    """The handle for a listed run: a ``HyperDriveRun`` for a sweep, else a ``Run``."""
    return (HyperDriveRun if entry.sweep else Run)(experiment, entry.run_id)


READ_BATCH = 256  # records read at once while filtering runs


def _matching(experiment: Experiment, entries: list[Entry], tags: str | dict[str, str] | None,
              properties: str | dict[str, str] | None, status: str | None) -> list[Run]:
    """Handles of the listed runs that pass v1's filters (records read only for those)."""
    from .store import Entry

    if not (tags or properties or status):
        return [_handle(experiment, e) for e in entries]
    out = []
    for start in range(0, len(entries), READ_BATCH):
        batch = [e.run_id for e in entries[start:start + READ_BATCH]]
        for record in experiment._store.read_many(experiment.name, batch):
            if status and record.status != status:
                continue
            run = _handle(experiment, Entry.of(record))
            events = run._events() if tags or properties else []
            if tags and not _has(event_lines.tags(events, record.tags), tags):
                continue
            if properties and not _has({**event_lines.properties(events),
                                        **record.properties}, properties):
                continue
            out.append(run)
    return out


def _has(values: dict[str, str], wanted: str | dict[str, str]) -> bool:
    if isinstance(wanted, str):
        return wanted in values
    return all(values.get(k) == str(v) for k, v in wanted.items())


def _target_path(path: str | os.PathLike | None, default_name: str) -> Path:
    """Where a download goes: ``path`` itself, or ``default_name`` inside it when ``path``
    is an existing folder or ends with a separator (a folder that may not exist yet)."""
    if path is None:
        return Path(default_name)
    raw = os.fspath(path)
    if raw.endswith(("/", os.sep)) or Path(raw).is_dir():
        return Path(raw) / default_name
    return Path(raw)


def _utc(timestamp: float) -> str:
    """ISO 8601 in UTC, as Azure writes its times: ``2024-05-01T12:00:00.123456Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _v1_lineage(lineage: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """The data a run read and wrote, in the shape of v1's ``inputDatasets`` and
    ``outputDatasets`` (with the datastore paths, versions and manifest hashes beside)."""
    lineage = lineage or {}
    inputs = [{"dataset": {"name": i.get("dataset"), "version": i.get("version"),
                           "datastore": i.get("datastore"), "path": i.get("path") or
                           i.get("paths"), "manifest_hash": i.get("manifest_hash")},
               "consumptionDetails": {"type": "RunInput", "inputName": i["name"],
                                      "mechanism": "Mount" if i.get("mounted") else "Download"},
               "files": i.get("files"), "bytes": i.get("bytes")}
              for i in lineage.get("inputs", [])]
    outputs = [{"dataset": {**({"name": o["registered"]["name"],
                                "version": o["registered"]["version"]}
                               if o.get("registered") else {}),
                            "datastore": o.get("datastore"), "path": o.get("path")},
                "outputType": "RunOutput", "outputDetails": {"outputName": o["name"]},
                "files": o.get("files"), "bytes": o.get("bytes")}
               for o in lineage.get("outputs", [])]
    return {"inputDatasets": inputs, "outputDatasets": outputs}
