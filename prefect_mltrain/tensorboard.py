"""TensorBoard over runs' ``logs/``, running or finished, on any store; and a run's logged
metrics exported as TensorBoard event files (Azure ML v1's ``azureml.tensorboard``).

TensorBoard reads a local folder, so ``Tensorboard`` keeps a mirror of each run's
``logs/`` under ``$MLTRAIN_HOME/tensorboard``: one subfolder per run
(``<experiment>/<display name or run id>``), refreshed every ``sync_interval`` seconds —
new files whole, grown files by their new bytes only (event files are only appended to).
A running run's runner stores its ``logs/`` every ``sync_interval_seconds`` of the
workspace, so what the script writes reaches TensorBoard within a few seconds, from a
local folder, S3 or any fsspec store alike. Needs ``pip install 'prefect-mltrain[tensorboard]'``.

Example:
    ```python
    from prefect_mltrain.tensorboard import Tensorboard, export_to_tensorboard
    tb = Tensorboard([run1, run2], port=6006)
    print(tb.start())        # http://127.0.0.1:6006/
    tb.stop()
    export_to_tensorboard(run, "tb-logs")
    ```
"""

from __future__ import annotations

import atexit
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .home import mltrain_home
from .layout import LOGS, run_dir
from .run import HyperDriveRun, Run

START_TIMEOUT_SECONDS = 60.0
EXTRA = "pip install 'prefect-mltrain[tensorboard]'"


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigurationError(f"TensorBoard is not installed: {EXTRA}") from None


def _expand(runs: list[Run]) -> list[Run]:
    """The runs to show: a sweep stands for its trials (and itself, for its own logs)."""
    out: list[Run] = []
    for run in runs:
        out.append(run)
        if isinstance(run, HyperDriveRun):
            out.extend(run.get_children())
    return out


def _folder_name(run: Run) -> str:
    name = run.display_name or run.id
    return f"{run.experiment.name}/{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)}"


class Tensorboard:
    """A TensorBoard process over the ``logs/`` of ``runs`` (a sweep: all its trials).

    Args:
        runs: Runs to show side by side; running ones are followed as they write.
        local_root: Where the mirror goes (default: a new folder under ``$MLTRAIN_HOME``).
        port: TensorBoard's port on 127.0.0.1.
        sync_interval: Seconds between refreshes of the mirror.
    """

    def __init__(self, runs: list[Run] | Run, local_root: str | None = None, port: int = 6006,
                 sync_interval: float = 2.0):
        self.runs = _expand(runs if isinstance(runs, list | tuple) else [runs])
        self.port, self.sync_interval = port, sync_interval
        self._own_root = local_root is None
        self.local_root = Path(local_root) if local_root else None
        self._sizes: dict[tuple[str, str], int] = {}
        self._process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, start_browser: bool = False) -> str:
        """Mirror the runs' logs, start TensorBoard on them and return its URL once it
        answers. ``start_browser`` opens it in the default browser."""
        _require_tensorboard()
        if self._process is not None:
            return self.url
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError:
                raise ConfigurationError(
                    f"port {self.port} is in use: pass another, Tensorboard(runs, port=6007) "
                    f"(or mltrain tensorboard ... --port 6007)") from None
        if self.local_root is None:
            base = mltrain_home() / "tensorboard"
            base.mkdir(parents=True, exist_ok=True)
            self.local_root = Path(tempfile.mkdtemp(prefix="tb-", dir=base))
        self.local_root.mkdir(parents=True, exist_ok=True)
        self.sync()
        log = open(self.local_root.parent / f"{self.local_root.name}.log", "ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.local_root),
             "--host", "127.0.0.1", "--port", str(self.port), "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        atexit.register(self.stop)
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="mltrain-tensorboard-sync")
        self._thread.start()
        self._wait_until_up()
        if start_browser:
            import webbrowser

            webbrowser.open(self.url)
        return self.url

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        tail = self._log_tail()
        self.stop()
        raise ConfigurationError(f"TensorBoard did not start on port {self.port} within "
                                 f"{START_TIMEOUT_SECONDS:g} s: {tail}")

    def _log_tail(self) -> str:
        try:
            text = (self.local_root.parent / f"{self.local_root.name}.log").read_text()
            return text.strip()[-1500:] or "no output"
        except OSError:
            return "no output"

    def _loop(self) -> None:
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync()
            except Exception:  # a store that does not answer now may answer next time
                continue

    def sync(self) -> int:
        """Bring the mirror up to date; the bytes fetched."""
        fetched = 0
        for run in self.runs:
            ws = run.experiment.workspace
            folder = f"{run_dir(run.experiment.name, run.id)}/{LOGS}"
            target = self.local_root / _folder_name(run)
            for name, size in ws.find(folder).items():
                key, known = (run.id, name), self._sizes.get((run.id, name), -1)
                if size == known:
                    continue
                path = target / name
                path.parent.mkdir(parents=True, exist_ok=True)
                source = ws.path(folder, name)
                if 0 <= known < size and path.exists():  # appended to: fetch the new bytes
                    data = ws.fs.cat_file(source, start=known, end=size)
                    with open(path, "ab") as f:
                        f.write(data)
                else:
                    data = ws.fs.cat_file(source)
                    path.write_bytes(data)
                fetched += len(data)
                self._sizes[key] = known + len(data) if 0 <= known < size else len(data)
        return fetched

    def stop(self) -> None:
        """Stop TensorBoard and the mirror (and remove a mirror this object made)."""
        self._stop.set()
        if self._process is not None:
            from .compute.process import kill_process_group

            if self._process.poll() is None:
                kill_process_group(self._process.pid, grace=5)
            self._process.wait(timeout=10)
            self._process = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._own_root and self.local_root is not None:
            shutil.rmtree(self.local_root, ignore_errors=True)
            (self.local_root.parent / f"{self.local_root.name}.log").unlink(missing_ok=True)
            self.local_root = None


