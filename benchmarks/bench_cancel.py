"""g. Cancel latency per compute target: from ``run.cancel()`` to the run's record saying
``Canceled``, for a script that exits on SIGTERM, on local compute, the Docker target (when
an engine answers) and a loopback Dask cluster; against the floor, a SIGTERM to the same
script started by hand and waited for. Interleaved."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Any

import bench_docker
from harness import (
    check,
    fmt,
    interleaved,
    log,
    loopback_cluster,
    scratch,
    start_server,
    summarize,
)

TITLE = "Cancel latency"
GOAL_SECONDS = 1.0
# Writes outputs/up once it runs, then sleeps until a signal ends it (Python's default
# SIGTERM handling: it dies at once).
SLEEPER = ("import os, time\nos.makedirs('outputs', exist_ok=True)\n"
           "open('outputs/up', 'w').close()\nprint('up', flush=True)\ntime.sleep(600)\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace
    from prefect_mltrain.compute import DaskCompute, DockerCompute

    reps = 3 if args.quick else 5
    root = scratch("cancel")
    proj = root / "proj"
    proj.mkdir()
    (proj / "sleep.py").write_text(SLEEPER)
    ws = Workspace(str(root / "ws"))
    server_start = start_server()
    docker_skipped = bench_docker.unavailable()

    def ours(target: Any) -> dict[str, Any]:
        run = Experiment(ws, "cancel").submit(ScriptRunConfig(
            source_directory=str(proj), script="sleep.py", compute_target=target))
        deadline = time.monotonic() + 120
        while "outputs/up" not in run.get_file_names():
            if time.monotonic() > deadline or run.get_status() in ("Failed", "Completed"):
                return {"ok": False, "error": f"never started: {run.get_details()}"}
            time.sleep(0.05)
        asked, t0 = time.time(), time.perf_counter()
        run.cancel()
        while run.get_status() != "Canceled":
            if time.perf_counter() - t0 > 60:
                return {"ok": False, "error": f"not Canceled after 60 s: {run.get_status()}"}
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        history = {h["status"]: h["time"] for h in run.get_details()["status_history"]}
        return {"ok": True, "wall": wall, "run_id": run.id,
                "to_finalizing": history.get("Finalizing", asked) - asked}

    def floor() -> dict[str, Any]:
        folder = root / f"floor-{time.monotonic_ns()}"
        folder.mkdir()
        proc = subprocess.Popen([sys.executable, str(proj / "sleep.py")], cwd=folder,
                                stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (folder / "outputs" / "up").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        return {"ok": True, "wall": time.perf_counter() - t0}

    with loopback_cluster(root / "dask", 1, 2) as address:
        variants = {"local": lambda: ours("local"),
                    "dask": lambda: ours(DaskCompute(address=address)),
                    "floor": floor}
        if not docker_skipped:
            docker = DockerCompute(image=bench_docker.DOCKER_IMAGE, network_mode="host")
            variants["docker"] = lambda: ours(docker)
        warmup, raw = interleaved(variants, reps)
    summary = {name: {"wall": summarize([r["wall"] for r in recs if r["ok"]]),
                      "to_finalizing": summarize([r["to_finalizing"] for r in recs
                                                  if r["ok"] and "to_finalizing" in r]),
                      "failures": sum(not r["ok"] for r in recs)}
               for name, recs in raw.items()}
    log("cancel latency medians: " + ", ".join(
        f"{name} {fmt(s['wall']['median'])} s" for name, s in summary.items()))
    return {"reps": reps, "server_start_seconds": server_start,
            "docker_skipped": docker_skipped, "warmup": warmup, "raw": raw,
            "summary": summary}


def checks(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    return [check(f"cancel {name}: every rep reached Canceled", s["failures"] == 0,
                  f"{s['failures']} failed of {numbers['reps']}")
            for name, s in numbers["summary"].items()]


def render(numbers: dict[str, Any]) -> list[str]:
    s = numbers["summary"]
    lines = [f"### g. Cancel latency: `run.cancel()` → `Canceled` ({numbers['reps']} "
             "interleaved reps each, seconds)", "",
             "| target | median | min | max | of which: request → the runner stops the "
             "script (median) | goal |", "|---|---:|---:|---:|---:|---|"]
    labels = {"local": "local compute", "docker": "`DockerCompute`",
              "dask": "`DaskCompute` (1 host × 2 workers)"}
    for name, label in labels.items():
        if name in s:
            st = s[name]["wall"]
            met = st["median"] is not None and st["median"] <= GOAL_SECONDS
            lines.append(f"| {label} | {fmt(st['median'])} | {fmt(st['min'])} | "
                         f"{fmt(st['max'])} | {fmt(s[name]['to_finalizing']['median'])} | "
                         f"≤ {GOAL_SECONDS:.0f} s: {'met' if met else 'NOT met'} |")
    st = s["floor"]["wall"]
    lines.append(f"| floor: SIGTERM to the same script started by hand, until it exits | "
                 f"{fmt(st['median'])} | {fmt(st['min'])} | {fmt(st['max'])} | – | |")
    if numbers.get("docker_skipped"):
        lines += ["", f"Docker skipped: {numbers['docker_skipped']}"]
    return [*lines, ""]
