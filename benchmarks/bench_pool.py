"""f. A no-op run through a work pool and a real ``prefect worker``: ``Experiment.submit()`` to a
pooled ``LocalCompute`` target vs. ``run_deployment()`` of a no-op ``@flow`` deployed to the
same pool (Prefect's floor), and the same submit on local compute; interleaved."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    PHASES,
    RUN_TIMEOUT,
    RUNNER_MODULE,
    VENV_BIN,
    check,
    cols,
    create_target,
    delete_target,
    deployment_flow_run_id,
    every_rep_checks,
    first_submit,
    fmt,
    fmt_ratio,
    fresh_server_if_alone,
    interleaved,
    log,
    make_noop_project,
    phases_of,
    prefect_env,
    ratio_head,
    ratios,
    read_stamp,
    row,
    scratch,
    start_group,
    start_server,
    stats_table,
    stop_groups,
    submit_and_wait,
    summarize_phases,
    summarize_runs,
    tail,
    time_imports,
    using_server,
)

TITLE = "work pool"
POOL = "bench-pool"  # the compute target, its work pool and the peer's pool
PEER_DEPLOYMENT = "noop/bench-noop"  # flow name / deployment name
# The worker asks for scheduled runs every second (Prefect's default: 10 s); a run is due at
# once, so a prefetch of 1 s takes it at the next poll, as any prefetch would.
POOL_WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
NOOP_FLOW_PY = '''\
import runpy

from prefect import flow


@flow
def noop():
    runpy.run_path({script!r})  # the same noop.py, in the flow's own process
'''
POOL_PHASES = [PHASES[0], ("flow run handed over and started (Queued→Preparing)", "Queued",
                           "Preparing"), *PHASES[2:]]
POOL_IMPORTS = [  # what each flow run's two fresh processes on the worker import
    ("1st process, the worker's supervisor: `import prefect.runner._workspace_supervisor`",
     VENV_BIN, "import prefect.runner._workspace_supervisor"),
    ("2nd process, the peer's engine: `import prefect.engine`", VENV_BIN,
     "import prefect.engine"),
    (f"2nd process, our engine: `import prefect.engine, {RUNNER_MODULE}`", VENV_BIN,
     f"import prefect.engine, {RUNNER_MODULE}"),
]
FLOW_RUN_PHASES = [  # over the Prefect flow run's states ("submit", "return": the client's)
    ("submit → flow run created (Scheduled)", "submit", "SCHEDULED"),
    ("the worker's poll takes it (Scheduled→Pending)", "SCHEDULED", "PENDING"),
    ("flow-run process: interpreter, imports, flow load (Pending→Running)", "PENDING",
     "RUNNING"),
    ("the flow itself (Running→Completed)", "RUNNING", "COMPLETED"),
    ("client notices the end (Completed → return)", "COMPLETED", "return"),
]


def flow_run_phases(flow_run_id: Any, t0: float, t_end: float) -> dict[str, float]:
    """FLOW_RUN_PHASES of a flow run, from its states' timestamps and the client's times."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    history = [{"status": "submit", "time": t0},
               *sorted(({"status": st.type.value, "time": st.timestamp.timestamp()}
                        for st in states), key=lambda e: e["time"]),
               {"status": "return", "time": t_end}]
    return phases_of({"status_history": history}, FLOW_RUN_PHASES)


def deploy_peer(flows: Path) -> None:
    """The peer's ``noop`` flow, deployed from ``flows`` to the pool."""
    from prefect import flow

    with contextlib.redirect_stdout(sys.stderr):  # Prefect's table: not the report's
        flow.from_source(str(flows), "noop_flow.py:noop").deploy(
            PEER_DEPLOYMENT.split("/")[1], work_pool_name=POOL,
            print_next_steps=False, ignore_warnings=True)


