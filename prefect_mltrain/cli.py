"""``mltrain``: submit runs, follow them, and manage compute targets from a terminal.

Every command takes ``--workspace URL`` (default: ``mltrain.json`` found upwards, else
``./.mltrain``) and ``--json`` (one JSON document on stdout, for scripts). Exit codes:
0 success, 1 the run ended Failed or Canceled, 2 bad input or an unusable target/store.
"""

from __future__ import annotations

import json as jsonlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from cyclopts import App, Parameter

from .errors import MLTrainError, WorkspaceError


@Parameter(name="*")
@dataclass
class Common:
    workspace: str | None = None
    "Workspace URL (default: mltrain.json found upwards, else ./.mltrain)."
    json: bool = False
    "Print one JSON document (for scripts) instead of text."


app = App(name="mltrain", version_flags=[],
          help="Submit training runs, follow them, and manage compute targets.")
runs_app = App(name="runs", help="List and inspect runs.")
compute_app = App(name="compute", help="Compute targets: a saved block, a work pool and a "
                                       "deployment of submit-run each.")
env_app = App(name="env", help="Environments: list the curated and registered ones, build one.")
server_app = App(name="server", help="The embedded local Prefect server.")
datastore_app = App(name="datastore", help="Datastores: named places for data on any fsspec "
                                           "store.")
dataset_app = App(name="dataset", help="Datasets: registered, versioned files in datastores.")
for sub in (runs_app, compute_app, env_app, server_app, datastore_app, dataset_app):
    app.command(sub)

_NO_COMMON = Common()


def _workspace(common: Common):
    from .workspace import Workspace

    if common.workspace:
        return Workspace(common.workspace)
    try:
        return Workspace.from_config()
    except WorkspaceError:
        return Workspace()


def _emit(common: Common, data: Any, text: str) -> None:
    print(jsonlib.dumps(data, indent=1, default=str) if common.json else text)


def _emit_table(common: Common, rows: list[dict[str, Any]], columns: dict[str, str],
                empty: str) -> None:
    """``rows`` as JSON, or as a table of ``columns`` (key -> heading) on stdout."""
    if common.json or not rows:
        _emit(common, rows, empty)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for heading in columns.values():
        table.add_column(heading, overflow="fold")
    for row in rows:
        table.add_row(*("-" if row.get(key) is None else str(row[key]) for key in columns))
    Console(soft_wrap=True).print(table)


def _tty() -> bool:
    return sys.stderr.isatty()


def _environment(spec: str, ws: Any):
    """``requirements.txt`` | ``environment.yml`` | a curated or registered name."""
    from .environment import Environment

    path = Path(spec)
    if path.suffix in (".yml", ".yaml"):
        return Environment.from_conda_specification(path.stem, path)
    if path.suffix == ".txt" or path.is_file():
        return Environment.from_pip_requirements(path.stem, path)
    return Environment.get(ws, spec)


# -- runs ---------------------------------------------------------------------------------------


@app.command
def submit(source_directory: str, script: str, *arguments: str,
           compute: Annotated[str, Parameter(alias="-c")] = "local",
           env: str | None = None,
           experiment: Annotated[str, Parameter(alias="-e")] = "default",
           tag: Annotated[tuple[str, ...], Parameter(alias="-t")] = (),
           max_run_duration_seconds: int | None = None,
           wait: bool = True, common: Common = _NO_COMMON) -> int:
    """Submit SCRIPT in SOURCE_DIRECTORY as a run; arguments after ``--`` go to the script.

    Parameters
    ----------
    source_directory
        The project folder (captured as the run's snapshot).
    script
        The entry script, relative to the project folder.
    arguments
        Arguments for the script (put them after ``--``).
    compute
        Compute target: ``local`` or a name from ``mltrain compute list``.
    env
        Environment: a requirements.txt, a conda environment.yml, or a curated/registered name.
    experiment
        Experiment the run belongs to.
    tag
        ``key=value`` tag of the run; repeatable.
    max_run_duration_seconds
        Cancel the run after this many seconds.
    wait
        Follow the run's output until it ends (``--no-wait``: print its id and return).
    """
    from .config import ScriptRunConfig
    from .run import Experiment

    bad = [t for t in tag if "=" not in t]
    if bad:
        raise MLTrainError(f"tags are key=value, not {bad[0]!r}")
    ws = _workspace(common)
    config = ScriptRunConfig(
        source_directory=source_directory, script=script, arguments=list(arguments),
        compute_target=compute, environment=_environment(env, ws) if env else None,
        max_run_duration_seconds=max_run_duration_seconds)
    run = Experiment(ws, experiment).submit(config, tags=dict(t.split("=", 1) for t in tag))
    if not wait:
        _emit(common, {"run_id": run.id, "status": run.get_status()}, run.id)
        return 0
    details = run.wait_for_completion(show_output=not common.json, raise_on_error=False)
    if common.json:
        _emit(common, details, "")
    return 0 if details["status"] == "Completed" else 1


