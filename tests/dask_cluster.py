"""A real Dask cluster on loopback addresses standing in for hosts: a scheduler and
``workers_per_host`` worker processes bound to each of 127.0.0.2, 127.0.0.3, …

Used by the tests and by ``benchmarks/run.py``. The workers inherit this process's
environment (with MLTRAIN_HOME, they find a run's environment already built)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def start_group(argv: list[str], log: Path,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    """A long-lived helper process in its own process group, its output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_groups(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """Terminate the process groups of ``procs``; kill what is left after ``grace`` s."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def loopback_cluster(folder: Path, hosts: int = 2, workers_per_host: int = 2):
    from distributed import Client

    from prefect_mltrain.distributed import free_port

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"
    procs = [start_group([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--no-dashboard"], folder / "scheduler.log")]
    try:
        for h in range(hosts):
            procs.append(start_group([
                str(BIN / "dask"), "worker", address, "--host", f"127.0.0.{h + 2}",
                "--nworkers", str(workers_per_host), "--nthreads", "1", "--no-dashboard",
                "--local-directory", str(folder / f"host{h + 2}")], folder / f"host{h + 2}.log"))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(hosts * workers_per_host, timeout=90)
        yield address
    finally:
        stop_groups(procs)


@contextlib.contextmanager
def dask_mpi_cluster(folder: Path, processes: int = 3):
    """``mpiexec -n N dask-mpi``: rank 0 the scheduler, the other ranks workers."""
    from distributed import Client

    from prefect_mltrain.distributed import mpiexec

    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    proc = start_group([mpiexec(), "-n", str(processes), str(BIN / "dask-mpi"),
                   "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                   "--worker-class", "distributed.Worker",
                   "--no-dashboard", "--interface", "lo",
                   "--local-directory", str(folder / "work")], folder / "dask-mpi.log")
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "dask-mpi.log").read_text()[-3000:])
            time.sleep(0.2)
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(processes - 1, timeout=60)
        yield str(scheduler_file)
    finally:
        stop_groups([proc])
