"""What every benchmark shares: paths and limits, logging, medians and ratios, interleaved
repetitions, the no-op project, timed runs of ours and of a peer, what was measured (commit,
machine, library files), ``results.json`` and the cells of the report's markdown tables.

Imports only the standard library: the benchmarks import the library when they run, after
``run.py`` has put the checkout first on ``sys.path`` and cleaned the environment.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"  # scratch (gitignored)
RESULTS = HERE / "results.json"
VENV_BIN = Path(sys.executable).parent
RUN_TIMEOUT = 300  # one submit / one peer run, seconds
ENV_TIMEOUT = 600  # one venv creation / pip install / environment build step, seconds
SERVER_HOME = WORK / "mltrain-home"  # MLTRAIN_HOME: caches + the embedded Prefect server


# -- the library's internals ---------------------------------------------------------------
# The benchmarks use prefect_mltrain through its public API (the top-level names and
# prefect_mltrain.compute) and, for what that does not offer, only through this section: the
# package's modules may move, and this is the one place to follow them. Each function
# imports when called; those used inside a timed region hand the library's function out, so
# that its import happens before the clock starts.

RUNNER_MODULE = "prefect_mltrain.flows"  # what a runner process (and a worker's engine) imports
CLI_MODULES = "prefect_mltrain.cli, prefect_mltrain.run"  # the CLI's, before a submit
# In a fresh process (diagnostic): the `pip config list` a forked runner pays per image tag.
PIP_CONFIG_IMPORT = "from prefect_mltrain.pip_settings import pip_config as _pip_config"
SNAPSHOT_STAT_CACHE = SERVER_HOME / "cache" / "snapshot-stat"  # the machine-local stat cache


@contextmanager
def restored_env(*keys: str) -> Iterator[None]:
    """The process's variables ``keys`` as they were before, whatever the block set."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_server() -> dict[str, Any]:
    """The embedded Prefect server, started if none runs: its ``api_url`` and ``ui_url``."""
    from prefect_mltrain.server import ensure_server

    return ensure_server()


def stop_server() -> None:
    """Stop the warm runners and the embedded Prefect server, if one runs."""
    from prefect_mltrain.runner import stop_all
    from prefect_mltrain.server import stop_server

    stop_all()
    stop_server()


def stop_runners() -> None:
    """Stop the warm runners (as if they had idled out); the server stays."""
    from prefect_mltrain.runner import stop_all

    stop_all()


def prefect_env() -> dict[str, str]:
    """The variables a process needs to talk to the embedded server."""
    from prefect_mltrain.server import prefect_env

    return prefect_env()


def using_server() -> AbstractContextManager[None]:
    """Within it, this process's Prefect client calls go to the embedded server."""
    from prefect_mltrain.server import using_server

    return using_server()


def warm_runner_socket() -> Path | None:
    """Where the warm runner of this checkout's library files and this server listens."""
    from prefect_mltrain.runner import socket_path

    return socket_path({**os.environ, **prefect_env()})


def snapshot_taker() -> Callable[..., Any]:
    """``take_snapshot(workspace, folder, max_files=…)``."""
    from prefect_mltrain.snapshot import take_snapshot

    return take_snapshot


def environment_builder(step_timeout: float) -> Callable[..., Any]:
    """``build(environment, on_line=…)``: what ``mltrain env build`` does, each resolve /
    install step bounded at ``step_timeout`` seconds like the peers' subprocesses (the
    library allows an hour)."""
    from prefect_mltrain import environment_build as eb

    eb.RESOLVE_TIMEOUT_SECONDS = eb.INSTALL_TIMEOUT_SECONDS = step_timeout
    return lambda environment, **kwargs: eb.build_environment(environment.build_spec(), **kwargs)


def clear_build_memos() -> None:
    """Forget what the environment builder memoizes per process (``pip config list`` and
    other look-ups), as a run's fresh runner process would not have them."""
    from prefect_mltrain import environment_build, pip_settings

    for module in (environment_build, pip_settings):
        for obj in vars(module).values():
            if callable(getattr(obj, "cache_clear", None)):
                obj.cache_clear()


