"""The ``submit_run`` flow: snapshot -> build_environment -> execute -> collect_artifacts.

A run *is* one flow run of ``submit_run``. ``Experiment.submit`` starts it in a
background runner process; a deployment of it (see ``deployments/``) lets a Prefect
worker run it; users can also call it, or its tasks, from their own flows.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.logging.handlers import APILogHandler
from prefect.states import Cancelled, Failed

from .compute.base import LaunchSpec, resolve_compute_target
from .config import ScriptRunConfig
from .environment import Environment, run_context_path
from .environment_build import build_environment as build_local_environment
from .execution import Watchdog, run_folder_sync, run_job, sync_quietly
from .home import mltrain_home
from .records import STD_LOG, TERMINAL, RunStatus, run_dir, set_status
from .snapshot import restore_snapshot, take_snapshot
from .workspace import Workspace


def open_workspace(url: str | None) -> Workspace:
    """The workspace at ``url``, with the storage options this process was given for it."""
    if url is None or url == os.environ.get("MLTRAIN_WORKSPACE"):
        return Workspace.from_env() if os.environ.get("MLTRAIN_WORKSPACE") else Workspace()
    return Workspace(url)


class RunRecorder:
    """The single writer of ``run.json`` while the flow runs."""

    def __init__(self, ws: Workspace, experiment: str, run_id: str):
        self.ws, self.path = ws, f"{run_dir(experiment, run_id)}/run.json"
        self.record: dict[str, Any] = ws.read_json(self.path)

    def update(self, status: RunStatus | None = None, **fields: Any) -> None:
        if status is not None:
            set_status(self.record, status, **fields)
        else:
            self.record.update(fields)
        self.ws.write_json(self.path, self.record)

    @property
    def finished(self) -> bool:
        return self.record["status"] in TERMINAL


@task(name="snapshot", cache_policy=NO_CACHE)
def snapshot(workspace: str, source_directory: str) -> str:
    """Capture ``source_directory`` into the workspace; returns the snapshot id."""
    result = take_snapshot(open_workspace(workspace), source_directory)
    get_run_logger().info("snapshot %s: %d files, %d uploaded", result.snapshot_id[:12],
                          result.file_count, result.uploaded_files)
    return result.snapshot_id


@task(name="build_environment", cache_policy=NO_CACHE)
def build_environment(environment: dict[str, Any] | None, workspace: str | None = None,
                      run_dir_rel: str | None = None,
                      base_image: str | None = None) -> dict[str, Any]:
    """Resolve and build the environment (or find it built); returns its interpreter.

    With ``base_image`` (a container target) the result is an image: the environment's own
    ``docker.base_image``, else ``base_image``, plus its packages. The build output goes to
    the Prefect log and, with ``run_dir_rel``, to ``logs/environment_build.log`` — also
    when the build fails.
    """
    env = Environment.from_record(environment) if environment else None
    logger, lines = get_run_logger(), []

    def on_line(line: str) -> None:
        lines.append(line)
        logger.info(line)

    try:
        if base_image is None:
            built = build_local_environment(env, on_line=on_line).record()
        else:
            built = _build_image(env, base_image, on_line)
    finally:
        if run_dir_rel and lines:
            open_workspace(workspace).write_bytes(f"{run_dir_rel}/logs/environment_build.log",
                                                  ("\n".join(lines) + "\n").encode())
    return {**built, "name": env.name if env else "default"}


def _build_image(env: Environment | None, base_image: str,
                 on_line: Any) -> dict[str, Any]:
    from .image_build import build_image

    env = env.model_copy(deep=True) if env else Environment("default")
    if not (env.docker.base_image or env.docker.base_dockerfile):
        env.docker.base_image = base_image
    if not env.needs_build:  # user-managed: the image as it is
        on_line(f"image {env.docker.base_image}: used as it is (user-managed environment)")
        return {"image": env.docker.base_image, "interpreter": "python3", "cached": True}
    return {**build_image(env, on_line=on_line).record(), "interpreter": "python"}


@task(name="execute", cache_policy=NO_CACHE)
def execute(workspace: str, experiment: str, run_id: str, built: dict[str, Any],
            watchdog: Any = None) -> dict[str, Any]:
    """Restore the snapshot, start the script on its compute target and see it to its end.

    The run's ``outputs/`` and ``logs/`` are synced while it runs and once more after it
    ends, whatever the ending (success, failure, timeout, cancel, an error here).
    """
    ws = open_workspace(workspace)
    recorder = RunRecorder(ws, experiment, run_id)
    record, logger = recorder.record, get_run_logger()
    config = record["config"]
    scratch = mltrain_home() / "runs" / run_id
    cwd, stage = scratch / "src", scratch / "stage"
    shutil.rmtree(scratch, ignore_errors=True)
    restore_snapshot(ws, record["snapshot_id"], cwd)
    (cwd / "outputs").mkdir(exist_ok=True)
    (cwd / "logs").mkdir(exist_ok=True)
    sync = run_folder_sync(ws, experiment, run_id, cwd, stage)
    target = resolve_compute_target(config["compute_target"])
    interpreter = built["interpreter"]
    portable = _run_env(experiment, run_id, config)
    spec = LaunchSpec(run_id=run_id, experiment=experiment, argv=_argv(config, interpreter),
                      cwd=str(cwd), env=_local_env(ws, stage, interpreter, portable),
                      portable_env=portable, stage_dir=str(stage), image=built.get("image"),
                      distributed=config.get("distributed_job_config"),
                      environment=config.get("environment"), interpreter=interpreter)
    progress = ProgressArtifact(stage / "runs" / run_id / "events")
    job = target.launch(spec)
    try:
        recorder.update(RunStatus.RUNNING)
        outcome = run_job(job, sync=sync, std_log=stage / "runs" / run_id / STD_LOG,
                          watchdog=watchdog or Watchdog(ws, experiment, run_id, None),
                          max_seconds=config.get("max_run_duration_seconds"), logger=logger,
                          secrets=list(json.loads(os.environ.get("MLTRAIN_SECRETS") or "{}")
                                       .values()),
                          on_sync=progress)
    finally:
        job.terminate(grace=0) if job.poll() is None else job.close()
        if not recorder.finished:
            recorder.update(RunStatus.FINALIZING)
        sync_quietly(sync, logger)
        progress()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"status": outcome.status.value, "exit_code": outcome.exit_code,
            "error": outcome.error, "log_tail": "\n".join(outcome.log_tail)}


class ProgressArtifact:
    """A Prefect progress artifact that follows the ``progress`` metric the script logs
    (a fraction 0–1, or a percentage up to 100): the UI shows a live bar for the run."""

    METRIC = "progress"

    def __init__(self, events: Path):
        self.events, self.offsets, self.artifact_id = events, {}, None

    def __call__(self) -> None:
        try:
            self._update()
        except Exception as exc:  # a view only: the run goes on without it
            get_run_logger().debug("progress artifact: %s", exc)

    def _update(self) -> None:
        latest = None
        for path in sorted(self.events.glob("*.jsonl")):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                event = json.loads(line)
                if event.get("name") == self.METRIC and isinstance(event.get("value"), int | float):
                    latest = event["value"]
        if latest is None:
            return
        percent = max(0.0, min(100.0, latest * 100 if latest <= 1 else latest))
        if self.artifact_id is None:
            self.artifact_id = create_progress_artifact(
                percent, description="The run's `progress` metric")
        else:
            update_progress_artifact(self.artifact_id, percent)


@task(name="collect_artifacts", cache_policy=NO_CACHE)
def collect_artifacts(workspace: str, experiment: str, run_id: str,
                      outcome: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish the run summary, metrics table and outputs listing as Prefect artifacts.

    ``outcome`` (status, exit code, error) describes an ending not yet in the record.
    """
    from .experiment import Experiment
    from .run import Run

    run = Run(Experiment(open_workspace(workspace), experiment), run_id)
    details = {**run.get_details(), **(outcome or {})}
    metrics, files = run.get_metrics(), run.get_file_names()
    key = run_id.lower().replace("_", "-")[-60:].strip("-")
    create_markdown_artifact(key=f"run-{key}", markdown=_summary_markdown(details, files),
                             description=f"Run {run_id}")
    rows = [{"metric": name, "value": json.dumps(value)[:200]} for name, value in metrics.items()]
    if rows:
        create_table_artifact(key=f"metrics-{key}", table=rows, description=f"Metrics of {run_id}")
    if files:
        create_table_artifact(key=f"outputs-{key}", description=f"Files of {run_id}",
                              table=[{"file": name} for name in files])
    return {"metrics": metrics, "files": files}


