"""Every project in examples/ runs as its README says (at CI's small sizes), and does what
it claims: its metrics and its outputs. Real runs, environments, Docker, Dask and MPI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BASE_IMAGE

from prefect_mltrain import Experiment, Workspace

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.usefixtures("prefect_server")


def submit(example: str, ws: Workspace, *args: str, timeout: float = 540) -> str:
    """Run ``examples/<example>`` as a user would; its output."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / example), "--workspace",
                           str(ws.url), "--quick", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def only_run(ws: Workspace, experiment: str):
    [run] = Experiment(ws, experiment).get_runs()
    assert run.get_status() == "Completed"
    return run


@pytest.mark.timeout(600)
def test_sklearn_ridge(ws):
    submit("sklearn-ridge/submit.py", ws)
    run = only_run(ws, "sklearn-ridge")
    metrics = run.get_metrics()
    assert metrics["alpha"] == 0.5 and metrics["r2"] > 0.9 and metrics["mse"] > 0
    assert "outputs/model.pkl" in run.get_file_names()
    assert run.get_tags()["example"] == "sklearn-ridge"


@pytest.mark.timeout(900)
def test_pytorch_mnist_with_tensorboard_logs(ws):
    out = submit("pytorch-mnist/submit.py", ws, timeout=840)
    run = only_run(ws, "pytorch-mnist")
    accuracy = run.get_metrics()["accuracy"]
    assert len(accuracy) == 2 and accuracy[-1] > 0.5, accuracy  # chance is 0.1
    files = run.get_file_names()
    assert "outputs/model.pt" in files
    assert any(n.startswith("logs/events.out.tfevents.") for n in files), files
    assert f"mltrain tensorboard {run.id}" in out


@pytest.mark.timeout(900)
def test_pytorch_ddp_on_two_dask_nodes(ws, dask_cluster):
    submit("pytorch-mnist/submit_ddp_dask.py", ws, "--scheduler", dask_cluster, timeout=840)
    run = only_run(ws, "pytorch-ddp")
    assert run.get_metrics()["accuracy"][-1] > 0.5
    log = run.download_file("logs/std_log.txt", Path(str(ws.url)) / "ddp.log").read_text()
    assert "2 ranks (pytorch) on 2 node(s)" in log and "[rank 0] epoch 1:" in log


@pytest.mark.timeout(600)
def test_mpi4py_allreduce(ws):
    submit("mpi4py-allreduce/submit.py", ws)
    metrics = only_run(ws, "mpi4py-allreduce").get_metrics()
    assert metrics["ranks"] == 3 and metrics["points"] == 30_000
    assert abs(metrics["slope"] - 3.0) < 0.01 and abs(metrics["intercept"] - 2.0) < 0.05


@pytest.mark.timeout(600)
def test_docker_with_a_pip_environment(ws, docker_engine):
    submit("docker-pip/submit.py", ws, "--image", BASE_IMAGE, "--network-mode", "host")
    run = only_run(ws, "docker-pip")
    metrics = run.get_metrics()
    assert metrics["in_container"] is True and metrics["numpy"] == "2.4.6"
    assert abs(metrics["mean"] - 5.0) < 0.05
    assert "outputs/summary.txt" in run.get_file_names()


@pytest.mark.timeout(600)
def test_hyperdrive_sweep_of_the_ridge(ws):
    out = submit("hyperdrive-sweep/submit.py", ws)
    [sweep] = Experiment(ws, "ridge-sweep").get_runs()
    assert sweep.get_status() == "Completed"
    trials = sweep.get_children_sorted_by_primary_metric()
    assert len(trials) == 4 and all(t["status"] == "Completed" for t in trials)
    best = sweep.get_best_run_by_primary_metric()
    assert best.id == trials[0]["run_id"] and f"best: {best.id}" in out