def clean_up(worker: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    """Stop the worker; delete the target (deployment, pool, block) and the peer's
    deployment. What was done, or the error."""
    from prefect.client.orchestration import get_client

    cleanup: dict[str, Any] = {}
    if worker is not None:
        stop_groups([worker])
        cleanup["worker_exit"] = worker.returncode
    try:
        cleanup["deleted"] = delete_target(POOL)
        with get_client(sync_client=True) as client:
            client.delete_deployment(client.read_deployment_by_name(PEER_DEPLOYMENT).id)
        cleanup["deleted"]["peer_deployment"] = True
    except Exception as exc:  # recorded; an error of the benchmark itself goes on
        cleanup["error"] = f"{type(exc).__name__}: {exc}"
    log(f"worker stopped, target deleted: {cleanup}")
    return cleanup


def run(args: argparse.Namespace) -> dict[str, Any]:
    fresh_server_if_alone(args)
    from prefect.deployments import run_deployment

    from prefect_mltrain import Experiment, Run, ScriptRunConfig, Workspace
    from prefect_mltrain.compute import LocalCompute

    reps = 3 if args.quick else 5
    root = scratch("pool")
    proj = make_noop_project(root)
    flows = root / "flows"  # the peer's deployment source
    flows.mkdir()
    (flows / "noop_flow.py").write_text(NOOP_FLOW_PY.format(script=str(proj / "noop.py")))
    ws = Workspace(str(root / "ws"))
    stamp = root / "stamp.txt"
    server_start = start_server()
    pool_config = ScriptRunConfig(source_directory=str(proj), script="noop.py",
                                  compute_target=POOL)
    local_config = ScriptRunConfig(source_directory=str(proj), script="noop.py")
    # The worker's flow runs inherit its environment: the server, MLTRAIN_HOME, the stamp.
    worker_env = {**os.environ, **prefect_env(), **POOL_WORKER_ENV,
                  "BENCH_STAMP_FILE": str(stamp)}
    worker: subprocess.Popen[bytes] | None = None

    def worker_alive() -> None:
        if worker is None or worker.poll() is not None:
            raise RuntimeError(f"the worker is not running:\n"
                               f"{tail((root / 'worker.log').read_text())}")

    def ours_pool() -> dict[str, Any]:
        worker_alive()
        t0 = time.time()
        rec = submit_and_wait(Experiment(ws, "pool"), pool_config, stamp, POOL_PHASES)
        t_end = time.time()
        if rec["ok"]:  # a run that did not go through the pool has no deployment
            run = Run(Experiment(ws, "pool"), rec["run_id"])
            rec["flow_run_id"] = deployment_flow_run_id(ws, run)
            rec["flow_run_phases"] = flow_run_phases(rec["flow_run_id"], t0, t_end)
        return rec

    def peer() -> dict[str, Any]:
        worker_alive()
        stamp.unlink(missing_ok=True)
        t0 = time.time()
        p0 = time.perf_counter()
        flow_run = run_deployment(PEER_DEPLOYMENT, timeout=RUN_TIMEOUT, poll_interval=0.1)
        wall = time.perf_counter() - p0
        t_end = time.time()
        state = flow_run.state
        rec: dict[str, Any] = {"wall": wall, "ok": bool(state and state.is_completed()),
                               "flow_run_id": str(flow_run.id),
                               "status": state.type.value if state else None}
        if not rec["ok"]:
            rec["error"] = f"flow run {flow_run.id} ended {state!r}"
        started = read_stamp(stamp)
        rec["to_script_start"] = started - t0 if started else None
        rec["flow_run_phases"] = flow_run_phases(flow_run.id, t0, t_end)
        return rec

    def ours_local() -> dict[str, Any]:
        return submit_and_wait(Experiment(ws, "local"), local_config, stamp, POOL_PHASES)

    with using_server():  # this process's Prefect client calls go to the embedded server
        try:
            t = time.perf_counter()
            create_target(POOL, LocalCompute())
            deploy_peer(flows)
            worker = start_group([str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL,
                                  "--name", "bench-worker"], root / "worker.log", worker_env)
            log(f"target, pool, deployments and worker in {time.perf_counter() - t:.1f} s "
                "(not timed)")
            # A cold runner's submit, which starts the warm runner (as in d).
            first = first_submit(ours_local, " (local)")
            warmup, raw = interleaved({"ours_pool": ours_pool, "peer": peer,
                                       "ours_local": ours_local}, reps)
        finally:
            cleanup = clean_up(worker)
    imports = time_imports(min(reps, 5), worker_env, POOL_IMPORTS)  # untimed, after the reps
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "pool": POOL, "worker_env": POOL_WORKER_ENV, "imports": imports,
            "peer_deployment": PEER_DEPLOYMENT, "server_start_seconds": server_start,
            "first_submit": first, "warmup": warmup, "raw": raw, "cleanup": cleanup,
            "summary": summarize_pool(raw)}


