"""HyperDrive sweeps: Azure's rules for distributions, sampling and early termination, and
sweeps of real runs (a real Prefect server, runner processes, Dask and Docker)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import statistics
import time

import pytest
from conftest import write_script

from prefect_mltrain import Experiment, Run, ScriptRunConfig
from prefect_mltrain.errors import ConfigurationError
from prefect_mltrain.hyperdrive import (
    BanditPolicy,
    BayesianParameterSampling,
    GridParameterSampling,
    HyperDriveConfig,
    HyperDriveRun,
    MedianStoppingPolicy,
    NoTerminationPolicy,
    PrimaryMetricGoal,
    RandomParameterSampling,
    TruncationSelectionPolicy,
    choice,
    lognormal,
    loguniform,
    normal,
    qlognormal,
    qloguniform,
    qnormal,
    quniform,
    randint,
    uniform,
)
from prefect_mltrain.hyperdrive.parameters import parse_expression
from prefect_mltrain.hyperdrive.policies import Curve
from prefect_mltrain.hyperdrive.sampling import Trial

MAX = PrimaryMetricGoal.MAXIMIZE
MIN = PrimaryMetricGoal.MINIMIZE


# -- distributions: each rule of Azure's parameter expressions ------------------------------


def test_each_expression_draws_by_azures_definition():
    def draws(expr, n=400):
        rng = random.Random(1)
        return [expr.sample(rng) for _ in range(n)]

    assert set(draws(choice(16, 32, 64))) == {16, 32, 64}
    assert choice([1, 2]).options == [1, 2] and choice(range(3)).options == [0, 1, 2]
    assert set(draws(randint(3))) == {0, 1, 2}  # [0, upper)
    assert all(-1 <= v <= 2 for v in draws(uniform(-1, 2)))
    # loguniform(a, b) is exp(uniform(a, b)): its log is uniform in [a, b]
    logs = [math.log(v) for v in draws(loguniform(-6, -1))]
    assert min(logs) >= -6 and max(logs) <= -1 and abs(statistics.fmean(logs) + 3.5) < 0.3
    # quniform(a, b, q) is round(uniform(a, b) / q) * q; an integer q gives ints
    assert set(draws(quniform(0, 10, 5))) == {0, 5, 10}
    assert all(isinstance(v, int) for v in draws(quniform(0, 10, 5)))
    assert all(abs(v / 0.5 - round(v / 0.5)) < 1e-9 for v in draws(quniform(0, 3, 0.5)))
    assert all(v % 4 == 0 and v >= 0 for v in draws(qloguniform(0, 4, 4)))
    assert abs(statistics.fmean(draws(normal(10, 3), 2000)) - 10) < 0.3
    assert all(v % 2 == 0 for v in draws(qnormal(10, 3, 2)))
    assert all(v > 0 for v in draws(lognormal(0, 1)))
    assert all(v % 3 == 0 for v in draws(qlognormal(2, 1, 3)))


def test_bad_expressions_and_samplings_are_refused_with_the_fix(tmp_path):
    write_script(tmp_path / "proj", "train.py", "print(1)")
    proj = str(tmp_path / "proj")
    with pytest.raises(ValueError, match=r"randint\(upper\)"):
        randint(0)
    with pytest.raises(ValueError, match="min_value, max_value"):
        parse_expression("uniform(1)")
    with pytest.raises(ValueError, match="takes only choice"):
        GridParameterSampling({"--lr": uniform(0, 1)})
    with pytest.raises(ValueError, match="choice, quniform, uniform"):
        BayesianParameterSampling({"--lr": loguniform(-6, -1)})
    with pytest.raises(ValueError, match="one of slack_factor or slack_amount"):
        BanditPolicy(slack_factor=0.1, slack_amount=0.2)
    src = ScriptRunConfig(proj, "train.py", arguments=["--lr", 0.1])
    with pytest.raises(ConfigurationError, match="already set --lr"):
        HyperDriveConfig(run_config=src, hyperparameter_sampling=RandomParameterSampling(
            {"--lr": uniform(0, 1)}), primary_metric_name="a", primary_metric_goal=MAX,
            max_total_runs=2)
    with pytest.raises(ConfigurationError, match="Bayesian sampling takes no early-termination"):
        HyperDriveConfig(run_config=ScriptRunConfig(proj, "train.py"),
                         hyperparameter_sampling=BayesianParameterSampling({"x": uniform(0, 1)}),
                         policy=BanditPolicy(slack_factor=0.1), primary_metric_name="a",
                         primary_metric_goal=MAX, max_total_runs=2)
    with pytest.raises(ConfigurationError, match="max_total_runs"):
        HyperDriveConfig(run_config=ScriptRunConfig(proj, "train.py"),
                         hyperparameter_sampling=RandomParameterSampling({"x": uniform(0, 1)}),
                         primary_metric_name="a", primary_metric_goal=MAX, max_total_runs=1001)


def test_the_cli_form_of_an_expression_is_parsed_not_evaluated():
    assert parse_expression("loguniform(-6, -1)") == loguniform(-6, -1)
    assert parse_expression("choice(16, 32, 'adam')") == choice(16, 32, "adam")
    for bad in ("__import__('os').system('x')", "uniform(1, x)", "nope(1)", "1 + 2"):
        with pytest.raises(ValueError):
            parse_expression(bad)


# -- sampling ------------------------------------------------------------------------------


def test_random_sampling_with_a_seed_gives_the_same_trials_in_any_order():
    ps = RandomParameterSampling({"--lr": loguniform(-6, -1), "--b": choice(16, 32, 64)},
                                 properties={"seed": 7})
    first = [ps.suggest(i, [], seed=0, maximize=True) for i in range(5)]
    backwards = [ps.suggest(i, [], seed=0, maximize=True) for i in reversed(range(5))][::-1]
    assert first == backwards
    other = RandomParameterSampling(ps.parameter_space, properties={"seed": 8})
    assert [other.suggest(i, [], 0, True) for i in range(5)] != first


def test_grid_walks_every_combination_in_order_then_ends():
    grid = GridParameterSampling({"a": choice(1, 2), "b": choice("x", "y")})
    got = [grid.suggest(i, [], 0, True) for i in range(5)]
    assert got == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"},
                   {"a": 2, "b": "y"}, None]


def test_bayesian_sampling_converges_on_a_quadratic_faster_than_random():
    """Optuna's TPE (told each finished trial) needs fewer trials than random sampling to
    come within epsilon of the optimum of -(x-1.3)^2 - (y+0.7)^2, over fixed seeds."""
    space = {"x": uniform(-5, 5), "y": uniform(-5, 5)}

    def trials_to_reach(sampling, seed, eps=0.05, budget=80):
        history = []
        for i in range(budget):
            p = sampling.suggest(i, history, seed=seed, maximize=True)
            value = -(p["x"] - 1.3) ** 2 - (p["y"] + 0.7) ** 2
            history.append(Trial(index=i, parameters=p, value=value, finished=True))
            if value > -eps:
                return i + 1
        return budget

    seeds = range(5)
    bayes = [trials_to_reach(BayesianParameterSampling(space), s) for s in seeds]
    rand = [trials_to_reach(RandomParameterSampling(space), s) for s in seeds]
    assert statistics.median(bayes) < statistics.median(rand), (bayes, rand)


# -- early termination: each rule on scripted learning curves -------------------------------


def curves(**values):
    return [Curve(trial=name, values=v, running=True) for name, v in values.items()]


def test_bandit_cancels_outside_the_slack_of_the_best_so_far_at_the_same_interval():
    policy = BanditPolicy(slack_factor=0.2)
    # maximize: cancel when best * (1 + 0.2) < best so far; the first batch, all running
    got = policy.terminate(curves(a=[0.5, 0.9], b=[0.5, 0.8], c=[0.4, 0.7]), MAX)
    assert set(got) == {"c"} and "bandit policy at interval 2" in got["c"]
    # minimize: cancel when best > best so far * (1 + 0.2)
    assert set(policy.terminate(curves(a=[1.0], b=[1.1], c=[1.3]), MIN)) == {"c"}
    amount = BanditPolicy(slack_amount=0.15)
    assert set(amount.terminate(curves(a=[0.9], b=[0.76], c=[0.74]), MAX)) == {"c"}
    # a young trial is judged against what the others had at its interval, not later
    assert policy.terminate(curves(old=[0.3, 0.5, 0.95], young=[0.3]), MAX) == {}


def test_evaluation_interval_and_delay_follow_azures_rule():
    """Applied at every multiple of evaluation_interval that is >= delay_evaluation."""
    policy = BanditPolicy(slack_amount=0.0, evaluation_interval=2, delay_evaluation=3)
    best, poor = [1.0] * 6, [0.0] * 6
    judged = [k for k in range(1, 7)
              if policy.terminate(curves(best=best[:k], poor=poor[:k]), MAX)]
    assert judged == [4, 5, 6]  # at 4 (the first multiple of 2 >= 3); 5 and 6 judge at 4, 6


def test_median_stopping_cancels_trials_worse_than_the_median_of_running_averages():
    policy = MedianStoppingPolicy()
    # running averages at interval 2: a 0.85, b 0.75, c 0.35 -> median 0.75
    got = policy.terminate(curves(a=[0.8, 0.9], b=[0.7, 0.8], c=[0.3, 0.4]), MAX)
    assert set(got) == {"c"}
    assert set(policy.terminate(curves(a=[1.0], b=[2.0], c=[9.0]), MIN)) == {"c"}


def test_truncation_cancels_the_lowest_percentage_and_never_a_tie_with_a_kept_trial():
    policy = TruncationSelectionPolicy(truncation_percentage=50)
    got = policy.terminate(curves(a=[0.9], b=[0.8], c=[0.2], d=[0.1]), MAX)
    assert set(got) == {"c", "d"}
    assert policy.terminate(curves(a=[0.9], b=[0.9]), MAX) == {}
    assert TruncationSelectionPolicy(truncation_percentage=20).terminate(
        curves(a=[0.9], b=[0.8], c=[0.1], d=[0.0]), MAX) == {}  # floor(4 * 20%) = 0
    finished = [Curve(trial="done", values=[0.95], running=False), *curves(a=[0.9], b=[0.1])]
    assert set(policy.terminate(finished, MAX)) == {"b"}
    excluding = TruncationSelectionPolicy(truncation_percentage=50, exclude_finished_jobs=True)
    assert set(excluding.terminate(finished, MAX)) == {"b"}


def test_no_policy_ever_cancels_the_best_trial():
    rng = random.Random(3)
    policies = [BanditPolicy(slack_factor=0.01), MedianStoppingPolicy(),
                TruncationSelectionPolicy(truncation_percentage=99), NoTerminationPolicy()]
    for _ in range(200):
        cs = curves(**{f"t{i}": [rng.random() for _ in range(rng.randint(1, 5))]
                       for i in range(rng.randint(1, 6))})
        for goal in (MAX, MIN):
            for policy in policies:
                for k in range(1, 6):
                    at_k = [c for c in cs if len(c.values) >= k]
                    if not at_k:
                        continue
                    pick = max if goal == MAX else min
                    best = pick(at_k, key=lambda c: pick(c.values[:k]))
                    judged = [Curve(trial=c.trial, values=c.values[:k], running=True)
                              for c in at_k]
                    assert best.trial not in policy.terminate(judged, goal)


# -- sweeps of real runs -------------------------------------------------------------------

SCORE = """
    import argparse, time
    from prefect_mltrain import Run
    p = argparse.ArgumentParser()
    p.add_argument("--x", type=float, default=0.0)
    p.add_argument("--quality", default="")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--pause", type=float, default=0.0)
    a = p.parse_args()
    run = Run.get_context()
    print("trial starts", a.x, a.quality, flush=True)
    level = {"hi-a": 0.9, "hi-b": 0.9, "lo-2": 0.2, "lo-1": 0.1}.get(a.quality, -(a.x - 1) ** 2)
    for step in range(a.steps):
        run.log("score", level)
        time.sleep(a.pause)
