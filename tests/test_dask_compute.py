"""Runs on the Dask target: a real cluster whose workers sit on distinct loopback "hosts"."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from conftest import write_script
from test_distributed import (
    CONTRACT,
    FAILING_RANK,
    MPI_ALLREDUCE,
    TORCH_ALLREDUCE,
    _contracts,
    torch_environment,
)

from prefect_mltrain import (
    ComputeTargetUnavailableError,
    Experiment,
    MpiConfiguration,
    PyTorchConfiguration,
    ScriptRunConfig,
    TensorflowConfiguration,
)
from prefect_mltrain.compute import DaskCompute
from prefect_mltrain.distributed import plan_ranks

pytestmark = pytest.mark.usefixtures("prefect_server")


def _placement(run, tmp_path):
    log = run.download_file("logs/std_log.txt", tmp_path / "placement").read_text()
    return dict(re.findall(r"rank (\d+) on tcp://([\d.]+):\d+", log.split("\n", 1)[0]))


@pytest.mark.timeout(600)
def test_torch_all_reduce_over_two_hosts_of_two_workers(ws, tmp_path, dask_cluster):
    write_script(tmp_path / "p", "train.py", TORCH_ALLREDUCE)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", environment=torch_environment(),
        compute_target=DaskCompute(address=dask_cluster, outputs_of_every_rank=True),
        distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=540)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"all_reduce": 10.0}
    hosts = _placement(run, tmp_path)
    assert hosts["0"] == hosts["1"] != hosts["2"] == hosts["3"]  # two ranks on each host
    files = set(run.get_file_names())
    assert {"outputs/contract/0.json", "outputs/rank_1/contract/1.json",
            "outputs/rank_3/contract/3.json"} <= files
    rank3 = json.loads(run.download_file("outputs/rank_3/contract/3.json",
                                         tmp_path / "c3").read_text())
    assert (rank3["NODE_RANK"], rank3["LOCAL_RANK"], rank3["MASTER_ADDR"]) == (
        "1", "1", hosts["0"])
    log = run.download_file("logs/std_log_rank2.txt", tmp_path / "l2").read_text()
    assert "all_reduce=10 world=4" in log


@pytest.mark.timeout(300)
def test_mpi4py_allreduce_with_node_proxies_on_the_workers(ws, tmp_path, dask_cluster):
    write_script(tmp_path / "p", "train.py", MPI_ALLREDUCE)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=dask_cluster),
        distributed_job_config=MpiConfiguration(process_count_per_node=2, node_count=2)))
    details = run.wait_for_completion(timeout=240)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"allreduce": 10}
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    assert all(f"[rank {r}] allreduce=10" in log for r in range(4))


@pytest.mark.timeout(300)
def test_tf_config_tasks_on_distinct_workers(ws, tmp_path, dask_cluster):
    write_script(tmp_path / "p", "train.py", CONTRACT)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=dask_cluster, outputs_of_every_rank=True),
        distributed_job_config=TensorflowConfiguration(worker_count=3)))
    assert run.wait_for_completion(timeout=240)["status"] == "Completed"
    tf = json.loads(json.loads(run.download_file(
        "outputs/rank_2/contract/2.json", tmp_path / "c").read_text())["TF_CONFIG"])
    assert tf["task"] == {"type": "worker", "index": 2} and len(set(tf["cluster"]["worker"])) == 3
    assert all(a.startswith("127.0.0.") for a in tf["cluster"]["worker"])


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split()[2] != "Z"


SLEEPER = """
    import os, time
    print("pid", os.getpid(), flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(300)
def test_timeout_leaves_no_rank_process_on_any_worker(ws, tmp_path, dask_cluster):
    write_script(tmp_path / "p", "train.py", SLEEPER)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", max_run_duration_seconds=8,
        compute_target=DaskCompute(address=dask_cluster),
        distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=240, raise_on_error=False)
    assert details["status"] == "Canceled" and "max_run_duration_seconds" in details["error"]
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    pids = [int(p) for p in re.findall(r"\] pid (\d+)", log)]
    assert len(pids) == 4
    deadline = time.monotonic() + 15
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, pids))


@pytest.mark.timeout(300)
def test_a_failing_rank_on_a_worker_stops_the_others(ws, tmp_path, dask_cluster):
    write_script(tmp_path / "p", "train.py", FAILING_RANK)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=dask_cluster),
        distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=240, raise_on_error=False)
    assert details["status"] == "Failed" and details["exit_code"] == 3
    assert "rank 1 exited with code 3" in details["error"]
    assert "rank one gives up: bad shard" in details["log_tail"]


