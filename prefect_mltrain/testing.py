"""Real clusters and helper processes for tests of distributed runs: this package's own tests
and benchmarks use them, and so can yours.

- ``loopback_cluster``: a Dask scheduler and ``workers_per_host`` worker processes bound to
  each of 127.0.0.2, 127.0.0.3, … — several "hosts" on one machine, no network needed;
- ``dask_mpi_cluster``: ``mpiexec -n N dask-mpi`` (rank 0 the scheduler, the others workers);
- ``start_group`` / ``stop_groups``: long-lived helper processes (a worker, a server) in their
  own process groups, stopped with everything they started.

The workers inherit this process's environment: with ``MLTRAIN_HOME`` set, they find a run's
environment already built. Every wait is bounded; a cluster that does not come up raises.

Example::

    from prefect_mltrain import Experiment, ScriptRunConfig
    from prefect_mltrain.compute import DaskCompute
    from prefect_mltrain.testing import loopback_cluster

    def test_two_hosts(ws, tmp_path):
        with loopback_cluster(tmp_path / "dask", hosts=2, workers_per_host=2) as address:
            run = Experiment(ws, "t").submit(ScriptRunConfig(
                source_directory="proj", script="train.py",
                compute_target=DaskCompute(address=address)))
            assert run.wait_for_completion(timeout=300)["status"] == "Completed"

Imports only the standard library until a cluster is started (``distributed`` then).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["dask_mpi_cluster", "loopback_cluster", "start_group", "stop_groups"]

BIN = Path(sys.executable).parent  # this environment's `dask`, `dask-mpi`


def start_group(argv: list[str], log: Path,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a long-lived helper process in its own process group, its output to ``log``.

    Args:
        argv: The command line.
        log: File that receives the process's stdout and stderr (overwritten).
        env: Its environment (default: this process's).

    Returns:
        The process; stop it (and whatever it started) with ``stop_groups([proc])``.
    """
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_groups(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """Terminate the process groups of ``procs``; kill what is left after ``grace`` seconds."""
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
def loopback_cluster(folder: Path, hosts: int = 2, workers_per_host: int = 2) -> Iterator[str]:
    """A real Dask cluster whose "hosts" are loopback addresses: a scheduler on 127.0.0.1 and
    one ``dask worker --nworkers workers_per_host --nthreads 1`` on each of 127.0.0.2, ….

    Args:
        folder: Logs and the workers' local directories (created).
        hosts: How many hosts.
        workers_per_host: Worker processes per host.

    Yields:
        The scheduler's address, once every worker has joined (at most 90 s).
    """
    from distributed import Client

    from prefect_mltrain.distributed import free_port

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"
    procs = [start_group([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                          "--port", str(port), "--no-dashboard"], folder / "scheduler.log")]
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
def dask_mpi_cluster(folder: Path, processes: int = 3) -> Iterator[str]:
    """``mpiexec -n processes dask-mpi``: rank 0 the scheduler, the other ranks workers.

    Args:
        folder: The scheduler file, the log and the workers' local directory (created).
        processes: MPI ranks in all (one scheduler, ``processes - 1`` workers).

    Yields:
        The scheduler file's path, once every worker has joined (at most 60 s each for the
        scheduler and the workers).
    """
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
