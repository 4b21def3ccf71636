"""h. HyperDrive sweeps: throughput of a 40-trial sweep of a 1 s script (4 at once) vs an
Optuna study running the same script as a subprocess per trial (``n_jobs=4``), interleaved;
and the compute a ``BanditPolicy`` saves on a synthetic learning curve vs the same sweep
(same seed, so the same trials) with no policy, interleaved."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    PHASES,
    RUN_TIMEOUT,
    check,
    first_submit,
    fmt,
    fmt_ratio,
    fresh_server_if_alone,
    interleaved,
    log,
    phases_of,
    ratio,
    ratio_head,
    row,
    scratch,
    start_server,
    summarize,
    summarize_phases,
    tail,
)

TITLE = "HyperDrive sweep"

SEED = 7  # RandomParameterSampling(properties={"seed": SEED}) and Optuna's RandomSampler
# 1. throughput
SWEEP_TRIALS = 40
SWEEP_CONCURRENCY = 4
SLEEP_SECONDS = 1.0
GOAL_RATIO = 1.3  # ours / Optuna, wall-time medians
# 2. early termination
CURVE_TRIALS = 12
CURVE_CONCURRENCY = 4
CURVE_INTERVALS = 10
CURVE_STEP_SECONDS = 0.3
BANDIT = {"slack_factor": 0.2, "evaluation_interval": 1, "delay_evaluation": 2}
SWEEP_TIMEOUT = 900  # one sweep / one study, seconds (each trial's subprocess: RUN_TIMEOUT)

# The same script for both sides: sleeps, logs one metric (through the library: a submitted
# trial logs to its run, a process started by hand to an offline run) and prints it for Optuna.
TRAIN_PY = f'''\
import argparse
import time

from prefect_mltrain import Run

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float, required=True)
args = parser.parse_args()
time.sleep({SLEEP_SECONDS!r})
score = 1.0 - (args.x - 0.3) ** 2
Run.get_context().log("score", score)
print(f"score={{score!r}}", flush=True)
'''
# A learning curve: CURVE_INTERVALS values CURVE_STEP_SECONDS apart, all of the same shape,
# scaled by a level that is high for a few q (near 1) and low for most.
CURVE_PY = f'''\
import argparse
import time

from prefect_mltrain import Run

parser = argparse.ArgumentParser()
parser.add_argument("--q", type=float, required=True)
args = parser.parse_args()
run = Run.get_context()
level = 0.1 + 0.9 * args.q ** 3
for i in range({CURVE_INTERVALS}):
    time.sleep({CURVE_STEP_SECONDS!r})
    run.log("acc", level * (1 - 0.5 ** (i + 1)))
print("done", flush=True)
'''


def make_project(root: Path) -> Path:
    proj = root / "proj"
    proj.mkdir()
    (proj / "train.py").write_text(TRAIN_PY)
    (proj / "curve.py").write_text(CURVE_PY)
    return proj


# -- our sweeps --------------------------------------------------------------------------------


def trial_records(hd_run: Any) -> list[dict[str, Any]]:
    """Each trial of a finished sweep (untimed): its hyperparameters, best primary metric,
    status and run-record details (timings, status_history)."""
    from prefect_mltrain import Run

    metric = hd_run.get_details()["hyperdrive"]["primary_metric_name"]
    out = []
    for t in hd_run.get_children_sorted_by_primary_metric():
        trial = Run(hd_run.experiment, t["run_id"])
        details = trial.get_details()
        values = trial.get_metrics(metric).get(metric)
        out.append({"run_id": t["run_id"], "parameters": t["hyperparameters"],
                    "best": t["best_primary_metric"], "status": details["status"],
                    "intervals": len(values) if isinstance(values, list)
                    else int(values is not None),
                    "created_at": details.get("created_at"),
                    "started_at": details.get("started_at"),
                    "ended_at": details.get("ended_at"),
                    "phases": phases_of(details),
                    "error": details.get("error")})
    return out


def submit_sweep(exp: Any, config: Any) -> dict[str, Any]:
    """``exp.submit(config)`` + ``wait_for_completion(poll_interval=0.1)``: the wall time
    until it returns, then (untimed) the sweep's status and its trials."""
    p0 = time.perf_counter()
    hd_run = exp.submit(config)
    try:
        details = hd_run.wait_for_completion(poll_interval=0.1, timeout=SWEEP_TIMEOUT,
                                             raise_on_error=False)
    except TimeoutError:
        hd_run.cancel()  # the sweep and its trials: not left running behind the next reps
        raise
    wall = time.perf_counter() - p0
    t_end = time.time()
    trials = trial_records(hd_run)
    rec: dict[str, Any] = {"wall": wall, "run_id": hd_run.id, "status": details["status"],
                           "created_at": details.get("created_at"),
                           "ended_at": details.get("ended_at"), "returned_at": t_end,
                           "trials": trials}
    rec["ok"] = details["status"] == "Completed"
    if not rec["ok"]:
        rec["error"] = f"{details.get('error')}\n{details.get('log_tail')}"
    return rec


