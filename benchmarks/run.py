"""Speed benchmarks of prefect-mltrain, each against a peer measured in the same run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py            # full: ~7 reps per no-op variant
    .venv/bin/python benchmarks/run.py --quick    # 3 reps, for a smoke check

Prints a markdown table and writes the raw numbers to ``benchmarks/results.json``.
Scratch files (the MLflow peer's venv, workspaces, generated trees) live in
``benchmarks/.work/`` (gitignored). See ``benchmarks/README.md`` for what is measured.

Benchmarks:
  noop      a no-op script run end to end on local compute: ``mltrain submit`` (a fresh CLI
            process) and ``Experiment.submit() + wait_for_completion()`` (in process) vs.
            ``mlflow run --env-manager local`` with sqlite tracking, interleaved.
  snapshot  re-snapshot of an unchanged 10,000-file tree vs. ``os.walk + os.stat`` of
            every file (the floor) and ``shutil.copytree`` of the same tree.
"""

from __future__ import annotations

import argparse
import datetime as dt
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


def phases_of(record: dict[str, Any]) -> dict[str, float]:
    times: dict[str, float] = {}
    for entry in record.get("status_history") or []:
        times.setdefault(entry["status"], entry["time"])
    out = {}
    for label, a, b in PHASES:
        if a in times and b in times:
            out[label] = times[b] - times[a]
    if "Running" in times and record.get("created_at"):
        out["submit→Running (run record)"] = times["Running"] - record["created_at"]
    return out


def bench_noop(reps: int) -> dict[str, Any]:
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace
    from prefect_mltrain.server import ensure_server

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

    t = time.perf_counter()
    server = ensure_server()
    server_start = time.perf_counter() - t
    log(f"embedded Prefect server at {server['api_url']} ({server_start:.1f} s, not timed)")

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
        stamp.unlink(missing_ok=True)
        os.environ["BENCH_STAMP_FILE"] = str(stamp)
        try:
            t0 = time.time()
            p0 = time.perf_counter()
            run = Experiment(ws, "api").submit(
                ScriptRunConfig(source_directory=str(proj), script="noop.py"))
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
                               "phases": phases_of(details),
                               "ended_to_client_exit": t_end - details["ended_at"]}
        if not rec["ok"]:
            rec["error"] = f"{details.get('error')}\n{details.get('log_tail')}"
        started = read_stamp(stamp)
        rec["to_script_start"] = started - t0 if started else None
        return rec

    def run_mlflow() -> dict[str, Any]:
        stamp.unlink(missing_ok=True)
        t0 = time.time()
        p0 = time.perf_counter()
        out = subprocess.run([str(mlflow_bin() / "mlflow"), "run", str(proj),
                              "--env-manager", "local"],
                             env={**mlflow_env, "BENCH_STAMP_FILE": str(stamp)},
                             cwd=mlflow_cwd, capture_output=True, text=True,
                             timeout=RUN_TIMEOUT)
        wall = time.perf_counter() - p0
        rec: dict[str, Any] = {"wall": wall, "ok": out.returncode == 0
                               and "noop: hello" in out.stdout}
        if not rec["ok"]:
            rec["error"] = f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"
        started = read_stamp(stamp)
        rec["to_script_start"] = started - t0 if started else None
        return rec

    variants: dict[str, Callable[[], dict[str, Any]]] = {
        "mltrain_cli": run_cli, "mlflow_run": run_mlflow, "mltrain_api": run_api}

    def attempt(name: str) -> dict[str, Any]:
        try:
            return variants[name]()
        except Exception as exc:  # a failed rep is recorded, the benchmark goes on
            return {"ok": False, "error": "".join(traceback.format_exception(exc))}

    warmup = {}
    for name in variants:  # one untimed run each: first-use costs are not the steady state
        rec = attempt(name)
        warmup[name] = rec
        log(f"warm-up {name}: {rec.get('wall', float('nan')):.2f} s ok={rec['ok']}")
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(reps):
        order = names[i % len(names):] + names[:i % len(names)]  # interleaved and rotated
        for name in order:
            rec = attempt(name)
            raw[name].append(rec)
            log(f"rep {i + 1}/{reps} {name}: {rec.get('wall', float('nan')):.2f} s "
                f"ok={rec['ok']}" + ("" if rec["ok"] else f"\n{rec['error']}"))

    summary: dict[str, Any] = {}
    for name, recs in raw.items():
        good = [r for r in recs if r["ok"]]
        summary[name] = {
            "wall": summarize([r["wall"] for r in good]),
            "to_script_start": summarize([r["to_script_start"] for r in good
                                          if r.get("to_script_start") is not None]),
            "failures": len(recs) - len(good),
        }
        if name != "mlflow_run":
            labels = [label for label, _, _ in PHASES] + ["submit→Running (run record)"]
            summary[name]["phases"] = {
                label: summarize([r["phases"][label] for r in good
                                  if label in r.get("phases", {})]) for label in labels}
            summary[name]["ended_to_client_exit"] = summarize(
                [r["ended_to_client_exit"] for r in good])
            if name == "mltrain_cli":
                summary[name]["client_to_created"] = summarize(
                    [r["client_to_created"] for r in good])
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


