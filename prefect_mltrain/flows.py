"""The ``submit_run`` flow: snapshot -> build_environment -> execute -> collect_artifacts.

A run *is* one flow run of ``submit_run``. ``Experiment.submit`` starts it in a runner
process or sends it to a work pool's deployment (see ``deployments/``); users can also
call it, or its tasks, from their own flows. The flow moves the run's record along
through the store; its compute target prepares the environment and starts the script.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
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
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Failed

from . import events as event_lines
from .compute.base import ComputeTarget, LaunchSpec, Prepared
from .compute.registry import resolve_compute_target
from .config import ScriptRunConfig, check_submittable
from .context import CONTEXT_DIR
from .data.staging import (
    SCRATCH_IN,
    SCRATCH_OUT,
    DataPlan,
    Staged,
    data_env,
    data_token,
    output_dirs,
    plan_data,
    stage_inputs,
    upload_outputs,
)
from .environment import Environment
from .errors import RunCanceledError
from .execution import RunSync, Watchdog, mask, run_job
from .git import git_provenance
from .home import mltrain_home
from .layout import EVENTS, LOGS, OUTPUTS, STD_LOG, run_dir
from .prefect_api import take_secret
from .records import LocalFiles, RunRecord, RunStatus
from .server import healthy
from .snapshot import restore_snapshot, take_snapshot
from .store import RunStore
from .workspace import Workspace, open_workspace


@task(name="snapshot", cache_policy=NO_CACHE)
def snapshot(workspace: str, source_directory: str) -> str:
    """Capture ``source_directory`` into the workspace; returns the snapshot id."""
    result = take_snapshot(open_workspace(workspace), source_directory)
    get_run_logger().info("snapshot %s: %d files, %d uploaded", result.snapshot_id[:12],
                          result.file_count, result.uploaded_files)
    return result.snapshot_id


@task(name="build_environment", cache_policy=NO_CACHE)
def build_environment(target: ComputeTarget, environment: Environment | None,
                      workspace: str | None = None, run_dir_rel: str | None = None,
                      watchdog: Watchdog | None = None) -> Prepared:
    """Make the run's environment ready for its compute target (a virtualenv here, an image
    on its engine, or pinned packages each Dask worker installs), or find it ready.

    The build output goes to the Prefect log and, with ``run_dir_rel``, to
    ``logs/environment_build.log`` of the run — also when the build fails. A cancel of the
    run (seen by its ``watchdog``) stops the build.
    """
    logger, lines = get_run_logger(), []

    def on_line(line: str) -> None:
        lines.append(line)
        logger.info(line)

    try:
        for note in environment.build_notes() if environment else []:
            on_line(note)
        return target.prepare(environment, on_line, stop=lambda: bool(
            watchdog and watchdog.cancel_reason))
    finally:
        if run_dir_rel and lines:
            open_workspace(workspace).write_bytes(f"{run_dir_rel}/{LOGS}/environment_build.log",
                                                  ("\n".join(lines) + "\n").encode())


@task(name="execute", cache_policy=NO_CACHE)
def execute(workspace: str, experiment: str, run_id: str, target: ComputeTarget,
            prepared: Prepared, secrets: dict[str, str] | None = None,
            watchdog: Watchdog | None = None, data: DataPlan | None = None) -> dict[str, Any]:
    """Restore the snapshot, make the data inputs local, start the script on its compute
    target and see it to its end.

    The run's ``outputs/`` and ``logs/`` are synced while it runs and once more after it
    ends, whatever the ending (success, failure, timeout, cancel, an error here); so are
    its data outputs uploaded, and its mounts unmounted.
    """
    ws = open_workspace(workspace)
    store, logger = RunStore(ws), get_run_logger()
    record = store.read(experiment, run_id)
    secrets = secrets or {}
    scratch = mltrain_home() / "runs" / run_id
    cwd, stage = scratch / "src", scratch / "stage"
    shutil.rmtree(scratch, ignore_errors=True)
    restore_snapshot(ws, record.snapshot_id, cwd)
    (cwd / OUTPUTS).mkdir(exist_ok=True)
    (cwd / LOGS).mkdir(exist_ok=True)
    sync = RunSync(store, experiment, run_id, cwd, stage)
    local = LocalFiles(host=socket.gethostname(), path=str(scratch))
    stop = lambda: bool(watchdog and watchdog.cancel_reason)  # noqa: E731
    data_secrets = data.secrets() if data else []
    secret_list = [*_masked(ws, secrets), *data_secrets]
    try:
        outputs = _output_folders(target, data, cwd, scratch)
        staged, paths = _stage_data(target, data, cwd, scratch, outputs, stop, logger)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if data:
        store.set(experiment, run_id, lineage=_lineage(data, staged.stats, []))
    run_env = {**_run_env(record, secrets), **data_env(data, paths)}
    spec = LaunchSpec(run_id=run_id, experiment=experiment, config=record.config,
                      prepared=prepared, cwd=str(cwd), stage_dir=str(stage),
                      env=_local_env(ws, stage, run_env), run_env=run_env, stop=stop,
                      data=data, data_paths=paths)
    own = stage / run_dir(experiment, run_id)
    progress = ProgressArtifact(own / EVENTS)
    try:
        job = target.launch(spec)
    except BaseException:
        staged.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    written, unwritten = [], None
    try:
        store.move(experiment, run_id, RunStatus.RUNNING, local_files=local)
        outcome = run_job(job, sync=sync, std_log=own / STD_LOG,
                          watchdog=watchdog or Watchdog(store, experiment, run_id, None),
                          max_seconds=record.config.max_run_duration_seconds, logger=logger,
                          secrets=secret_list, on_sync=progress)
    finally:
        job.terminate(grace=0) if job.poll() is None else job.close()
        staged.close()  # unmounted before anything under the scratch folder is removed
        with contextlib.suppress(Exception):  # a failing store is handled just below
            store.move(experiment, run_id, RunStatus.FINALIZING)
        progress()  # the script's last value, read before the stage is removed
        if data and data.outputs:
            try:
                written = upload_outputs(ws, data, outputs, run_id, logger.info)
            except Exception as exc:
                unwritten = mask(str(exc), secret_list)
                logger.error("could not upload the run's data outputs: %s", unwritten)
            with contextlib.suppress(Exception):
                store.set(experiment, run_id, lineage=_lineage(data, staged.stats, written))
        try:
            sync.sync()
            stored = None
            if unwritten is None:  # else the outputs stay here, for another try
                shutil.rmtree(scratch, ignore_errors=True)
        except Exception as exc:  # the files stay here, and the run says where
            stored = exc
            logger.error("could not store the run's files: %s; kept in %s", exc, scratch)
    result = {"status": outcome.status.value, "exit_code": outcome.exit_code,
              "error": outcome.error, "log_tail": "\n".join(outcome.log_tail),
              "local_files": None}
    if unwritten is not None and outcome.status == RunStatus.COMPLETED:
        result.update(status=RunStatus.FAILED.value, error=(
            f"the script completed, but its data outputs could not be uploaded ({unwritten}); "
            f"they are kept on {socket.gethostname()} in {scratch / SCRATCH_OUT}"))
    if stored is not None:
        result.update(status=RunStatus.FAILED.value, local_files=local, error=(
            f"the run's files could not be stored in the workspace ({stored}); they are "
            f"kept on {local.host} in {local.path}: `mltrain runs sync {run_id}` there "
            f"stores them once the workspace takes them"
            + (f" (the script's own ending: {outcome.error})" if outcome.error else "")))
    return result


def _stage_data(target: ComputeTarget, data: DataPlan | None, cwd: Path, scratch: Path,
                outputs: dict[str, str], stop, logger) -> tuple[Staged, dict[str, str]]:
    """The run's data as local paths on this machine (or, for a target that stages them
    where its script runs, tokens that the target replaces there)."""
    if data is None:
        return Staged(), {}
    if not target._stages_data_on_runner:
        return Staged(), {**{i.key: data_token(i.key) for i in data.inputs},
                          **{o.key: data_token(o.key) for o in data.outputs}}
    staged = stage_inputs(data, cwd, scratch / SCRATCH_IN, logger.info, stop)
    return staged, {**staged.paths, **outputs}


def _output_folders(target: ComputeTarget, data: DataPlan | None, cwd: Path,
                    scratch: Path) -> dict[str, str]:
    """Where each data output is on this machine: the folder the script writes, or, for a
    target whose ranks run elsewhere, the folder their files come back to (one per output)."""
    if data is None:
        return {}
    if target._stages_data_on_runner:
        return output_dirs(data, cwd, scratch / SCRATCH_OUT)
    return {o.key: str(scratch / SCRATCH_OUT / o.key) for o in data.outputs}


def _lineage(data: DataPlan, stats: dict[str, dict[str, Any]],
             written: list[dict[str, Any]]) -> dict[str, Any]:
    return {"inputs": [{**i.lineage, **{k: v for k, v in stats.get(i.key, {}).items()
                                        if k in ("files", "bytes", "downloaded_bytes",
                                                 "mounted")}} for i in data.inputs],
            "outputs": written or [{"name": o.key, "datastore": o.datastore, "path": o.path}
                                   for o in data.outputs]}


class ProgressArtifact:
    """A Prefect progress artifact that follows the ``progress`` metric the script logs
    (a fraction 0–1, or a percentage up to 100): the UI shows a live bar for the run."""

    METRIC = "progress"

    def __init__(self, events: Path):
        self.events, self.tail, self.artifact_id = events, event_lines.EventTail(), None

    def __call__(self) -> None:
        try:
            self._update()
        except Exception as exc:  # a view only: the run goes on without it
            get_run_logger().debug("progress artifact: %s", exc)

    def _update(self) -> None:
        latest = None
        for event in self.tail.read(self.events.glob("*.jsonl")):
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
                      outcome: dict[str, Any] | None = None,
                      secrets: list[str] | None = None) -> dict[str, Any]:
    """Publish the run summary, metrics table and outputs listing as Prefect artifacts.

    ``outcome`` (status, exit code, error) describes an ending not yet in the record;
    ``secrets`` are masked wherever they appear (a secret logged as a metric or a tag).
    """
    store = RunStore(open_workspace(workspace))
    record = store.read(experiment, run_id)
    logged = store.events(experiment, run_id)
    metrics, files = event_lines.metrics(logged), store.file_names(experiment, run_id)
    details = {**record.model_dump(mode="json"), **(outcome or {}),
               "tags": event_lines.tags(logged, record.tags),
               "properties": {**event_lines.properties(logged), **record.properties}}
    key = run_id.lower().replace("_", "-")[-60:].strip("-")
    create_markdown_artifact(key=f"run-{key}", markdown=mask(_summary_markdown(details, files),
                                                             secrets or []),
                             description=f"Run {run_id}")
    rows = []
    for name, value in metrics.items():
        table = _as_table(value)
        if table is None:
            rows.append({"metric": name, "value": mask(json.dumps(value)[:200], secrets or [])})
            continue
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        create_table_artifact(key=f"table-{digest}-{key}", description=f"{name} ({run_id})",
                              table=[{c: _cell(v, secrets or []) for c, v in row.items()}
                                     for row in table])
        rows.append({"metric": name, "value": f"table of {len(table)} rows: "
                                              f"artifact table-{digest}-{key}"})
    if rows:
        create_table_artifact(key=f"metrics-{key}", table=rows, description=f"Metrics of {run_id}")
    if files:
        create_table_artifact(key=f"outputs-{key}", description=f"Files of {run_id}",
                              table=[{"file": name} for name in files])
    return {"metrics": metrics, "files": files}


def _as_table(value: Any) -> list[dict[str, Any]] | None:
    """A metric as rows to show as a table in Prefect: a table (``log_table``,
    ``log_row``) one row per entry, a confusion matrix one row per actual class; None for
    anything else."""
    if not isinstance(value, dict):
        return None
    if value.get("schema_type") == "confusion_matrix":
        data = value.get("data") or {}
        labels, matrix = data.get("class_labels") or [], data.get("matrix") or []
        return [{"actual": str(labels[i]) if i < len(labels) else str(i),
                 **{str(labels[j]) if j < len(labels) else str(j): count
                    for j, count in enumerate(row)}} for i, row in enumerate(matrix)]
    if value and all(isinstance(col, list) for col in value.values()):
        length = max(len(col) for col in value.values())
        return [{name: col[i] if i < len(col) else None for name, col in value.items()}
                for i in range(length)]
    return None


def _cell(value: Any, secrets: list[str]) -> Any:
    return value if isinstance(value, int | float | None) else mask(str(value), secrets)


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
    if private_block:
        os.environ.update(take_secret(private_block) or {})
    ws = open_workspace(workspace)
    store = RunStore(ws)
    secrets = json.loads(os.environ.get("MLTRAIN_SECRETS") or "{}")
    if run_id is None:
        if config is None:
            raise ValueError("submit_run needs config= (or run_id= of a prepared run)")
        check_submittable(config)
        if compute_target:
            config = config.model_copy(update={"compute_target": compute_target})
        secrets = {**(config.environment.secrets() if config.environment else {}), **secrets}
        run_id = store.create(experiment, config=config, tags=tags,
                              git=git_provenance(config.source_directory)).run_id
    flow_run_id = str(runtime.flow_run.id)
    ui = os.environ.get("PREFECT_UI_URL")
    record = store.set(experiment, run_id, flow_run_id=flow_run_id, flow_run_url=(
        f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else runtime.flow_run.ui_url))
    watchdog = Watchdog(store, experiment, run_id, flow_run_id)
    watchdog.start()
    try:
        outcome, termination = _run(ws, store, record, secrets, watchdog)
    finally:
        watchdog.stop()
    final = {"exit_code": outcome.get("exit_code"), "error": outcome.get("error"),
             "log_tail": outcome.get("log_tail")}
    if "local_files" in outcome:  # the script ran: its files were stored, or are kept
        final["local_files"] = outcome["local_files"]
    api_url = PREFECT_API_URL.value()
    if not api_url or healthy(api_url, timeout=5):  # no URL: Prefect's own ephemeral server
        try:
            collect_artifacts(ws.url, experiment, run_id, {**final, "status": outcome["status"]},
                              _masked(ws, secrets))
        except Exception as exc:  # artifacts are a view; the run's result stands without them
            get_run_logger().warning("could not publish artifacts: %s", exc)
        APILogHandler().flush()  # the run's log is complete in Prefect once the run has ended
    else:  # each call would wait out the client's retries: the record must not wait for them
        get_run_logger().warning("Prefect's server does not answer: the run's artifacts are "
                                 "not published; its record and files are complete")
    try:
        record = store.move(experiment, run_id, RunStatus(outcome["status"]), **final)
    except Exception as exc:  # the store cannot take the record: Prefect has the ending
        ending = f"{outcome['status']} ({final['error']})" if final["error"] \
            else outcome["status"]
        return Failed(message=f"the run ended {ending}, and its record could not be "
                              f"written: {exc}")
    try:  # a child the script left running ends with it
        store.end_children(experiment, run_id, canceled=record.status == RunStatus.CANCELED)
    except Exception as exc:
        get_run_logger().warning("could not end the run's child runs: %s", exc)
    if termination:
        raise termination  # Prefect's engine finishes the cancel it started
    if record.status == RunStatus.CANCELED:
        return Cancelled(message=record.error or "canceled")
    if record.status == RunStatus.FAILED:
        return Failed(message=record.error or "failed")
    return record.model_dump(mode="json")


def _run(ws: Workspace, store: RunStore, record: RunRecord, secrets: dict[str, str],
         watchdog: Watchdog) -> tuple[dict[str, Any], TerminationSignal | None]:
    """Prepare and execute the run; how it ended, and Prefect's cancel if that ended it."""
    experiment, run_id, config = record.experiment, record.run_id, record.config
    try:
        watchdog.tick()
        if watchdog.cancel_reason:
            return {"status": "Canceled", "error": watchdog.cancel_reason}, None
        store.move(experiment, run_id, RunStatus.PREPARING)
        if not record.snapshot_id:
            store.set(experiment, run_id,
                      snapshot_id=snapshot(ws.url, config.source_directory))
        target = resolve_compute_target(config.compute_target)
        check_submittable(config, target)
        data = plan_data(ws, config.arguments)  # bad data stops the run before any build
        target.check(stop=lambda: bool(watchdog.cancel_reason),
                     distributed=config.distributed_job_config)
        prepared = build_environment(target, config.environment, ws.url,
                                     run_dir(experiment, run_id), watchdog)
        store.move(experiment, run_id, RunStatus.STARTING, environment_build=prepared.record)
        return execute(ws.url, experiment, run_id, target, prepared, secrets, watchdog,
                       data), None
    except TerminationSignal as exc:  # a cancel from the UI/API, delivered by the worker
        return {"status": "Canceled", "error": "canceled from Prefect"}, exc
    except RunCanceledError:  # the preparation stopped for a cancel: the script never ran
        return {"status": "Canceled", "error": watchdog.cancel_reason}, None
    except Exception as exc:  # named by the phase the run was in
        now = store.read(experiment, run_id)
        phases = [change.status for change in now.status_history
                  if change.status != RunStatus.FINALIZING]  # the way out of Running
        return {"status": "Failed", "error": f"{phases[-1].value}: {exc}",
                "exit_code": now.exit_code}, None


