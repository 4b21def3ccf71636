"""The ``hyperdrive`` flow: one flow run per sweep, its trials as subflow runs.

``Experiment.submit(HyperDriveConfig(...))`` records the sweep and starts this flow in a
runner on this machine; a deployment of it (``flows/sweep.py``) starts sweeps from the
Prefect UI with a form. Running it again on a sweep whose controller died (its flow run
retried from the UI, or ``HyperDriveRun.resume()``) continues that sweep.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.states import Cancelled, Failed

from ..config import ScriptRunConfig, check_submittable
from ..execution import Watchdog
from ..git import git_provenance
from ..layout import run_dir
from ..records import RunStatus
from ..snapshot import take_snapshot
from ..store import RunStore
from ..workspace import open_workspace
from .config import SweepSpec
from .controller import SWEEP_FILE, Sweep
from .report import publish

ARTIFACT_SECONDS = 2.0  # the trial table in Prefect is refreshed at most this often


def _flow_run_name() -> str:
    params = runtime.flow_run.parameters
    return params.get("run_id") or f"{params.get('experiment')}-sweep-{int(time.time())}"


@flow(name="hyperdrive", flow_run_name=_flow_run_name, validate_parameters=True)
def hyperdrive(experiment: str, workspace: str | None = None, run_id: str | None = None,
               config: ScriptRunConfig | None = None,
               sweep: SweepSpec | None = None) -> dict[str, Any]:
    """Run a hyperparameter sweep: trials of ``config`` sampled by ``sweep``.

    Args:
        experiment: Name of the experiment the sweep and its trials belong to.
        workspace: Workspace URL (default: this process's workspace, else ``./.mltrain``).
        run_id: A sweep recorded by ``Experiment.submit`` (or one to resume).
        config: What each trial runs; with ``sweep``, for a sweep started from the UI.
        sweep: The sampling, policy, primary metric and limits.
    """
    ws = open_workspace(workspace)
    store = RunStore(ws)
    logger = get_run_logger()
    if run_id is None:
        if config is None or sweep is None:
            raise ValueError("hyperdrive needs config= and sweep= (or run_id= of a sweep)")
        check_submittable(config)
        snap = take_snapshot(ws, config.source_directory)
        run_id = store.create(experiment, config=config, hyperdrive=sweep,
                              git=git_provenance(config.source_directory),
                              snapshot_id=snap.snapshot_id).run_id
    record = store.read(experiment, run_id)
    if record.hyperdrive is None:
        raise ValueError(f"run {run_id} is not a sweep")
    if record.finished:  # a retry of a sweep whose controller died
        record = store.reopen(experiment, run_id)
    flow_run_id = str(runtime.flow_run.id)
    record = store.move(experiment, run_id, RunStatus.RUNNING, flow_run_id=flow_run_id,
                        flow_run_url=runtime.flow_run.ui_url)
    watchdog = Watchdog(store, experiment, run_id, flow_run_id)
    watchdog.start()
    shown = {"at": 0.0}

    def on_change(sweep_: Sweep) -> None:
        if time.monotonic() - shown["at"] < ARTIFACT_SECONDS:
            return
        shown["at"] = time.monotonic()
        try:
            publish(ws, experiment, run_id, _state(ws, experiment, run_id), final=False)
        except Exception as exc:  # a view only
            logger.debug("sweep artifact: %s", exc)

    try:
        controller = Sweep(store, record, json.loads(os.environ.get("MLTRAIN_SECRETS") or "{}"),
                           cancel_reason=lambda: watchdog.cancel_reason, log=logger.info,
                           on_change=on_change)
    except Exception as exc:  # e.g. the trials' compute target is not there
        watchdog.stop()
        store.move(experiment, run_id, RunStatus.FAILED, error=f"Preparing: {exc}")
        return Failed(message=str(exc))
    try:
        try:
            status, error = controller.run()
        except Exception as exc:
            status, error = RunStatus.FAILED, f"the sweep's controller failed: {exc}"
            controller._stop_all(error)
        finally:
            watchdog.stop()
        try:
            publish(ws, experiment, run_id, _state(ws, experiment, run_id), final=True)
        except Exception as exc:
            logger.warning("could not publish the sweep's artifacts: %s", exc)
        record = store.move(experiment, run_id, status, error=error)
    finally:
        controller.close()
    if record.status == RunStatus.CANCELED:
        return Cancelled(message=error or "canceled")
    if record.status == RunStatus.FAILED:
        return Failed(message=error or "failed")
    return _state(ws, experiment, run_id)


def _state(ws: Any, experiment: str, run_id: str) -> dict[str, Any]:
    return ws.read_json(f"{run_dir(experiment, run_id)}/{SWEEP_FILE}")