@app.command
def sweep(source_directory: str | None = None, script: str | None = None, *arguments: str,
          param: Annotated[tuple[str, ...], Parameter(alias="-p", allow_leading_hyphen=True)] = (),
          metric: str | None = None, goal: Literal["max", "min"] | None = None,
          sampling: Literal["random", "grid", "bayesian"] | None = None,
          seed: int | None = None, max_runs: int | None = None,
          concurrent: int | None = None, max_duration_minutes: float | None = None,
          policy: str | None = None, compute: Annotated[str | None, Parameter(alias="-c")] = None,
          env: str | None = None,
          experiment: Annotated[str | None, Parameter(alias="-e")] = None,
          file: Annotated[str | None, Parameter(alias="-f")] = None,
          wait: bool = True, common: Common = _NO_COMMON) -> int:
    """Sweep SCRIPT's hyperparameters (HyperDrive): each trial is a run of SCRIPT with its
    parameters appended to the arguments (``--lr 0.01``).

    Example: ``mltrain sweep proj train.py --param "--lr=loguniform(-6,-1)" --param
    "--batch=choice(16,32)" --metric accuracy --goal max --max-runs 20 --concurrent 4
    --policy bandit:slack=0.1,interval=1,delay=2``, or the same keys in a YAML file
    (``mltrain sweep -f sweep.yaml``; ``param`` is a mapping there); options given here win.

    Parameters
    ----------
    source_directory
        The project folder (captured once, for every trial).
    script
        The entry script, relative to the project folder.
    arguments
        Arguments every trial gets (put them after ``--``).
    param
        ``NAME=EXPRESSION``, e.g. ``--lr=loguniform(-6,-1)``; repeatable.
    metric
        The primary metric the script logs.
    goal
        Maximize or minimize it.
    sampling
        random (default), grid (choice only) or bayesian (choice, uniform, quniform).
    seed
        Fixes random choices: the same seed gives the same trials.
    max_runs
        Trials at most (default 20).
    concurrent
        Trials at once (default: all).
    max_duration_minutes
        The sweep's time limit.
    policy
        Early termination: ``bandit:slack=0.1,interval=1,delay=2``, ``median:delay=5``,
        ``truncation:percent=20`` or ``none``.
    compute
        Where trials run: ``local`` or a name from ``mltrain compute list``.
    env
        Environment: a requirements.txt, a conda environment.yml, or a curated/registered name.
    experiment
        Experiment of the sweep and its trials.
    file
        A YAML file with these keys (source_directory, script, arguments, param, ...).
    wait
        Show the trial table until the sweep ends (``--no-wait``: print its id and return).
    """
    from .config import ScriptRunConfig
    from .hyperdrive.config import HyperDriveConfig
    from .hyperdrive.parameters import parse_expression
    from .hyperdrive.policies import parse_policy
    from .hyperdrive.sampling import make_sampling
    from .run import Experiment

    spec: dict[str, Any] = {}
    if file:
        import yaml

        spec = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(spec, dict):
            raise MLTrainError(f"{file} must hold a mapping of sweep settings")
        base = Path(file).parent
        if spec.get("source_directory"):
            spec["source_directory"] = str(base / spec["source_directory"])
    given = {"source_directory": source_directory, "script": script, "metric": metric,
             "goal": goal, "sampling": sampling, "seed": seed, "max_runs": max_runs,
             "concurrent": concurrent, "max_duration_minutes": max_duration_minutes,
             "policy": policy, "compute": compute, "env": env, "experiment": experiment}
    spec.update({k: v for k, v in given.items() if v is not None})
    if arguments:
        spec["arguments"] = list(arguments)
    params = dict(spec.get("param") or {})
    for item in param:
        name, eq, expression = item.partition("=")
        if not eq or not name:
            raise MLTrainError(f"--param takes NAME=EXPRESSION, e.g. "
                               f"'--lr=loguniform(-6,-1)', not {item!r}")
        params[name] = expression
    missing = [k for k in ("source_directory", "script", "metric") if not spec.get(k)]
    if missing or not params:
        raise MLTrainError(f"a sweep needs {', '.join(missing + ([] if params else ['param']))}"
                           ": give them as options or in the YAML file (-f)")
    ws = _workspace(common)
    try:
        for name, expression in params.items():
            if isinstance(expression, str):
                params[name] = parse_expression(expression)
        hd = HyperDriveConfig(
            run_config=ScriptRunConfig(
                source_directory=spec["source_directory"], script=spec["script"],
                arguments=list(spec.get("arguments") or []),
                compute_target=spec.get("compute") or "local",
                environment=_environment(spec["env"], ws) if spec.get("env") else None),
            hyperparameter_sampling=make_sampling(spec.get("sampling") or "random", params,
                                                  spec.get("seed")),
            policy=parse_policy(spec.get("policy") or "none"),
            primary_metric_name=spec["metric"],
            primary_metric_goal="MINIMIZE" if str(spec.get("goal", "max")).lower().startswith(
                "min") else "MAXIMIZE",
            max_total_runs=int(spec.get("max_runs") or 20),
            max_concurrent_runs=spec.get("concurrent"),
            max_duration_minutes=float(spec.get("max_duration_minutes") or 10080))
    except ValueError as exc:  # a parameter, sampling or policy that does not parse
        raise MLTrainError(str(exc)) from None
    hd_run = Experiment(ws, spec.get("experiment") or "default").submit(hd)
    if not wait:
        _emit(common, {"run_id": hd_run.id, "status": hd_run.get_status()}, hd_run.id)
        return 0
    details = hd_run.wait_for_completion(show_output=not common.json, raise_on_error=False)
    if common.json:
        _emit(common, {**details, "trials": hd_run.get_children_sorted_by_primary_metric()}, "")
    return 0 if details["status"] == "Completed" else 1