"""


def sweep(ws, tmp_path, sampling, max_total_runs, concurrent=None, policy=None, args=(),
          target="local", name="sweep", **kwargs) -> HyperDriveRun:
    write_script(tmp_path / "proj", "train.py", SCORE)
    src = ScriptRunConfig(str(tmp_path / "proj"), "train.py", arguments=list(args),
                          compute_target=target, max_run_duration_seconds=120)
    hd = HyperDriveConfig(run_config=src, hyperparameter_sampling=sampling, policy=policy,
                          primary_metric_name="score", primary_metric_goal="MAXIMIZE",
                          max_total_runs=max_total_runs, max_concurrent_runs=concurrent,
                          **kwargs)
    hd_run = Experiment(ws, name).submit(hd)
    assert isinstance(hd_run, HyperDriveRun)
    return hd_run


def trials(hd_run: HyperDriveRun) -> list[dict]:
    rows = hd_run.get_children_sorted_by_primary_metric()
    for row in rows:
        row["details"] = Run.get(hd_run.experiment.workspace, row["run_id"]).get_details()
    return rows




@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(240)
def test_a_seeded_random_sweep_reproduces_its_trials_and_reports_the_best(ws, tmp_path):
    ps = RandomParameterSampling({"--x": uniform(-2, 3)}, properties={"seed": 11})
    first = sweep(ws, tmp_path, ps, max_total_runs=3, concurrent=3)
    second = sweep(ws, tmp_path, ps, max_total_runs=3, concurrent=3)
    first.wait_for_completion(show_output=True, timeout=180)
    second.wait_for_completion(timeout=180)
    assert first.get_status() == second.get_status() == "Completed"
    by_index = lambda r: sorted(r.get_hyperparameters().items(),  # noqa: E731
                                key=lambda kv: int(kv[0].rsplit("_", 1)[1]))
    assert [p for _, p in by_index(first)] == [p for _, p in by_index(second)]
    assert len(first.get_hyperparameters()) == 3

    rows = trials(first)
    expected = max(rows, key=lambda r: -(r["hyperparameters"]["--x"] - 1) ** 2)
    best = first.get_best_run_by_primary_metric()
    assert best.id == expected["run_id"] == rows[0]["run_id"]
    assert math.isclose(rows[0]["best_primary_metric"],
                        -(rows[0]["hyperparameters"]["--x"] - 1) ** 2)
    # each trial got its parameter as an argument and ran as an ordinary child run
    for row in rows:
        assert row["status"] == "Completed"
        assert row["details"]["parent_run_id"] == first.id
        assert row["details"]["config"]["arguments"][-2:] == [
            "--x", repr(row["hyperparameters"]["--x"])]
    metrics = first.get_metrics()
    assert set(metrics) == {r["run_id"] for r in rows}
    assert all(isinstance(m["score"], float) for m in metrics.values())
    assert [r["run_id"] for r in first.get_children_sorted_by_primary_metric(top=1)] == [best.id]

    # the pictures are in the sweep's outputs/, and Prefect shows the trials under the sweep
    assert {"outputs/hyperdrive_curves.png",
            "outputs/hyperdrive_parallel_coordinates.png"} <= set(first.get_file_names())
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    details = first.get_details()
    with get_client(sync_client=True) as client:
        for row in rows:
            trial_flow = client.read_flow_run(row["details"]["flow_run_id"])
            parent_task = client.read_task_run(trial_flow.parent_task_run_id)
            assert str(parent_task.flow_run_id) == details["flow_run_id"]
            assert parent_task.state.is_completed()
        key = "sweep-" + first.id.lower().replace("_", "-")[-60:].strip("-")
        table = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))
        assert table, "the sweep's trial table is an artifact in Prefect"
        assert client.read_flow_run(details["flow_run_id"]).state.is_completed()


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(240)
def test_a_grid_smaller_than_max_total_runs_ends_when_exhausted(ws, tmp_path):
    grid = GridParameterSampling({"--x": choice(0.5, 1.0, 1.5)})
    hd_run = sweep(ws, tmp_path, grid, max_total_runs=10, concurrent=2)
    hd_run.wait_for_completion(timeout=180)
    assert hd_run.get_status() == "Completed"
    assert sorted(p["--x"] for p in hd_run.get_hyperparameters().values()) == [0.5, 1.0, 1.5]
    assert hd_run.get_best_run_by_primary_metric().get_metrics()["score"] == 0.0


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("policy", [
    BanditPolicy(slack_factor=0.5, evaluation_interval=1),
    MedianStoppingPolicy(),
    TruncationSelectionPolicy(truncation_percentage=50),
], ids=["bandit", "median", "truncation"])
def test_a_policy_cancels_the_poor_trials_of_the_first_batch_and_only_those(
        ws, tmp_path, policy):
    """Four trials at once (the first batch): two good learning curves (0.9), two poor
    (0.2, 0.1), 10 intervals 1 s apart. Each rule cancels exactly the two poor ones,
    while they run, through the normal cancel path."""
    grid = GridParameterSampling({"--quality": choice("hi-a", "hi-b", "lo-2", "lo-1")})
    hd_run = sweep(ws, tmp_path, grid, max_total_runs=4, concurrent=4, policy=policy,
                   args=["--steps", 10, "--pause", 1.0])
    hd_run.wait_for_completion(timeout=180)
    assert hd_run.get_status() == "Completed"
    status = {r["hyperparameters"]["--quality"]: r for r in trials(hd_run)}
    for good in ("hi-a", "hi-b"):
        assert status[good]["status"] == "Completed", status[good]["details"]["error"]
    for poor in ("lo-2", "lo-1"):
        details = status[poor]["details"]
        assert status[poor]["status"] == "Canceled"
        assert details["error"].startswith(f"early termination: {policy.name}")
        score = Run.get(ws, status[poor]["run_id"]).get_metrics()["score"]
        assert not isinstance(score, list) or len(score) < 10  # stopped before its end


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_a_sweep_whose_controller_is_killed_resumes_without_running_a_trial_twice(
        ws, tmp_path):
    ps = RandomParameterSampling({"--x": uniform(0, 2)}, properties={"seed": 5})
    hd_run = sweep(ws, tmp_path, ps, max_total_runs=6, concurrent=2,
                   args=["--steps", 3, "--pause", 1.0])
    deadline = time.monotonic() + 120
    while len(hd_run.get_children()) < 3:  # the first batch done, the second started
        assert time.monotonic() < deadline, "the sweep did not start its third trial"
        time.sleep(0.3)
    os.kill(hd_run.get_details()["runner"]["pid"], signal.SIGKILL)
    # the controller is gone: the sweep fails, its running trials go on by themselves
    with pytest.raises(Exception, match="exited without finishing"):
        hd_run.wait_for_completion(timeout=60)
    going = [r for r in hd_run.get_children() if r.get_status() not in (
        "Completed", "Failed", "Canceled")]
    hd_run.resume()
    hd_run.wait_for_completion(timeout=200)
    assert hd_run.get_status() == "Completed"
    rows = trials(hd_run)
    assert sorted(int(r["run_id"].rsplit("_", 1)[1]) for r in rows) == list(range(6))
    assert all(r["status"] == "Completed" for r in rows), [r["details"]["error"] for r in rows]
    for row in rows:  # each trial's script ran exactly once
        log = Run.get(ws, row["run_id"]).download_file("logs/std_log.txt", tmp_path / "log")
        assert log.read_text().count("trial starts") == 1
    assert {r.id for r in going} <= {r["run_id"] for r in rows}
    # the parameters are those a sweep never killed would have drawn
    ps_trials = [ps.suggest(i, [], 0, True) for i in range(6)]
    assert sorted(json.dumps(p) for p in hd_run.get_hyperparameters().values()) == sorted(
        json.dumps(p) for p in ps_trials)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(240)
def test_canceling_a_sweep_cancels_every_trial(ws, tmp_path):
    ps = RandomParameterSampling({"--x": uniform(0, 2)}, properties={"seed": 1})
    hd_run = sweep(ws, tmp_path, ps, max_total_runs=6, concurrent=2,
                   args=["--steps", 60, "--pause", 1.0])
    deadline = time.monotonic() + 120
    while sum(r.get_status() == "Running" for r in hd_run.get_children()) < 2:
        assert time.monotonic() < deadline, "the trials did not start"
        time.sleep(0.3)
    hd_run.cancel()
    hd_run.wait_for_completion(timeout=120, raise_on_error=False)
    assert hd_run.get_status() == "Canceled"
    children = hd_run.get_children()
    assert len(children) == 2
    deadline = time.monotonic() + 60
    while any(c.get_status() != "Canceled" for c in children) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert [c.get_status() for c in children] == ["Canceled", "Canceled"]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(240)
def test_the_cli_sweeps_from_options_and_from_yaml_and_shows_the_trials(ws, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    write_script(tmp_path / "proj", "train.py", SCORE)
    mltrain = [str(Path(sys.executable).parent / "mltrain")]
    common = ["--workspace", str(ws.url)]
    bad = subprocess.run([*mltrain, "sweep", str(tmp_path / "proj"), "train.py", "--param",
                          "--x=wobbly(1)", "--metric", "score", *common],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'wobbly' is no parameter expression" in bad.stderr + bad.stdout

    out = subprocess.run([*mltrain, "sweep", str(tmp_path / "proj"), "train.py",
                          "--param", "--x=choice(0.5, 1.0)", "--sampling", "grid",
                          "--metric", "score", "--goal", "max", "--max-runs", "5",
                          "--concurrent", "2", "--policy", "bandit:slack=0.1,delay=2",
                          "-e", "cli-sweep", "--json", *common],
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["status"] == "Completed"
    assert [t["hyperparameters"] for t in result["trials"]] == [{"--x": 1.0}, {"--x": 0.5}]
    assert result["hyperdrive"]["policy"]["slack_factor"] == 0.1

    (tmp_path / "sweep.yaml").write_text(
        "source_directory: proj\nscript: train.py\nexperiment: yaml-sweep\n"
        "param:\n  --x: uniform(0, 2)\nmetric: score\ngoal: max\nsampling: random\n"
        "seed: 4\nmax_runs: 2\nconcurrent: 2\npolicy: {kind: median, delay: 1}\n")
    out = subprocess.run([*mltrain, "sweep", "-f", str(tmp_path / "sweep.yaml"),
                          "--max-runs", "3", *common],
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    [swept] = Experiment(ws, "yaml-sweep").get_runs()
    assert len(swept.get_hyperparameters()) == 3  # the option wins over the file
    assert swept.get_details()["hyperdrive"]["policy"]["kind"] == "median"
    shown = subprocess.run([*mltrain, "runs", "show", swept.id, *common],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "Sweep: score (maximize)" in shown.stdout
    for params in swept.get_hyperparameters().values():  # a row per trial in the table
        assert repr(params["--x"]) in shown.stdout


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_a_sweep_runs_its_trials_on_a_dask_cluster(ws, tmp_path, dask_cluster):
    from prefect_mltrain.compute import DaskCompute

    grid = GridParameterSampling({"--x": choice(0.5, 1.0)})
    hd_run = sweep(ws, tmp_path, grid, max_total_runs=2, concurrent=2,
                   target=DaskCompute(address=dask_cluster))
    hd_run.wait_for_completion(timeout=240)
    assert hd_run.get_status() == "Completed"
    rows = trials(hd_run)
    assert [r["status"] for r in rows] == ["Completed", "Completed"]
    assert rows[0]["hyperparameters"] == {"--x": 1.0} and rows[0]["best_primary_metric"] == 0
    assert all(r["details"]["environment_build"] for r in rows)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_a_sweep_runs_its_trials_in_docker_containers(ws, tmp_path, docker_engine):
    from conftest import BASE_IMAGE

    from prefect_mltrain.compute import DockerCompute

    grid = GridParameterSampling({"--x": choice(0.5, 1.0)})
    hd_run = sweep(ws, tmp_path, grid, max_total_runs=2, concurrent=2,
                   target=DockerCompute(image=BASE_IMAGE, network_mode="host"))
    hd_run.wait_for_completion(timeout=240)
    assert hd_run.get_status() == "Completed"
    rows = trials(hd_run)
    assert [r["status"] for r in rows] == ["Completed", "Completed"]
    assert rows[0]["hyperparameters"] == {"--x": 1.0} and rows[0]["best_primary_metric"] == 0
    assert all(r["details"]["environment_build"]["image"] for r in rows)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(240)
def test_resume_from_an_earlier_sweep_skips_what_it_ran_and_counts_its_best(ws, tmp_path):
    grid = GridParameterSampling({"--x": choice(1.0, 0.5, 1.5)})
    earlier = sweep(ws, tmp_path, grid, max_total_runs=2, concurrent=2)
    earlier.wait_for_completion(timeout=180)
    later = sweep(ws, tmp_path, grid, max_total_runs=5, concurrent=2, resume_from=earlier)
    later.wait_for_completion(timeout=180)
    assert list(later.get_hyperparameters().values()) == [{"--x": 1.5}]  # the rest was run
    assert later.get_best_run_by_primary_metric().id in earlier.get_hyperparameters()
    assert later.get_best_run_by_primary_metric(include_resume_from_runs=False).id in \
        later.get_hyperparameters()
    with pytest.raises(Exception, match="is not a sweep"):
        sweep(ws, tmp_path, grid, max_total_runs=1,
              resume_from=next(iter(earlier.get_hyperparameters())))
