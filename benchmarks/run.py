"""Speed benchmarks of prefect-mltrain, each against a peer measured in the same run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py            # full: ~7 reps per no-op variant
    .venv/bin/python benchmarks/run.py --quick    # 3 reps, for a smoke check
    .venv/bin/python benchmarks/run.py --only env # one benchmark (noop, snapshot, env, docker,
                                                  # dist, pool)

Prints a markdown table and writes the raw numbers to ``benchmarks/results.json``.
Scratch files (the MLflow peer's venv, workspaces, generated trees) live in
``benchmarks/.work/`` (gitignored). See ``benchmarks/README.md`` for what is measured.

Benchmarks:
  noop      a no-op script run end to end on local compute: ``mltrain submit`` (a fresh CLI
            process) and ``Experiment.submit() + wait_for_completion()`` (in process) vs.
            ``mlflow run --env-manager local`` with sqlite tracking, interleaved.
  snapshot  re-snapshot of an unchanged 10,000-file tree vs. ``os.walk + os.stat`` of
            every file (the floor) and ``shutil.copytree`` of the same tree.
  env       ``build_environment()`` of an unpinned ``scikit-learn`` requirement, cold (fresh
            MLTRAIN_HOME) and as a cache hit, vs. ``python3 -m venv`` + ``pip install``,
            interleaved, with warm download caches (plus one cold-cache rep of each).
  docker    a no-op run on the Docker target (``DockerCompute``, image cached) vs. ``docker run``
            of the same image and script, interleaved. In the full run only when a Docker
            engine answers and the image exists; otherwise recorded as skipped, with why.
  dist      4 ranks of a no-op ``torch.distributed`` (gloo) script: ``PyTorchConfiguration`` on
            local compute and on ``DaskCompute`` (a loopback cluster of 2 hosts × 2 workers)
            vs. ``torchrun --standalone --nproc-per-node 4`` and the ranks started by hand (the
            floor); mpi4py under ``MpiConfiguration`` vs. ``mpiexec -n 4``; interleaved.
  pool      a no-op run through a work pool and a real ``prefect worker``: ``Experiment.submit()``
            to a pooled ``LocalCompute`` target vs. ``run_deployment()`` of a no-op ``@flow``
            deployed to the same pool (Prefect's floor), and the same submit on local compute;
            interleaved.

``--only NAME`` runs one benchmark and merges its numbers into the existing results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_mltrain.testing import loopback_cluster, start_group, stop_groups

HERE = Path(__file__).resolve().parent

WORK = HERE / ".work"
RESULTS = HERE / "results.json"
VENV_BIN = Path(sys.executable).parent

MLFLOW_SPEC = "mlflow==3.17.2"  # the newest release that installs from this machine's mirror
MLFLOW_VENV = WORK / "mlflow-venv"
MLFLOW_INSTALL_TIMEOUT = 1800
RUN_TIMEOUT = 300  # one submit / one mlflow run, seconds
SERVER_HOME = WORK / "mltrain-home"  # MLTRAIN_HOME: caches + the embedded Prefect server

NOOP_PY = '''\
import os
import time

started = time.time()
print("noop: hello")
stamp = os.environ.get("BENCH_STAMP_FILE")
if stamp:
    with open(stamp, "w") as f:
        f.write(repr(started))
'''
MLPROJECT = '''\
name: noop
entry_points:
  main:
    command: "python noop.py"
'''


# -- helpers ---------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summarize(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def base_env() -> dict[str, str]:
    """This process's environment without any Prefect / MLflow / mltrain settings of the user,
    so the benchmark uses its own embedded server, workspace and tracking store."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "MLTRAIN_"))}
    env["MLTRAIN_HOME"] = str(SERVER_HOME)
    env["PREFECT_HOME"] = str(WORK / "prefect-home")  # ignore ~/.prefect profiles
    return env


def with_path(env: dict[str, str], bin_dir: Path) -> dict[str, str]:
    """``env`` as if the venv of ``bin_dir`` were activated (so ``python`` is that venv's)."""
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "VIRTUAL_ENV": str(bin_dir.parent)}


def tail(text: str | bytes | None, n: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def checkout_info() -> dict[str, Any]:
    """Which code was measured: the commit, and whether the library had local edits."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "library_dirty": bool(git("status", "--porcelain", "--", "prefect_mltrain"))}


def library_fingerprint() -> list[tuple[str, int]]:
    """The library's source files and their mtimes: edits during a run make its numbers
    suspect (and, like a new checkout, send submits to a new, cold warm runner)."""
    package = HERE.parent / "prefect_mltrain"
    return sorted((str(p.relative_to(package)), p.stat().st_mtime_ns)
                  for p in package.rglob("*.py"))


def machine_info() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": load}


# -- the MLflow peer -----------------------------------------------------------------------


def mlflow_bin() -> Path:
    return MLFLOW_VENV / "bin"


def mlflow_version() -> str | None:
    py = mlflow_bin() / "python"
    if not py.exists():
        return None
    try:
        out = subprocess.run([str(py), "-c", "import mlflow; print(mlflow.__version__)"],
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_mlflow() -> str:
    """Create ``.work/mlflow-venv`` with ``python3 -m venv`` + ``pip install mlflow`` once."""
    wanted = MLFLOW_SPEC.split("==", 1)[1]
    have = mlflow_version()
    if have == wanted:
        log(f"mlflow {have} already in {MLFLOW_VENV}")
        return have
    log(f"installing {MLFLOW_SPEC} into {MLFLOW_VENV} with pip (slow the first time)")
    if not (mlflow_bin() / "python").exists():
        subprocess.run(["python3", "-m", "venv", str(MLFLOW_VENV)], check=True, timeout=300)
    out = subprocess.run([str(mlflow_bin() / "python"), "-m", "pip", "install", "--quiet",
                          MLFLOW_SPEC], capture_output=True, text=True,
                         timeout=MLFLOW_INSTALL_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError(f"pip install {MLFLOW_SPEC} failed:\n{tail(out.stderr)}")
    have = mlflow_version()
    if have != wanted:
        raise RuntimeError(f"expected mlflow {wanted} in {MLFLOW_VENV}, found {have}")
    return have


# -- benchmark a: no-op run end to end -----------------------------------------------------


PHASES = [  # (label, from status, to status) over the run record's status_history
    ("record + snapshot + git (NotStarted→Queued)", "NotStarted", "Queued"),
    ("runner process + Prefect flow run (Queued→Preparing)", "Queued", "Preparing"),
    ("environment resolve (Preparing→Starting)", "Preparing", "Starting"),
    ("restore snapshot + launch (Starting→Running)", "Starting", "Running"),
    ("script + its wait (Running→Finalizing)", "Running", "Finalizing"),
    ("final sync + artifacts (Finalizing→Completed)", "Finalizing", "Completed"),
]
SUBMIT_TO_RUNNING = "submit→Running (run record)"


def make_noop_project(root: Path) -> Path:
    """The same tiny project for both tools, in its own clean git repository (a user's
    project usually is one, and both tools record git provenance)."""
    proj = root / "proj"
    proj.mkdir(parents=True)
    (proj / "noop.py").write_text(NOOP_PY)
    (proj / "MLproject").write_text(MLPROJECT)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
           "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "noop"]):
        subprocess.run([*git, *cmd], cwd=proj, check=True, timeout=60,
                       capture_output=True)
    return proj


def read_stamp(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def phases_of(record: dict[str, Any],
              phases: list[tuple[str, str, str]] = PHASES) -> dict[str, float]:
    times: dict[str, float] = {}
    for entry in record.get("status_history") or []:
        times.setdefault(entry["status"], entry["time"])
    out = {}
    for label, a, b in phases:
        if a in times and b in times:
            out[label] = times[b] - times[a]
    if "Running" in times and record.get("created_at"):
        out[SUBMIT_TO_RUNNING] = times["Running"] - record["created_at"]
    return out


def start_server() -> float:
    """Our embedded Prefect server, started before anything is timed; its start time."""
    from prefect_mltrain.server import ensure_server

    t = time.perf_counter()
    server = ensure_server()
    elapsed = time.perf_counter() - t
    log(f"embedded Prefect server at {server['api_url']} ({elapsed:.1f} s, not timed)")
    return elapsed


def submit_and_wait(exp: Any, config: Any, stamp: Path,
                    phases: list[tuple[str, str, str]] = PHASES) -> dict[str, Any]:
    """In this process: ``exp.submit(config)`` + ``wait_for_completion(poll_interval=0.1)``;
    the wall time until it returns (the run must end Completed), the run's phases, and
    submit → script start from the script's ``stamp``."""
    stamp.unlink(missing_ok=True)
    os.environ["BENCH_STAMP_FILE"] = str(stamp)  # a local script inherits it
    try:
        t0 = time.time()
        p0 = time.perf_counter()
        run = exp.submit(config)
        try:
            details = run.wait_for_completion(poll_interval=0.1, timeout=RUN_TIMEOUT,
                                              raise_on_error=False)
        except TimeoutError:
            run.cancel()  # do not leave it running behind the next reps
            raise
        wall = time.perf_counter() - p0
        t_end = time.time()
    finally:
        os.environ.pop("BENCH_STAMP_FILE", None)
    rec: dict[str, Any] = {"wall": wall, "ok": details["status"] == "Completed",
                           "run_id": run.id, "status": details["status"],
                           "phases": phases_of(details, phases),
                           "ended_to_client_exit": t_end - details["ended_at"],
                           "environment_build": details.get("environment_build")}
    if not rec["ok"]:
        rec["error"] = f"{details.get('error')}\n{details.get('log_tail')}"
    started = read_stamp(stamp)
    rec["to_script_start"] = started - t0 if started else None
    return rec


def run_peer(argv: list[str], stamp: Path, **kwargs: Any) -> dict[str, Any]:
    """A peer's command line, wall time until it exits 0 having printed the no-op's line,
    and spawn → script start from the script's ``stamp``."""
    stamp.unlink(missing_ok=True)
    t0 = time.time()
    p0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, **kwargs)
    wall = time.perf_counter() - p0
    rec: dict[str, Any] = {"wall": wall, "ok": out.returncode == 0
                           and "noop: hello" in out.stdout}
    if not rec["ok"]:
        rec["error"] = f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"
    started = read_stamp(stamp)
    rec["to_script_start"] = started - t0 if started else None
    return rec