@app.command
def tensorboard(*run_ids: str, port: int = 6006, seconds: float | None = None,
                common: Common = _NO_COMMON) -> int:
    """Start TensorBoard over the ``logs/`` of RUN_IDs (a sweep: all its trials), running or
    finished, and print its URL; runs until Ctrl-C.

    Parameters
    ----------
    run_ids
        Runs to show side by side.
    port
        TensorBoard's port on 127.0.0.1.
    seconds
        Stop after this many seconds (default: until Ctrl-C).
    """
    import time

    from .run import Run
    from .tensorboard import Tensorboard

    if not run_ids:
        raise MLTrainError("name at least one run: mltrain tensorboard RUN_ID [RUN_ID...]")
    ws = _workspace(common)
    board = Tensorboard([Run.get(ws, run_id) for run_id in run_ids], port=port)
    url = board.start()
    _emit(common, {"url": url, "runs": [r.id for r in board.runs]}, f"TensorBoard: {url}")
    sys.stdout.flush()
    try:
        deadline = time.monotonic() + seconds if seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


@app.command
def demo(common: Common = _NO_COMMON) -> int:
    """Copy the demo project to ./mltrain-demo and run it on local compute."""
    project = Path("mltrain-demo")
    project.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).parent / "demo" / "train.py", project / "train.py")
    code = submit(str(project), "train.py", "--alpha", "0.1", experiment="demo",
                  tag=("kind=ridge",), max_run_duration_seconds=600, common=common)
    if code == 0 and not common.json:
        print("\nNext: `mltrain runs list`, `mltrain runs show <id>`, "
              "`mltrain download <id> --prefix outputs/`")
    return code


