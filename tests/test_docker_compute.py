"""Runs on the Docker target with a real engine (skips with a reason when there is none).

Crash, timeout, cancel and a killed runner are the contract every target keeps:
``test_contract.py`` runs them here too."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BASE_IMAGE, write_script

import prefect_mltrain
from prefect_mltrain import (
    Environment,
    Experiment,
    MpiConfiguration,
    PyTorchConfiguration,
    ScriptRunConfig,
)
from prefect_mltrain.compute import DockerCompute
from prefect_mltrain.compute.docker import container_exists_for

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(300)]

TRAIN = """
    import os, sys
    from prefect_mltrain import Run
    run = Run.get_context()
    run.log("in_container", os.path.exists("/.dockerenv") or os.getcwd() == "/mltrain/src")
    run.log("cwd", os.getcwd())
    open("outputs/model.txt", "w").write("from the container")
    print("hello from", sys.executable)
"""


@pytest.fixture
def target(docker_engine):
    return DockerCompute(image=BASE_IMAGE, network_mode="host")


def test_container_run_completes_with_metrics_outputs_and_log(ws, tmp_path, target,
                                                            docker_engine):
    write_script(tmp_path / "p", "train.py", TRAIN)
    run = Experiment(ws, "docker").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target))
    details = run.wait_for_completion(timeout=240)
    assert details["status"] == "Completed" and details["exit_code"] == 0
    assert run.get_metrics() == {"in_container": True, "cwd": "/mltrain/src"}
    assert run.download_file("outputs/model.txt", tmp_path / "m").read_text() == \
        "from the container"
    log = run.download_file("logs/std_log.txt", tmp_path / "l").read_text()
    assert "hello from /opt/mltrain/venv/bin/python" in log
    assert details["environment_build"]["image"].startswith("mltrain-env:")
    assert details["compute_target"]["block_type_slug"] == "mltrain-docker-compute"
    assert container_exists_for(run.id, docker_engine) == []


def test_environment_packages_are_installed_in_the_image(ws, tmp_path, target):
    write_script(tmp_path / "p", "train.py", """
        import six
        from prefect_mltrain import Run
        Run.get_context().log("six", six.__version__)
    """)
    env = Environment("with-six")
    env.python.conda_dependencies.add_pip_package("six==1.16.0")
    run = Experiment(ws, "docker-env").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target,
        environment=env))
    details = run.wait_for_completion(timeout=280)
    assert run.get_metrics() == {"six": "1.16.0"}
    assert "six==1.16.0" in details["environment_build"]["lock"]
    build_log = run.download_file("logs/environment_build.log", tmp_path / "b").read_text()
    assert details["environment_build"]["image"] in build_log


def test_two_concurrent_container_runs(ws, tmp_path, target):
    write_script(tmp_path / "p", "train.py", TRAIN)
    exp = Experiment(ws, "docker-two")
    runs = [exp.submit(ScriptRunConfig(source_directory=tmp_path / "p", script="train.py",
                                       compute_target=target)) for _ in range(2)]
    assert [r.wait_for_completion(timeout=240)["status"] for r in runs] == ["Completed"] * 2


def test_saved_target_is_used_by_name(ws, tmp_path, target):
    target.save("test-box", overwrite=True)
    loaded = DockerCompute.load("test-box")
    assert loaded.image == BASE_IMAGE and loaded.network_mode == "host"
    write_script(tmp_path / "p", "train.py", TRAIN)
    run = Experiment(ws, "docker-named").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target="test-box"))
    details = run.wait_for_completion(timeout=240)
    assert details["status"] == "Completed"
    assert details["compute_target"] == "test-box"


def test_unreachable_engine_fails_in_preparing_naming_the_address(ws, tmp_path):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    target = DockerCompute(base_url="tcp://127.0.0.1:9")
    run = Experiment(ws, "docker-down").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target))
    details = run.wait_for_completion(raise_on_error=False, timeout=120)
    assert details["status"] == "Failed"
    assert "tcp://127.0.0.1:9" in details["error"] and "Start the engine" in details["error"]
    assert [h["status"] for h in details["status_history"]][-2:] == ["Preparing", "Failed"]


# -- distributed: a container per node ----------------------------------------------------------


def test_pytorch_contract_with_a_container_per_node(ws, tmp_path, target, docker_engine):
    from test_distributed import CONTRACT, _contracts

    write_script(tmp_path / "p", "train.py", CONTRACT + "    print('node up', flush=True)\n")
    run = Experiment(ws, "docker-dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target,
        distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=240)
    assert details["status"] == "Completed", details
    contracts = _contracts(run, tmp_path)
    assert [(c["RANK"], c["NODE_RANK"], c["LOCAL_RANK"], c["WORLD_SIZE"]) for _, c in
            sorted(contracts.items())] == [("0", "0", "0", "4"), ("1", "0", "1", "4"),
                                           ("2", "1", "0", "4"), ("3", "1", "1", "4")]
    assert len({c["MASTER_PORT"] for c in contracts.values()}) == 1
    log = run.download_file("logs/std_log_rank3.txt", tmp_path / "l").read_text()
    assert "node up" in log
    assert container_exists_for(run.id, docker_engine) == []


def test_failing_rank_in_one_container_stops_the_other_node(ws, tmp_path, target,
                                                            docker_engine):
    from test_distributed import FAILING_RANK

    write_script(tmp_path / "p", "train.py", FAILING_RANK)
    run = Experiment(ws, "docker-dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target,
        distributed_job_config=PyTorchConfiguration(process_count=4, node_count=2)))
    details = run.wait_for_completion(timeout=240, raise_on_error=False)
    assert details["status"] == "Failed" and details["exit_code"] == 3
    assert "rank 1 exited with code 3" in details["error"]
    assert "rank one gives up: bad shard" in details["log_tail"]
    assert container_exists_for(run.id, docker_engine) == []


def test_mpi_job_with_node_proxies_in_containers(ws, tmp_path, target, docker_engine):
    from test_distributed import MPI_ALLREDUCE

    write_script(tmp_path / "p", "train.py", MPI_ALLREDUCE)
    env = Environment("mpi")
    for package in ("mpi4py==4.1.2", "mpich==5.0.2"):
        env.python.conda_dependencies.add_pip_package(package)
    run = Experiment(ws, "docker-dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target,
        environment=env,
        distributed_job_config=MpiConfiguration(process_count_per_node=2, node_count=2)))
    details = run.wait_for_completion(timeout=280)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"allreduce": 10}
    assert container_exists_for(run.id, docker_engine) == []


def test_mpi_ranks_sharing_a_container_work_without_ptrace(ws, tmp_path, target,
                                                          docker_engine):
    """Two ranks in one unprivileged container (no SYS_PTRACE: process_vm_readv is refused)
    talk through shared memory: every rank is told not to use cross-memory attach."""
    write_script(tmp_path / "p", "train.py", """
        import os
        from mpi4py import MPI
        from prefect_mltrain import Run
        comm = MPI.COMM_WORLD
        payload = comm.bcast(b"x" * 200_000 if comm.Get_rank() == 0 else None, root=0)
        told = comm.gather(os.environ.get("MPIR_CVAR_CH4_CMA_ENABLE"), root=0)
        if comm.Get_rank() == 0:
            Run.get_context().log("received", len(payload))
            Run.get_context().log_list("cma_enable", told)
    """)
    env = Environment("mpi")
    for package in ("mpi4py==4.1.2", "mpich==5.0.2"):
        env.python.conda_dependencies.add_pip_package(package)
    run = Experiment(ws, "docker-dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py", compute_target=target,
        environment=env,
        distributed_job_config=MpiConfiguration(process_count_per_node=2, node_count=1)))
    details = run.wait_for_completion(timeout=280, raise_on_error=False)
    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"received": 200_000, "cma_enable": ["0", "0"]}


def test_the_launcher_sees_that_a_container_refuses_cross_memory_attach(docker_engine):
    """Where local or Dask ranks run in such a container, the launcher tells them so."""
    package = str(Path(prefect_mltrain.__file__).parent)
    out = docker_engine.containers.run(
        BASE_IMAGE, ["python3", "-c", "import sys; sys.path.insert(0, '/opt/lib'); "
                     "from prefect_mltrain.distributed import mpi_node_env; print(mpi_node_env())"],
        remove=True, network_mode="host",
        volumes={package: {"bind": "/opt/lib/prefect_mltrain", "mode": "ro"}})
    assert out.decode().strip() == "{'MPIR_CVAR_CH4_CMA_ENABLE': '0'}"


def test_distributed_jobs_need_host_networking(ws, tmp_path, docker_engine):
    write_script(tmp_path / "p", "train.py", "print('never')\n")
    run = Experiment(ws, "docker-dist").submit(ScriptRunConfig(
        source_directory=tmp_path / "p", script="train.py",
        compute_target=DockerCompute(image=BASE_IMAGE),
        distributed_job_config=PyTorchConfiguration(process_count=2)))
    details = run.wait_for_completion(timeout=120, raise_on_error=False)
    assert details["status"] == "Failed" and "network_mode='host'" in details["error"]