def try_rep(variant: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One rep; a failure is recorded, and the benchmark goes on."""
    try:
        return variant()
    except Exception as exc:
        return {"ok": False, "error": "".join(traceback.format_exception(exc))}


def interleaved(variants: dict[str, Callable[[], dict[str, Any]]],
                reps: int) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """One untimed warm-up of each variant (first-use costs are not the steady state), then
    ``reps`` rounds, interleaved and rotated (a, b, c / b, c, a / …) so that load spikes on
    the shared machine hit all variants alike. A failed rep is recorded, not fatal."""
    warmup = {}
    for name in variants:
        warmup[name] = rec = try_rep(variants[name])
        log(f"warm-up {name}: {rec.get('wall', float('nan')):.2f} s ok={rec['ok']}"
            + ("" if rec["ok"] else f"\n{rec['error']}"))
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(reps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            rec = try_rep(variants[name])
            raw[name].append(rec)
            log(f"rep {i + 1}/{reps} {name}: {rec.get('wall', float('nan')):.2f} s "
                f"ok={rec['ok']}" + ("" if rec["ok"] else f"\n{rec['error']}"))
    return warmup, raw


def summarize_runs(recs: list[dict[str, Any]],
                   phases: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """Medians of the good reps: wall, submit → script start and, for our runs, phases."""
    good = [r for r in recs if r["ok"]]
    out: dict[str, Any] = {
        "wall": summarize([r["wall"] for r in good]),
        "to_script_start": summarize([r["to_script_start"] for r in good
                                      if r.get("to_script_start") is not None]),
        "failures": len(recs) - len(good),
    }
    if phases is not None:
        out["phases"] = summarize_phases(good, [*phases, (SUBMIT_TO_RUNNING, "", "")])
        out["ended_to_client_exit"] = summarize([r["ended_to_client_exit"] for r in good])
    return out


def summarize_phases(good: list[dict[str, Any]], phases: list[tuple[str, str, str]],
                     key: str = "phases") -> dict[str, Any]:
    """Per phase label, the summary of ``rec[key][label]`` over the reps that have it."""
    return {label: summarize([r[key][label] for r in good if label in r.get(key, {})])
            for label, _, _ in phases}


def bench_noop(reps: int) -> dict[str, Any]:
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace

    root = WORK / "noop"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    proj = make_noop_project(root)
    ws_dir = root / "ws"
    ws = Workspace(str(ws_dir))
    stamp = root / "stamp.txt"
    env = base_env()
    ours_env = with_path(env, VENV_BIN)
    mltrain = str(VENV_BIN / "mltrain") if (VENV_BIN / "mltrain").exists() \
        else shutil.which("mltrain") or "mltrain"

    # The peer's tracking store: created (and migrated) once, before anything is timed.
    mlflow_db = root / "mlflow.db"
    mlflow_cwd = root / "mlflow-cwd"
    mlflow_cwd.mkdir()
    mlflow_env = with_path({**env, "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}"},
                           mlflow_bin())
    t = time.perf_counter()
    subprocess.run([str(mlflow_bin() / "python"), "-c",
                    "import mlflow; mlflow.search_experiments()"],
                   env=mlflow_env, cwd=mlflow_cwd, check=True, timeout=RUN_TIMEOUT,
                   capture_output=True)
    log(f"mlflow sqlite store created in {time.perf_counter() - t:.1f} s (not timed)")

    server_start = start_server()

    def run_cli() -> dict[str, Any]:
        stamp.unlink(missing_ok=True)
        t0 = time.time()
        p0 = time.perf_counter()
        out = subprocess.run([mltrain, "--workspace", str(ws_dir), "submit", "-e", "cli",
                              str(proj), "noop.py"],
                             env={**ours_env, "BENCH_STAMP_FILE": str(stamp)},
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
        return run_peer([str(mlflow_bin() / "mlflow"), "run", str(proj), "--env-manager",
                         "local"], stamp, env={**mlflow_env, "BENCH_STAMP_FILE": str(stamp)},
                        cwd=mlflow_cwd)

    warmup, raw = interleaved(
        {"mltrain_cli": run_cli, "mlflow_run": run_mlflow, "mltrain_api": run_api}, reps)
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
    imports = bench_imports(min(reps, 5), env)
    return {"reps": reps, "server_start_seconds": server_start, "warmup": warmup, "raw": raw,
            "summary": summary, "imports": imports}


IMPORTS = [  # (label, venv bin, code): what a fresh process pays before doing any work
    ("ours: `import prefect_mltrain.flows` (the runner process)", VENV_BIN,
     "import prefect_mltrain.flows"),
    ("ours: `import prefect`", VENV_BIN, "import prefect"),
    ("ours: `import prefect_mltrain.cli, .experiment` (the CLI before submit)", VENV_BIN,
     "import prefect_mltrain.cli, prefect_mltrain.experiment"),
    ("peer: `import mlflow.projects`", None, "import mlflow.projects"),
    ("either: `python -c pass` (interpreter start)", VENV_BIN, "pass"),
]


def bench_imports(reps: int, env: dict[str, str],
                  imports: list[tuple[str, Path | None, str]] = IMPORTS) -> dict[str, Any]:
    """Diagnostic, not a comparison: import time of a fresh process, interleaved."""
    raw: dict[str, list[float]] = {label: [] for label, _, _ in imports}
    for _ in range(reps):
        for label, bin_dir, code in imports:
            python = str((bin_dir or mlflow_bin()) / "python")
            p0 = time.perf_counter()
            out = subprocess.run([python, "-c", code], env=env, capture_output=True,
                                 timeout=RUN_TIMEOUT)
            if out.returncode == 0:
                raw[label].append(time.perf_counter() - p0)
    log("import times: " + ", ".join(f"{label.split('`')[1]} {statistics.median(v):.2f} s"
                                      for label, v in raw.items() if v))
    return {"raw": raw, "summary": {label: summarize(v) for label, v in raw.items()}}


# -- benchmark b: snapshot of a 10,000-file tree -------------------------------------------


def make_tree(root: Path, n_files: int) -> None:
    """``n_files`` small files, each with distinct content, in nested folders."""
    per_leaf = 50
    for i in range(n_files):
        leaf = i // per_leaf
        folder = root / f"pkg{leaf // 10:02d}" / f"mod{leaf % 10}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        body = f"# generated file {i}\nVALUE = {i * 7919 % 100003}\n" + "x = 1\n" * (i % 40)
        (folder / f"f{i:05d}.py").write_text(body)


def stat_walk(root: Path) -> int:
    """The floor for "only stat calls": list every folder and stat every file."""
    count = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            os.stat(os.path.join(dirpath, name))
            count += 1
    return count


def bench_snapshot(n_files: int, reps: int, cold_reps: int, change_reps: int) -> dict[str, Any]:
    from prefect_mltrain import Workspace
    from prefect_mltrain.snapshot import take_snapshot

    root = WORK / "snapshot"
    shutil.rmtree(root, ignore_errors=True)
    tree = root / "tree"
    t = time.perf_counter()
    make_tree(tree, n_files)
    log(f"generated {n_files} files in {time.perf_counter() - t:.1f} s")
    stat_cache = SERVER_HOME / "cache" / "snapshot-stat"  # the machine-local stat cache
    budget = {"max_files": 2 * n_files}
    # Write-heavy steps get fresh folders and nothing is deleted until the end: on this VM's
    # disk (ext4 mounted with `discard`) a mass delete slows the writes of the next seconds.
    ws_dir = root / "ws-0"

    def snap(label: str) -> dict[str, Any]:
        ws = Workspace(str(ws_dir))
        p0 = time.perf_counter()
        res = take_snapshot(ws, tree, **budget)
        wall = time.perf_counter() - p0
        rec = {"wall": wall, "snapshot_id": res.snapshot_id, "file_count": res.file_count,
               "total_bytes": res.total_bytes, "hashed_files": res.hashed_files,
               "uploaded_files": res.uploaded_files, "uploaded_bytes": res.uploaded_bytes}
        log(f"{label}: {wall:.3f} s hashed={res.hashed_files} uploaded={res.uploaded_files}")
        return rec

    def copytree(dst: Path) -> float:
        os.sync()  # start with no dirty pages from the step before, like the cold snapshot
        p0 = time.perf_counter()
        shutil.copytree(tree, dst)
        return time.perf_counter() - p0

    def walk() -> float:
        p0 = time.perf_counter()
        count = stat_walk(tree)
        wall = time.perf_counter() - p0
        if count != n_files:
            raise RuntimeError(f"stat walk saw {count} files, expected {n_files}")
        return wall

    raw: dict[str, list[Any]] = {"cold": [], "copytree": [], "rehash_no_upload": [],
                                 "unchanged": [], "stat_walk": [], "one_changed": []}
    log(f"untimed warm-up copy: {copytree(root / 'copy-warmup'):.3f} s")
    # Cold: empty workspace and no stat cache, so every file is hashed and uploaded.
    for i in range(cold_reps):
        ws_dir = root / f"ws-{i}"
        shutil.rmtree(stat_cache, ignore_errors=True)
        os.sync()
        raw["cold"].append(snap(f"cold {i + 1}/{cold_reps}"))
        raw["copytree"].append(copytree(root / f"copy-{i}"))
        log(f"copytree {i + 1}/{cold_reps}: {raw['copytree'][-1]:.3f} s")
    # The stat cache lost (a new machine, same workspace): hash everything, upload nothing.
    for i in range(cold_reps):
        shutil.rmtree(stat_cache, ignore_errors=True)
        raw["rehash_no_upload"].append(snap(f"no stat cache {i + 1}/{cold_reps}"))
    time.sleep(0.05)  # the stat cache trusts only files older than itself (racy-clean rule)
    # Unchanged re-snapshot, interleaved with the stat-walk floor.
    for i in range(reps):
        for key in ("unchanged", "stat_walk") if i % 2 == 0 else ("stat_walk", "unchanged"):
            if key == "unchanged":
                raw[key].append(snap(f"unchanged {i + 1}/{reps}"))
            else:
                raw[key].append(walk())
        log(f"stat walk {i + 1}/{reps}: {raw['stat_walk'][-1]:.3f} s")
    # One file changed: it alone is hashed and uploaded.
    victim = next(iter(sorted(tree.rglob("f00007.py"))))
    for i in range(change_reps):
        with open(victim, "a") as f:
            f.write(f"# edit {i} {time.time()}\n")
        raw["one_changed"].append(snap(f"one file changed {i + 1}/{change_reps}"))
    shutil.rmtree(root, ignore_errors=True)  # ~100,000 files; nothing is timed after this

    def walls(key: str) -> list[float]:
        return [r["wall"] if isinstance(r, dict) else r for r in raw[key]]

    summary = {key: summarize(walls(key)) for key in raw}
    med = {key: summary[key]["median"] for key in raw}
    summary["ratios"] = {
        "unchanged_vs_stat_walk": ratio(med["unchanged"], med["stat_walk"]),
        "unchanged_vs_cold": ratio(med["unchanged"], med["cold"]),
        "cold_vs_copytree": ratio(med["cold"], med["copytree"]),
        "one_changed_vs_stat_walk": ratio(med["one_changed"], med["stat_walk"]),
        "rehash_no_upload_vs_cold": ratio(med["rehash_no_upload"], med["cold"]),
    }
    return {"n_files": n_files, "reps": reps, "cold_reps": cold_reps,
            "change_reps": change_reps, "raw": raw, "summary": summary}


# -- benchmark c: environment build ----------------------------------------------------------


ENV_REQUIREMENT = "scikit-learn"  # unpinned: the resolve happens too
ENV_TIMEOUT = 600  # one venv creation / pip install / uv step, seconds
ENV_HIT_CALLS = 20
ENV_PACKAGES = ("scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl")
VERSIONS_PY = ("import importlib.metadata as m, json; print(json.dumps("
               "{d.metadata['Name'].lower().replace('_', '-'): d.version "
               "for d in m.distributions()}))")


def real_python3() -> str:
    """The interpreter ``python3`` on PATH runs (past a pyenv shim: the shim's own start is
    not pip's cost, so the peer is not charged for it)."""
    out = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def first_import(python: str) -> float:
    """Wall time of the first ``import sklearn, numpy, scipy`` in a new environment: uv does
    not byte-compile what it installs (pip does), so the first import writes the .pyc files."""
    p0 = time.perf_counter()
    subprocess.run([python, "-c", "import sklearn, numpy, scipy"], check=True,
                   capture_output=True, timeout=ENV_TIMEOUT, cwd=WORK)
    return time.perf_counter() - p0


def installed_versions(python: str) -> dict[str, str]:
    """Untimed check that an environment works: list its distributions."""
    # cwd: not the checkout, whose egg-info `python -c` would list as installed
    out = subprocess.run([python, "-c", VERSIONS_PY], check=True, capture_output=True,
                         text=True, timeout=ENV_TIMEOUT, cwd=WORK)
    return json.loads(out.stdout)


def bench_env(reps: int, hit_calls: int, cold_cache: bool) -> dict[str, Any]:
    from prefect_mltrain import environment_build as eb
    from prefect_mltrain.environment import Environment

    root = WORK / "env"
    shutil.rmtree(root, ignore_errors=True)  # untimed; the warm-ups absorb its after-effects
    root.mkdir(parents=True)
    req = root / "requirements.txt"
    req.write_text(ENV_REQUIREMENT + "\n")
    # Bound our side like the peer's subprocesses (the library allows an hour to install).
    eb.RESOLVE_TIMEOUT_SECONDS = eb.INSTALL_TIMEOUT_SECONDS = ENV_TIMEOUT
    python3 = real_python3()
    counter = itertools.count()
    saved = {k: os.environ.get(k) for k in ("MLTRAIN_HOME", "UV_CACHE_DIR", "PIP_CACHE_DIR")}
    for key in ("UV_CACHE_DIR", "PIP_CACHE_DIR"):
        os.environ.pop(key, None)  # the user's default caches: ~/.cache/uv, ~/.cache/pip

    def fresh(prefix: str) -> Path:
        return root / f"{prefix}-{next(counter):02d}"

    def ours(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        home = fresh("home")
        os.environ["MLTRAIN_HOME"] = str(home)  # read by the library at each call
        os.environ.update(extra_env or {})
        # A run's runner calls this once per process: it pays `pip config list` and the
        # other per-process look-ups each time, so clear the library's memoized ones.
        for obj in vars(eb).values():
            if callable(getattr(obj, "cache_clear", None)):
                obj.cache_clear()
        marks: dict[str, float] = {}

        def on_line(line: str) -> None:
            if ": building " in line:  # said once the lock is resolved, before the venv
                marks.setdefault("resolved", time.perf_counter())

        try:
            os.sync()  # no dirty pages from the step before
            p0 = time.perf_counter()
            built = eb.build_environment(Environment.from_pip_requirements("sk", req),
                                         on_line=on_line)
            wall = time.perf_counter() - p0
        finally:
            for key in extra_env or {}:
                os.environ.pop(key, None)
        resolve = marks["resolved"] - p0 if "resolved" in marks else None
        return {"wall": wall, "ok": not built.cached, "cached": built.cached,
                "build_seconds": built.build_seconds, "resolve": resolve,
                "venv_install": wall - resolve if resolve is not None else None,
                "home": str(home), "interpreter": built.interpreter,
                "lock": built.lock, "miss_reason": built.miss_reason}

    def hits(home: str) -> dict[str, Any]:
        os.environ["MLTRAIN_HOME"] = home
        walls, cached = [], []
        for _ in range(hit_calls):
            p0 = time.perf_counter()
            built = eb.build_environment(Environment.from_pip_requirements("sk", req))
            walls.append(time.perf_counter() - p0)
            cached.append(built.cached)
        return {"walls": walls, "cached": cached, "ok": all(cached)}

    def peer(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        venv = fresh("pip-venv")
        env = {**os.environ, **(extra_env or {})}
        os.sync()
        p0 = time.perf_counter()
        out = subprocess.run([python3, "-m", "venv", str(venv)], env=env, capture_output=True,
                             text=True, timeout=ENV_TIMEOUT)
        venv_s = time.perf_counter() - p0
        if out.returncode == 0:
            out = subprocess.run([str(venv / "bin" / "pip"), "install", ENV_REQUIREMENT],
                                 env=env, capture_output=True, text=True, timeout=ENV_TIMEOUT)
        wall = time.perf_counter() - p0
        rec: dict[str, Any] = {"wall": wall, "ok": out.returncode == 0, "venv": venv_s,
                               "pip_install": wall - venv_s,
                               "interpreter": str(venv / "bin" / "python")}
        if not rec["ok"]:
            rec["error"] = f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"
        return rec

    variants: dict[str, Callable[..., dict[str, Any]]] = {"ours_cold": ours, "pip": peer}

    def attempt(name: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            return variants[name](extra_env)
        except Exception as exc:  # a failed rep is recorded, the benchmark goes on
            return {"ok": False, "error": "".join(traceback.format_exception(exc))}

    def show(label: str, rec: dict[str, Any]) -> None:
        log(f"{label}: {rec.get('wall', float('nan')):.2f} s ok={rec['ok']}"
            + ("" if rec["ok"] else f"\n{rec.get('error') or rec}"))

    try:
        warmup = {}
        for name in variants:  # fills ~/.cache/uv and ~/.cache/pip with the wheels
            warmup[name] = attempt(name)
            show(f"warm-up {name} (untimed)", warmup[name])
        pip_cache = Path.home() / ".cache" / "pip"  # pip's default; PIP_CACHE_DIR is unset
        pip_cache_files = sum(1 for f in pip_cache.rglob("*") if f.is_file())
        log(f"{pip_cache}: {pip_cache_files} files after the warm-up")
        raw: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        hit: dict[str, Any] = {}
        pip_config_walls: list[float] = []
        for i in range(reps):
            for name in ("ours_cold", "pip") if i % 2 == 0 else ("pip", "ours_cold"):
                rec = attempt(name)
                raw[name].append(rec)
                show(f"rep {i + 1}/{reps} {name}", rec)
                if name == "ours_cold":  # diagnostic, untimed: the resolve's `pip config list`
                    eb._pip_config.cache_clear()  # right after the build, so in like state
                    p0 = time.perf_counter()
                    eb._pip_config()
                    pip_config_walls.append(time.perf_counter() - p0)
                if name == "ours_cold" and rec["ok"] and not hit:
                    hit = hits(rec["home"])  # the same call again, same MLTRAIN_HOME
                    log(f"cache hit: median {statistics.median(hit['walls']) * 1000:.1f} ms "
                        f"of {hit_calls} calls, all cached={hit['ok']}")
        cold: dict[str, dict[str, Any]] = {}
        if cold_cache:  # one labelled rep each with empty download caches
            cold["ours_cold"] = attempt("ours_cold", {"UV_CACHE_DIR": str(fresh("uv-cache"))})
            show("cold download cache: ours (empty UV_CACHE_DIR)", cold["ours_cold"])
            cold["pip"] = attempt("pip", {"PIP_CACHE_DIR": str(fresh("pip-cache"))})
            show("cold download cache: pip (empty PIP_CACHE_DIR)", cold["pip"])
        first: dict[str, list[float]] = {name: [] for name in variants}
        for pair in zip(*(raw[name] for name in variants), strict=True):  # interleaved
            for name, rec in zip(variants, pair, strict=True):
                if rec["ok"]:
                    try:
                        rec["first_import"] = first_import(rec["interpreter"])
                        first[name].append(rec["first_import"])
                    except (subprocess.SubprocessError, OSError) as exc:
                        rec["first_import_error"] = str(exc)
        log("first import: " + ", ".join(f"{name} {statistics.median(v):.2f} s"
                                         for name, v in first.items() if v))
        versions: dict[str, Any] = {}
        for name in variants:  # untimed: each side's environment imports sklearn
            good = [r for r in raw[name] if r["ok"]]
            try:
                versions[name] = installed_versions(good[-1]["interpreter"]) if good else None
            except (subprocess.SubprocessError, ValueError) as exc:
                versions[name] = {"error": str(exc)}
        log("installed: " + "; ".join(
            f"{name} " + ", ".join(f"{p} {(v or {}).get(p)}" for p in ENV_PACKAGES)
            for name, v in versions.items()))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    shutil.rmtree(root, ignore_errors=True)  # nothing is timed after this

    def field_(name: str, key: str) -> dict[str, Any]:
        return summarize([r[key] for r in raw[name] if r["ok"] and r.get(key) is not None])

    summary: dict[str, Any] = {
        "ours_cold": {"wall": field_("ours_cold", "wall"),
                      "resolve": field_("ours_cold", "resolve"),
                      "venv_install": field_("ours_cold", "venv_install"),
                      "failures": sum(not r["ok"] for r in raw["ours_cold"])},
        "ours_hit": {"wall": summarize(hit.get("walls", [])),
                     "failures": sum(not c for c in hit.get("cached", []))},
        "pip": {"wall": field_("pip", "wall"), "venv": field_("pip", "venv"),
                "pip_install": field_("pip", "pip_install"),
                "failures": sum(not r["ok"] for r in raw["pip"])},
        "cold_cache": {name: {"wall": r.get("wall"), "ok": r["ok"]}
                       for name, r in cold.items()},
        "pip_config": summarize(pip_config_walls),
        "first_import": {name: summarize(v) for name, v in first.items()},
    }
    peer_median = summary["pip"]["wall"]["median"]
    summary["ratios"] = {
        "ours_cold_vs_pip": ratio(summary["ours_cold"]["wall"]["median"], peer_median),
        "ours_hit_vs_pip": ratio(summary["ours_hit"]["wall"]["median"], peer_median),
        "ours_min_vs_pip_min": ratio(summary["ours_cold"]["wall"]["min"],
                                     summary["pip"]["wall"]["min"]),
    }
    if cold.get("ours_cold", {}).get("ok") and cold.get("pip", {}).get("ok"):
        summary["ratios"]["cold_cache_ours_vs_pip"] = ratio(cold["ours_cold"]["wall"],
                                                            cold["pip"]["wall"])
    return {"requirement": ENV_REQUIREMENT, "reps": reps, "hit_calls": hit_calls,
            "peer_python": python3, "uv": eb._uv_binary(), "warmup": warmup, "raw": raw,
            "hits": hit, "cold_cache": cold, "installed": versions,
            "pip_cache_files_after_warmup": pip_cache_files, "summary": summary}


# -- benchmark d: Docker target ----------------------------------------------------------------


DOCKER_IMAGE = "mltrain-base:bookworm"  # made offline by .ci/docker-engine.sh
DOCKER_PHASES = [  # PHASES, with what each step does on the Docker target
    ("record + snapshot + git (NotStarted→Queued)", "NotStarted", "Queued"),
    ("runner process + Prefect flow run (Queued→Preparing)", "Queued", "Preparing"),
    ("engine check + environment image lookup (Preparing→Starting)", "Preparing", "Starting"),
    ("restore snapshot + container create + start (Starting→Running)", "Starting", "Running"),
    ("container runs, exits, is removed (Running→Finalizing)", "Running", "Finalizing"),
    ("final sync + artifacts (Finalizing→Completed)", "Finalizing", "Completed"),
]


# Per-run costs of our Docker path in a forked runner, timed in a fresh process: the warm
# runner has imported Prefect but not the Docker SDK, and the image's tag hashes the host's
# index settings, read with `pip config list` before the cache can be looked up.
DOCKER_PATH_PY = """\
import json, time
t = time.perf_counter(); import docker; a = time.perf_counter() - t
from prefect_mltrain.environment_build import _pip_config
t = time.perf_counter(); _pip_config(); b = time.perf_counter() - t
print(json.dumps({"import docker": a, "`pip config list` (image index settings)": b}))
"""


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


def docker_unavailable() -> str | None:
    """Why benchmark d cannot run here (no engine answers, or no base image), else None."""
    for args, what in ((["info"], "no Docker engine answers"),
                       (["image", "inspect", DOCKER_IMAGE], f"no image {DOCKER_IMAGE}")):
        try:
            out = docker(*args)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{what}: {exc}"
        if out.returncode != 0:
            return f"{what}: {tail(out.stderr, 300).strip()} (`bash .ci/docker-engine.sh` " \
                "starts one and builds the image)"
    return None


def run_containers() -> list[str]:
    """Containers of our runs on the engine (any state)."""
    out = docker("ps", "-a", "--filter", "label=mltrain.run_id", "-q")
    return out.stdout.split() if out.returncode == 0 else [f"`docker ps` failed: {out.stderr}"]


def wait_for_warm_runner(timeout: float = 60.0) -> bool:
    """Wait until the warm runner of this checkout and server listens on its socket (with
    ``timeout=0``: whether one listens now, i.e. whether the next submit will be warm)."""
    from prefect_mltrain import warm
    from prefect_mltrain.server import prefect_env

    path = warm.socket_path({**os.environ, **prefect_env()})
    deadline = time.monotonic() + timeout
    while path is not None and not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path is not None and path.exists()


def bench_docker(reps: int) -> dict[str, Any]:
    from prefect_mltrain import Environment, Experiment, ScriptRunConfig, Workspace
    from prefect_mltrain.compute import DockerCompute

    root = WORK / "docker"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    proj = make_noop_project(root)
    ws = Workspace(str(root / "ws"))
    # The script's stamp must be reachable from inside both containers: its folder is
    # bind-mounted at the same path in each (one extra mount per side).
    stamps = root / "stamp"
    stamps.mkdir()
    stamp = stamps / "stamp.txt"
    env = Environment("noop")  # no packages: the same image as no environment at all
    env.environment_variables = {"BENCH_STAMP_FILE": str(stamp)}  # a container gets only these
    config = ScriptRunConfig(
        source_directory=str(proj), script="noop.py", environment=env,
        compute_target=DockerCompute(image=DOCKER_IMAGE, network_mode="host",
                                     volumes={str(stamps): str(stamps)}))
    engine = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    server_start = start_server()

    def ours() -> dict[str, Any]:
        return submit_and_wait(Experiment(ws, "docker"), config, stamp, DOCKER_PHASES)

    def peer() -> dict[str, Any]:
        return run_peer(["docker", "run", "--rm", "--network", "host", "-v", f"{proj}:/src:ro",
                         "-v", f"{stamps}:{stamps}", "-e", f"BENCH_STAMP_FILE={stamp}",
                         "-w", "/src", DOCKER_IMAGE, "python3", "noop.py"], stamp)

    # After a fresh server the first submit runs in a cold runner, which starts the warm
    # runner as it exits (after the run is over); once that listens, the warm-up below waits
    # for its Prefect import, so the timed reps find it ready.
    first = try_rep(ours)
    log(f"first submit: {first.get('wall', float('nan')):.2f} s ok={first['ok']}, warm runner "
        f"listening: {wait_for_warm_runner()}")
    warmup, raw = interleaved({"ours": ours, "docker_run": peer}, reps)
    built = first.get("environment_build") or {}
    image = {"tag": built.get("image"), "built_by_first_submit": built.get("cached") is False,
             "first_build_seconds": built.get("build_seconds"),
             "timed_cache_hits": sum(bool((r.get("environment_build") or {}).get("cached"))
                                     and r["environment_build"]["image"] == built.get("image")
                                     for r in raw["ours"] if r["ok"])}
    log(f"environment image {image['tag']}: built by the first submit "
        f"{image['built_by_first_submit']}, cached in {image['timed_cache_hits']} timed reps")
    left = run_containers()
    costs: dict[str, list[float]] = {}
    for _ in range(min(reps, 5)):  # untimed diagnostic, after the reps
        out = subprocess.run([sys.executable, "-c", DOCKER_PATH_PY], capture_output=True,
                             text=True, timeout=RUN_TIMEOUT, cwd=HERE.parent)
        if out.returncode == 0:
            for label, value in json.loads(out.stdout).items():
                costs.setdefault(label, []).append(value)
    summary: dict[str, Any] = {"ours": summarize_runs(raw["ours"], DOCKER_PHASES),
                               "docker_run": summarize_runs(raw["docker_run"])}
    summary["ratios"] = {key: ratio(summary["ours"][key]["median"],
                                    summary["docker_run"][key]["median"])
                         for key in ("wall", "to_script_start")}
    summary["path_costs"] = {label: summarize(v) for label, v in costs.items()}
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "image": DOCKER_IMAGE, "engine": engine,
            "server_start_seconds": server_start, "environment_image": image,
            "containers_left": left, "first_submit": first, "warmup": warmup, "raw": raw,
            "path_costs": costs, "summary": summary}


# -- benchmark e: distributed launch -------------------------------------------------------------


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
DIST_PHASES = [  # the same status steps for both targets; README says what each holds
    ("record + snapshot + git (NotStarted→Queued)", "NotStarted", "Queued"),
    ("runner process + Prefect flow run (Queued→Preparing)", "Queued", "Preparing"),
    ("target check + environment lookup (Preparing→Starting)", "Preparing", "Starting"),
    ("restore snapshot + start the ranks (Starting→Running)", "Starting", "Running"),
    ("the ranks run, exit, are reaped (Running→Finalizing)", "Running", "Finalizing"),
    ("final sync + artifacts (Finalizing→Completed)", "Finalizing", "Completed"),
]
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
TORCH_IMPORT_PY = ("import time; t = time.perf_counter(); import torch.distributed; "
                   "print(time.perf_counter() - t)")


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
        from prefect_mltrain import Experiment
        from prefect_mltrain.run import Run

        record = Run(Experiment(ws, "dist"), rec["run_id"]).get_details()
        times = {e["status"]: e["time"] for e in record.get("status_history") or []}
        if "Running" in times:
            rec["running_to_script_start"] = started - times["Running"]
    return rec


def dask_placement(ws: Any, run_id: str) -> dict[str, str]:
    """Rank → host of a Dask run, from the first line of its log."""
    import re

    from prefect_mltrain import Experiment
    from prefect_mltrain.run import Run

    dest = WORK / "dist" / f"placement-{run_id}"
    log_text = Run(Experiment(ws, "dist"), run_id).download_file("logs/std_log.txt",
                                                                  dest).read_text()
    return dict(re.findall(r"rank (\d+) on tcp://([\d.]+):\d+", log_text.split("\n", 1)[0]))


def bench_dist(reps: int) -> dict[str, Any]:
    import importlib.metadata as md

    from prefect_mltrain import (
        Environment,
        Experiment,
        MpiConfiguration,
        PyTorchConfiguration,
        ScriptRunConfig,
        Workspace,
    )
    from prefect_mltrain import environment_build as eb
    from prefect_mltrain.compute import DaskCompute
    from prefect_mltrain.environment import CondaDependencies

    root = WORK / "dist"
    shutil.rmtree(root, ignore_errors=True)
    proj = make_noop_project(root)  # a clean git repository; both scripts are added below
    (proj / "noop_ddp.py").write_text(DDP_PY)
    (proj / "noop_mpi.py").write_text(MPI_PY)
    for cmd in (["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=bench@localhost",
                                "-c", "commit.gpgsign=false", "commit", "-q", "-m", "dist"]):
        subprocess.run(["git", *cmd], cwd=proj, check=True, timeout=60, capture_output=True)
    ws = Workspace(str(root / "ws"))
    exp = Experiment(ws, "dist")
    stamp = root / "stamp.txt"
    joined = Path(f"{stamp}.joined")

    # The torch environment, built once and untimed; the peer uses its own torchrun.
    env = Environment("torch-cpu")
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=[TORCH_SPEC])
    eb.RESOLVE_TIMEOUT_SECONDS = eb.INSTALL_TIMEOUT_SECONDS = ENV_TIMEOUT
    t = time.perf_counter()
    built = eb.build_environment(env)
    env_build = {"seconds": time.perf_counter() - t, "cached": built.cached,
                 "interpreter": built.interpreter}
    log(f"torch environment {built.interpreter} ({env_build['seconds']:.1f} s, "
        f"cached={built.cached}, not timed)")
    torch_bin = Path(built.interpreter).parent
    torch_version = subprocess.run(
        [built.interpreter, "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=WORK).stdout.strip()
    mpich = subprocess.run([str(VENV_BIN / "mpiexec"), "--version"], capture_output=True,
                           text=True, timeout=60).stdout
    mpich_version = next((line.split(":", 1)[1].strip() for line in mpich.splitlines()
                          if line.strip().startswith("Version:")), None)
    server_start = start_server()

    def torch_config(**kwargs: Any) -> Any:
        return ScriptRunConfig(
            source_directory=str(proj), script="noop_ddp.py", arguments=[str(stamp)],
            environment=env, distributed_job_config=PyTorchConfiguration(
                communication_backend="gloo", process_count=DIST_RANKS,
                node_count=kwargs.pop("node_count", 1)), **kwargs)

    local_torch = torch_config()
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
    floor = peer([str(VENV_BIN / "python"), str(root / "floor.py"), built.interpreter,
                  "noop_ddp.py", str(DIST_RANKS), str(stamp)])
    mpiexec = peer([str(VENV_BIN / "mpiexec"), "-n", str(DIST_RANKS), str(VENV_BIN / "python"),
                    "noop_mpi.py", str(stamp)])

    # After a fresh server the first submit runs in a cold runner, which starts the warm one
    # as it exits: wait for that before the warm-ups (as in d).
    first = try_rep(ours(local_torch))
    log(f"first submit (local, torch): {first.get('wall', float('nan')):.2f} s "
        f"ok={first['ok']}, warm runner listening: {wait_for_warm_runner()}"
        + ("" if first["ok"] else f"\n{first['error']}"))
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
        mpi_warmup, mpi_raw = interleaved({"ours_mpi": ours(mpi_config), "mpiexec": mpiexec},
                                          reps)
        placement: dict[str, Any] = {}
        last_dask = next((r for r in reversed(torch_raw["ours_dask"]) if r["ok"]), None)
        if last_dask:
            try:
                placement = dask_placement(ws, last_dask["run_id"])
            except Exception as exc:  # a check below says so
                placement = {"error": str(exc)}
        costs: dict[str, list[float]] = {}
        for _ in range(min(reps, 5)):  # untimed diagnostics, after the reps
            out = subprocess.run([sys.executable, "-c", DASK_PATH_PY, address],
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=WORK)
            if out.returncode == 0:
                for label, value in json.loads(out.stdout).items():
                    costs.setdefault(label, []).append(value)
            out = subprocess.run([built.interpreter, "-c", TORCH_IMPORT_PY],
                                 capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=WORK)
            if out.returncode == 0:
                label = "import torch.distributed (each rank; torchrun's agent too)"
                costs.setdefault(label, []).append(float(out.stdout.split()[-1]))
    raw = {**torch_raw, **mpi_raw}
    warmup = {**torch_warmup, **mpi_warmup}
    summary: dict[str, Any] = {}
    for name, recs in raw.items():
        summary[name] = summarize_runs(recs, DIST_PHASES if name.startswith("ours") else None)
        summary[name]["segments"] = {key: summarize([r[key] for r in recs if r["ok"]
                                                     and r.get(key) is not None])
                                     for _, key in DIST_SEGMENTS}
    summary["ratios"] = {f"{name}_vs_{peer_name}": {
        key: ratio(summary[name][key]["median"], summary[peer_name][key]["median"])
        for key in ("wall", "to_script_start")}
        for name, peer_name in (("ours_local", "torchrun"), ("ours_dask", "torchrun"),
                                ("ours_mpi", "mpiexec"), ("ours_local", "floor"),
                                ("ours_dask", "floor"), ("torchrun", "floor"))}
    summary["path_costs"] = {label: summarize(v) for label, v in costs.items()}
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "ranks": DIST_RANKS, "torch": torch_version,
            "mpich": mpich_version, "dask": md.version("distributed"),
            "mpi4py": md.version("mpi4py"), "dask_cluster": {
                "hosts": hosts, "workers_per_host": per_host, "node_count": hosts,
                "start_seconds": cluster_start},
            "environment_build": env_build, "server_start_seconds": server_start,
            "first_submit": first, "dask_placement": placement, "warmup": warmup,
            "raw": raw, "path_costs": costs, "summary": summary}


# -- benchmark f: a run through a work pool ---------------------------------------------------


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
    ("2nd process, our engine: `import prefect.engine, prefect_mltrain.flows`", VENV_BIN,
     "import prefect.engine, prefect_mltrain.flows"),
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


def bench_pool(reps: int) -> dict[str, Any]:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace
    from prefect_mltrain.compute import LocalCompute
    from prefect_mltrain.pools import create_target, delete_target
    from prefect_mltrain.run import Run
    from prefect_mltrain.server import prefect_env, using_server

    root = WORK / "pool"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
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
        if rec["ok"]:  # a run that did not go through the pool has no deployment.json
            run = Run(Experiment(ws, "pool"), rec["run_id"])
            rec["flow_run_id"] = ws.read_json(f"{run._dir}/deployment.json")["flow_run_id"]
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

    cleanup: dict[str, Any] = {}
    with using_server():  # this process's Prefect client calls go to the embedded server
        try:
            t = time.perf_counter()
            create_target(POOL, LocalCompute())
            with contextlib.redirect_stdout(sys.stderr):  # Prefect's table: not the report's
                flow.from_source(str(flows), "noop_flow.py:noop").deploy(
                    PEER_DEPLOYMENT.split("/")[1], work_pool_name=POOL,
                    print_next_steps=False, ignore_warnings=True)
            worker = start_group([str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL,
                                  "--name", "bench-worker"], root / "worker.log", worker_env)
            log(f"target, pool, deployments and worker in {time.perf_counter() - t:.1f} s "
                "(not timed)")
            # After a fresh server the first local submit runs in a cold runner, which starts
            # the warm one as it exits: wait for that before the warm-ups (as in d).
            first = try_rep(ours_local)
            log(f"first submit (local): {first.get('wall', float('nan')):.2f} s "
                f"ok={first['ok']}, warm runner listening: {wait_for_warm_runner()}")
            warmup, raw = interleaved({"ours_pool": ours_pool, "peer": peer,
                                       "ours_local": ours_local}, reps)
        finally:
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
    summary: dict[str, Any] = {}
    for name, recs in raw.items():
        summary[name] = summarize_runs(recs, None if name == "peer" else POOL_PHASES)
        if name != "ours_local":
            summary[name]["flow_run_phases"] = summarize_phases(
                [r for r in recs if r["ok"]], FLOW_RUN_PHASES, "flow_run_phases")
    summary["ratios"] = {f"{name}_vs_{base}": {
        key: ratio(summary[name][key]["median"], summary[base][key]["median"])
        for key in ("wall", "to_script_start")}
        for name, base in (("ours_pool", "peer"), ("ours_local", "peer"),
                           ("ours_pool", "ours_local"))}
    imports = bench_imports(min(reps, 5), worker_env, POOL_IMPORTS)  # untimed, after the reps
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "pool": POOL, "worker_env": POOL_WORKER_ENV, "imports": imports,
            "peer_deployment": PEER_DEPLOYMENT, "server_start_seconds": server_start,
            "first_submit": first, "warmup": warmup, "raw": raw, "cleanup": cleanup,
            "summary": summary}


# -- checks and report ---------------------------------------------------------------------


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def check(name: str, ok: bool, detail: str) -> None:
        out.append({"check": name, "ok": bool(ok), "detail": detail})

    noop = results.get("noop")
    if noop:
        for name, s in noop["summary"].items():
            check(f"noop {name}: every rep succeeded", s["failures"] == 0,
                  f"{s['failures']} failed of {noop['reps']}")
    snap = results.get("snapshot")
    if snap:
        n, raw = snap["n_files"], snap["raw"]
        check("snapshot cold: every file hashed and uploaded",
              all(r["hashed_files"] == n and r["uploaded_files"] == n for r in raw["cold"]),
              str([(r["hashed_files"], r["uploaded_files"]) for r in raw["cold"]]))
        check("snapshot without stat cache: all hashed, none uploaded",
              all(r["hashed_files"] == n and r["uploaded_files"] == 0
                  for r in raw["rehash_no_upload"]),
              str([(r["hashed_files"], r["uploaded_files"]) for r in raw["rehash_no_upload"]]))
        check("snapshot unchanged: 0 hashed, 0 uploaded, same id",
              all(r["hashed_files"] == 0 and r["uploaded_files"] == 0
                  and r["snapshot_id"] == raw["cold"][-1]["snapshot_id"]
                  for r in raw["unchanged"]),
              str([(r["hashed_files"], r["uploaded_files"]) for r in raw["unchanged"]]))
        check("snapshot one file changed: 1 hashed, 1 uploaded",
              all(r["hashed_files"] == 1 and r["uploaded_files"] == 1
                  for r in raw["one_changed"]),
              str([(r["hashed_files"], r["uploaded_files"]) for r in raw["one_changed"]]))
    envb = results.get("env")
    if envb:
        s, raw = envb["summary"], envb["raw"]
        check("env ours cold: every rep built (cached False)",
              s["ours_cold"]["failures"] == 0 and bool(raw["ours_cold"]),
              str([r.get("cached", r.get("error", "?")[-200:]) for r in raw["ours_cold"]]))
        check(f"env ours cache hit: all {envb['hit_calls']} calls cached",
              len(envb["hits"].get("cached", [])) == envb["hit_calls"]
              and s["ours_hit"]["failures"] == 0, str(envb["hits"].get("cached")))
        check("env pip: every rep succeeded", s["pip"]["failures"] == 0 and bool(raw["pip"]),
              f"{s['pip']['failures']} failed of {len(raw['pip'])}")
        inst = envb["installed"]
        ok = all(isinstance(inst.get(n), dict) and "error" not in inst[n]
                 for n in ("ours_cold", "pip"))
        first_ok = all(r.get("first_import") is not None for n in ("ours_cold", "pip")
                       for r in raw[n] if r["ok"])
        check("env: `import sklearn` works in both environments", ok and first_ok,
              str(inst)[:300])
        if ok:
            tools = {"pip", "setuptools", "wheel"}  # what `python3 -m venv` seeds
            ours_set = {(k, v) for k, v in inst["ours_cold"].items() if k not in tools}
            pip_set = {(k, v) for k, v in inst["pip"].items() if k not in tools}
            check("env: both sides installed the same distributions and versions",
                  ours_set == pip_set and ("scikit-learn", inst["pip"].get("scikit-learn"))
                  in ours_set, f"only ours: {sorted(ours_set - pip_set)}, "
                  f"only pip: {sorted(pip_set - ours_set)}")
        for name, rec in envb["cold_cache"].items():
            check(f"env cold download cache {name}: succeeded", rec["ok"],
                  rec.get("error", "")[-300:] or "ok")
    dock = results.get("docker")
    if dock:
        s, img = dock["summary"], dock["environment_image"]
        for name in ("ours", "docker_run"):
            check(f"docker {name}: every rep succeeded", s[name]["failures"] == 0,
                  f"{s[name]['failures']} failed of {dock['reps']}")
        check("docker ours: every timed rep found the first submit's image cached",
              bool(img["tag"]) and img["timed_cache_hits"] == s["ours"]["wall"]["n"],
              f"{img['tag']}: {img['timed_cache_hits']} hits of {s['ours']['wall']['n']}")
        check("docker: no container labelled mltrain.run_id left", not dock["containers_left"],
              " ".join(dock["containers_left"]) or "none")
    for bench in ("dist", "pool"):
        for name, recs in results.get(bench, {}).get("raw", {}).items():
            failures = results[bench]["summary"][name]["failures"]
            check(f"{bench} {name}: every rep succeeded", failures == 0 and bool(recs),
                  f"{failures} failed of {len(recs)}")
    dist = results.get("dist")
    if dist:
        hosts = dist.get("dask_placement") or {}
        check("dist ours_dask: 2 ranks on each of 2 hosts",
              [hosts.get(str(r)) for r in range(4)].count(None) == 0
              and hosts["0"] == hosts["1"] != hosts["2"] == hosts["3"], str(hosts))
    pool = results.get("pool")
    if pool:
        cleanup = pool["cleanup"]
        check("pool: worker stopped; target, pool and both deployments deleted",
              "error" not in cleanup and all(cleanup.get("deleted", {}).values())
              and len(cleanup.get("deleted", {})) == 4, str(cleanup))
    for name in BENCHMARKS:
        if results.get(f"{name}_error"):
            check(f"{name} benchmark ran", False, results[f"{name}_error"].splitlines()[-1])
    return out


def _s(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _load(load: list[float] | tuple[float, ...] | None) -> str:
    return "–" if not load else "/".join(f"{x:.1f}" for x in load)


def _ratio_head(ratio: str) -> list[str]:
    """The head of a table of timings with a ratio column."""
    return [f"| measurement | median | min | max | {ratio} |", "|---|---:|---:|---:|---:|"]


def _row(label: str, st: dict[str, Any], *extra: str) -> str:
    """A table row: label, median, min, max (seconds) and any further cells."""
    return "| " + " | ".join([label, *(_s(st[k]) for k in ("median", "min", "max")),
                              *extra]) + " |"


def _cols(label: str, values: list[float | None]) -> str:
    """A table row: label, then one cell of seconds per column."""
    return "| " + " | ".join([label, *map(_s, values)]) + " |"


def report(results: dict[str, Any]) -> str:
    versions = results["versions"]
    lines = [f"prefect-mltrain benchmarks, {results['date']} ({results['mode']} mode); "
             f"{results['machine']['nproc']} cores, Python {results['machine']['python']}, "
             f"commit {(versions.get('commit') or '?')[:9]}"
             f"{' + local edits' if versions.get('library_dirty') else ''}"
             f"{' (CHANGED during the run)' if versions.get('library_changed_during_run') else ''}"
             f", prefect {versions.get('prefect')}"
             + (f", mlflow {versions['mlflow']}" if versions.get("mlflow") else "")
             + "; load average "
             f"{_load(results['machine'].get('loadavg_at_start'))} at start, "
             f"{_load(results['machine'].get('loadavg_at_end'))} at end", ""]
    noop = results.get("noop")
    if noop:
        s = noop["summary"]
        lines += [f"### a. No-op run end to end, local compute ({noop['reps']} interleaved reps "
                  "each, seconds)", "",
                  *_ratio_head("ours / MLflow (medians)")]
        rows = [("`mltrain submit` CLI, wall (fresh process)", "mltrain_cli", "wall"),
                ("`Experiment.submit()` + `wait_for_completion()`, wall", "mltrain_api", "wall"),
                ("`mlflow run --env-manager local` (sqlite), wall", "mlflow_run", "wall"),
                ("submit → script start: `mltrain submit` CLI", "mltrain_cli",
                 "to_script_start"),
                ("submit → script start: `Experiment.submit()`", "mltrain_api",
                 "to_script_start"),
                ("submit → script start: `mlflow run`", "mlflow_run", "to_script_start")]
        for label, name, key in rows:
            st = s[name][key]
            r = 1.0 if name == "mlflow_run" else s[name].get(f"{key}_ratio_vs_mlflow")
            lines.append(_row(label, st, _x(r)))
        lines += ["", "Where our time goes (medians, seconds, from the run record's "
                  "status_history):", "", "| phase | CLI | API |", "|---|---:|---:|",
                  f"| CLI process start + imports (spawn → created_at) | "
                  f"{_s(s['mltrain_cli']['client_to_created']['median'])} | – |"]
        for label in s["mltrain_api"]["phases"]:
            lines.append(f"| {label} | {_s(s['mltrain_cli']['phases'][label]['median'])} | "
                         f"{_s(s['mltrain_api']['phases'][label]['median'])} |")
        lines.append(f"| client notices the end (ended_at → return) | "
                     f"{_s(s['mltrain_cli']['ended_to_client_exit']['median'])} | "
                     f"{_s(s['mltrain_api']['ended_to_client_exit']['median'])} |")
        lines += ["", "Import cost of a fresh process (diagnostic; medians, seconds):", "",
                  "| process | median | min |", "|---|---:|---:|"]
        for label, st in noop["imports"]["summary"].items():
            lines.append(f"| {label} | {_s(st['median'])} | {_s(st['min'])} |")
        lines.append("")
    snap = results.get("snapshot")
    if snap:
        s, raw = snap["summary"], snap["raw"]

        def counts(key: str) -> str:
            pairs = sorted({(r["hashed_files"], r["uploaded_files"]) for r in raw[key]})
            return ", ".join(f"{h} / {u}" for h, u in pairs)

        ratios = s["ratios"]
        lines += [f"### b. Snapshot of a {snap['n_files']:,}-file tree (seconds)", "",
                  "| measurement | reps | median | min | hashed / uploaded | ratio |",
                  "|---|---:|---:|---:|---:|---|"]
        rows = [("first snapshot (cold: empty store, no stat cache)", "cold", counts("cold"),
                 f"{_x(ratios['cold_vs_copytree'])} copytree"),
                ("peer: `shutil.copytree` of the tree", "copytree", "–", ""),
                ("same store, stat cache lost (re-hash, no upload)", "rehash_no_upload",
                 counts("rehash_no_upload"), f"{_x(ratios['rehash_no_upload_vs_cold'])} cold"),
                ("**re-snapshot, unchanged tree**", "unchanged", counts("unchanged"),
                 f"**{_x(ratios['unchanged_vs_stat_walk'])} stat walk**, "
                 f"{_x(ratios['unchanged_vs_cold'])} cold"),
                ("floor: `os.walk` + `os.stat` of every file", "stat_walk", "–", ""),
                ("re-snapshot, one file changed", "one_changed", counts("one_changed"),
                 f"{_x(ratios['one_changed_vs_stat_walk'])} stat walk")]
        for label, key, hu, r in rows:
            st = s[key]
            lines.append(f"| {label} | {st['n']} | {_s(st['median'], 3)} | {_s(st['min'], 3)} "
                         f"| {hu} | {r} |")
        lines.append("")
    envb = results.get("env")
    if envb:
        s, cold = envb["summary"], envb["cold_cache"]
        r = s["ratios"]
        n_ours, n_pip = s["ours_cold"]["wall"]["n"], s["pip"]["wall"]["n"]
        lines += [f"### c. Environment build: unpinned `{envb['requirement']}` "
                  f"({envb['reps']} interleaved reps each, warm download caches, seconds)", "",
                  "| measurement | reps | median | min | max | ours / pip (medians) |",
                  "|---|---:|---:|---:|---:|---:|"]

        def row(label: str, st: dict[str, Any], rt: str = "", digits: int = 2,
                scale: float = 1.0) -> None:
            vals = [None if st[k] is None else st[k] * scale for k in ("median", "min", "max")]
            lines.append(f"| {label} | {st['n']} | " + " | ".join(_s(v, digits) for v in vals)
                         + f" | {rt} |")

        row("**ours, cold**: `build_environment()`, fresh `MLTRAIN_HOME` (resolve + build)",
            s["ours_cold"]["wall"], f"**{_x(r['ours_cold_vs_pip'])}**")
        row("↳ of which resolve (`pip config list` + `uv pip compile`)",
            s["ours_cold"]["resolve"])
        row("↳ of which `uv venv` + `uv pip install` of the lock", s["ours_cold"]["venv_install"])
        row("(diagnostic: the resolve's `pip config list` alone, timed after each build)",
            s["pip_config"])
        row("**ours, cache hit**: the same call again, same `MLTRAIN_HOME` (**ms**)",
            s["ours_hit"]["wall"], _x(r["ours_hit_vs_pip"]), 1, 1000.0)
        row("peer: `python3 -m venv DIR` + `DIR/bin/pip install "
            f"{envb['requirement']}`", s["pip"]["wall"], "1.00×")
        row("↳ of which `python3 -m venv`", s["pip"]["venv"])
        row("↳ of which `pip install`", s["pip"]["pip_install"])
        if cold:
            lines += ["", "Cold download caches (1 rep each, empty `UV_CACHE_DIR` / "
                      "`PIP_CACHE_DIR`; indicative only):", "",
                      "| measurement | seconds | ours / pip |", "|---|---:|---:|"]
            for name, label in (("ours_cold", "ours, cold, empty uv cache"),
                                ("pip", "peer: venv + pip install, empty pip cache")):
                rec = cold.get(name, {})
                rt = _x(r.get("cold_cache_ours_vs_pip")) if name == "ours_cold" else "1.00×"
                lines.append(f"| {label} | {_s(rec.get('wall')) if rec.get('ok') else 'failed'}"
                             f" | {rt} |")
        fi = s.get("first_import")
        if fi:
            lines += ["", "After the build (not timed above): the first `import sklearn, numpy, "
                      "scipy` in each new environment (uv does not byte-compile, pip does):", "",
                      "| environment | n | median | min | max |", "|---|---:|---:|---:|---:|"]
            for name, label in (("ours_cold", "ours (uv)"), ("pip", "peer (pip)")):
                st = fi[name]
                lines.append(f"| {label} | {st['n']} | {_s(st['median'])} | {_s(st['min'])} | "
                             f"{_s(st['max'])} |")
        inst = envb["installed"]
        if all(isinstance(inst.get(n), dict) for n in ("ours_cold", "pip")):
            lines += ["", "Installed (both sides): " + ", ".join(
                f"{p} {inst['ours_cold'].get(p)}"
                + ("" if inst["ours_cold"].get(p) == inst["pip"].get(p)
                   else f" (pip: {inst['pip'].get(p)})") for p in ENV_PACKAGES)
                + f"; {n_ours} + {n_pip} good reps. Files in pip's download cache after "
                f"the warm-up: {envb['pip_cache_files_after_warmup']}."]
        lines.append("")
    if results.get("docker_skipped"):
        lines += ["### d. Docker target: skipped", "", results["docker_skipped"], ""]
    dock = results.get("docker")
    if dock:
        s, img = dock["summary"], dock["environment_image"]
        lines += [f"### d. Docker target: no-op run vs `docker run` ({dock['reps']} interleaved "
                  "reps each, image cached, seconds)", "",
                  *_ratio_head("ours / `docker run` (medians)")]
        rows = [("`Experiment.submit()` + `wait_for_completion()`, `DockerCompute`, wall",
                 "ours", "wall"),
                ("peer: `docker run --rm` of the same image and script, wall", "docker_run",
                 "wall"),
                ("submit → script start: ours", "ours", "to_script_start"),
                ("spawn → script start: `docker run`", "docker_run", "to_script_start")]
        for label, name, key in rows:
            r = 1.0 if name == "docker_run" else s["ratios"][key]
            lines.append(_row(label, s[name][key], _x(r)))
        lines += ["", "Where our time goes (seconds, from the run record's status_history):", "",
                  "| phase | median | min | max |", "|---|---:|---:|---:|"]
        lines += [_row(label, st) for label, st in s["ours"]["phases"].items()]
        lines += [_row("client notices the end (ended_at → return)",
                       s["ours"]["ended_to_client_exit"]), "",
                  "Of Preparing→Starting, two per-run costs of a forked runner (diagnostic, "
                  "timed in a fresh process; seconds):", "",
                  "| cost | median | min | max |", "|---|---:|---:|---:|"]
        lines += [_row(label, st) for label, st in s["path_costs"].items()]
        lines += ["",
                  f"Environment image `{img['tag']}`: "
                  + (f"built by the first, untimed submit ({_s(img['first_build_seconds'])} s)"
                     if img["built_by_first_submit"] else "already on the engine")
                  + f"; cached in {img['timed_cache_hits']} of {s['ours']['wall']['n']} timed "
                  f"reps. Containers labelled `mltrain.run_id` left afterwards: "
                  f"{len(dock['containers_left'])}. Docker engine {dock['engine']}.", ""]
    dist = results.get("dist")
    if dist:
        s, cl = dist["summary"], dist["dask_cluster"]
        lines += [f"### e. Distributed launch: {dist['ranks']} ranks of a no-op ({dist['reps']} "
                  "interleaved reps each, seconds)", "",
                  *_ratio_head("ours / peer (medians)")]
        rows = [("`PyTorchConfiguration`, local compute, wall", "ours_local", "torchrun"),
                (f"`PyTorchConfiguration`, `DaskCompute` ({cl['hosts']} hosts × "
                 f"{cl['workers_per_host']} workers), wall", "ours_dask", "torchrun"),
                (f"peer: `torchrun --standalone --nproc-per-node {dist['ranks']}`, wall",
                 "torchrun", None),
                ("`MpiConfiguration` (mpi4py), local compute, wall", "ours_mpi", "mpiexec"),
                (f"peer: `mpiexec -n {dist['ranks']} python`, wall", "mpiexec", None)]
        for label, name, peer_name in rows:
            r = s["ratios"][f"{name}_vs_{peer_name}"]["wall"] if peer_name else 1.0
            lines.append(_row(label, s[name]["wall"], _x(r)))
        lines += ["", f"Against the floor (diagnostic: the {dist['ranks']} ranks started at once "
                  "by a stdlib-only Python with torchrun's variables, no agent; seconds):", "",
                  *_ratio_head("/ floor (medians)")]
        for label, name in (("floor: the ranks alone, wall", "floor"),
                            ("ours, local compute", "ours_local"), ("ours, Dask", "ours_dask"),
                            ("`torchrun`", "torchrun")):
            r = 1.0 if name == "floor" else s["ratios"][f"{name}_vs_floor"]["wall"]
            lines.append(_row(label, s[name]["wall"], _x(r)))
        names = ["ours_local", "ours_dask", "torchrun", "floor", "ours_mpi", "mpiexec"]
        lines += ["", "Each rep cut at rank 0's first line and at the barrier (medians, "
                  "seconds):", "",
                  "| segment | local | Dask | torchrun | floor | MPI, ours | mpiexec |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, key in DIST_SEGMENTS:
            lines.append(f"| {label} | " + " | ".join(
                _s(s[n]["segments"][key]["median"]) for n in names) + " |")
        lines += ["", "Where our time goes (medians, seconds, from the run record's "
                  "status_history):", "", "| phase | local | Dask | MPI |", "|---|---:|---:|---:|"]
        for label in s["ours_local"]["phases"]:
            lines.append(f"| {label} | " + " | ".join(
                _s(s[n]["phases"][label]["median"])
                for n in ("ours_local", "ours_dask", "ours_mpi")) + " |")
        lines.append("| client notices the end (ended_at → return) | " + " | ".join(
            _s(s[n]["ended_to_client_exit"]["median"])
            for n in ("ours_local", "ours_dask", "ours_mpi")) + " |")
        lines += ["", "Per-process costs (diagnostic, timed in fresh processes; seconds):", "",
                  "| cost | median | min | max |", "|---|---:|---:|---:|"]
        lines += [_row(label, st) for label, st in s["path_costs"].items()]
        cold = {n: sum(not r.get("warm_runner", True) for r in dist["raw"][n] if r["ok"])
                for n in ("ours_local", "ours_dask", "ours_mpi")}
        lines += ["", "Timed reps of ours that found no warm runner of the current library "
                  "files (a cold runner: library edited during the run): "
                  + ", ".join(f"{n} {c}" for n, c in cold.items()) + "."]
        lines += ["", f"torch {dist['torch']} (gloo), mpi4py {dist['mpi4py']} on MPICH "
                  f"{dist['mpich']}, dask/distributed {dist['dask']}; Dask ranks placed "
                  f"{dist['dask_placement']}.", ""]
    pool = results.get("pool")
    if pool:
        s, r = pool["summary"], pool["summary"]["ratios"]
        lines += [f"### f. A run through a work pool: one worker, ours vs a plain Prefect "
                  f"deployment ({pool['reps']} interleaved reps each, seconds)", "",
                  *_ratio_head("/ peer (medians)")]
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
            lines.append(_row(label, s[name][key], _x(rt)))
        walls = [s[n]["wall"]["median"] for n in ("ours_pool", "ours_local")]
        lines += ["", "The pool route vs local compute (ours, wall medians): "
                  f"{_x(r['ours_pool_vs_ours_local']['wall'])}, "
                  f"+{_s(walls[0] - walls[1]) if None not in walls else '–'} s.", ""]
        lines += ["Both flow runs through the worker (medians, seconds, from the flow run's "
                  "Prefect states):", "", "| step | ours | peer |", "|---|---:|---:|"]
        lines += [_cols(label, [s[n]["flow_run_phases"][label]["median"]
                                for n in ("ours_pool", "peer")])
                  for label, _, _ in FLOW_RUN_PHASES]
        lines += ["", "Pending→Running is two fresh Python processes on the worker: a supervisor "
                  "that runs the deployment's pull steps, then (exec'd in its place) "
                  "`python -m prefect.engine`. Their imports alone (diagnostic, fresh processes; "
                  "seconds):", "", "| process | median | min | max |", "|---|---:|---:|---:|"]
        lines += [_row(label, st) for label, st in pool["imports"]["summary"].items()]
        lines += ["", "Ours, pool vs local (medians, seconds, from the run record's "
                  "status_history):", "", "| phase | pool | local |", "|---|---:|---:|"]
        lines += [_cols(label, [s[n]["phases"][label]["median"]
                                for n in ("ours_pool", "ours_local")])
                  for label in s["ours_pool"]["phases"]]
        lines += [_cols("client notices the end (ended_at → return)",
                        [s[n]["ended_to_client_exit"]["median"]
                         for n in ("ours_pool", "ours_local")]), "",
                  "Worker settings: " + ", ".join(f"`{k}={v}`"
                                                  for k, v in pool["worker_env"].items()) + ".",
                  ""]
    bad = [c for c in results["checks"] if not c["ok"]]
    lines.append("Checks: " + ("all passed" if not bad else
                               "FAILED: " + "; ".join(f"{c['check']} ({c['detail']})"
                                                      for c in bad)))
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


BENCHMARKS = ("noop", "snapshot", "env", "docker", "dist", "pool")
RUN_META = ("date", "mode", "machine", "versions", "elapsed_seconds")


def merged_results(results: dict[str, Any], ran: list[str]) -> dict[str, Any]:
    """The existing results.json with this run's benchmarks replaced, the others kept.

    ``runs`` says, per benchmark, which run (date, mode, machine, commit) measured it; the
    top-level date/machine/versions are those of the last full run (or of the first run).
    """
    try:
        merged = json.loads(RESULTS.read_text())
        if not isinstance(merged, dict):
            merged = {}
    except (OSError, ValueError):
        merged = {}
    runs = merged.get("runs") if isinstance(merged.get("runs"), dict) else {}
    for name in BENCHMARKS:  # files from before `runs` existed: their run measured them all
        if name in merged and name not in runs and "date" in merged:
            runs[name] = {key: merged.get(key) for key in RUN_META}
    meta = {key: results.get(key) for key in RUN_META}
    for name in ran:
        for key in (name, f"{name}_error", f"{name}_skipped"):
            merged.pop(key, None)
            if key in results:
                merged[key] = results[key]
        runs[name] = meta
    if set(ran) == set(BENCHMARKS) or "date" not in merged:
        merged.update(meta)
    merged["runs"] = runs
    merged["checks"] = checks(merged)
    return merged


def fresh_server() -> None:
    """No server left by an earlier benchmark run, and an empty MLTRAIN_HOME: start afresh."""
    from prefect_mltrain.server import stop_server

    stop_server()
    shutil.rmtree(SERVER_HOME, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=BENCHMARKS,
                        help="run one benchmark (its numbers are merged into results.json)")
    parser.add_argument("--no-cold-cache", action="store_true",
                        help="env: skip the cold-download-cache rep of each side")
    parser.add_argument("--files", type=int, default=10_000, help="files in the snapshot tree")
    parser.add_argument("--keep-server", action="store_true",
                        help="leave the benchmark's embedded Prefect server running")
    args = parser.parse_args(argv)

    WORK.mkdir(parents=True, exist_ok=True)
    env = base_env()  # this process too (the in-process submits, take_snapshot)
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, str(HERE.parent))  # the checkout's prefect_mltrain, installed or not

    import prefect

    from prefect_mltrain.server import stop_server

    results: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "versions": {"prefect": prefect.__version__, **checkout_info()},
    }
    noop_reps = 3 if args.quick else 7
    dist_reps = 3 if args.quick else 5
    env_reps = 2 if args.quick else 5
    snap_reps, cold_reps, change_reps = (3, 1, 2) if args.quick else (5, 3, 3)
    started = time.perf_counter()
    library = library_fingerprint()

    def after_fresh_server(bench: Callable[..., dict[str, Any]], *bench_args: Any
                           ) -> dict[str, Any]:
        if args.only:  # in the full run, the no-op benchmark has started the server afresh
            fresh_server()
        return bench(*bench_args)

    def run_noop() -> dict[str, Any]:
        results["versions"]["mlflow"] = ensure_mlflow()
        fresh_server()
        return bench_noop(noop_reps)

    def run_docker() -> dict[str, Any]:
        if docker_reason:
            raise RuntimeError(docker_reason)
        return after_fresh_server(bench_docker, noop_reps)

    docker_reason = docker_unavailable() if args.only in (None, "docker") else None
    if docker_reason and args.only is None:  # the full run goes on without it
        results["docker_skipped"] = docker_reason
        log(f"Docker benchmark skipped: {docker_reason}")
    benchmarks: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "noop": ("no-op", run_noop),
        "snapshot": ("snapshot", lambda: bench_snapshot(args.files, snap_reps, cold_reps,
                                                        change_reps)),
        "env": ("environment", lambda: bench_env(env_reps, ENV_HIT_CALLS,
                                                 not args.no_cold_cache)),
        "docker": ("Docker", run_docker),
        "dist": ("distributed launch", lambda: after_fresh_server(bench_dist, dist_reps)),
        "pool": ("work pool", lambda: after_fresh_server(bench_pool, dist_reps)),
    }
    try:
        for name, (what, bench) in benchmarks.items():
            if args.only not in (None, name) or f"{name}_skipped" in results:
                continue
            try:
                results[name] = bench()
            except Exception as exc:  # recorded; the other benchmarks go on
                results[f"{name}_error"] = "".join(traceback.format_exception(exc))
                log(f"{what} benchmark failed:\n{results[f'{name}_error']}")
    finally:
        if not args.keep_server:
            stop_server()
    results["elapsed_seconds"] = time.perf_counter() - started
    results["versions"]["library_changed_during_run"] = library_fingerprint() != library
    if results["versions"]["library_changed_during_run"]:
        log("WARNING: prefect_mltrain/ changed during the run; its numbers are suspect")
    try:
        results["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    results["checks"] = checks(results)
    ran = [name for name in BENCHMARKS if args.only in (None, name)]
    RESULTS.write_text(json.dumps(merged_results(results, ran), indent=1, default=str) + "\n")
    print(report(results))
    print(f"\nraw numbers: {RESULTS.relative_to(HERE.parent)}")
    return 0 if all(c["ok"] for c in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