def trial_seconds(trials: list[dict[str, Any]]) -> float:
    """The compute the trials used: the sum of their ``ended_at - started_at``."""
    return sum(t["ended_at"] - t["started_at"] for t in trials
               if t.get("started_at") and t.get("ended_at"))


def refill_gaps(spans: list[tuple[float, float]]) -> list[float]:
    """For each trial that started after another ended (``spans``: (start, end) in trial
    order): its start minus the latest end before it — how long a freed slot stayed idle."""
    out = []
    for start, _ in spans:
        ends = [e for _, e in spans if e <= start]
        if ends:
            out.append(start - max(ends))
    return out


def our_trial_stats(rec: dict[str, Any]) -> dict[str, Any]:
    """Per-trial timings of one of our sweeps, from the trials' run records."""
    trials = [t for t in rec.get("trials", []) if t.get("created_at") and t.get("ended_at")]
    trials.sort(key=lambda t: t["created_at"])
    span = rec["ended_at"] - rec["created_at"] if rec.get("ended_at") else None
    return {
        # trials alive (created → ended) on average over the sweep, of max_concurrent_runs
        "alive": ratio(sum(t["ended_at"] - t["created_at"] for t in trials), span),
        # the controller starting trials one after the other: Σ NotStarted → Queued
        "start_blocked": sum(t["phases"].get(PHASES[0][0], 0.0) for t in trials),
        "lifetime": [t["ended_at"] - t["created_at"] for t in trials],
        "running": [t["ended_at"] - t["started_at"] for t in trials if t.get("started_at")],
        "refill_gap": refill_gaps([(t["created_at"], t["ended_at"]) for t in trials]),
        "submit_to_first_created": (trials[0]["created_at"] - rec["created_at"])
        if trials and rec.get("created_at") else None,
        "last_trial_end_to_sweep_end": rec["ended_at"] - max(t["ended_at"] for t in trials)
        if trials and rec.get("ended_at") else None,
        "sweep_end_to_return": rec["returned_at"] - rec["ended_at"]
        if rec.get("ended_at") else None,
    }


# -- the Optuna peer -----------------------------------------------------------------------------


