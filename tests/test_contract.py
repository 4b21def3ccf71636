"""One contract, every compute target: the same user stories run on local compute, in a
Docker container, on a Dask cluster and through a work pool's Prefect worker.

Each case submits a script, waits for the run, and inspects what a user sees (status, exit
code, error, log tail, metrics, files) and what is left running afterwards. A target may
skip a case only when the case cannot apply to it, with the reason in the skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BASE_IMAGE, write_script
from test_deployments import finish, mltrain, start_worker

from prefect_mltrain import Experiment, Run, RunFailedError, ScriptRunConfig, Workspace
from prefect_mltrain.compute.process import process_alive

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(300)]

RUN_TIMEOUT = 180  # seconds to wait for a run's end: only so that a broken run cannot hang
STARTED_TIMEOUT = 120  # seconds to wait for a script to report its pids
LEFTOVER_TIMEOUT = 30  # seconds allowed for a run's processes or containers to go away
POOL = "contract-box"


# -- the one internal a user's story does not show -------------------------------------------


def runner_pid(run: Run) -> int:
    """The pid of the process that runs the run's flow, from the run's heartbeat."""
    return run.experiment.workspace.read_json(f"{run._dir}/heartbeat.json")["pid"]


# -- the scripts ----------------------------------------------------------------------------

# Every long script records its pid and its child's in outputs/pids.txt (atomically, so a
# sync never sees half of it) before it sleeps. The child leaves the run's process group
# and session (as a daemon would): stopping the group alone would not stop it.
RECORD_PIDS = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    with open("pids.tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace("pids.tmp", "outputs/pids.txt")
    print("pids", os.getpid(), child.pid, flush=True)
"""

COMPLETES = """
    from prefect_mltrain import Run
    run = Run.get_context()
    for step in range(3):
        run.log("loss", 1.0 / (step + 1), step=step)
    run.log("accuracy", 0.91)
    with open("outputs/model.txt", "w") as f:
        f.write("trained weights")
    print("training done", flush=True)
"""

CRASHES = """
    with open("outputs/partial.txt", "w") as f:
        f.write("half done")
    raise RuntimeError("boom in training")
"""

SLEEPS = RECORD_PIDS + """
    time.sleep(600)
"""

LEAVES_A_CHILD = RECORD_PIDS + """
    print("leaving my child behind", flush=True)
"""