def bench_imports(reps: int, env: dict[str, str]) -> dict[str, Any]:
    """Diagnostic, not a comparison: import time of a fresh process, interleaved."""
    raw: dict[str, list[float]] = {label: [] for label, _, _ in IMPORTS}
    for _ in range(reps):
        for label, bin_dir, code in IMPORTS:
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
    for key in ("noop_error", "snapshot_error"):
        if results.get(key):
            check(f"{key.split('_')[0]} benchmark ran", False, results[key].splitlines()[-1])
    return out


def _s(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _load(load: list[float] | tuple[float, ...] | None) -> str:
    return "–" if not load else "/".join(f"{x:.1f}" for x in load)


def report(results: dict[str, Any]) -> str:
    lines = [f"prefect-mltrain benchmarks, {results['date']} ({results['mode']} mode); "
             f"{results['machine']['nproc']} cores, Python {results['machine']['python']}, "
             f"commit {(results['versions'].get('commit') or '?')[:9]}"
             f"{' + local edits' if results['versions'].get('library_dirty') else ''}, "
             f"prefect {results['versions'].get('prefect')}, "
             f"mlflow {results['versions'].get('mlflow')}; load average "
             f"{_load(results['machine'].get('loadavg_at_start'))} at start, "
             f"{_load(results['machine'].get('loadavg_at_end'))} at end", ""]
    noop = results.get("noop")
    if noop:
        s = noop["summary"]
        lines += [f"### a. No-op run end to end, local compute ({noop['reps']} interleaved reps "
                  "each, seconds)", "",
                  "| measurement | median | min | max | ours / MLflow (medians) |",
                  "|---|---:|---:|---:|---:|"]
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
            lines.append(f"| {label} | {_s(st['median'])} | {_s(st['min'])} | "
                         f"{_s(st['max'])} | {_x(r)} |")
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
    bad = [c for c in results["checks"] if not c["ok"]]
    lines.append("Checks: " + ("all passed" if not bad else
                               "FAILED: " + "; ".join(f"{c['check']} ({c['detail']})"
                                                      for c in bad)))
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=["noop", "snapshot"], help="run one benchmark")
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
    snap_reps, cold_reps, change_reps = (3, 1, 2) if args.quick else (5, 3, 3)
    started = time.perf_counter()
    try:
        if args.only in (None, "noop"):
            try:
                results["versions"]["mlflow"] = ensure_mlflow()
                stop_server()  # a server left by an earlier benchmark run: start afresh
                shutil.rmtree(SERVER_HOME, ignore_errors=True)
                results["noop"] = bench_noop(noop_reps)
            except Exception as exc:
                results["noop_error"] = "".join(traceback.format_exception(exc))
                log(f"no-op benchmark failed:\n{results['noop_error']}")
        if args.only in (None, "snapshot"):
            try:
                results["snapshot"] = bench_snapshot(args.files, snap_reps, cold_reps,
                                                     change_reps)
            except Exception as exc:
                results["snapshot_error"] = "".join(traceback.format_exception(exc))
                log(f"snapshot benchmark failed:\n{results['snapshot_error']}")
    finally:
        if not args.keep_server:
            stop_server()
    results["elapsed_seconds"] = time.perf_counter() - started
    try:
        results["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    results["checks"] = checks(results)
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(report(results))
    print(f"\nraw numbers: {RESULTS.relative_to(HERE.parent)}")
    return 0 if all(c["ok"] for c in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