def optuna_study(python: str, script: Path, cwd: Path) -> dict[str, Any]:
    """An Optuna study: ``SWEEP_TRIALS`` trials, ``n_jobs=SWEEP_CONCURRENCY``, each running
    ``python train.py --x VALUE`` as a subprocess (with a timeout) and parsing its score."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: Any) -> float:
        x = trial.suggest_float("--x", 0.0, 1.0)
        t0 = time.perf_counter()
        out = subprocess.run([python, str(script), "--x", repr(x)], cwd=cwd,
                             capture_output=True, text=True, timeout=RUN_TIMEOUT)
        trial.set_user_attr("subprocess_seconds", time.perf_counter() - t0)
        if out.returncode != 0:
            raise RuntimeError(f"exit {out.returncode}: {tail(out.stderr)}")
        line = next(ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("score="))
        return float(line.split("=", 1)[1])

    p0 = time.perf_counter()
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=SEED))
    study.optimize(objective, n_trials=SWEEP_TRIALS, n_jobs=SWEEP_CONCURRENCY,
                   catch=(Exception,))
    wall = time.perf_counter() - p0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    spans = sorted((t.datetime_start.timestamp(), t.datetime_complete.timestamp())
                   for t in study.trials if t.datetime_start and t.datetime_complete)
    rec: dict[str, Any] = {
        "wall": wall, "trials": len(study.trials), "completed": len(done),
        "best_value": study.best_value if done else None,
        "lifetime": [e - s for s, e in spans],
        "alive": ratio(sum(e - s for s, e in spans), wall),
        "subprocess": [t.user_attrs["subprocess_seconds"] for t in study.trials
                       if "subprocess_seconds" in t.user_attrs],
        "refill_gap": refill_gaps(spans)}
    rec["ok"] = rec["trials"] == SWEEP_TRIALS and rec["completed"] == SWEEP_TRIALS
    if not rec["ok"]:
        failed = next((t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE),
                      None)
        rec["error"] = f"{rec['completed']} of {rec['trials']} trials completed" + (
            f"; trial {failed.number}: {failed.state.name}" if failed else "")
    return rec


# -- the benchmark -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    fresh_server_if_alone(args)
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace
    from prefect_mltrain.hyperdrive import (
        BanditPolicy,
        HyperDriveConfig,
        PrimaryMetricGoal,
        RandomParameterSampling,
        uniform,
    )

    reps = 1 if args.quick else 3
    root = scratch("sweep")
    proj = make_project(root)
    # The peer runs the same files from a copy: the offline runs its processes record go to
    # ./.mltrain-offline there, not into the project ours snapshots.
    peer_proj = root / "peer-proj"
    shutil.copytree(proj, peer_proj)
    ws = Workspace(str(root / "ws"))
    server_start = start_server()

    def sweep_config(script: str, name: str, trials: int, concurrency: int,
                     policy: Any = None) -> Any:
        return HyperDriveConfig(
            run_config=ScriptRunConfig(source_directory=str(proj), script=script),
            hyperparameter_sampling=RandomParameterSampling({name: uniform(0, 1)},
                                                            properties={"seed": SEED}),
            primary_metric_name="score" if script == "train.py" else "acc",
            primary_metric_goal=PrimaryMetricGoal.MAXIMIZE, max_total_runs=trials,
            max_concurrent_runs=concurrency, policy=policy)

    throughput = sweep_config("train.py", "--x", SWEEP_TRIALS, SWEEP_CONCURRENCY)
    no_policy = sweep_config("curve.py", "--q", CURVE_TRIALS, CURVE_CONCURRENCY)
    bandit = sweep_config("curve.py", "--q", CURVE_TRIALS, CURVE_CONCURRENCY,
                          BanditPolicy(**BANDIT))

    def ours(exp_name: str, config: Any) -> Callable[[], dict[str, Any]]:
        return lambda: submit_sweep(Experiment(ws, exp_name), config)

    def plain() -> dict[str, Any]:  # one trial's script as a plain run: the cold runner's
        p0 = time.perf_counter()
        r = Experiment(ws, "first").submit(ScriptRunConfig(
            source_directory=str(proj), script="train.py", arguments=["--x", "0.5"]))
        details = r.wait_for_completion(poll_interval=0.1, timeout=RUN_TIMEOUT,
                                        raise_on_error=False)
        return {"ok": details["status"] == "Completed", "wall": time.perf_counter() - p0,
                "run_id": r.id, "error": details.get("error")}

    first = first_submit(plain)
    log(f"1. throughput: {SWEEP_TRIALS} trials of a {SLEEP_SECONDS:g} s script, "
        f"{SWEEP_CONCURRENCY} at once, ours vs Optuna")
    tp_warmup, tp_raw = interleaved(
        {"ours": ours("throughput", throughput),
         "optuna": lambda: optuna_study(sys.executable, peer_proj / "train.py", peer_proj)},
        reps)
    log(f"2. early termination: {CURVE_TRIALS} trials × {CURVE_INTERVALS} intervals, "
        f"BanditPolicy vs no policy (seed {SEED})")
    et_warmup, et_raw = interleaved(
        {"no_policy": ours("curve-none", no_policy), "bandit": ours("curve-bandit", bandit)},
        reps)
    shutil.rmtree(root, ignore_errors=True)
    # the warm-ups' trials are not kept (only the sweeps' numbers)
    for warm in (tp_warmup, et_warmup):
        for rec in warm.values():
            rec.pop("trials", None)
    numbers = {"reps": reps, "seed": SEED, "server_start_seconds": server_start,
               "first_submit": first,
               "throughput": {"trials": SWEEP_TRIALS, "concurrency": SWEEP_CONCURRENCY,
                              "sleep_seconds": SLEEP_SECONDS, "warmup": tp_warmup,
                              "raw": tp_raw},
               "early_termination": {"trials": CURVE_TRIALS, "concurrency": CURVE_CONCURRENCY,
                                     "intervals": CURVE_INTERVALS,
                                     "interval_seconds": CURVE_STEP_SECONDS,
                                     "policy": {"kind": "bandit", **BANDIT},
                                     "warmup": et_warmup, "raw": et_raw}}
    numbers["summary"] = summarize_sweep(numbers)
    s = numbers["summary"]
    log(f"sweep medians: ours {fmt(s['throughput']['ours']['wall']['median'])} s, optuna "
        f"{fmt(s['throughput']['optuna']['wall']['median'])} s "
        f"({fmt_ratio(s['throughput']['ratio'])}); trial-seconds no policy "
        f"{fmt(s['early_termination']['no_policy']['trial_seconds']['median'])}, bandit "
        f"{fmt(s['early_termination']['bandit']['trial_seconds']['median'])}")
    return numbers


# -- summary and checks ----------------------------------------------------------------------------


def best_parameters(rec: dict[str, Any]) -> dict[str, Any] | None:
    scored = [t for t in rec.get("trials", []) if t.get("best") is not None]
    return max(scored, key=lambda t: t["best"])["parameters"] if scored else None


def early_termination_reps(raw: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per rep, the pair (no policy, bandit): trial-seconds, walls, trials ended early and
    the status, in the bandit sweep, of the no-policy sweep's best trial."""
    out = []
    for none, bandit in zip(raw["no_policy"], raw["bandit"], strict=True):
        if not (none["ok"] and bandit["ok"]):
            out.append({"ok": False})
            continue
        best = best_parameters(none)
        same = [t for t in bandit["trials"] if t["parameters"] == best]
        out.append({
            "ok": True, "best_parameters": best,
            "best_status_with_policy": same[0]["status"] if same else None,
            "same_trials": sorted(str(t["parameters"]) for t in none["trials"])
            == sorted(str(t["parameters"]) for t in bandit["trials"]),
            "trial_seconds_no_policy": trial_seconds(none["trials"]),
            "trial_seconds_bandit": trial_seconds(bandit["trials"]),
            "canceled_by_policy": sum(t["status"] == "Canceled" for t in bandit["trials"]),
            "intervals_of_canceled": [t["intervals"] for t in bandit["trials"]
                                      if t["status"] == "Canceled"]})
        pair = out[-1]
        pair["saved"] = pair["trial_seconds_no_policy"] - pair["trial_seconds_bandit"]
        pair["saved_fraction"] = ratio(pair["saved"], pair["trial_seconds_no_policy"])
    return out