def _flow_run_name() -> str:
    params = runtime.flow_run.parameters
    return params.get("run_id") or f"{params.get('experiment')}-{int(time.time())}"


@flow(name="submit-run", flow_run_name=_flow_run_name, validate_parameters=True)
def submit_run(experiment: str, config: ScriptRunConfig | None = None,
               workspace: str | None = None, run_id: str | None = None,
               tags: dict[str, str] | None = None, compute_target: str | None = None,
               private_block: str | None = None) -> dict[str, Any]:
    """Run a training script as one prefect-mltrain run and return its details.

    Args:
        experiment: Name of the experiment the run belongs to.
        config: What to run; not needed when ``run_id`` names a prepared run.
        workspace: Workspace URL (default: this process's workspace, else ``./.mltrain``).
        run_id: A run prepared by ``Experiment.submit``.
        tags: Tags of a new run.
        compute_target: Where the script runs, overriding ``config.compute_target``
            (a deployment made by ``mltrain compute create`` sets its own target here).
        private_block: Set by ``Experiment.submit``: a Secret block holding the run's
            secret variables and workspace credentials, read once and deleted.
    """
    from .experiment import Experiment

    if private_block:
        _take_private(private_block)
    ws = open_workspace(workspace)
    exp = Experiment(ws, experiment)
    if run_id is None:
        if config is None:
            raise ValueError("submit_run needs config= (or run_id= of a prepared run)")
        if compute_target:
            config = config.model_copy(update={"compute_target": compute_target})
        run_id = exp.create_run(config, tags=tags, take_snapshot=False).id
    recorder = RunRecorder(ws, experiment, run_id)
    flow_run_id = str(runtime.flow_run.id)
    ui = os.environ.get("PREFECT_UI_URL")
    recorder.update(flow_run_id=flow_run_id, flow_run_url=(
        f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else runtime.flow_run.ui_url))
    watchdog = Watchdog(ws, experiment, run_id, flow_run_id)
    watchdog.start()
    outcome: dict[str, Any] = {}
    termination: TerminationSignal | None = None
    phase = "Preparing"
    try:
        watchdog.tick()
        if watchdog.cancel_reason:
            outcome = {"status": "Canceled", "error": watchdog.cancel_reason}
        else:
            recorder.update(RunStatus.PREPARING)
            record = recorder.record
            if not record.get("snapshot_id"):
                recorder.update(snapshot_id=snapshot(ws.url, record["config"]["source_directory"]))
            target = resolve_compute_target(record["config"]["compute_target"])
            target.check()
            built = build_environment(
                record["config"].get("environment"), ws.url, run_dir(experiment, run_id),
                base_image=target.default_image() if target.runs_in_containers else None)
            recorder.update(RunStatus.STARTING, environment_build=built)
            phase = "Running"
            outcome = execute(ws.url, experiment, run_id, built, watchdog)
    except TerminationSignal as exc:  # a cancel from the UI/API, delivered by the worker
        outcome = {"status": "Canceled", "error": "canceled from Prefect"}
        termination = exc
    except Exception as exc:
        outcome = {"status": "Failed", "error": f"{phase}: {exc}",
                   "exit_code": recorder.record.get("exit_code")}
    finally:
        watchdog.stop()
    recorder = RunRecorder(ws, experiment, run_id)  # re-read: execute wrote it too
    final = {"exit_code": outcome.get("exit_code"), "error": outcome.get("error"),
             "log_tail": outcome.get("log_tail")}
    try:
        collect_artifacts(ws.url, experiment, run_id, {**final, "status": outcome["status"]})
    except Exception as exc:  # artifacts are a view; the run's result stands without them
        get_run_logger().warning("could not publish artifacts: %s", exc)
    APILogHandler().flush()  # the run's log is complete in Prefect once the run has ended
    recorder.update(RunStatus(outcome["status"]), **final)
    if termination:
        raise termination  # Prefect's engine finishes the cancel it started
    details = recorder.record
    if details["status"] == RunStatus.CANCELED.value:
        return Cancelled(message=details.get("error") or "canceled")
    if details["status"] == RunStatus.FAILED.value:
        return Failed(message=details.get("error") or "failed")
    return details


