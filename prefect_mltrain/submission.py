"""Submitting a run: check where it goes, capture its source, record it, and start it.

A run on a target with a work pool becomes a flow run of the target's deployment, which a
worker of that pool runs; any other run gets a runner process on this machine
(``runner.py``). Everything that can be wrong with the submission is found before the
run is recorded, so a failed submit leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import warnings
from typing import Any

from . import runner
from .compute.registry import saved_target_name, target_name
from .config import ScriptRunConfig, check_submittable
from .errors import ConfigurationError, MLTrainError
from .git import git_provenance
from .hyperdrive.config import HyperDriveConfig
from .records import Runner, RunRecord, RunStatus
from .server import prefect_env, wait_if_starting
from .snapshot import take_snapshot
from .store import RunStore
from .workspace import Workspace

SWEEP_FLOW = "prefect_mltrain.hyperdrive.flow:hyperdrive"


def submit(ws: Workspace, experiment: str, config: Any,
           tags: dict[str, Any] | None = None,
           properties: dict[str, Any] | None = None) -> str:
    """Record a run of ``config`` (a ``ScriptRunConfig``, an ``Estimator``, or a
    ``HyperDriveConfig``) and start it; returns its id. A sweep's controller runs here,
    its trials wherever their compute target is."""
    sweep = None
    if isinstance(config, HyperDriveConfig):
        sweep, config = config.spec, config.run_config
        for earlier in sweep.resume_from:  # each must be a sweep of this workspace
            if RunStore(ws).read(RunStore(ws).experiment_of(earlier), earlier).hyperdrive is None:
                raise ConfigurationError(f"resume_from: run {earlier} is not a sweep")
    config = as_script_run_config(config)
    deployment = _deployment(ws, target_name(config.compute_target))
    store = RunStore(ws)
    snap = take_snapshot(ws, config.source_directory, progress=sys.stderr.isatty())
    if snap.skipped:
        warnings.warn(f"not captured (links leaving {config.source_directory}, or special "
                      f"files): {', '.join(snap.skipped[:10])}", stacklevel=3)
    record = store.create(experiment, config=config, tags=tags, properties=properties,
                          git=git_provenance(config.source_directory),
                          snapshot_id=snap.snapshot_id, snapshot_skipped=snap.skipped[:100],
                          hyperdrive=sweep)
    secrets = config.environment.secrets() if config.environment else {}
    if sweep:
        start(store, record, secrets, None, flow=SWEEP_FLOW)
    else:
        start(store, record, secrets, deployment)
    return record.run_id


def resubmit(store: RunStore, old: RunRecord, tags: dict[str, str]) -> str:
    """A new run with the snapshot and configuration of ``old``; returns its id."""
    record = store.create(old.experiment, config=old.config, tags=tags, git=old.git,
                          snapshot_id=old.snapshot_id,
                          properties={"resubmitted_from": old.run_id})
    start(store, record, {}, _deployment(store.ws, old.compute_target))
    return record.run_id


def as_script_run_config(config: Any) -> ScriptRunConfig:
    if hasattr(config, "to_script_run_config"):
        config = config.to_script_run_config()
    if isinstance(config, ScriptRunConfig):
        check_submittable(config)
        return config
    raise ConfigurationError(
        f"submit() takes a ScriptRunConfig (or an Estimator), not {type(config).__name__}")


def trial_deployment(store: RunStore, config: ScriptRunConfig) -> str | None:
    """Where a sweep's trials go: their target's deployment, or None to run here."""
    return _deployment(store.ws, target_name(config.compute_target))


def start_trial(store: RunStore, record: RunRecord, secrets: dict[str, str],
                deployment: str | None, flow_run_id: str | None = None) -> None:
    """Start a sweep's trial like any run: on its target's work pool (``run_deployment``,
    called from the sweep's flow, shows it as a subflow), else in a runner here — as the
    flow run ``flow_run_id`` made beforehand under the sweep's flow run, when given."""
    start(store, record, secrets, deployment, flow_run_id=flow_run_id)


def _deployment(ws: Workspace, target: Any) -> str | None:
    """The deployment of ``target``'s work pool, or None to run here."""
    if saved_target_name(target) is None:  # runs here; and a local submit imports no Prefect
        if ws.protocol == "memory":
            raise ConfigurationError(
                "a memory:// workspace lives in this process only, and a submitted run "
                "executes in a runner process of its own: use a folder (Workspace('./ws')) "
                "or a shared store as the workspace, or run the flow in this process with "
                "submit_run(experiment=..., config=..., workspace=ws.url)")
        return None
    from .prefect_api import deployment_for

    deployment = deployment_for(target)
    if deployment and ws.protocol == "memory":
        raise ConfigurationError(
            f"{deployment} runs on a worker, which cannot see this process's memory:// "
            "workspace: use a folder or a shared store (s3://, gs://, ...) as the workspace")
    return deployment


def start(store: RunStore, record: RunRecord, secrets: dict[str, str],
          deployment: str | None, flow: str = runner.SUBMIT_RUN,
          flow_run_id: str | None = None) -> None:
    """Queue the run and hand it to its target's work pool, else to a local runner that
    runs ``flow`` (as the flow run ``flow_run_id`` when one was made for it)."""
    ws, exp, run_id = store.ws, record.experiment, record.run_id
    if deployment:
        from .prefect_api import send_to_pool

        private = ws.to_env() if ws.storage_options else {}  # store credentials
        if secrets:
            private["MLTRAIN_SECRETS"] = json.dumps(secrets)
        store.move(exp, run_id, RunStatus.QUEUED)
        sent = send_to_pool(deployment, {"experiment": exp, "run_id": run_id,
                                         "workspace": ws.url},
                            private, tags=["mltrain", f"experiment:{exp}"])
        store.set(exp, run_id, deployment=sent)
        return
    # A server that this starts is waited for after the runner starts, so that the runner's
    # imports overlap the server's start.
    env = {**os.environ, **prefect_env(wait=False), **ws.to_env(),
           "MLTRAIN_SECRETS": json.dumps(secrets)}
    env.pop(runner.FLOW_RUN_VAR, None)
    if flow_run_id:
        env[runner.FLOW_RUN_VAR] = flow_run_id
    store.move(exp, run_id, RunStatus.QUEUED)
    pid = runner.start(exp, run_id, env, flow)
    store.set(exp, run_id, runner=Runner(host=socket.gethostname(), pid=pid))
    try:
        wait_if_starting(env.get("PREFECT_API_URL", ""))
    except MLTrainError as exc:  # the runner would wait for it in vain
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        store.move(exp, run_id, RunStatus.FAILED, error=f"Queued: {exc}")
        raise