@pytest.mark.timeout(120)
def test_too_few_workers_is_a_clear_error_not_a_hang(ws, tmp_path, dask_cluster):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=dask_cluster, worker_wait_seconds=1),
        distributed_job_config=PyTorchConfiguration(process_count=6, node_count=3)))
    details = run.wait_for_completion(timeout=90, raise_on_error=False)
    assert details["status"] == "Failed"
    assert [h["status"] for h in details["status_history"]][-2:] == ["Starting", "Failed"]
    assert details["error"].startswith("Starting: ")  # the phase the run was in
    assert ("need 3 node(s) × 2 process(es) per node: 6 workers, 2 of them on one host for "
            "each node; the cluster has 127.0.0.2: 2, 127.0.0.3: 2") in details["error"]
    assert "Add workers, or lower node_count" in details["error"]


@pytest.mark.timeout(300)
def test_a_cluster_created_for_the_run_and_closed_after(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", CONTRACT + "    print('done on a LocalCluster')\n")
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(cluster_class="distributed.LocalCluster", cluster_kwargs={
            "n_workers": 2, "threads_per_worker": 1, "dashboard_address": None}),
        distributed_job_config=PyTorchConfiguration(process_count=2)))
    assert run.wait_for_completion(timeout=240)["status"] == "Completed"
    assert "outputs/contract/0.json" in run.get_file_names()


@pytest.mark.timeout(300)
def test_mpi_job_on_a_dask_mpi_cluster_has_its_own_world(ws, tmp_path):
    from prefect_mltrain.testing import dask_mpi_cluster

    write_script(tmp_path / "p", "train.py", MPI_ALLREDUCE)
    with dask_mpi_cluster(tmp_path / "dask-mpi", processes=3) as scheduler_file:
        run = Experiment(ws, "dask").submit(ScriptRunConfig(
            source_directory=tmp_path / "p", script="train.py",
            compute_target=DaskCompute(scheduler_file=scheduler_file),
            distributed_job_config=MpiConfiguration(process_count_per_node=2)))
        details = run.wait_for_completion(timeout=240)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"allreduce": 3}  # a world of 2, not the cluster's 3


@pytest.mark.timeout(120)
def test_unreachable_scheduler_fails_in_preparing_naming_it(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address="tcp://127.0.0.1:9", connect_timeout_seconds=2)))
    details = run.wait_for_completion(timeout=90, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["error"].startswith("Preparing: cannot reach the Dask cluster "
                                       "tcp://127.0.0.1:9")
    assert "Start the scheduler" in details["error"]


@pytest.mark.timeout(120)
def test_a_scheduler_that_never_answers_fails_within_the_connect_timeout(ws, tmp_path,
                                                                         silent_address):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=f"tcp://{silent_address}", connect_timeout_seconds=3)))
    details = run.wait_for_completion(timeout=90, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["error"].startswith(f"Preparing: cannot reach the Dask cluster "
                                       f"tcp://{silent_address}")
    assert "no answer within 3" in details["error"]


@pytest.mark.timeout(120)
def test_a_cancel_while_waiting_for_a_silent_scheduler_cancels_the_run(ws, tmp_path,
                                                                      silent_address):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=f"tcp://{silent_address}",
                                   connect_timeout_seconds=600)))
    deadline = time.monotonic() + 60
    while run.get_status() != "Preparing":
        assert time.monotonic() < deadline, run.get_details()
        time.sleep(0.1)
    time.sleep(1)  # waiting for the handshake now
    run.cancel()
    details = run.wait_for_completion(timeout=60, raise_on_error=False)
    assert details["status"] == "Canceled", details


# -- one host, several nodes -------------------------------------------------------------------

LOCAL_CLUSTER = {"n_workers": 4, "threads_per_worker": 1, "dashboard_address": None}


@pytest.fixture(scope="module")
def one_host_cluster():
    """A real ``LocalCluster``: one host (127.0.0.1) with four worker processes."""
    from distributed import LocalCluster

    with LocalCluster(**LOCAL_CLUSTER) as cluster:
        yield cluster.scheduler_address


def _every_rank(run, tmp_path):
    """Each rank's contract: rank 0's from outputs/, the others' from outputs/rank_N/."""
    names = [n for n in run.get_file_names() if "/contract/" in n and n.startswith("outputs/")]
    return {int(n.rsplit("/", 1)[1][:-5]): json.loads(
        run.download_file(n, tmp_path / "every" / n).read_text()) for n in names}