@runs_app.command(name="list")
def runs_list(experiment: Annotated[str | None, Parameter(alias="-e")] = None,
              limit: int = 50, common: Common = _NO_COMMON) -> int:
    """List runs, newest first.

    Parameters
    ----------
    experiment
        Only this experiment's runs.
    limit
        At most this many runs per experiment.
    """
    from .store import RunStore
    from .watch import Watcher

    store = RunStore(_workspace(common))
    watcher = Watcher(store)  # a run whose runner died shows as ended, with the reason
    rows = []
    for name in [experiment] if experiment else store.experiments():
        records = store.read_many(name, [e.run_id for e in store.entries(name, limit=limit)])
        rows += [{"run_id": r.run_id, "experiment": name, "status": r.status.value,
                  "created_at": r.created_at}
                 for r in map(watcher.settle, records)]
    rows.sort(key=lambda r: r["created_at"] or 0, reverse=True)
    _emit_table(common, rows, {"run_id": "RUN", "status": "STATUS", "experiment": "EXPERIMENT"},
                "no runs yet")
    return 0


@runs_app.command(name="show")
def runs_show(run_id: str, common: Common = _NO_COMMON) -> int:
    """Show a run: status, exit code, error, metrics and files."""
    from .run import Run
    from .watch import Watcher

    run = Run.get(_workspace(common), run_id)
    Watcher(run._store).settle(run._record())
    sweep = hasattr(run, "get_children_sorted_by_primary_metric")
    details = {**run.get_details(), "files": run.get_file_names(), "metrics": (
        {} if sweep else run.get_metrics())}
    keys = ("run_id", "status", "exit_code", "error", "snapshot_id", "compute_target",
            "flow_run_url", "tags", "metrics", "files")
    if sweep:
        details["trials"] = run.get_children_sorted_by_primary_metric()
        keys = keys[:-2] + ("files",)
    _emit(common, details, "\n".join(f"{k}: {details.get(k)}" for k in keys))
    if sweep and not common.json:
        from rich.console import Console

        from .hyperdrive.report import rich_table

        state = run._store.ws.read_json(f"{run._dir}/sweep.json", None)
        if state:
            Console(soft_wrap=True).print(rich_table(state))
    return 0


@runs_app.command(name="sync")
def runs_sync(run_id: str, common: Common = _NO_COMMON) -> int:
    """Store the files an ended run left on this machine, because the workspace could not
    take them or its runner died (its details name them: ``local_files``)."""
    from .execution import store_local_files
    from .store import RunStore

    store = RunStore(_workspace(common))
    uploaded = store_local_files(store, store.experiment_of(run_id), run_id)
    _emit(common, {"run_id": run_id, "uploaded_files": uploaded},
          f"stored {uploaded} file(s) of {run_id}" if uploaded else
          f"run {run_id} has no files waiting to be stored")
    return 0


@runs_app.command(name="reindex")
def runs_reindex(experiment: Annotated[str | None, Parameter(alias="-e")] = None,
                 common: Common = _NO_COMMON) -> int:
    """Make the index that lists runs again from their records (after copying run folders
    into the workspace by hand, or restoring some from a backup).

    Parameters
    ----------
    experiment
        Only this experiment.
    """
    from .store import RunStore

    store = RunStore(_workspace(common))
    rows = []
    for name in [experiment] if experiment else store.experiments():
        added, removed = store.reindex(name)
        rows.append({"experiment": name, "added": added, "removed": removed})
    _emit(common, rows, "\n".join(f"{r['experiment']}: {r['added']} entries added, "
                                  f"{r['removed']} removed" for r in rows) or "no experiments")
    return 0


@app.command
def logs(run_id: str, follow: Annotated[bool, Parameter(alias="-f")] = False,
         common: Common = _NO_COMMON) -> int:
    """Print a run's output (``--follow``: until the run ends)."""
    from .store import RunStore
    from .watch import LogFollower, follow_run

    store = RunStore(_workspace(common))
    experiment = store.experiment_of(run_id)
    if follow:
        record = follow_run(store, experiment, run_id, show_output=True)
        return 0 if record.status == "Completed" else 1
    lines = LogFollower(store, experiment, run_id).new_lines()
    _emit(common, lines, "\n".join(lines))
    return 0


@app.command
def download(run_id: str, name: str | None = None, prefix: str = "outputs/",
             output_directory: Annotated[str, Parameter(alias="-o")] = ".",
             common: Common = _NO_COMMON) -> int:
    """Download one file of a run (NAME), or every file under ``--prefix``.

    Parameters
    ----------
    name
        One stored file, e.g. ``outputs/model.pkl``; saved under the same relative path.
    prefix
        Without NAME: download every file whose name starts with this.
    output_directory
        Folder to download into.
    """
    from .run import Run

    run = Run.get(_workspace(common), run_id)
    if name:
        paths = [run.download_file(name, Path(output_directory) / name)]
    else:
        paths = run.download_files(prefix=prefix, output_directory=output_directory,
                                   progress=_tty() and not common.json)
    _emit(common, [str(p) for p in paths], "\n".join(str(p) for p in paths))
    return 0


