"""Distributed runs on local compute: the launch contract, MPI, PyTorch, TensorFlow, gangs."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import write_script

from prefect_mltrain import (
    ConfigurationError,
    Experiment,
    MpiConfiguration,
    PyTorchConfiguration,
    ScriptRunConfig,
    TensorflowConfiguration,
)
from prefect_mltrain.distributed import plan_ranks, rank_env

# -- the plan and the contract -----------------------------------------------------------------


def test_mpi_and_pytorch_plans_place_ranks_block_wise_on_nodes():
    plan = plan_ranks(MpiConfiguration(process_count_per_node=2, node_count=3))
    assert [(s.rank, s.node_rank, s.local_rank) for s in plan.slots] == [
        (0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1), (4, 2, 0), (5, 2, 1)]
    plan = plan_ranks(PyTorchConfiguration(process_count=4, node_count=2))
    assert (plan.world_size, plan.node_count, plan.per_node) == (4, 2, 2)
    assert plan_ranks(PyTorchConfiguration(node_count=3)).per_node == 1


def test_uneven_process_count_names_the_fix():
    with pytest.raises(ConfigurationError, match="make process_count a multiple of node_count"):
        plan_ranks(PyTorchConfiguration(process_count=3, node_count=2))


def test_every_rank_gets_the_torchrun_and_azure_contract():
    plan = plan_ranks(PyTorchConfiguration(process_count=4, node_count=2))
    env = rank_env(plan, plan.slots[3], master_addr="10.0.0.5", master_port=29500, run_id="r1")
    assert {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                                "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                                "AZ_BATCH_MASTER_NODE", "AZ_BATCHAI_MPI_MASTER_NODE")} == {
        "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "3",
        "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1", "GROUP_RANK": "1",
        "AZ_BATCH_MASTER_NODE": "10.0.0.5:29500", "AZ_BATCHAI_MPI_MASTER_NODE": "10.0.0.5"}


def test_tf_config_with_parameter_servers_has_a_chief_workers_and_ps():
    plan = plan_ranks(TensorflowConfiguration(worker_count=2, parameter_server_count=1))
    addresses = ["h:1", "h:2", "h:3"]
    configs = [json.loads(rank_env(plan, s, master_addr="h", master_port=9, run_id="r",
                                   tf_addresses=addresses)["TF_CONFIG"]) for s in plan.slots]
    assert configs[0] == {"cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]},
                          "task": {"type": "chief", "index": 0}}
    assert [c["task"] for c in configs[1:]] == [{"type": "worker", "index": 0},
                                                {"type": "ps", "index": 0}]
    assert plan.essential == {0}
    plan = plan_ranks(TensorflowConfiguration(worker_count=2))
    assert plan.essential == {0, 1} and {s.role for s in plan.slots} == {"worker"}


# -- real runs ----------------------------------------------------------------------------------

CONTRACT = """
    import json, os
    keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
            "MASTER_PORT", "AZ_BATCH_MASTER_NODE", "AZ_BATCHAI_MPI_MASTER_NODE", "TF_CONFIG"]
    os.makedirs("outputs/contract", exist_ok=True)
    with open(f"outputs/contract/{os.environ['RANK']}.json", "w") as f:
        json.dump({k: os.environ.get(k) for k in keys} | {"pid": os.getpid()}, f)
"""

MPI_ALLREDUCE = CONTRACT + """
    from mpi4py import MPI
    from prefect_mltrain import Run
    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.Get_rank() + 1)
    print(f"allreduce={total}", flush=True)
    if comm.Get_rank() == 0:
        Run.get_context().log("allreduce", total)
"""


def _contracts(run, tmp_path):
    out = run.download_files(prefix="outputs/contract/", output_directory=tmp_path / "c")
    return {int(p.stem): json.loads(p.read_text()) for p in map(lambda p: tmp_path / "c" / p, out)}


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(180)
def test_mpi4py_allreduce_under_mpiexec_with_the_contract(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", MPI_ALLREDUCE)
    run = Experiment(ws, "dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        distributed_job_config=MpiConfiguration(process_count_per_node=2, node_count=2)))
    details = run.wait_for_completion(timeout=150)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"allreduce": 10}
    contracts = _contracts(run, tmp_path)
    assert sorted(contracts) == [0, 1, 2, 3]
    assert [(c["LOCAL_RANK"], c["NODE_RANK"], c["WORLD_SIZE"]) for _, c in
            sorted(contracts.items())] == [("0", "0", "4"), ("1", "0", "4"), ("0", "1", "4"),
                                           ("1", "1", "4")]
    c = contracts[2]
    assert c["AZ_BATCH_MASTER_NODE"] == f"{c['MASTER_ADDR']}:{c['MASTER_PORT']}"
    assert c["AZ_BATCHAI_MPI_MASTER_NODE"] == c["MASTER_ADDR"]
    files = run.get_file_names()
    assert {f"logs/std_log_rank{r}.txt" for r in range(4)} <= set(files)
    log = run.download_file("logs/std_log_rank3.txt", tmp_path / "l3").read_text()
    assert log.strip() == "allreduce=10"
    assert "[rank 1] allreduce=10" in run.download_file("logs/std_log.txt", tmp_path / "l").read_text()


TF_TASK = CONTRACT + """
    import json, os, time
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    print("task", task["type"], task["index"], flush=True)
    if task["type"] == "ps":
        time.sleep(600)   # a parameter server never ends on its own
    time.sleep(0.5)