def _run_env(record: RunRecord, secrets: dict[str, str]) -> dict[str, str]:
    """The run's own variables: its environment's (and its secrets), and the run's ids."""
    environment = record.config.environment
    return {**(environment.environment_variables if environment else {}), **secrets,
            "MLTRAIN_RUN_ID": record.run_id, "MLTRAIN_EXPERIMENT": record.experiment,
            "PYTHONUNBUFFERED": "1"}


def _local_env(ws: Workspace, stage: Path, run_env: dict[str, str]) -> dict[str, str]:
    """A process on this machine: this process's environment, minus ours (the run's secrets
    and the store's credentials among them), plus the run's."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "PREFECT__FLOW_RUN_ID", "MLTRAIN_SECRETS", "MLTRAIN_WORKSPACE_OPTIONS")}
    return {**env, **ws.to_env(credentials=False), **run_env, CONTEXT_DIR: str(stage)}


def _masked(ws: Workspace, secrets: dict[str, str]) -> list[str]:
    """What never leaves in clear: the run's secret values and the store's credentials."""
    return [*secrets.values(), *ws.secret_values()]


def _summary_markdown(details: dict[str, Any], files: list[str]) -> str:
    duration = ""
    if details.get("started_at"):  # the run ends just after its artifacts are published
        duration = f"{(details.get('ended_at') or time.time()) - details['started_at']:.1f} s"
    rows = [("Status", details["status"]), ("Exit code", details.get("exit_code")),
            ("Duration", duration), ("Snapshot", (details.get("snapshot_id") or "")[:12]),
            ("Compute target", details.get("compute_target")),
            ("Tags", ", ".join(f"{k}={v}" for k, v in (details.get("tags") or {}).items())),
            ("Properties", ", ".join(f"{k}={v}" for k, v in
                                     (details.get("properties") or {}).items())),
            ("Error", details.get("error"))]
    table = "\n".join(f"| {k} | {v if v is not None else ''} |" for k, v in rows)
    text = f"# Run `{details['run_id']}`\n\n| | |\n|---|---|\n{table}\n"
    lineage = details.get("lineage") or {}
    if lineage.get("inputs") or lineage.get("outputs"):
        text += "\n## Data\n\n| | Name | Data | Files |\n|---|---|---|---|\n"
        for i in lineage.get("inputs", []):
            what = (f"dataset {i['dataset']}:{i['version']}" if i.get("dataset") else
                    f"{i.get('datastore') or ', '.join(i.get('datastores', []))}:"
                    f"{i.get('path') or ', '.join(i.get('paths', []))}")
            text += (f"| read ({'mount' if i.get('mounted') else 'download'}) | {i['name']} | "
                     f"{what} (manifest {str(i.get('manifest_hash'))[:12]}) | "
                     f"{i.get('files', '')} |\n")
        for o in lineage.get("outputs", []):
            reg = o.get("registered")
            text += (f"| wrote | {o['name']} | {o['datastore']}:{o['path']}"
                     + (f" (dataset {reg['name']}:{reg['version']})" if reg else "")
                     + f" | {o.get('files', '')} |\n")
    if details.get("log_tail"):
        text += f"\n## Log tail\n\n```\n{details['log_tail']}\n```\n"
    if files:
        text += "\n## Files\n\n" + "\n".join(f"- `{f}`" for f in files[:200]) + "\n"
    return text