def summarize_sweep(numbers: dict[str, Any]) -> dict[str, Any]:
    tp, et = numbers["throughput"]["raw"], numbers["early_termination"]["raw"]
    ours_good = [r for r in tp["ours"] if r["ok"]]
    peer_good = [r for r in tp["optuna"] if r["ok"]]
    ours_stats = [our_trial_stats(r) for r in ours_good]

    def flat(key: str, stats: list[dict[str, Any]]) -> list[float]:
        return [v for s in stats for v in s[key]]

    def each(key: str, stats: list[dict[str, Any]]) -> list[float]:
        return [s[key] for s in stats if s[key] is not None]

    throughput = {
        "ours": {"wall": summarize([r["wall"] for r in ours_good]),
                 "failures": len(tp["ours"]) - len(ours_good),
                 "trial_lifetime": summarize(flat("lifetime", ours_stats)),
                 "trial_running": summarize(flat("running", ours_stats)),
                 "refill_gap": summarize(flat("refill_gap", ours_stats)),
                 "submit_to_first_trial": summarize(each("submit_to_first_created",
                                                         ours_stats)),
                 "last_trial_end_to_sweep_end": summarize(each("last_trial_end_to_sweep_end",
                                                               ours_stats)),
                 "sweep_end_to_return": summarize(each("sweep_end_to_return", ours_stats)),
                 "alive": summarize(each("alive", ours_stats)),
                 "start_blocked": summarize(each("start_blocked", ours_stats)),
                 "trial_phases": summarize_phases(
                     [t for r in ours_good for t in r["trials"]], PHASES)},
        "optuna": {"wall": summarize([r["wall"] for r in peer_good]),
                   "failures": len(tp["optuna"]) - len(peer_good),
                   "trial_lifetime": summarize([v for r in peer_good for v in r["lifetime"]]),
                   "trial_subprocess": summarize([v for r in peer_good
                                                  for v in r["subprocess"]]),
                   "refill_gap": summarize([v for r in peer_good for v in r["refill_gap"]]),
                   "alive": summarize([r["alive"] for r in peer_good if r.get("alive")])},
        "floor": SWEEP_TRIALS / SWEEP_CONCURRENCY * SLEEP_SECONDS,
    }
    throughput["ratio"] = ratio(throughput["ours"]["wall"]["median"],
                                throughput["optuna"]["wall"]["median"])
    pairs = early_termination_reps(et)
    good = [p for p in pairs if p["ok"]]
    early = {
        name: {"wall": summarize([r["wall"] for r in et[name] if r["ok"]]),
               "failures": sum(not r["ok"] for r in et[name]),
               "trial_seconds": summarize([trial_seconds(r["trials"]) for r in et[name]
                                           if r["ok"]])}
        for name in ("no_policy", "bandit")}
    early["pairs"] = pairs
    early["saved"] = summarize([p["saved"] for p in good])
    early["saved_fraction"] = summarize([p["saved_fraction"] for p in good
                                         if p["saved_fraction"] is not None])
    early["canceled_by_policy"] = summarize([p["canceled_by_policy"] for p in good])
    early["intervals_of_canceled"] = summarize([i for p in good
                                                for i in p["intervals_of_canceled"]])
    early["wall_ratio"] = ratio(early["bandit"]["wall"]["median"],
                                early["no_policy"]["wall"]["median"])
    return {"throughput": throughput, "early_termination": early}


