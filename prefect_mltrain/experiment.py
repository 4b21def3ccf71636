"""``Experiment``: a named group of runs, and the place runs are submitted from."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from typing import Any

from . import warm
from .config import ScriptRunConfig, saved_target_name, target_name
from .errors import ConfigurationError
from .home import mltrain_home
from .records import DEPLOYED, RunStatus, check_name, new_record, new_run_id, run_dir, set_status
from .run import Run
from .workspace import Workspace


class Experiment:
    """A named group of runs in a workspace.

    Example:
        ```python
        exp = Experiment(Workspace(), "demo")
        run = exp.submit(ScriptRunConfig(source_directory="proj", script="train.py"))
        ```
    """

    def __init__(self, workspace: Workspace, name: str):
        self.workspace = workspace
        self.name = check_name(name, "experiment name")

    def __repr__(self) -> str:
        return f"Experiment({self.workspace!r}, {self.name!r})"

    # -- submitting -------------------------------------------------------------------------

    def submit(self, config: Any, tags: dict[str, Any] | None = None) -> Run:
        """Capture the source directory, record the run and start it; returns at once.

        ``config`` is a ``ScriptRunConfig`` (or anything with ``to_script_run_config()``,
        like an ``Estimator``). The run executes as a Prefect flow run in a background
        process; follow it with ``run.wait_for_completion(show_output=True)``.
        """
        config = _as_script_run_config(config)
        deployment = self._deployment(target_name(config.compute_target))
        run = self.create_run(config, tags=tags)
        secrets = config.environment.secrets() if config.environment else {}
        return self._start(run, secrets, deployment)

    def create_run(self, config: ScriptRunConfig, tags: dict[str, Any] | None = None,
                   take_snapshot: bool = True) -> Run:
        """Record a new run (NotStarted) with its snapshot and git provenance."""
        from .git import git_provenance
        from .snapshot import take_snapshot as capture

        ws = self.workspace
        tags = {check_name(str(k), "tag key"): str(v) for k, v in (tags or {}).items()}
        run_id = new_run_id(self.name)
        folder = run_dir(self.name, run_id)
        recorded = config.record()
        record = new_record(self.name, run_id, config=recorded,
                            compute_target=recorded["compute_target"])
        if take_snapshot:
            snap = capture(ws, config.source_directory, progress=sys.stderr.isatty())
            record["snapshot_id"] = snap.snapshot_id
            if snap.skipped:
                record["snapshot_skipped"] = snap.skipped[:100]
                warnings.warn(f"not captured (links leaving {config.source_directory}, or "
                              f"special files): {', '.join(snap.skipped[:10])}", stacklevel=3)
        git = git_provenance(config.source_directory)
        if git:
            diff = git.pop("diff", "")
            record["git"] = git
            if diff:
                ws.write_bytes(f"{folder}/git_diff.patch", diff.encode())
        if not ws.exists(f"experiments/{self.name}/experiment.json"):
            ws.write_json(f"experiments/{self.name}/experiment.json",
                          {"name": self.name, "created_at": time.time()})
        ws.write_json(f"{folder}/tags.json", tags)
        ws.write_json(f"{folder}/run.json", record)
        return Run(self, run_id)

    def resubmit(self, run: Run) -> Run:
        """A new run with the same snapshot and configuration as ``run``."""
        old = run._read_record()
        run_id = new_run_id(self.name)
        record = new_record(self.name, run_id, config=old["config"],
                            compute_target=old.get("compute_target"),
                            snapshot_id=old["snapshot_id"], git=old.get("git"),
                            properties={"resubmitted_from": old["run_id"]})
        self.workspace.write_json(f"{run_dir(self.name, run_id)}/tags.json", run.get_tags())
        self.workspace.write_json(f"{run_dir(self.name, run_id)}/run.json", record)
        return self._start(Run(self, run_id), {}, self._deployment(old["compute_target"]))

    def _deployment(self, target: Any) -> str | None:
        """The deployment of ``target``'s work pool (checked before anything is written),
        or None to run here."""
        if saved_target_name(target) is None:
            return None  # runs here; and a local submit imports no Prefect
        from .pools import deployment_for

        deployment = deployment_for(target)
        if deployment and self.workspace.protocol == "memory":
            raise ConfigurationError(
                f"{deployment} runs on a worker, which cannot see this process's memory:// "
                "workspace: use a folder or a shared store (s3://, gs://, ...) as the workspace")
        return deployment

    def _start(self, run: Run, secrets: dict[str, str], deployment: str | None) -> Run:
        """Queue the run and hand it to its target's work pool, else a local runner."""
        from .server import prefect_env, using_server

        ws, folder = self.workspace, run_dir(self.name, run.id)
        record = ws.read_json(f"{folder}/run.json")
        if deployment:
            with using_server():
                return self._send_to_pool(run, record, deployment, secrets)
        env = {**os.environ, **prefect_env(), **ws.to_env(),
               "MLTRAIN_SECRETS": json.dumps(secrets)}
        ws.write_json(f"{folder}/run.json", set_status(record, RunStatus.QUEUED))
        runs = mltrain_home() / "runs"  # each run's scratch folder is made below it
        runs.mkdir(parents=True, exist_ok=True)
        log = mltrain_home() / "runs" / f"{run.id}.runner.log"
        pid = warm.start_run(self.name, run.id, env, cwd=runs, log=log)
        if pid is None:  # no warm runner could be had: start a runner from scratch
            with open(log, "ab") as out:
                pid = subprocess.Popen(
                    [sys.executable, "-m", "prefect_mltrain.runner", self.name, run.id],
                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd=runs,
                ).pid
        ws.write_json(f"{folder}/heartbeat.json",
                      {"time": time.time(), "host": socket.gethostname(), "pid": pid})
        return run

    def _send_to_pool(self, run: Run, record: dict[str, Any], deployment: str,
                      secrets: dict[str, str]) -> Run:
        """Create a flow run of the target's deployment; a worker of its pool runs it."""
        from prefect.blocks.system import Secret
        from prefect.deployments import run_deployment

        ws, folder = self.workspace, run_dir(self.name, run.id)
        private = {k: v for k, v in ws.to_env().items() if k != "MLTRAIN_WORKSPACE"}
        if secrets:
            private["MLTRAIN_SECRETS"] = json.dumps(secrets)
        params: dict[str, Any] = {"experiment": self.name, "run_id": run.id,
                                  "workspace": ws.url}
        if private:
            params["private_block"] = f"mltrain-run-{run.id.lower().replace('_', '-')}"
            Secret(value=private).save(params["private_block"], overwrite=True)
        ws.write_json(f"{folder}/run.json", set_status(record, RunStatus.QUEUED))
        flow_run = run_deployment(deployment, parameters=params, timeout=0,
                                  tags=["mltrain", f"experiment:{self.name}"])
        ws.write_json(f"{folder}/{DEPLOYED}", {"deployment": deployment,
                                               "flow_run_id": str(flow_run.id),
                                               "private_block": params.get("private_block")})
        return run

    # -- reading ----------------------------------------------------------------------------

    def get_runs(self, include_children: bool = False, tags: dict[str, str] | None = None,
                 status: str | None = None) -> list[Run]:
        """Runs of this experiment, newest first."""
        runs = []
        for run_id in reversed(self.workspace.list_dir(f"experiments/{self.name}/runs")):
            run = Run(self, run_id)
            try:
                record = run._read_record()
            except Exception:
                continue  # a run being created right now
            if record.get("parent_run_id") and not include_children:
                continue
            if status and record["status"] != status:
                continue
            if tags and any(run.get_tags().get(k) != v for k, v in tags.items()):
                continue
            runs.append(run)
        return sorted(runs, key=lambda r: r._record.get("created_at", 0), reverse=True)

    @classmethod
    def list(cls, workspace: Workspace) -> list[Experiment]:
        return [cls(workspace, name) for name in workspace.list_experiments()]

    # -- interactive ------------------------------------------------------------------------

    def start_logging(self, display_name: str | None = None) -> Run:
        """An interactive run (e.g. in a notebook): log to it, then ``run.complete()``."""
        run_id = new_run_id(self.name)
        record = set_status(new_record(self.name, run_id, display_name=display_name,
                                       config=None), RunStatus.RUNNING)
        self.workspace.write_json(f"{run_dir(self.name, run_id)}/run.json", record)
        run = Run(self, run_id)
        run._record = record
        return run


def _as_script_run_config(config: Any) -> ScriptRunConfig:
    if isinstance(config, ScriptRunConfig):
        return config
    if hasattr(config, "to_script_run_config"):
        return config.to_script_run_config()
    raise ConfigurationError(
        f"submit() takes a ScriptRunConfig (or an Estimator), not {type(config).__name__}"
    )