"""


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(180)
def test_tensorflow_job_with_a_parameter_server_ends_with_the_chief(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", TF_TASK)
    run = Experiment(ws, "dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        distributed_job_config=TensorflowConfiguration(worker_count=2, parameter_server_count=1)))
    details = run.wait_for_completion(timeout=150)
    assert details["status"] == "Completed", details
    contracts = _contracts(run, tmp_path)
    cluster = json.loads(contracts[0]["TF_CONFIG"])["cluster"]
    addresses = [*cluster["chief"], *cluster["worker"], *cluster["ps"]]
    assert len(addresses) == 3 and len(set(addresses)) == 3
    assert all(json.loads(c["TF_CONFIG"])["cluster"] == cluster for c in contracts.values())
    assert _gone(contracts[2]["pid"])  # the parameter server was stopped


FAILING_RANK = CONTRACT + """
    import os, sys, time
    if os.environ["RANK"] == "1":
        time.sleep(1)
        print("rank one gives up: bad shard", file=sys.stderr, flush=True)
        sys.exit(3)
    print("waiting", flush=True)
    time.sleep(600)
"""


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("config", [
    MpiConfiguration(process_count_per_node=3),
    PyTorchConfiguration(process_count=3),
], ids=["mpi", "pytorch"])
def test_one_failing_rank_stops_every_rank_and_fails_the_run(ws, tmp_path, config):
    write_script(tmp_path / "p", "train.py", FAILING_RANK)
    run = Experiment(ws, "dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", distributed_job_config=config))
    details = run.wait_for_completion(timeout=150, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["exit_code"] == 3
    assert "rank 1 exited with code 3" in details["error"]
    assert "rank one gives up: bad shard" in details["log_tail"]
    assert "waiting" not in details["log_tail"]  # the failing rank's tail, not another's
    pids = [c["pid"] for c in _contracts(run, tmp_path).values()]
    deadline = time.monotonic() + 10
    while not all(map(_gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(map(_gone, pids))


PORT_CLASH = """
    import os, sys
    marker = "first-attempt-" + os.environ["RANK"]  # in the run's folder: kept across restarts
    if os.environ["RANK"] == "0" and not os.path.exists(marker):
        open(marker, "w").close()
        print("RuntimeError: The server socket has failed to listen on any local network "
              f"address. port: {os.environ['MASTER_PORT']}: Address already in use",
              file=sys.stderr, flush=True)
        sys.exit(1)
    print("port", os.environ["MASTER_PORT"], flush=True)
"""


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(180)
def test_a_rendezvous_port_clash_starts_the_ranks_again_on_a_new_port(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", PORT_CLASH)
    run = Experiment(ws, "dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        distributed_job_config=PyTorchConfiguration(process_count=2)))
    details = run.wait_for_completion(timeout=150)
    assert details["status"] == "Completed"
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    assert "is in use; starting the ranks again on a new port" in log


TORCH_ALLREDUCE = CONTRACT + """
    import os
    import torch
    import torch.distributed as dist
    from prefect_mltrain import Run
    dist.init_process_group("gloo")  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from the run
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    print(f"all_reduce={t.item():.0f} world={dist.get_world_size()}", flush=True)
    if dist.get_rank() == 0:
        Run.get_context().log("all_reduce", t.item())
    dist.destroy_process_group()
"""


def torch_environment():
    """torch 2.13.0 CPU (the registry's CPU wheel; a bare `torch` would pull CUDA builds)."""
    from prefect_mltrain import Environment
    from prefect_mltrain.environment import CondaDependencies

    env = Environment("torch-cpu")
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=["torch==2.13.0"])
    return env


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(600)
def test_torch_distributed_gloo_all_reduce_over_two_nodes_of_two(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", TORCH_ALLREDUCE)
    run = Experiment(ws, "dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", environment=torch_environment(),
        distributed_job_config=PyTorchConfiguration(communication_backend="gloo",
                                                    process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=540)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"all_reduce": 10.0}
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    assert all(f"[rank {r}] all_reduce=10 world=4" in log for r in range(4))
    contracts = _contracts(run, tmp_path)
    assert [(c["LOCAL_RANK"], c["NODE_RANK"]) for _, c in sorted(contracts.items())] == [
        ("0", "0"), ("1", "0"), ("0", "1"), ("1", "1")]


HOROVOD_CONTRACT = """
    import os
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED)  # how hvd.init() finds local rank and size
    cross = world.Split(local.Get_rank(), world.Get_rank())  # and cross rank and size
    assert (world.Get_rank(), world.Get_size()) == (int(os.environ["RANK"]),
                                                    int(os.environ["WORLD_SIZE"]))
    assert (local.Get_rank(), local.Get_size()) == (int(os.environ["LOCAL_RANK"]),
                                                    int(os.environ["LOCAL_WORLD_SIZE"]))
    print(f"hvd-contract rank={world.Get_rank()} local={local.Get_rank()}/{local.Get_size()} "
          f"cross={cross.Get_rank()}/{cross.Get_size()}", flush=True)
"""


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(180)
def test_mpi_world_gives_horovod_its_rank_local_rank_and_cross_rank(ws, tmp_path):
    """Horovod itself is user-installed; this is the MPI contract ``hvd.init()`` relies on."""
    write_script(tmp_path / "p", "train.py", HOROVOD_CONTRACT)
    run = Experiment(ws, "dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        distributed_job_config=MpiConfiguration(process_count_per_node=3)))
    assert run.wait_for_completion(timeout=150)["status"] == "Completed"
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    assert all(f"[rank {r}] hvd-contract rank={r} local={r}/3 cross=0/1" in log
               for r in range(3))