def uv_binary() -> str | None:
    """The ``uv`` the environment builder runs."""
    from prefect_mltrain.environment_build import _uv_binary

    return _uv_binary()


def deployment_flow_run_id(ws: Any, run: Any) -> str:
    """The Prefect flow run of a run sent to a work pool (a run that did not go through a
    pool has none: an error)."""
    return run.get_details()["deployment"]["flow_run_id"]


def create_target(name: str, target: Any) -> None:
    """A saved compute target with its work pool and ``submit-run`` deployment."""
    from prefect_mltrain.pools import create_target

    create_target(name, target)


def delete_target(name: str) -> dict[str, bool]:
    """Delete a saved target's deployment, work pool and block: what was deleted."""
    from prefect_mltrain.pools import delete_target

    return delete_target(name)


def loopback_cluster(folder: Path, hosts: int,
                     workers_per_host: int) -> AbstractContextManager[str]:
    """A real Dask cluster on loopback "hosts"; yields the scheduler's address."""
    from prefect_mltrain.testing import loopback_cluster

    return loopback_cluster(folder, hosts, workers_per_host)


def start_group(argv: list[str], log_file: Path,
                env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A long-lived helper process in its own process group, its output to ``log_file``."""
    from prefect_mltrain.testing import start_group

    return start_group(argv, log_file, env)


def stop_groups(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the helpers' process groups (killed after 15 s)."""
    from prefect_mltrain.testing import stop_groups

    stop_groups(procs)


# -- logging, medians, ratios ----------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summarize(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(summary: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``{"a_vs_b": {key: median of a / median of b}}`` for each pair of variants, of the
    wall time and of submit → script start."""
    return {f"{a}_vs_{b}": {key: ratio(summary[a][key]["median"], summary[b][key]["median"])
                            for key in ("wall", "to_script_start")}
            for a, b in pairs}


def tail(text: str | bytes | None, n: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


# -- environments --------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """This process's environment without any Prefect / MLflow / mltrain settings of the user,
    so the benchmark uses its own embedded server, workspace and tracking store; and without
    ``PYTHONDONTWRITEBYTECODE``, which would make every fresh process of both tools compile
    its imports again (a user's Python writes its bytecode cache)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "MLTRAIN_"))
           and k != "PYTHONDONTWRITEBYTECODE"}  # a user's Python keeps its bytecode cache
    env["MLTRAIN_HOME"] = str(SERVER_HOME)
    env["PREFECT_HOME"] = str(WORK / "prefect-home")  # ignore ~/.prefect profiles
    return env


def with_path(env: dict[str, str], bin_dir: Path) -> dict[str, str]:
    """``env`` as if the venv of ``bin_dir`` were activated (so ``python`` is that venv's)."""
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "VIRTUAL_ENV": str(bin_dir.parent)}


# -- what was measured -----------------------------------------------------------------------


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


# -- the no-op project ---------------------------------------------------------------------


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
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]


def make_noop_project(root: Path) -> Path:
    """The same tiny project for every tool, in its own clean git repository (a user's
    project usually is one, and the tools record git provenance)."""
    proj = root / "proj"
    proj.mkdir(parents=True)
    (proj / "noop.py").write_text(NOOP_PY)
    (proj / "MLproject").write_text(MLPROJECT)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "noop"]):
        subprocess.run([*GIT, *cmd], cwd=proj, check=True, timeout=60,
                       capture_output=True)
    return proj