@app.command
def cancel(run_id: str, common: Common = _NO_COMMON) -> int:
    """Ask a run to stop: its script (every rank, every container) is killed, outputs kept."""
    from .run import Run

    run = Run.get(_workspace(common), run_id)
    run.cancel()
    status = run.get_status()
    _emit(common, {"run_id": run_id, "cancel_requested": True, "status": status},
          f"cancel requested ({status})")
    return 0


@app.command
def snapshot(source_directory: str, common: Common = _NO_COMMON) -> int:
    """Preview what a submit would capture from SOURCE_DIRECTORY (after ignore files); a
    tree over the workspace's snapshot budget is an error, as at submit."""
    from .snapshot import preview_snapshot

    files = preview_snapshot(source_directory, _workspace(common))
    total = sum(size for _, size in files)
    _emit(common, files, "\n".join(f"{size:>12}  {name}" for name, size in files)
          + f"\n{len(files)} files, {total} bytes")
    return 0


# -- compute targets ----------------------------------------------------------------------------


@compute_app.command(name="create")
def compute_create(name: str, type: Literal["local", "docker", "dask", "spark"] = "local",
                   base_url: str | None = None, image: str | None = None,
                   network_mode: str | None = None, shm_size: str | None = None,
                   mem_limit: str | None = None, cpus: float | None = None,
                   gpus: str | None = None, address: str | None = None,
                   scheduler_file: str | None = None, cluster_class: str | None = None,
                   cluster_kwargs: str | None = None, concurrency_limit: int | None = None,
                   python: str | None = None, master: str | None = None,
                   spark_conf: str | None = None, master_ui: str | None = None,
                   executor_python: str | None = None, common: Common = _NO_COMMON) -> int:
    """Create or update a compute target: its block, work pool NAME and deployment
    ``submit-run/NAME``. Then start a worker where the target lives:
    ``prefect worker start --pool NAME``.

    Parameters
    ----------
    name
        Name of the target, its work pool and its deployment.
    type
        Kind of target.
    base_url
        docker: engine address, e.g. unix:///var/run/docker.sock.
    image
        docker: image of runs whose environment names none.
    network_mode
        docker: e.g. host.
    shm_size
        docker: size of /dev/shm, e.g. 2g.
    mem_limit
        docker: memory limit, e.g. 8g.
    cpus
        docker: CPU limit in cores.
    gpus
        docker: 'all', a count, or device ids.
    address
        dask: scheduler address, e.g. tcp://10.0.0.5:8786.
    scheduler_file
        dask: a scheduler file (dask-mpi, dask-jobqueue).
    cluster_class
        dask: a cluster class created per run, e.g. distributed.LocalCluster.
    cluster_kwargs
        dask: JSON keyword arguments of the cluster class.
    concurrency_limit
        At most this many runs at once on this target (the work pool's limit).
    python
        The workers' Python (with prefect-mltrain), e.g. /opt/venv/bin/python: each run
        then starts ~3 s sooner (no supervisor process). It must exist on every worker.
    master
        spark: master, e.g. spark://10.0.0.7:7077 or local[*].
    spark_conf
        spark: JSON Spark properties, e.g. '{"spark.executor.memory": "2g"}'.
    master_ui
        spark: the standalone master's web UI (default http://MASTER_HOST:8080).
    executor_python
        spark: the executors' interpreter, at that path on every worker.
    """
    from .compute.registry import from_options
    from .pools import create_target

    settings = {k: v for k, v in {
        "base_url": base_url, "image": image, "network_mode": network_mode,
        "shm_size": shm_size, "mem_limit": mem_limit, "cpus": cpus, "gpus": gpus,
        "address": address, "scheduler_file": scheduler_file, "cluster_class": cluster_class,
        "cluster_kwargs": _json_option("--cluster-kwargs", cluster_kwargs),
        "master": master, "conf": _json_option("--spark-conf", spark_conf),
        "master_ui": master_ui, "executor_python": executor_python,
    }.items() if v is not None}
    target = from_options(type, settings)
    info = create_target(name, target, concurrency_limit=concurrency_limit, python=python)
    verb = "created" if info["created"] else "updated"
    _emit(common, info, f"{verb} compute target {name!r} ({info['type']}): work pool {name!r}, "
          f"deployment {info['deployment']!r}\nstart its worker with: "
          f"prefect worker start --pool {name}")
    return 0