def summarize_pool(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, recs in raw.items():
        summary[name] = summarize_runs(recs, None if name == "peer" else POOL_PHASES)
        if name != "ours_local":
            summary[name]["flow_run_phases"] = summarize_phases(
                [r for r in recs if r["ok"]], FLOW_RUN_PHASES, "flow_run_phases")
    summary["ratios"] = ratios(summary, [("ours_pool", "peer"), ("ours_local", "peer"),
                                         ("ours_pool", "ours_local")])
    return summary


def checks(pool: dict[str, Any]) -> list[dict[str, Any]]:
    cleanup = pool["cleanup"]
    return [*every_rep_checks("pool", pool),
            check("pool: worker stopped; target, pool and both deployments deleted",
                  "error" not in cleanup and all(cleanup.get("deleted", {}).values())
                  and len(cleanup.get("deleted", {})) == 4, str(cleanup))]


def render(pool: dict[str, Any]) -> list[str]:
    s, r = pool["summary"], pool["summary"]["ratios"]
    lines = [f"### f. A run through a work pool: one worker, ours vs a plain Prefect "
             f"deployment ({pool['reps']} interleaved reps each, seconds)", "",
             *ratio_head("/ peer (medians)")]
    rows = [("`Experiment.submit()` to the pool's target + `wait_for_completion()`, wall",
             "ours_pool", "wall"),
            ("peer: `run_deployment()` of a no-op `@flow`, same pool and worker, wall",
             "peer", "wall"),
            ("ours on local compute (as in a), wall", "ours_local", "wall"),
            ("submit → script start: ours, pool", "ours_pool", "to_script_start"),
            ("submit → flow body start: peer", "peer", "to_script_start"),
            ("submit → script start: ours, local", "ours_local", "to_script_start")]
    for label, name, key in rows:
        rt = 1.0 if name == "peer" else r[f"{name}_vs_peer"][key]
        lines.append(row(label, s[name][key], fmt_ratio(rt)))
    vs_peer = r["ours_pool_vs_peer"]["wall"]
    lines += ["", f"Goal, with default settings: ours through the pool ≤ 1.0× the plain "
              f"deployment (wall medians): {fmt_ratio(vs_peer)}, "
              + ("–" if vs_peer is None else "met" if vs_peer <= 1.0 else "not met") + "."]
    walls = [s[n]["wall"]["median"] for n in ("ours_pool", "ours_local")]
    lines += ["", "The pool route vs local compute (ours, wall medians): "
              f"{fmt_ratio(r['ours_pool_vs_ours_local']['wall'])}, "
              f"+{fmt(walls[0] - walls[1]) if None not in walls else '–'} s.", ""]
    lines += ["Both flow runs through the worker (medians, seconds, from the flow run's "
              "Prefect states):", "", "| step | ours | peer |", "|---|---:|---:|"]
    lines += [cols(label, [s[n]["flow_run_phases"][label]["median"]
                           for n in ("ours_pool", "peer")])
              for label, _, _ in FLOW_RUN_PHASES]
    lines += ["", "Pending→Running is two fresh Python processes on the worker: a supervisor "
              "that runs the deployment's pull steps, then (exec'd in its place) "
              "`python -m prefect.engine`. Their imports alone (diagnostic, fresh processes; "
              "seconds):", "", *stats_table("process", pool["imports"]["summary"])]
    lines += ["", "Ours, pool vs local (medians, seconds, from the run record's "
              "status_history):", "", "| phase | pool | local |", "|---|---:|---:|"]
    lines += [cols(label, [s[n]["phases"][label]["median"] for n in ("ours_pool", "ours_local")])
              for label in s["ours_pool"]["phases"]]
    lines += [cols("client notices the end (ended_at → return)",
                   [s[n]["ended_to_client_exit"]["median"] for n in ("ours_pool", "ours_local")]),
              "", "Worker settings: "
              + ", ".join(f"`{k}={v}`" for k, v in pool["worker_env"].items()) + ".", ""]
    return lines