def scratch(name: str) -> Path:
    """An empty ``.work/NAME`` for one benchmark's files (what a run before left, deleted)."""
    root = WORK / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def read_stamp(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


# -- repetitions -----------------------------------------------------------------------------


def try_rep(variant: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One rep; a failure is recorded, and the benchmark goes on."""
    try:
        return variant()
    except Exception as exc:
        return {"ok": False, "error": "".join(traceback.format_exception(exc))}


def log_rep(label: str, rec: dict[str, Any], extra: str = "") -> None:
    log(f"{label}: {rec.get('wall', float('nan')):.2f} s ok={rec['ok']}{extra}"
        + ("" if rec["ok"] else f"\n{rec.get('error') or rec}"))


def first_submit(variant: Callable[[], dict[str, Any]], what: str = "") -> dict[str, Any]:
    """The first submit after a fresh server (untimed): it runs in a cold runner, which starts
    the warm runner as it exits; wait until that listens, so the warm-ups find it."""
    rec = try_rep(variant)
    log_rep(f"first submit{what}", rec, f", warm runner listening: {wait_for_warm_runner()}")
    return rec


def interleaved(variants: dict[str, Callable[[], dict[str, Any]]],
                reps: int) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """One untimed warm-up of each variant (first-use costs are not the steady state), then
    ``reps`` rounds, interleaved and rotated (a, b, c / b, c, a / …) so that load spikes on
    the shared machine hit all variants alike. A failed rep is recorded, not fatal."""
    warmup = {}
    for name in variants:
        warmup[name] = rec = try_rep(variants[name])
        log_rep(f"warm-up {name}", rec)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(reps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            rec = try_rep(variants[name])
            raw[name].append(rec)
            log_rep(f"rep {i + 1}/{reps} {name}", rec)
    return warmup, raw


# -- timed runs: ours and a peer's -------------------------------------------------------------


STATUSES = ["NotStarted", "Queued", "Preparing", "Starting", "Running", "Finalizing",
            "Completed"]


def run_phases(*steps: str) -> list[tuple[str, str, str]]:
    """(label, from status, to status) for each step between two of the run record's
    statuses, in order; the label names what the step does and the two statuses."""
    return [(f"{step} ({a}→{b})", a, b)
            for step, a, b in zip(steps, STATUSES[:-1], STATUSES[1:], strict=True)]


PHASES = run_phases("record + snapshot + git", "runner process + Prefect flow run",
                    "environment resolve", "restore snapshot + launch", "script + its wait",
                    "final sync + artifacts")
SUBMIT_TO_RUNNING = "submit→Running (run record)"


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


def run_peer(argv: list[str], stamp: Path, expect: str = "noop: hello",
             **kwargs: Any) -> dict[str, Any]:
    """A peer's command line, wall time until it exits 0 having printed ``expect`` (the
    no-op's line), and spawn → script start from the script's ``stamp``."""
    stamp.unlink(missing_ok=True)
    t0 = time.time()
    p0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, **kwargs)
    wall = time.perf_counter() - p0
    rec: dict[str, Any] = {"wall": wall, "ok": out.returncode == 0
                           and expect in out.stdout}
    if not rec["ok"]:
        rec["error"] = f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"
    started = read_stamp(stamp)
    rec["to_script_start"] = started - t0 if started else None
    return rec


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


def time_imports(reps: int, env: dict[str, str],
                 imports: list[tuple[str, Path, str]]) -> dict[str, Any]:
    """Diagnostic, not a comparison: import time of a fresh process, interleaved.
    ``imports``: (label, the venv's bin folder, the code)."""
    raw: dict[str, list[float]] = {label: [] for label, _, _ in imports}
    for _ in range(reps):
        for label, bin_dir, code in imports:
            p0 = time.perf_counter()
            out = subprocess.run([str(bin_dir / "python"), "-c", code], env=env,
                                 capture_output=True, timeout=RUN_TIMEOUT)
            if out.returncode == 0:
                raw[label].append(time.perf_counter() - p0)
    log("import times: " + ", ".join(f"{label.split('`')[1]} {statistics.median(v):.2f} s"
                                      for label, v in raw.items() if v))
    return {"raw": raw, "summary": {label: summarize(v) for label, v in raw.items()}}


def fresh_process_costs(reps: int, argvs: list[list[str]], cwd: Path) -> dict[str, list[float]]:
    """Diagnostic, untimed: ``reps`` rounds of the commands ``argvs``, each in a fresh process
    printing a JSON object of label → seconds as its last line; each label's values."""
    costs: dict[str, list[float]] = {}
    for _ in range(reps):
        for argv in argvs:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                 cwd=cwd)
            if out.returncode == 0:
                for label, value in json.loads(out.stdout.splitlines()[-1]).items():
                    costs.setdefault(label, []).append(value)
    return costs


# -- the embedded server and the warm runner ---------------------------------------------------


def start_server() -> float:
    """Our embedded Prefect server, started before anything is timed; its start time."""
    t = time.perf_counter()
    server = ensure_server()
    elapsed = time.perf_counter() - t
    log(f"embedded Prefect server at {server['api_url']} ({elapsed:.1f} s, not timed)")
    return elapsed


def fresh_server() -> None:
    """No server left by an earlier benchmark run, and an empty MLTRAIN_HOME: start afresh."""
    stop_server()
    shutil.rmtree(SERVER_HOME, ignore_errors=True)


def fresh_server_if_alone(args: Any) -> None:
    """With ``--only``, start from no server and an empty MLTRAIN_HOME; in the full run the
    no-op benchmark, the first, has done so."""
    if args.only:
        fresh_server()


def wait_for_warm_runner(timeout: float = 60.0) -> bool:
    """Wait until the warm runner of this checkout and server listens on its socket (with
    ``timeout=0``: whether one listens now, i.e. whether the next submit will be warm)."""
    path = warm_runner_socket()
    deadline = time.monotonic() + timeout
    while path is not None and not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path is not None and path.exists()


# -- results.json ----------------------------------------------------------------------------


RUN_META = ("date", "mode", "machine", "versions", "elapsed_seconds")


def merge_results(results: dict[str, Any], ran: list[str],
                  names: list[str]) -> dict[str, Any]:
    """The existing results.json with this run's benchmarks (``ran``, of all ``names``)
    replaced, the others kept; its ``checks`` are the caller's to recompute.

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
    for name in names:  # files from before `runs` existed: their run measured them all
        if name in merged and name not in runs and "date" in merged:
            runs[name] = {key: merged.get(key) for key in RUN_META}
    meta = {key: results.get(key) for key in RUN_META}
    for name in ran:
        for key in (name, f"{name}_error", f"{name}_skipped"):
            merged.pop(key, None)
            if key in results:
                merged[key] = results[key]
        runs[name] = meta
    if set(ran) == set(names) or "date" not in merged:
        merged.update(meta)
    merged["runs"] = runs
    return merged


def write_results(merged: dict[str, Any]) -> None:
    RESULTS.write_text(json.dumps(merged, indent=1, default=str) + "\n")


# -- checks and the report's markdown cells ------------------------------------------------------


def check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    """One entry of ``checks`` in results.json: a failed one makes the run exit 1."""
    return {"check": name, "ok": bool(ok), "detail": detail}


def every_rep_checks(bench: str, numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant of ``numbers["raw"]``: every rep succeeded (and there was one)."""
    out = []
    for name, recs in numbers.get("raw", {}).items():
        failures = numbers["summary"][name]["failures"]
        out.append(check(f"{bench} {name}: every rep succeeded", failures == 0 and bool(recs),
                         f"{failures} failed of {len(recs)}"))
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    """Seconds (or any number) for a cell; – when there is none."""
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_ratio(x: float | None) -> str:
    """A ratio for a cell."""
    return "–" if x is None else f"{x:.2f}×"


def ratio_head(ratio_label: str) -> list[str]:
    """The head of a table of timings with a ratio column."""
    return [f"| measurement | median | min | max | {ratio_label} |", "|---|---:|---:|---:|---:|"]


def row(label: str, st: dict[str, Any], *extra: str) -> str:
    """A table row: label, median, min, max (seconds) and any further cells."""
    return "| " + " | ".join([label, *(fmt(st[k]) for k in ("median", "min", "max")),
                              *extra]) + " |"


def cols(label: str, values: list[float | None]) -> str:
    """A table row: label, then one cell of seconds per column."""
    return "| " + " | ".join([label, *map(fmt, values)]) + " |"


def stats_table(head: str, stats: dict[str, dict[str, Any]]) -> list[str]:
    """A table of label → median, min, max (seconds), under a first column named ``head``."""
    return [f"| {head} | median | min | max |", "|---|---:|---:|---:|",
            *(row(label, st) for label, st in stats.items())]