def _take_private(block_name: str) -> None:
    """Move the run's secrets and workspace credentials from their block into this process."""
    from prefect.blocks.system import Secret

    try:
        private = Secret.load(block_name).get()
    except ValueError:  # already taken: a retry of this flow run
        return
    os.environ.update(private)
    Secret.delete(block_name)


def _argv(config: dict[str, Any], interpreter: str) -> list[str]:
    args = [str(a) for a in config.get("arguments") or []]
    if config.get("script"):
        return [interpreter, "-u", config["script"], *args]
    command = list(config["command"])
    if command[0] in ("python", "python3"):
        command[0] = interpreter
    return [*command, *args]


def _run_env(experiment: str, run_id: str, config: dict[str, Any]) -> dict[str, str]:
    """The run's own variables: the environment's (and its secrets), and the run's ids."""
    env_record = config.get("environment") or {}
    return {**(env_record.get("environment_variables") or {}),
            **json.loads(os.environ.get("MLTRAIN_SECRETS") or "{}"),
            "MLTRAIN_RUN_ID": run_id, "MLTRAIN_EXPERIMENT": experiment,
            "PYTHONUNBUFFERED": "1"}


def _local_env(ws: Workspace, stage: Path, interpreter: str,
               portable: dict[str, str]) -> dict[str, str]:
    """A local script's environment: this process's, minus ours, plus the run's."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT__FLOW_RUN_ID", "MLTRAIN_SECRETS")}
    env.update(ws.to_env())
    env.update(portable)
    env["MLTRAIN_CONTEXT_DIR"] = str(stage)
    if interpreter != sys.executable:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [run_context_path(),
                                                          env.get("PYTHONPATH")]))
    return env


def _summary_markdown(details: dict[str, Any], files: list[str]) -> str:
    duration = ""
    if details.get("started_at"):  # the run ends just after its artifacts are published
        duration = f"{(details.get('ended_at') or time.time()) - details['started_at']:.1f} s"
    rows = [("Status", details["status"]), ("Exit code", details.get("exit_code")),
            ("Duration", duration), ("Snapshot", (details.get("snapshot_id") or "")[:12]),
            ("Compute target", details.get("compute_target")),
            ("Tags", ", ".join(f"{k}={v}" for k, v in (details.get("tags") or {}).items())),
            ("Error", details.get("error"))]
    table = "\n".join(f"| {k} | {v if v is not None else ''} |" for k, v in rows)
    text = f"# Run `{details['run_id']}`\n\n| | |\n|---|---|\n{table}\n"
    if details.get("log_tail"):
        text += f"\n## Log tail\n\n```\n{details['log_tail']}\n```\n"
    if files:
        text += "\n## Files\n\n" + "\n".join(f"- `{f}`" for f in files[:200]) + "\n"
    return text
