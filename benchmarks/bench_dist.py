"""e. 4 ranks of a no-op ``torch.distributed`` (gloo) script: ``PyTorchConfiguration`` on local
compute and on ``DaskCompute`` (a loopback cluster of 2 hosts × 2 workers) vs. ``torchrun
--standalone --nproc-per-node 4`` and the ranks started by hand (the floor); mpi4py under
``MpiConfiguration`` vs. ``mpiexec -n 4``; interleaved."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    ENV_TIMEOUT,
    GIT,
    RUN_TIMEOUT,
    VENV_BIN,
    WORK,
    check,
    cols,
    environment_builder,
    every_rep_checks,
    first_submit,
    fmt,
    fmt_ratio,
    fresh_process_costs,
    fresh_server_if_alone,
    interleaved,
    log,
    loopback_cluster,
    make_noop_project,
    ratio_head,
    ratios,
    read_stamp,
    row,
    run_peer,
    run_phases,
    scratch,
    start_server,
    stats_table,
    submit_and_wait,
    summarize,
    summarize_runs,
    wait_for_warm_runner,
)

TITLE = "distributed launch"
TORCH_SPEC = "torch==2.13.0"  # the registry's CPU build (a bare `torch` pulls CUDA wheels)
DIST_RANKS = 4
# The first line stamps rank 0's start (before any import), the line after the barrier the
# moment every rank has joined; the script's path is passed as its argument on both sides.
RANK0_STAMP_PY = '''\
import os
import sys
import time

started = time.time()
STAMP = sys.argv[1] if len(sys.argv) > 1 else None
RANK = os.environ.get("RANK", os.environ.get("PMI_RANK", "0"))
if STAMP and RANK == "0":
    with open(STAMP, "w") as f:
        f.write(repr(started))

'''
DDP_PY = RANK0_STAMP_PY + '''\
import torch.distributed as dist  # noqa: E402

dist.init_process_group("gloo")
dist.barrier()
if dist.get_rank() == 0:
    print("noop: hello", flush=True)
    if STAMP:
        with open(STAMP + ".joined", "w") as f:
            f.write(repr(time.time()))
dist.destroy_process_group()
'''
MPI_PY = RANK0_STAMP_PY + '''\
from mpi4py import MPI  # noqa: E402

MPI.COMM_WORLD.Barrier()
if MPI.COMM_WORLD.Get_rank() == 0:
    print("noop: hello", flush=True)
    if STAMP:
        with open(STAMP + ".joined", "w") as f:
            f.write(repr(time.time()))
'''
# The floor of any launcher (diagnostic): the ranks started at once by a stdlib-only Python
# with torchrun's variables set by hand; no agent, no rendezvous of its own.
FLOOR_PY = """\
import os, socket, subprocess, sys
python, script, n, *args = sys.argv[1:]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
n = int(n)
procs = [subprocess.Popen([python, script, *args], env={
    **os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n),
    "RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n), "OMP_NUM_THREADS": "1"})
    for r in range(n)]
sys.exit(max(p.wait() for p in procs))
"""
DIST_PHASES = run_phases(  # the same status steps for both targets; README says what each holds
    "record + snapshot + git", "runner process + Prefect flow run",
    "target check + environment lookup", "restore snapshot + start the ranks",
    "the ranks run, exit, are reaped", "final sync + artifacts")
DIST_SEGMENTS = [  # (label, key): each rep's wall cut at rank 0's two stamps
    ("submit/spawn → rank 0's first line", "to_script_start"),
    ("↳ of ours: Running (run record) → rank 0's first line", "running_to_script_start"),
    ("rank 0's first line → every rank past the barrier", "start_to_joined"),
    ("barrier → exit / `wait_for_completion()` returns", "joined_to_end"),
]
# What a Dask run pays in its forked runner (the warm runner has imported Prefect, not
# Dask): the client import, and a client connect (check() makes one, launch() another).
DASK_PATH_PY = """\
import json, sys, time
t = time.perf_counter(); from distributed import Client; a = time.perf_counter() - t
t = time.perf_counter(); c = Client(sys.argv[1], timeout=30); b = time.perf_counter() - t
t = time.perf_counter(); c.close(); d = time.perf_counter() - t
print(json.dumps({"import distributed (runner)": a, "Client(address) connect": b,
                  "Client.close()": d}))
"""
# What each rank (and torchrun's agent) pays; json is imported after the clock stops.
TORCH_IMPORT_PY = """\
import time
t = time.perf_counter(); import torch.distributed; a = time.perf_counter() - t
import json
print(json.dumps({"import torch.distributed (each rank; torchrun's agent too)": a}))
"""
OURS = ("ours_local", "ours_dask", "ours_mpi")
GOAL_MPI_SLACK = 0.2  # seconds over our local no-op + the bare mpiexec, wall medians


def with_segments(rec: dict[str, Any], stamp: Path, ws: Any = None) -> dict[str, Any]:
    """``rec`` (of ``submit_and_wait`` / ``run_peer``) cut at rank 0's stamps: start →
    barrier passed → end; for our runs also the run record's Running → rank 0's start."""
    started, joined = read_stamp(stamp), read_stamp(Path(f"{stamp}.joined"))
    if not rec.get("ok") or started is None or rec.get("to_script_start") is None:
        return rec
    t0 = started - rec["to_script_start"]
    if joined is not None:
        rec["start_to_joined"] = joined - started
        rec["joined_to_end"] = rec["wall"] - (joined - t0)
    if ws is not None and rec.get("run_id"):
        from prefect_mltrain import Experiment, Run

        record = Run(Experiment(ws, "dist"), rec["run_id"]).get_details()
        times = {e["status"]: e["time"] for e in record.get("status_history") or []}
        if "Running" in times:
            rec["running_to_script_start"] = started - times["Running"]
    return rec


def dask_placement(ws: Any, run_id: str) -> dict[str, str]:
    """Rank → host of a Dask run, from the first line of its log."""
    from prefect_mltrain import Experiment, Run

    dest = WORK / "dist" / f"placement-{run_id}"
    log_text = Run(Experiment(ws, "dist"), run_id).download_file("logs/std_log.txt",
                                                                  dest).read_text()
    return dict(re.findall(r"rank (\d+) on tcp://([\d.]+):\d+", log_text.split("\n", 1)[0]))


def make_project(root: Path) -> Path:
    """The no-op project (a clean git repository) with both rank scripts committed."""
    proj = make_noop_project(root)
    (proj / "noop_ddp.py").write_text(DDP_PY)
    (proj / "noop_mpi.py").write_text(MPI_PY)
    for cmd in (["add", "-A"], ["commit", "-q", "-m", "dist"]):
        subprocess.run([*GIT, *cmd], cwd=proj, check=True, timeout=60, capture_output=True)
    return proj


def build_torch_environment() -> tuple[Any, dict[str, Any]]:
    """The torch environment, built once and untimed; the peers use its torchrun / python."""
    from prefect_mltrain import Environment

    env = Environment("torch-cpu")
    env.python.conda_dependencies.add_pip_package(TORCH_SPEC)
    build_environment = environment_builder(ENV_TIMEOUT)
    t = time.perf_counter()
    built = build_environment(env)
    env_build = {"seconds": time.perf_counter() - t, "cached": built.cached,
                 "interpreter": built.interpreter}
    log(f"torch environment {built.interpreter} ({env_build['seconds']:.1f} s, "
        f"cached={built.cached}, not timed)")
    return env, env_build


def tool_versions(torch_python: str) -> dict[str, Any]:
    torch_version = subprocess.run(
        [torch_python, "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=WORK).stdout.strip()
    mpich = subprocess.run([str(VENV_BIN / "mpiexec"), "--version"], capture_output=True,
                           text=True, timeout=60).stdout
    mpich_version = next((line.split(":", 1)[1].strip() for line in mpich.splitlines()
                          if line.strip().startswith("Version:")), None)
    return {"torch": torch_version, "mpich": mpich_version}


def run(args: argparse.Namespace) -> dict[str, Any]:
    fresh_server_if_alone(args)
    from prefect_mltrain import (
        Experiment,
        MpiConfiguration,
        PyTorchConfiguration,
        ScriptRunConfig,
        Workspace,
    )
    from prefect_mltrain.compute import DaskCompute

    reps = 3 if args.quick else 5
    root = scratch("dist")
    proj = make_project(root)
    ws = Workspace(str(root / "ws"))
    exp = Experiment(ws, "dist")
    stamp = root / "stamp.txt"
    joined = Path(f"{stamp}.joined")
    env, env_build = build_torch_environment()
    torch_python = env_build["interpreter"]
    torch_bin = Path(torch_python).parent
    versions = tool_versions(torch_python)
    server_start = start_server()

    def torch_config(**kwargs: Any) -> Any:
        return ScriptRunConfig(
            source_directory=str(proj), script="noop_ddp.py", arguments=[str(stamp)],
            environment=env, distributed_job_config=PyTorchConfiguration(
                communication_backend="gloo", process_count=DIST_RANKS,
                node_count=kwargs.pop("node_count", 1)), **kwargs)

    local_torch = torch_config()
    noop_config = ScriptRunConfig(  # one process on local compute: the MPI goal's base
        source_directory=str(make_noop_project(root / "noop")), script="noop.py")
    mpi_config = ScriptRunConfig(
        source_directory=str(proj), script="noop_mpi.py", arguments=[str(stamp)],
        distributed_job_config=MpiConfiguration(process_count_per_node=DIST_RANKS))

    def ours(config: Any) -> Callable[[], dict[str, Any]]:
        def variant() -> dict[str, Any]:
            joined.unlink(missing_ok=True)
            # A warm runner of the current library files, or a cold rep (see versions)
            warm_runner = wait_for_warm_runner(timeout=0)
            rec = submit_and_wait(exp, config, stamp, DIST_PHASES)
            return {**with_segments(rec, stamp, ws), "warm_runner": warm_runner}
        return variant

    def peer(argv: list[str]) -> Callable[[], dict[str, Any]]:
        def variant() -> dict[str, Any]:
            joined.unlink(missing_ok=True)
            return with_segments(run_peer(argv, stamp, cwd=proj), stamp)
        return variant

    torchrun = peer([str(torch_bin / "torchrun"), "--standalone", "--nproc-per-node",
                     str(DIST_RANKS), "noop_ddp.py", str(stamp)])
    (root / "floor.py").write_text(FLOOR_PY)
    floor = peer([str(VENV_BIN / "python"), str(root / "floor.py"), torch_python,
                  "noop_ddp.py", str(DIST_RANKS), str(stamp)])
    mpiexec = peer([str(VENV_BIN / "mpiexec"), "-n", str(DIST_RANKS), str(VENV_BIN / "python"),
                    "noop_mpi.py", str(stamp)])

    # A cold runner's submit, which starts the warm runner (as in d).
    first = first_submit(ours(local_torch), " (local, torch)")
    hosts, per_host = 2, DIST_RANKS // 2
    t = time.perf_counter()
    with loopback_cluster(root / "dask", hosts, per_host) as address:
        cluster_start = time.perf_counter() - t
        log(f"Dask cluster at {address}: {hosts} hosts × {per_host} workers "
            f"({cluster_start:.1f} s, not timed)")
        dask_torch = torch_config(node_count=hosts,
                                  compute_target=DaskCompute(address=address))
        torch_warmup, torch_raw = interleaved(
            {"ours_local": ours(local_torch), "torchrun": torchrun,
             "ours_dask": ours(dask_torch), "floor": floor}, reps)
        mpi_warmup, mpi_raw = interleaved({"ours_mpi": ours(mpi_config), "mpiexec": mpiexec,
                                           "ours_noop": lambda: submit_and_wait(
                                               exp, noop_config, stamp, DIST_PHASES)}, reps)
        placement: dict[str, Any] = {}
        last_dask = next((r for r in reversed(torch_raw["ours_dask"]) if r["ok"]), None)
        if last_dask:
            try:
                placement = dask_placement(ws, last_dask["run_id"])
            except Exception as exc:  # a check below says so
                placement = {"error": str(exc)}
        costs = fresh_process_costs(  # untimed diagnostics, after the reps
            min(reps, 5), [[sys.executable, "-c", DASK_PATH_PY, address],
                           [torch_python, "-c", TORCH_IMPORT_PY]], WORK)
    raw = {**torch_raw, **mpi_raw}
    warmup = {**torch_warmup, **mpi_warmup}
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "ranks": DIST_RANKS, "torch": versions["torch"],
            "mpich": versions["mpich"], "dask": md.version("distributed"),
            "mpi4py": md.version("mpi4py"), "dask_cluster": {
                "hosts": hosts, "workers_per_host": per_host, "node_count": hosts,
                "start_seconds": cluster_start},
            "environment_build": env_build, "server_start_seconds": server_start,
            "first_submit": first, "dask_placement": placement, "warmup": warmup,
            "raw": raw, "path_costs": costs, "summary": summarize_dist(raw, costs)}


def summarize_dist(raw: dict[str, list[dict[str, Any]]],
                   costs: dict[str, list[float]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, recs in raw.items():
        summary[name] = summarize_runs(recs, DIST_PHASES if name.startswith("ours") else None)
        summary[name]["segments"] = {key: summarize([r[key] for r in recs if r["ok"]
                                                     and r.get(key) is not None])
                                     for _, key in DIST_SEGMENTS}
    summary["ratios"] = ratios(summary, [
        ("ours_local", "torchrun"), ("ours_dask", "torchrun"), ("ours_mpi", "mpiexec"),
        ("ours_local", "floor"), ("ours_dask", "floor"), ("torchrun", "floor")])
    summary["path_costs"] = {label: summarize(v) for label, v in costs.items()}
    wall = {name: summary[name]["wall"]["median"] for name in ("ours_mpi", "mpiexec",
                                                               "ours_noop")}
    if None not in wall.values():
        summary["mpi_goal"] = {**wall, "bound": wall["ours_noop"] + wall["mpiexec"]
                               + GOAL_MPI_SLACK}
    return summary


def checks(dist: dict[str, Any]) -> list[dict[str, Any]]:
    hosts = dist.get("dask_placement") or {}
    return [*every_rep_checks("dist", dist),
            check("dist ours_dask: 2 ranks on each of 2 hosts",
                  [hosts.get(str(r)) for r in range(4)].count(None) == 0
                  and hosts["0"] == hosts["1"] != hosts["2"] == hosts["3"], str(hosts))]


def render(dist: dict[str, Any]) -> list[str]:
    s, cl, ranks = dist["summary"], dist["dask_cluster"], dist["ranks"]
    lines = [f"### e. Distributed launch: {ranks} ranks of a no-op ({dist['reps']} "
             "interleaved reps each, seconds)", "",
             *ratio_head("ours / peer (medians)")]
    rows = [("`PyTorchConfiguration`, local compute, wall", "ours_local", "torchrun"),
            (f"`PyTorchConfiguration`, `DaskCompute` ({cl['hosts']} hosts × "
             f"{cl['workers_per_host']} workers), wall", "ours_dask", "torchrun"),
            (f"peer: `torchrun --standalone --nproc-per-node {ranks}`, wall", "torchrun", None),
            ("`MpiConfiguration` (mpi4py), local compute, wall", "ours_mpi", "mpiexec"),
            (f"peer: `mpiexec -n {ranks} python`, wall", "mpiexec", None)]
    for label, name, peer_name in rows:
        r = s["ratios"][f"{name}_vs_{peer_name}"]["wall"] if peer_name else 1.0
        lines.append(row(label, s[name]["wall"], fmt_ratio(r)))
    goal = s.get("mpi_goal")
    if goal:
        lines += ["", "| goal | ours, MPI | local no-op + `mpiexec` + "
                  f"{GOAL_MPI_SLACK} s (same rounds) | met? |", "|---|---:|---:|---|",
                  f"| `MpiConfiguration` ≤ our local no-op ({fmt(goal['ours_noop'])}) + bare "
                  f"`mpiexec` ({fmt(goal['mpiexec'])}) + {GOAL_MPI_SLACK} s | "
                  f"{fmt(goal['ours_mpi'])} | {fmt(goal['bound'])} | "
                  f"{'met' if goal['ours_mpi'] <= goal['bound'] else 'not met'} |"]
    lines += ["", f"Against the floor (diagnostic: the {ranks} ranks started at once "
              "by a stdlib-only Python with torchrun's variables, no agent; seconds):", "",
              *ratio_head("/ floor (medians)")]
    for label, name in (("floor: the ranks alone, wall", "floor"),
                        ("ours, local compute", "ours_local"), ("ours, Dask", "ours_dask"),
                        ("`torchrun`", "torchrun")):
        r = 1.0 if name == "floor" else s["ratios"][f"{name}_vs_floor"]["wall"]
        lines.append(row(label, s[name]["wall"], fmt_ratio(r)))
    names = ["ours_local", "ours_dask", "torchrun", "floor", "ours_mpi", "mpiexec"]
    lines += ["", "Each rep cut at rank 0's first line and at the barrier (medians, "
              "seconds):", "",
              "| segment | local | Dask | torchrun | floor | MPI, ours | mpiexec |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [cols(label, [s[n]["segments"][key]["median"] for n in names])
              for label, key in DIST_SEGMENTS]
    lines += ["", "Where our time goes (medians, seconds, from the run record's "
              "status_history):", "", "| phase | local | Dask | MPI |", "|---|---:|---:|---:|"]
    lines += [cols(label, [s[n]["phases"][label]["median"] for n in OURS])
              for label in s["ours_local"]["phases"]]
    lines.append(cols("client notices the end (ended_at → return)",
                      [s[n]["ended_to_client_exit"]["median"] for n in OURS]))
    lines += ["", "Per-process costs (diagnostic, timed in fresh processes; seconds):", "",
              *stats_table("cost", s["path_costs"])]
    cold = {n: sum(not r.get("warm_runner", True) for r in dist["raw"][n] if r["ok"])
            for n in OURS}
    lines += ["", "Timed reps of ours that found no warm runner of the current library "
              "files (a cold runner: library edited during the run): "
              + ", ".join(f"{n} {c}" for n, c in cold.items()) + "."]
    lines += ["", f"torch {dist['torch']} (gloo), mpi4py {dist['mpi4py']} on MPICH "
              f"{dist['mpich']}, dask/distributed {dist['dask']}; Dask ranks placed "
              f"{dist['dask_placement']}.", ""]
    return lines