def checks(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    tp, et = numbers["throughput"], numbers["early_termination"]
    n, m = tp["trials"], et["trials"]
    out = []
    for i, rec in enumerate(tp["raw"]["ours"]):
        trials = rec.get("trials") or []
        done = sum(t["status"] == "Completed" for t in trials)
        out.append(check(f"sweep ours rep {i + 1}: Completed, {n} trials all Completed",
                         rec["ok"] and len(trials) == n and done == n,
                         f"sweep {rec.get('status', 'error')}, {len(trials)} trials, "
                         f"{done} Completed"))
    for i, rec in enumerate(tp["raw"]["optuna"]):
        out.append(check(f"sweep optuna rep {i + 1}: {n} trials ran and completed", rec["ok"],
                         f"{rec.get('completed')} of {rec.get('trials')} completed"
                         if "trials" in rec else tail(rec.get("error"), 300)))
    for name in ("no_policy", "bandit"):
        for i, rec in enumerate(et["raw"][name]):
            trials = rec.get("trials") or []
            ended = {s: sum(t["status"] == s for t in trials) for s in ("Completed", "Canceled")}
            allowed = ended["Completed"] + (ended["Canceled"] if name == "bandit" else 0)
            out.append(check(
                f"sweep {name} rep {i + 1}: Completed, {m} trials "
                + ("all Completed" if name == "no_policy" else "Completed or Canceled"),
                rec["ok"] and len(trials) == m and allowed == m,
                f"sweep {rec.get('status', 'error')}, {len(trials)} trials, {ended}"))
    for i, pair in enumerate(summarize_sweep(numbers)["early_termination"]["pairs"]):
        if not pair["ok"]:
            continue  # the sweeps' own checks above failed
        out.append(check(f"sweep rep {i + 1}: the same trials with and without the policy",
                         pair["same_trials"], "by hyperparameters (seed "
                         f"{numbers['seed']})"))
        out.append(check(f"sweep rep {i + 1}: the best trial was not terminated by the policy",
                         pair["best_status_with_policy"] == "Completed",
                         f"best {pair['best_parameters']}: "
                         f"{pair['best_status_with_policy']} with the policy"))
        out.append(check(f"sweep rep {i + 1}: the policy terminated some trials",
                         pair["canceled_by_policy"] > 0,
                         f"{pair['canceled_by_policy']} of {m} Canceled"))
    return out


# -- the report -----------------------------------------------------------------------------------


def render(numbers: dict[str, Any]) -> list[str]:
    s = numbers["summary"]
    tp, et = s["throughput"], s["early_termination"]
    n, c, sleep = (numbers["throughput"][k] for k in ("trials", "concurrency", "sleep_seconds"))
    met = tp["ratio"] is not None and tp["ratio"] <= GOAL_RATIO
    lines = [f"### h. HyperDrive sweep: {n} trials of a {sleep:g} s script, {c} at once, "
             f"ours vs Optuna ({numbers['reps']} interleaved reps each, seconds)", "",
             *ratio_head("ours / Optuna (medians)"),
             row("`Experiment.submit(HyperDriveConfig(...))` + `wait_for_completion()`, wall",
                 tp["ours"]["wall"], fmt_ratio(tp["ratio"])),
             row(f"peer: Optuna `study.optimize(n_trials={n}, n_jobs={c})`, a subprocess per "
                 "trial, wall", tp["optuna"]["wall"], fmt_ratio(1.0)),
             f"| floor: {n} × {sleep:g} s, {c} at once | {fmt(tp['floor'])} | – | – | "
             f"{fmt_ratio(ratio(tp['floor'], tp['optuna']['wall']['median']))} |", "",
             f"Goal ≤ {GOAL_RATIO:g}× the peer: {'met' if met else 'NOT met'}.", "",
             "Per trial (medians over every trial of the timed reps, seconds):", "",
             "| | ours | Optuna |", "|---|---:|---:|",
             f"| trial: created → ended (ours: run record; Optuna: trial start → complete) | "
             f"{fmt(tp['ours']['trial_lifetime']['median'])} | "
             f"{fmt(tp['optuna']['trial_lifetime']['median'])} |",
             f"| of which Running → ended (ours) / the subprocess (Optuna) | "
             f"{fmt(tp['ours']['trial_running']['median'])} | "
             f"{fmt(tp['optuna']['trial_subprocess']['median'])} |",
             f"| a slot freed → its next trial created | "
             f"{fmt(tp['ours']['refill_gap']['median'])} | "
             f"{fmt(tp['optuna']['refill_gap']['median'])} |"]
    for label, st in tp["ours"]["trial_phases"].items():
        if st["median"] is not None:
            lines.append(f"| ours, trial phase: {label} | {fmt(st['median'])} | – |")
    lines += [f"| per sweep: trials alive on average (of {c}) | "
              f"{fmt(tp['ours']['alive']['median'])} | {fmt(tp['optuna']['alive']['median'])} |",
              f"| ours, per sweep: Σ trial NotStarted → Queued (the controller starting "
              f"trials, one at a time) | {fmt(tp['ours']['start_blocked']['median'])} | – |",
              f"| ours, per sweep: submit → first trial created | "
              f"{fmt(tp['ours']['submit_to_first_trial']['median'])} | – |",
              f"| ours, per sweep: last trial ended → sweep ended | "
              f"{fmt(tp['ours']['last_trial_end_to_sweep_end']['median'])} | – |",
              f"| ours, per sweep: sweep ended → `wait_for_completion()` returns | "
              f"{fmt(tp['ours']['sweep_end_to_return']['median'])} | – |", ""]
    e = numbers["early_termination"]
    fraction = et["saved_fraction"]["median"]
    saved_pct = None if fraction is None else 100 * fraction
    policy = ", ".join(f"{k}={v}" for k, v in e["policy"].items() if k != "kind")
    lines += [f"Early termination: {e['trials']} trials ({e['concurrency']} at once) of a "
              f"learning curve of {e['intervals']} intervals {e['interval_seconds']:g} s "
              f"apart, `BanditPolicy({policy})` vs no policy, same seed "
              f"({numbers['reps']} interleaved reps each, medians, seconds):", "",
              "| measurement | no policy | `BanditPolicy` | saved |", "|---|---:|---:|---:|",
              f"| trial-seconds (Σ trial ended − started) | "
              f"{fmt(et['no_policy']['trial_seconds']['median'])} | "
              f"{fmt(et['bandit']['trial_seconds']['median'])} | "
              f"{fmt(et['saved']['median'])} ({fmt(saved_pct, 0)}%) |",
              f"| sweep wall (submit → `wait_for_completion()` returns) | "
              f"{fmt(et['no_policy']['wall']['median'])} | "
              f"{fmt(et['bandit']['wall']['median'])} | "
              f"{fmt_ratio(et['wall_ratio'])} of no policy |",
              f"| trials ended early by the policy | 0 | "
              f"{fmt(et['canceled_by_policy']['median'], 0)} of {e['trials']} | |",
              f"| intervals logged by a trial ended early (median, min–max) | "
              f"{e['intervals']} | {fmt(et['intervals_of_canceled']['median'], 0)} "
              f"({fmt(et['intervals_of_canceled']['min'], 0)}–"
              f"{fmt(et['intervals_of_canceled']['max'], 0)}) | |"]
    best = next((p for p in et["pairs"] if p["ok"]), None)
    if best:
        shown = ", ".join(f"`{k} {v:.3g}`" for k, v in best["best_parameters"].items())
        lines.append(f"| the best trial ({shown}) | Completed | "
                     f"{best['best_status_with_policy']} | |")
    return [*lines, ""]