def export_to_tensorboard(run_data: Run | list[Run], logsdir: str, logger: Any = None,
                          recursive: bool = True) -> list[Path]:
    """Write the logged metrics of ``run_data`` (and, ``recursive``, of its child runs) as
    TensorBoard event files under ``logsdir/<run id>``; returns the folders.

    Every numeric metric becomes a scalar: a series by its logged ``step`` (else its
    position), a single value at step 0; a list (``log_list``) by position. Each run's
    tags and a sweep trial's hyperparameters go to TensorBoard's HParams view with the
    run's final scalar values as its metrics.
    """
    _require_tensorboard()
    runs = run_data if isinstance(run_data, list | tuple) else [run_data]
    if recursive:
        runs = [r for run in runs for r in [run, *_descendants(run)]]
    folders, tags_seen = [], set()
    for run in runs:
        folder = Path(logsdir) / re.sub(r"[^A-Za-z0-9_.-]+", "_", run.id)
        series = _scalar_series(run._events())
        hparams = {**{f"tag.{k}": v for k, v in run.get_tags().items()},
                   **_hyperparameters(run)}
        _write_events(folder, series, hparams, run.id)
        tags_seen |= set(series)
        folders.append(folder)
        if logger is not None:
            logger.info("exported %d metrics of %s to %s", len(series), run.id, folder)
    return folders


def _descendants(run: Run) -> list[Run]:
    return [Run(run.experiment, r.run_id)
            for r in run._store.descendants(run.experiment.name, run.id)]


def _hyperparameters(run: Run) -> dict[str, Any]:
    import json

    raw = run.get_properties().get("hyperparameters")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _scalar_series(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, float]]]:
    """metric name -> [(step, value, wall time)] of its numeric values."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    metrics = sorted((e for e in events if e.get("type") == "metric"),
                     key=lambda e: (e.get("time", 0), e.get("rank", 0)))
    for event in metrics:
        if event.get("rank", 0) != 0:
            continue
        values = event.get("value")
        kind = event.get("kind")
        if kind == "list" and isinstance(values, list):
            items = list(enumerate(values))
        elif kind in (None, "scalar"):
            items = [(event.get("step"), values)]
        else:
            continue  # rows, tables and documents are no scalars
        series = out.setdefault(event["name"], [])
        for step, value in items:
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            series.append((len(series) if step is None else int(step), float(value),
                           float(event.get("time", time.time()))))
    return {name: s for name, s in out.items() if s}


def _write_events(folder: Path, series: dict[str, list[tuple[int, float, float]]],
                  hparams: dict[str, Any], run_id: str) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(folder))
    try:
        for name, points in series.items():
            for step, value, wall in points:
                summary = summary_pb2.Summary(
                    value=[summary_pb2.Summary.Value(tag=name, simple_value=value)])
                writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
        if hparams:
            shown = {k: v if isinstance(v, int | float | str | bool) else str(v)
                     for k, v in hparams.items()}
            writer.add_event(event_pb2.Event(wall_time=time.time(), summary=summary_v2.hparams_pb(
                shown, trial_id=run_id)))
    finally:
        writer.close()