# A daemon the usual way: fork, setsid, fork again; the middle process exits at once, so
# the daemon is in no process group or session of the run's.
ESCAPES = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open("pids.tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace("pids.tmp", "outputs/pids.txt")
            time.sleep(600)
        os._exit(0)
    os.wait()
    while not os.path.exists("outputs/pids.txt"):  # the daemon has left, and said so
        time.sleep(0.05)
    print("a daemon left the group", flush=True)
"""


# -- the targets ----------------------------------------------------------------------------


class Target:
    """Where the contract's runs go, and what of a run is still running there."""

    def __init__(self, name: str, compute, docker=None, pool: str | None = None,
                 dask_address: str | None = None):
        self.name, self.compute, self.docker, self.pool = name, compute, docker, pool
        self.dask_address = dask_address
        self.workers: list[subprocess.Popen] = []
        self.runs: list[Run] = []

    def submit(self, ws: Workspace, folder: Path, body: str, **config) -> Run:
        """Submit ``body`` as train.py; a pooled target gets a worker that runs it once."""
        write_script(folder, "train.py", body)
        run = Experiment(ws, f"contract-{self.name}").submit(ScriptRunConfig(
            source_directory=folder, script="train.py", compute_target=self.compute,
            **config))
        self.runs.append(run)
        if self.pool:
            self.workers.append(start_worker(self.pool))
        return run

    def still_running(self, run: Run, tmp_path: Path) -> list:
        """What of ``run`` still runs: its containers (Docker, whose pids the host cannot
        see), else the processes whose pids the script wrote (every other target runs them
        on this machine: the Dask workers are loopback hosts)."""
        if self.docker is not None:
            from prefect_mltrain.compute.docker import container_exists_for

            return [c.name for c in container_exists_for(run.id, self.docker)]
        return [pid for pid in script_pids(run, tmp_path) if process_alive(pid)]

    def finish_workers(self) -> None:
        for worker in self.workers:
            out = finish(worker)
            print(f"--- worker of {self.pool} ---\n{out[-3000:]}")

    def cancel_unfinished_runs(self) -> None:
        for run in self.runs:
            with contextlib.suppress(Exception):
                if run.get_status() not in ("Completed", "Failed", "Canceled"):
                    run.cancel()
                    run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    def remove_leftovers(self, tmp_path: Path) -> None:
        """Stop what a failing case left running, so that it burdens no later case."""
        for run in self.runs:
            if self.docker is not None:
                from prefect_mltrain.compute.docker import container_exists_for

                for container in container_exists_for(run.id, self.docker):
                    container.remove(force=True)
                continue
            try:
                pids = script_pids(run, tmp_path)
            except (AssertionError, OSError):
                continue
            for pid in pids:
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"train.py" in cmdline or b"time.sleep(600)" in cmdline:
                        os.kill(pid, signal.SIGKILL)
        if self.dask_address:  # a rank task outliving its run holds its worker's thread
            from distributed import Client

            with Client(self.dask_address, timeout=30) as client:
                deadline = time.monotonic() + 120
                while any(client.run(busy_threads).values()) and time.monotonic() < deadline:
                    time.sleep(0.5)


# Tasks a Dask worker is executing (also those whose client has gone); a lambda, because
# Dask ships it to the workers by value and they cannot import this module.
busy_threads = lambda dask_worker: len(dask_worker.active_threads)  # noqa: E731


@pytest.fixture(scope="module")
def contract_pool(prefect_server):
    """A local-type target with a work pool, created through the CLI like a user would."""
    result = mltrain("compute", "create", POOL, "--type", "local", "--json")
    assert result.returncode == 0, result.stderr
    yield POOL
    mltrain("compute", "delete", POOL)


@pytest.fixture(params=["local", "docker", "dask", "pooled"])
def target(request, tmp_path):
    from prefect_mltrain.compute import DaskCompute, DockerCompute

    name = request.param
    if name == "local":
        made = Target(name, "local")
    elif name == "docker":
        engine = request.getfixturevalue("docker_engine")  # skips, saying how, without one
        made = Target(name, DockerCompute(image=BASE_IMAGE, network_mode="host"), docker=engine)
    elif name == "dask":
        address = request.getfixturevalue("dask_cluster")
        made = Target(name, DaskCompute(address=address), dask_address=address)
    else:
        pool = request.getfixturevalue("contract_pool")
        made = Target(name, pool, pool=pool)
    try:
        yield made
    finally:  # after the case's assertions: clean up what a failing case left behind
        made.cancel_unfinished_runs()
        try:
            made.finish_workers()
        finally:
            made.remove_leftovers(tmp_path)


# -- helpers that read like the story -------------------------------------------------------


def script_pids(run: Run, tmp_path: Path) -> list[int]:
    """The pids the script wrote to outputs/pids.txt (its own and its child's)."""
    assert "outputs/pids.txt" in run.get_file_names(), (
        f"the script's outputs/pids.txt is not stored with the run: {run.get_file_names()}")
    path = run.download_file("outputs/pids.txt", tmp_path / f"pids-{time.monotonic_ns()}.txt")
    return [int(p) for p in path.read_text().split()]


def wait_until_started(run: Run) -> None:
    """Until the script's outputs/pids.txt is synced to the run (it is, while it runs)."""
    deadline = time.monotonic() + STARTED_TIMEOUT
    while "outputs/pids.txt" not in run.get_file_names():
        status = run.get_status()
        assert status not in ("Completed", "Failed", "Canceled"), (
            f"the run ended {status} before its script wrote its pids: "
            f"{run.get_details().get('error')}")
        assert time.monotonic() < deadline, (
            f"outputs/pids.txt was not synced within {STARTED_TIMEOUT} s while the run was "
            f"{status}; files so far: {run.get_file_names()}")
        time.sleep(0.3)


def assert_nothing_left_running(target: Target, run: Run, tmp_path: Path) -> None:
    """Nothing of ``run`` runs any more (given up to LEFTOVER_TIMEOUT s to stop)."""
    deadline = time.monotonic() + LEFTOVER_TIMEOUT
    while (left := target.still_running(run, tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], (f"still running {LEFTOVER_TIMEOUT} s after the run ended "
                        f"{run.get_status()}: {left}")


def flow_run_state(details: dict, timeout: float = 30) -> str:
    """The final state of the run's Prefect flow run, which agrees with the run's status (it
    may lag the record by a moment)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(details["flow_run_id"]).state).is_final() \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    return state.type.value


def cancel_from_another_process(run: Run) -> None:
    code = (f"from prefect_mltrain import Workspace, Run; "
            f"Run.get(Workspace({str(run.experiment.workspace.url)!r}), {run.id!r}).cancel()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the contract ---------------------------------------------------------------------------


def test_a_run_completes_with_metrics_and_outputs(target, ws, tmp_path):
    run = target.submit(ws, tmp_path / "proj", COMPLETES)

    details = run.wait_for_completion(timeout=RUN_TIMEOUT)

    assert details["status"] == "Completed" and details["exit_code"] == 0
    assert flow_run_state(details) == "COMPLETED"
    assert run.get_metrics() == {"loss": pytest.approx([1.0, 0.5, 1 / 3]), "accuracy": 0.91}
    model = run.download_file("outputs/model.txt", tmp_path / "model.txt")
    assert model.read_text() == "trained weights"


def test_a_crashing_script_fails_with_exit_code_traceback_and_partial_outputs(
        target, ws, tmp_path):
    run = target.submit(ws, tmp_path / "proj", CRASHES)

    with pytest.raises(RunFailedError, match="boom in training"):
        run.wait_for_completion(timeout=RUN_TIMEOUT)

    details = run.get_details()
    assert details["status"] == "Failed" and details["exit_code"] == 1, details
    assert flow_run_state(details) == "FAILED"
    assert "RuntimeError: boom in training" in details["log_tail"]
    assert "outputs/partial.txt" in run.get_file_names()


def test_a_timeout_cancels_the_run_and_leaves_nothing_running(target, ws, tmp_path):
    run = target.submit(ws, tmp_path / "proj", SLEEPS, max_run_duration_seconds=10)

    details = run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    assert details["status"] == "Canceled", details
    assert "max_run_duration_seconds=10" in details["error"]
    assert details["exit_code"] == 143  # SIGTERM: the same code for a stop on every target
    assert flow_run_state(details) == "CANCELLED"
    assert_nothing_left_running(target, run, tmp_path)


def test_a_cancel_from_another_process_keeps_outputs_and_leaves_nothing_running(
        target, ws, tmp_path):
    run = target.submit(ws, tmp_path / "proj", SLEEPS)
    wait_until_started(run)

    cancel_from_another_process(run)
    details = run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    assert details["status"] == "Canceled", details
    assert details["exit_code"] == 143
    assert flow_run_state(details) == "CANCELLED"
    assert "outputs/pids.txt" in run.get_file_names()
    assert_nothing_left_running(target, run, tmp_path)


def test_a_killed_runner_fails_the_run_and_leaves_nothing_running(target, ws, tmp_path):
    run = target.submit(ws, tmp_path / "proj", SLEEPS)
    wait_until_started(run)

    os.kill(runner_pid(run), signal.SIGKILL)
    details = run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    assert details["status"] == "Failed", details
    assert "runner" in details["error"] and "outputs synced so far are kept" in details["error"]
    assert flow_run_state(details) == "CRASHED"  # Prefect agrees with the record
    assert f"`mltrain runs sync {run.id}` stores them" in details["error"]
    assert_nothing_left_running(target, run, tmp_path)


def test_a_process_that_left_the_runs_group_is_stopped_when_the_run_ends(target, ws,
                                                                        tmp_path):
    run = target.submit(ws, tmp_path / "proj", ESCAPES)

    details = run.wait_for_completion(timeout=RUN_TIMEOUT)

    assert details["status"] == "Completed", details
    if target.docker is None:
        assert script_pids(run, tmp_path), "the daemon was not found: the case proves nothing"
    assert_nothing_left_running(target, run, tmp_path)


def test_a_background_child_is_stopped_when_the_run_ends(target, ws, tmp_path):
    run = target.submit(ws, tmp_path / "proj", LEAVES_A_CHILD)

    details = run.wait_for_completion(timeout=RUN_TIMEOUT)

    assert details["status"] == "Completed", details
    assert "leaving my child behind" in run.download_file(
        "logs/std_log.txt", tmp_path / "log.txt").read_text()
    assert_nothing_left_running(target, run, tmp_path)