def test_nodes_take_distinct_hosts_first_then_share_them_side_by_side():
    from prefect_mltrain.compute.placement import fit

    hosts = {"a": ["tcp://a:1", "tcp://a:2", "tcp://a:3", "tcp://a:4"],
             "b": ["tcp://b:1", "tcp://b:2", "tcp://b:3"]}
    placement = fit(hosts, plan_ranks(MpiConfiguration(process_count_per_node=2,
                                                       node_count=3)))
    assert placement.hosts == ["a", "a", "b"] and placement.shared() == {"a": [0, 1]}
    assert placement.workers == ["tcp://a:1", "tcp://a:2", "tcp://a:3", "tcp://a:4",
                                 "tcp://b:1", "tcp://b:2"]
    two = plan_ranks(MpiConfiguration(process_count_per_node=2, node_count=2))
    assert fit(hosts, two).hosts == ["a", "b"]
    assert fit({"a": hosts["a"]}, two, one_node_per_host=True) is None


@pytest.mark.timeout(300)
def test_mpi4py_allreduce_with_two_nodes_on_a_one_host_cluster(ws, tmp_path, one_host_cluster):
    write_script(tmp_path / "p", "train.py", MPI_ALLREDUCE)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=one_host_cluster, worker_wait_seconds=5),
        distributed_job_config=MpiConfiguration(process_count_per_node=2, node_count=2)))
    details = run.wait_for_completion(timeout=240)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"allreduce": 10}
    contracts = _contracts(run, tmp_path)
    assert [(c["RANK"], c["LOCAL_RANK"], c["NODE_RANK"], c["WORLD_SIZE"], c["MASTER_ADDR"])
            for _, c in sorted(contracts.items())] == [
        ("0", "0", "0", "4", "127.0.0.1"), ("1", "1", "0", "4", "127.0.0.1"),
        ("2", "0", "1", "4", "127.0.0.1"), ("3", "1", "1", "4", "127.0.0.1")]
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    assert all(f"[rank {r}] allreduce=10" in log for r in range(4))
    assert "nodes 0, 1 share host 127.0.0.1" in log


@pytest.mark.timeout(600)
def test_torch_gloo_all_reduce_with_two_nodes_on_a_cluster_made_for_the_run(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", TORCH_ALLREDUCE)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", environment=torch_environment(),
        compute_target=DaskCompute(cluster_class="distributed.LocalCluster",
                                   cluster_kwargs=LOCAL_CLUSTER, outputs_of_every_rank=True),
        distributed_job_config=PyTorchConfiguration(communication_backend="gloo",
                                                    process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=540)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"all_reduce": 10.0}
    contracts = _every_rank(run, tmp_path)
    assert [(c["RANK"], c["LOCAL_RANK"], c["NODE_RANK"], c["WORLD_SIZE"], c["MASTER_ADDR"])
            for _, c in sorted(contracts.items())] == [
        ("0", "0", "0", "4", "127.0.0.1"), ("1", "1", "0", "4", "127.0.0.1"),
        ("2", "0", "1", "4", "127.0.0.1"), ("3", "1", "1", "4", "127.0.0.1")]
    assert len({c["pid"] for c in contracts.values()}) == 4
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    assert all(f"[rank {r}] all_reduce=10 world=4" in log for r in range(4))
    assert "nodes 0, 1 share host 127.0.0.1" in log


@pytest.mark.timeout(120)
def test_one_node_per_host_on_a_one_host_cluster_is_a_clear_error(ws, tmp_path,
                                                                  one_host_cluster):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DaskCompute(address=one_host_cluster, one_node_per_host=True,
                                   worker_wait_seconds=1),
        distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=90, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["error"].startswith("Starting: ")
    assert ("need 2 node(s) × 2 process(es) per node on 2 distinct host(s) "
            "(one_node_per_host=True); the cluster has 127.0.0.1: 4") in details["error"]
    assert "set one_node_per_host=False" in details["error"]


@pytest.mark.timeout(180)
def test_a_cluster_made_for_the_run_too_small_fails_at_once_in_preparing(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    target = DaskCompute(cluster_class="distributed.LocalCluster", worker_wait_seconds=300,
                         cluster_kwargs={**LOCAL_CLUSTER, "n_workers": 2})
    job = PyTorchConfiguration(process_count=4, node_count=2)
    run = Experiment(ws, "dask").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target,
        distributed_job_config=job))
    details = run.wait_for_completion(timeout=150, raise_on_error=False)
    assert details["status"] == "Failed"
    history = details["status_history"]
    assert [h["status"] for h in history][-2:] == ["Preparing", "Failed"]
    assert history[-1]["time"] - history[-2]["time"] < 60  # its start, not the 300 s wait
    need = ("need 2 node(s) × 2 process(es) per node: 4 workers, 2 of them on one host for "
            "each node; the cluster has 127.0.0.1: 2")
    assert details["error"].startswith("Preparing: the cluster made for the run "
                                       "(distributed.LocalCluster) is too small")
    assert need in details["error"] and "Give it more workers" in details["error"]
    with pytest.raises(ComputeTargetUnavailableError, match=re.escape(need)):
        target.check(distributed=job)