def _json_option(flag: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return jsonlib.loads(value)
    except ValueError as exc:
        raise MLTrainError(f"{flag} must be JSON, e.g. '{{\"n_workers\": 4}}': {exc}") from None


@compute_app.command(name="list")
def compute_list(common: Common = _NO_COMMON) -> int:
    """List compute targets with their work pools."""
    from .pools import list_targets

    _emit_table(common, list_targets(),
                {"name": "NAME", "type": "TYPE", "work_pool": "WORK POOL"}, "no targets")
    return 0


@compute_app.command(name="delete")
def compute_delete(name: str, common: Common = _NO_COMMON) -> int:
    """Delete a compute target's deployment, work pool and block."""
    from .pools import delete_target

    done = delete_target(name)
    _emit(common, {"name": name, "deleted": done},
          f"deleted {', '.join(k for k, v in done.items() if v)} of {name!r}")
    return 0


# -- environments -------------------------------------------------------------------------------


@env_app.command(name="list")
def env_list(common: Common = _NO_COMMON) -> int:
    """List curated and registered environments (latest versions)."""
    from .environment import Environment

    rows = [{"name": name, "version": env.version, "hash": env.spec_hash()[:12],
             "packages": env.python.conda_dependencies.pip_packages}
            for name, env in Environment.list(_workspace(common)).items()]
    _emit_table(common, [{**r, "packages": " ".join(r["packages"])} for r in rows]
                if not common.json else rows,
                {"name": "NAME", "version": "VERSION", "hash": "HASH", "packages": "PACKAGES"},
                "no environments")
    return 0


@env_app.command(name="build")
def env_build(spec: str, common: Common = _NO_COMMON) -> int:
    """Build an environment (or find it cached): a requirements.txt, an environment.yml,
    or a curated/registered name."""
    from .environment_build import build_environment

    env = _environment(spec, _workspace(common))
    if _tty() and not common.json:
        from rich.console import Console

        with Console(stderr=True).status(f"building {env.name}") as status:
            built = build_environment(env.build_spec(), on_line=lambda line: status.update(
                f"building {env.name}: {line[:100]}"))
    else:
        built = build_environment(env.build_spec())
    info = {"name": env.name, **built.record()}
    _emit(common, info, f"{env.name}: {built.interpreter} ("
          + ("cached" if built.cached else f"built in {built.build_seconds:.1f} s") + ")")
    return 0


# -- the embedded server ------------------------------------------------------------------------


@server_app.command(name="start")
def server_start(common: Common = _NO_COMMON) -> int:
    """Start the embedded Prefect server (SQLite under MLTRAIN_HOME) unless it runs."""
    from . import server

    info = server.ensure_server()
    _emit(common, info, f"Prefect server at {info['api_url']} (UI: {info['ui_url']})")
    return 0


@server_app.command(name="stop")
def server_stop(common: Common = _NO_COMMON) -> int:
    """Stop the embedded Prefect server and the warm runners."""
    from . import runner, server

    runner.stop_all()
    stopped = server.stop_server()
    _emit(common, {"stopped": stopped}, "stopped" if stopped else "not running")
    return 0


@server_app.command(name="status")
def server_status(common: Common = _NO_COMMON) -> int:
    """Say whether the embedded Prefect server runs, and where."""
    from . import server

    info = server.running_server() or {"running": False}
    _emit(common, info, f"running at {info['api_url']}" if "api_url" in info else "not running")
    return 0


# -- data -------------------------------------------------------------------------------------


@datastore_app.command(name="list")
def datastore_list(common: Common = _NO_COMMON) -> int:
    """List the workspace's datastores."""
    from .data import Datastore
    from .data.datastore import default_name

    ws = _workspace(common)
    default = default_name(ws)
    _emit_table(common, [{"name": d.name, "url": d.url, "credentials": d.credentials,
                          "default": d.name == default} for d in Datastore.list(ws)],
                {"name": "NAME", "url": "URL", "credentials": "CREDENTIALS BLOCK",
                 "default": "DEFAULT"}, "no datastores")
    return 0


@datastore_app.command(name="register")
def datastore_register(name: str, url: str, credentials: str | None = None,
                       storage_options: str | None = None, overwrite: bool = False,
                       common: Common = _NO_COMMON) -> int:
    """Register URL (any fsspec URL or a folder) as datastore NAME; --credentials names the
    Prefect block with its secrets, --storage-options (JSON) the non-secret options."""
    from .data import Datastore

    ds = Datastore.register(_workspace(common), name, url, credentials=credentials,
                            storage_options=_json_option("--storage-options", storage_options),
                            overwrite=overwrite)
    _emit(common, {"name": ds.name, "url": ds.url, "credentials": ds.credentials},
          f"registered datastore {ds.name!r}: {ds.url}")
    return 0


@datastore_app.command(name="upload")
def datastore_upload(src_dir: str, name: str | None = None, target_path: str | None = None,
                     overwrite: bool = False, common: Common = _NO_COMMON) -> int:
    """Upload the files of SRC_DIR to datastore --name (default: the default datastore)."""
    from .data import Datastore

    ds = Datastore.get(_workspace(common), name) if name else Datastore.get_default(
        _workspace(common))
    ref = ds.upload(src_dir, target_path=target_path, overwrite=overwrite,
                    show_progress=_tty() and not common.json)
    _emit(common, {"datastore": ds.name, "path": ref.path_on_datastore},
          f"uploaded {src_dir} to {ds.full_url(ref.path_on_datastore)}")
    return 0


@datastore_app.command(name="download")
def datastore_download(target_path: str, name: str | None = None, prefix: str | None = None,
                       overwrite: bool = False, common: Common = _NO_COMMON) -> int:
    """Download the files under --prefix of datastore --name into TARGET_PATH."""
    from .data import Datastore

    ws = _workspace(common)
    ds = Datastore.get(ws, name) if name else Datastore.get_default(ws)
    count = ds.download(target_path, prefix=prefix, overwrite=overwrite,
                        show_progress=_tty() and not common.json)
    _emit(common, {"datastore": ds.name, "downloaded": count},
          f"downloaded {count} files from {ds.full_url(prefix or '')} to {target_path}")
    return 0


@dataset_app.command(name="list")
def dataset_list(common: Common = _NO_COMMON) -> int:
    """List registered datasets (latest versions)."""
    from .data.dataset import list_datasets, versions

    ws = _workspace(common)
    rows = []
    for name in list_datasets(ws):
        latest = versions(ws, name)[-1]
        rows.append({"name": name, "version": latest["version"],
                     "type": latest["definition"]["type"], "files": latest["file_count"],
                     "bytes": latest["total_bytes"], "hash": latest["manifest_hash"][:12]})
    _emit_table(common, rows, {"name": "NAME", "version": "VERSION", "type": "TYPE",
                               "files": "FILES", "bytes": "BYTES", "hash": "MANIFEST"},
                "no datasets")
    return 0


@dataset_app.command(name="show")
def dataset_show(name: str, version: str = "latest", common: Common = _NO_COMMON) -> int:
    """Show a dataset version: its paths, and its files with their sizes and tokens."""
    from .data.dataset import _read_version

    entry = _read_version(_workspace(common), name, version)
    text = [f"dataset {name}:{entry['version']} ({entry['definition']['type']}), "
            f"{entry['file_count']} files, {entry['total_bytes']} bytes, manifest "
            f"{entry['manifest_hash'][:12]}",
            *(f"  path {p['datastore']}:{p['path']}" for p in entry["definition"]["paths"]),
            *(f"  {f['rel']}  {f['size']}" for f in entry["manifest"][:50])]
    if entry["file_count"] > 50:
        text.append(f"  ... and {entry['file_count'] - 50} more (--json lists them all)")
    _emit(common, entry, "\n".join(text))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mltrain``: errors become one line on stderr and exit code 2."""
    from pydantic import ValidationError

    try:
        code = app(sys.argv[1:] if argv is None else argv, result_action="return_value")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        print(f"mltrain: error: {where + ': ' if where else ''}{message}", file=sys.stderr)
        return 2
    except (MLTrainError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"mltrain: error: {exc}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
