"""a. A no-op run end to end on local compute: ``mltrain submit`` (a fresh CLI process) and
``Experiment.submit() + wait_for_completion()`` (in process) vs. ``mlflow run --env-manager
local`` with sqlite tracking, interleaved."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import (
    CLI_MODULES,
    PHASES,
    RUN_TIMEOUT,
    RUNNER_MODULE,
    VENV_BIN,
    WORK,
    base_env,
    check,
    fmt,
    fmt_ratio,
    fresh_server,
    interleaved,
    log,
    log_rep,
    make_noop_project,
    phases_of,
    ratio,
    ratio_head,
    read_stamp,
    row,
    run_peer,
    scratch,
    start_server,
    stop_runners,
    stop_server,
    submit_and_wait,
    summarize,
    summarize_runs,
    tail,
    time_imports,
    try_rep,
    with_path,
)

TITLE = "no-op"

MLFLOW_SPEC = "mlflow==3.17.2"  # the newest release that installs from this machine's mirror
MLFLOW_VENV = WORK / "mlflow-venv"
MLFLOW_BIN = MLFLOW_VENV / "bin"
MLFLOW_INSTALL_TIMEOUT = 1800

IMPORTS = [  # (label, venv bin, code): what a fresh process pays before doing any work
    (f"ours: `import {RUNNER_MODULE}` (the runner process)", VENV_BIN,
     f"import {RUNNER_MODULE}"),
    ("ours: `import prefect`", VENV_BIN, "import prefect"),
    # the label shortens the second module: `import prefect_mltrain.cli, .experiment`
    (f"ours: `import {CLI_MODULES.replace(', prefect_mltrain.', ', .')}` (the CLI before "
     "submit)", VENV_BIN, f"import {CLI_MODULES}"),
    ("peer: `import mlflow.projects`", MLFLOW_BIN, "import mlflow.projects"),
    ("either: `python -c pass` (interpreter start)", VENV_BIN, "pass"),
]


# -- the MLflow peer -----------------------------------------------------------------------


def mlflow_version() -> str | None:
    py = MLFLOW_BIN / "python"
    if not py.exists():
        return None
    try:
        out = subprocess.run([str(py), "-c", "import mlflow; print(mlflow.__version__)"],
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def install_peer() -> dict[str, str]:
    """Create ``.work/mlflow-venv`` with ``python3 -m venv`` + ``pip install mlflow`` once;
    MLflow's version, for the run's ``versions``."""
    wanted = MLFLOW_SPEC.split("==", 1)[1]
    have = mlflow_version()
    if have == wanted:
        log(f"mlflow {have} already in {MLFLOW_VENV}")
        return {"mlflow": have}
    log(f"installing {MLFLOW_SPEC} into {MLFLOW_VENV} with pip (slow the first time)")
    if not (MLFLOW_BIN / "python").exists():
        subprocess.run(["python3", "-m", "venv", str(MLFLOW_VENV)], check=True, timeout=300)
    out = subprocess.run([str(MLFLOW_BIN / "python"), "-m", "pip", "install", "--quiet",
                          MLFLOW_SPEC], capture_output=True, text=True,
                         timeout=MLFLOW_INSTALL_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError(f"pip install {MLFLOW_SPEC} failed:\n{tail(out.stderr)}")
    have = mlflow_version()
    if have != wanted:
        raise RuntimeError(f"expected mlflow {wanted} in {MLFLOW_VENV}, found {have}")
    return {"mlflow": have}


def mlflow_store(root: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """The peer's sqlite tracking store, created (and migrated) once, before anything is
    timed: the peer's environment and working folder."""
    mlflow_cwd = root / "mlflow-cwd"
    mlflow_cwd.mkdir()
    mlflow_env = with_path({**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"},
                           MLFLOW_BIN)
    t = time.perf_counter()
    subprocess.run([str(MLFLOW_BIN / "python"), "-c",
                    "import mlflow; mlflow.search_experiments()"],
                   env=mlflow_env, cwd=mlflow_cwd, check=True, timeout=RUN_TIMEOUT,
                   capture_output=True)
    log(f"mlflow sqlite store created in {time.perf_counter() - t:.1f} s (not timed)")
    return mlflow_env, mlflow_cwd


# -- the benchmark -------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    fresh_server()  # the first benchmark of the full run: it starts the server afresh
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace

    reps = 3 if args.quick else 7
    root = scratch("noop")
    proj = make_noop_project(root)
    ws_dir = root / "ws"
    ws = Workspace(str(ws_dir))
    stamp = root / "stamp.txt"
    env = base_env()
    ours_env = with_path(env, VENV_BIN)
    mltrain = str(VENV_BIN / "mltrain") if (VENV_BIN / "mltrain").exists() \
        else shutil.which("mltrain") or "mltrain"
    mlflow_env, mlflow_cwd = mlflow_store(root, env)
    server_start = start_server()

    def run_cli(home: Path | None = None) -> dict[str, Any]:
        stamp.unlink(missing_ok=True)
        t0 = time.time()
        p0 = time.perf_counter()
        out = subprocess.run([mltrain, "submit", "--workspace", str(ws_dir), "-e", "cli",
                              str(proj), "noop.py"],
                             env={**ours_env, "BENCH_STAMP_FILE": str(stamp),
                                  **({"MLTRAIN_HOME": str(home)} if home else {})},
                             cwd=root, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        wall = time.perf_counter() - p0
        t_end = time.time()
        rec: dict[str, Any] = {"wall": wall, "ok": out.returncode == 0
                               and "noop: hello" in out.stdout}
        if not rec["ok"]:
            rec["error"] = f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"
            return rec
        run = Experiment(ws, "cli").get_runs()[0]
        record = run.get_details()
        rec.update(run_id=run.id, status=record["status"], phases=phases_of(record),
                   client_to_created=record["created_at"] - t0,
                   ended_to_client_exit=t_end - record["ended_at"])
        started = read_stamp(stamp)
        rec["to_script_start"] = started - t0 if started else None
        return rec

    def run_api() -> dict[str, Any]:
        return submit_and_wait(Experiment(ws, "api"), ScriptRunConfig(
            source_directory=str(proj), script="noop.py"), stamp)

    def run_mlflow() -> dict[str, Any]:
        return run_peer([str(MLFLOW_BIN / "mlflow"), "run", str(proj), "--env-manager",
                         "local"], stamp, env={**mlflow_env, "BENCH_STAMP_FILE": str(stamp)},
                        cwd=mlflow_cwd)

    warmup, raw = interleaved(
        {"mltrain_cli": run_cli, "mlflow_run": run_mlflow, "mltrain_api": run_api}, reps)
    imports = time_imports(min(reps, 5), env, IMPORTS)

    # The cold rows: what a user meets after the warm runner idled out (the server still
    # up), and on a machine where nothing runs (after a reboot: the server is started by the
    # submit; and the first use: a new MLTRAIN_HOME, whose server makes its database).
    def no_runner() -> dict[str, Any]:
        stop_runners()
        return run_cli()

    def nothing_running() -> dict[str, Any]:
        stop_server()
        return run_cli()

    def first_use() -> dict[str, Any]:
        home = root / f"home-{time.monotonic_ns()}"
        try:
            return run_cli(home)
        finally:  # untimed: that home's server and runners go
            subprocess.run([mltrain, "server", "stop"], env={**ours_env,
                           "MLTRAIN_HOME": str(home)}, capture_output=True, timeout=120)

    def mlflow_first_use() -> dict[str, Any]:  # a new sqlite store: its migrations too
        db = root / f"mlflow-{time.monotonic_ns()}.db"
        return run_peer([str(MLFLOW_BIN / "mlflow"), "run", str(proj), "--env-manager",
                         "local"], stamp, env={**mlflow_env, "BENCH_STAMP_FILE": str(stamp),
                                               "MLFLOW_TRACKING_URI": f"sqlite:///{db}"},
                        cwd=mlflow_cwd)

    cold_reps = 2 if args.quick else 3
    cold_variants = {"cli_no_runner": no_runner, "mlflow_run": run_mlflow,
                     "cli_nothing_running": nothing_running, "cli_first_use": first_use,
                     "mlflow_first_use": mlflow_first_use}
    cold: dict[str, list[dict[str, Any]]] = {name: [] for name in cold_variants}
    for i in range(cold_reps):  # no warm-up: a warm-up is what these rows leave out
        for name, variant in cold_variants.items():
            rec = try_rep(variant)
            cold[name].append(rec)
            log_rep(f"cold rep {i + 1}/{cold_reps} {name}", rec)
    start_server()  # untimed: the server is up again for the benchmarks after this one
    return {"reps": reps, "server_start_seconds": server_start, "warmup": warmup, "raw": raw,
            "summary": summarize_noop(raw), "imports": imports, "cold_reps": cold_reps,
            "cold_raw": cold, "cold_summary": summarize_cold(cold)}


def summarize_cold(cold: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary = {name: summarize_runs(recs, None if name.startswith("mlflow") else PHASES)
               for name, recs in cold.items()}
    wall = {name: st["wall"]["median"] for name, st in summary.items()}
    summary["ratios"] = {
        "cli_no_runner_vs_mlflow": ratio(wall["cli_no_runner"], wall["mlflow_run"]),
        "cli_nothing_running_vs_mlflow": ratio(wall["cli_nothing_running"], wall["mlflow_run"]),
        "cli_first_use_vs_mlflow_first_use": ratio(wall["cli_first_use"],
                                                   wall["mlflow_first_use"]),
    }
    return summary


def summarize_noop(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, recs in raw.items():
        summary[name] = summarize_runs(recs, None if name == "mlflow_run" else PHASES)
    summary["mltrain_cli"]["client_to_created"] = summarize(
        [r["client_to_created"] for r in raw["mltrain_cli"] if r["ok"]])
    peer = summary["mlflow_run"]
    for name in ("mltrain_cli", "mltrain_api"):
        for key in ("wall", "to_script_start"):
            summary[name][f"{key}_ratio_vs_mlflow"] = ratio(summary[name][key]["median"],
                                                            peer[key]["median"])
    return summary


def checks(noop: dict[str, Any]) -> list[dict[str, Any]]:
    return [check(f"noop {name}: every rep succeeded", s["failures"] == 0,
                  f"{s['failures']} failed of {noop['reps']}")
            for name, s in noop["summary"].items()] + [
        check(f"noop cold {name}: every rep succeeded", s["failures"] == 0,
              f"{s['failures']} failed of {noop.get('cold_reps')}")
        for name, s in (noop.get("cold_summary") or {}).items() if name != "ratios"]


# -- the report ------------------------------------------------------------------------------


def render(noop: dict[str, Any]) -> list[str]:
    s = noop["summary"]
    lines = [f"### a. No-op run end to end, local compute ({noop['reps']} interleaved reps "
             "each, seconds)", "",
             *ratio_head("ours / MLflow (medians)")]
    rows = [("`mltrain submit` CLI, wall (fresh process)", "mltrain_cli", "wall"),
            ("`Experiment.submit()` + `wait_for_completion()`, wall", "mltrain_api", "wall"),
            ("`mlflow run --env-manager local` (sqlite), wall", "mlflow_run", "wall"),
            ("submit → script start: `mltrain submit` CLI", "mltrain_cli", "to_script_start"),
            ("submit → script start: `Experiment.submit()`", "mltrain_api", "to_script_start"),
            ("submit → script start: `mlflow run`", "mlflow_run", "to_script_start")]
    for label, name, key in rows:
        r = 1.0 if name == "mlflow_run" else s[name].get(f"{key}_ratio_vs_mlflow")
        lines.append(row(label, s[name][key], fmt_ratio(r)))
    lines += ["", "Where our time goes (medians, seconds, from the run record's "
              "status_history):", "", "| phase | CLI | API |", "|---|---:|---:|",
              f"| CLI process start + imports (spawn → created_at) | "
              f"{fmt(s['mltrain_cli']['client_to_created']['median'])} | – |"]
    for label in s["mltrain_api"]["phases"]:
        lines.append(f"| {label} | {fmt(s['mltrain_cli']['phases'][label]['median'])} | "
                     f"{fmt(s['mltrain_api']['phases'][label]['median'])} |")
    lines.append(f"| client notices the end (ended_at → return) | "
                 f"{fmt(s['mltrain_cli']['ended_to_client_exit']['median'])} | "
                 f"{fmt(s['mltrain_api']['ended_to_client_exit']['median'])} |")
    cold = noop.get("cold_summary")
    if cold:
        r = cold["ratios"]
        warm = s["mltrain_cli"]["wall_ratio_vs_mlflow"]
        lines += ["", f"Cold starts ({noop['cold_reps']} reps each, in turn, no warm-up; "
                  "`mltrain submit` CLI vs `mlflow run`, seconds):", "",
                  "| measurement | median | min | max | ours / MLflow (medians) | goal |",
                  "|---|---:|---:|---:|---:|---|",
                  row("warm runner (the table above): `mltrain submit`", s["mltrain_cli"]["wall"],
                      fmt_ratio(warm), _goal(warm, 0.4)),
                  row("server up, no warm runner (after 30 idle minutes): `mltrain submit`",
                      cold["cli_no_runner"]["wall"], fmt_ratio(r["cli_no_runner_vs_mlflow"]),
                      _goal(r["cli_no_runner_vs_mlflow"], 1.0)),
                  row("peer: `mlflow run`, the same rounds", cold["mlflow_run"]["wall"],
                      "1.00×", ""),
                  row("nothing running, home used before (after a reboot): `mltrain submit` "
                      "starts the server", cold["cli_nothing_running"]["wall"],
                      fmt_ratio(r["cli_nothing_running_vs_mlflow"]), "reported"),
                  row("nothing running, first use (a new `MLTRAIN_HOME`: the server makes its "
                      "database)", cold["cli_first_use"]["wall"],
                      fmt_ratio(r["cli_first_use_vs_mlflow_first_use"]), "reported"),
                  row("peer: `mlflow run` with a new sqlite store (its migrations too)",
                      cold["mlflow_first_use"]["wall"], "1.00×", "")]
        lines += ["", "Where the cold runs' time goes (medians, seconds, from the run record):",
                  "", "| phase | no warm runner | nothing running | first use |",
                  "|---|---:|---:|---:|"]
        names = ("cli_no_runner", "cli_nothing_running", "cli_first_use")
        for label in cold["cli_no_runner"]["phases"]:
            lines.append(f"| {label} | " + " | ".join(
                fmt(cold[n]["phases"][label]["median"]) for n in names) + " |")
    lines += ["", "Import cost of a fresh process (diagnostic; medians, seconds):", "",
              "| process | median | min |", "|---|---:|---:|"]
    for label, st in noop["imports"]["summary"].items():
        lines.append(f"| {label} | {fmt(st['median'])} | {fmt(st['min'])} |")
    return [*lines, ""]


def _goal(value: float | None, goal: float) -> str:
    return "–" if value is None else f"≤ {goal}×: {'met' if value <= goal else 'not met'}"
