"""Ranks that live and die together, whatever started them (processes, containers, tasks).

A ``GangJob`` is one ``Job`` made of a job per rank (or per node). It prefixes each member's
output with ``[rank N]``, ends when every essential rank has exited, and on the first
failing rank stops all the others and reports that rank. A rank that could not bind the
rendezvous port is not a failure of the script: the whole gang starts again on a new port.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from ..distributed import FAILURE_MARK, PORT_IN_USE, RankPlan, free_port, mpi_argv
from ..errors import ComputeTargetUnavailableError
from .jobs import Job
from .process import GuardedProcess

PORT_RETRIES = 3
PORT_RETRY_WINDOW = 60.0  # seconds after a start in which a port clash is retried
MPIEXEC_START_SECONDS = 60.0


class GangJob:
    """Members started by ``start(port) -> {label: job}``, labelled ``"rank N"`` (or e.g.
    ``"node N"``); ``self_prefixed`` members print ``[rank N]`` themselves (``mpiexec``
    through the rank launcher). ``essential`` are the members whose successful exit ends
    the job (none: it runs until stopped). With ``retry_port`` a port clash starts every
    member again on a port from ``new_port`` (free on rank 0's host: here by default)."""

    def __init__(self, start: Callable[[int], dict[str, Job]], *, essential: set[str],
                 self_prefixed: frozenset[str] = frozenset(), port: int | None = None,
                 retry_port: bool = True, new_port: Callable[[], int] = free_port):
        self._start, self.essential, self.self_prefixed = start, essential, self_prefixed
        self.retry_port, self._new_port = retry_port, new_port
        self.port = port or new_port()
        self._attempts = 0
        self._pending: list[str] = []
        self._launch()

    def _launch(self) -> None:
        self._attempts += 1
        self._started = time.monotonic()
        self.members = self._start(self.port)
        self.pgid = next((getattr(j, "pgid", None) for j in self.members.values()), None)
        self._recent = {label: deque(maxlen=20) for label in self.members}
        self._exited: dict[str, int] = {}
        self.code: int | None = None

    def _take(self, label: str, lines: list[str]) -> list[str]:
        self._recent[label].extend(lines)
        return lines if label in self.self_prefixed else [f"[{label}] {line}" for line in lines]

    def read_lines(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            out, self._pending = self._pending, []
            for label, job in self.members.items():
                out += self._take(label, job.read_lines(0))
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def poll(self) -> int | None:
        if self.code is not None:
            return self.code
        for label, job in self.members.items():
            if label in self._exited or (code := job.poll()) is None:
                continue
            self._exited[label] = code
            if code == 0:
                continue
            self._pending += self._take(label, job.finish_output(1.0))
            if self._port_clash(label):
                self._pending.append(f"[prefect-mltrain] rendezvous port {self.port} is in "
                                     "use; starting the ranks again on a new port")
                self._stop_all(5.0)
                self.port = self._new_port()
                self._launch()
                return None
            kind, _, number = label.partition(" ")
            self._pending.append(f"[{label}] " + (
                FAILURE_MARK.format(rank=number, code=code) if kind == "rank"
                else f"prefect-mltrain: {label} exited with code {code}"))
            self._stop_all(10.0)
            self.code = code
            return code
        if self.essential and self.essential <= {r for r, c in self._exited.items() if c == 0}:
            self._stop_all(5.0)  # e.g. parameter servers once the chief is done
            self.code = 0
        return self.code

    def _port_clash(self, label: str) -> bool:
        return (self.retry_port and self._attempts <= PORT_RETRIES
                and time.monotonic() - self._started < PORT_RETRY_WINDOW
                and any(m in line for line in self._recent[label] for m in PORT_IN_USE))

    def _stop_all(self, grace: float) -> None:
        """Stop every member at once (in parallel, so the grace is not paid per member)."""
        for label, job in self.members.items():
            if label not in self._exited:
                self._pending += self._take(label, job.read_lines(0))
        threads = [threading.Thread(target=job.terminate, args=(grace,), daemon=True)
                   for job in self.members.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(grace + 30)

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        out, self._pending = self._pending, []
        for label, job in self.members.items():
            out += self._take(label, job.finish_output(timeout / max(1, len(self.members))))
        return out

    def terminate(self, grace: float = 10.0) -> None:
        self._stop_all(grace)
        if self.code is None:
            self.code = next((c for c in self._exited.values() if c), None) or \
                next((j.poll() for j in self.members.values() if j.poll()), 143)

    def close(self) -> None:
        for job in self.members.values():
            job.close()


def mpi_gang(plan: RankPlan, argv: list[str], hosts: list[str], cwd: str,
             env: dict[str, str], start_node: Callable[[int, list[str]], Job]) -> GangJob:
    """An MPI job whose nodes are elsewhere (containers, Dask workers): ``mpiexec`` here
    with the manual launcher, and ``start_node(n, proxy_argv)`` for the proxy command it
    asks to be started on its n-th host (``hosts`` has one per node; nodes side by side on
    one host share a proxy). The ranks form their own MPI world; the job ends with
    mpiexec, which prints their ``[rank N]`` lines."""
    mpiexec = GuardedProcess(mpi_argv(plan, argv, hosts=hosts, manual=True), cwd=cwd, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + MPIEXEC_START_SECONDS
    while "HYDRA_LAUNCH_END" not in lines:
        if mpiexec.poll() is not None or time.monotonic() > deadline:
            out = "\n".join(lines + mpiexec.finish_output(1))
            mpiexec.terminate(0)
            raise ComputeTargetUnavailableError(f"mpiexec did not start: {out[-2000:]}")
        lines += [line.strip() for line in mpiexec.read_lines(0.25)]
    proxies = [line.split(":", 1)[1].split() for line in lines if line.startswith("HYDRA_LAUNCH:")]
    members: dict[str, Job] = {"mpiexec": mpiexec}
    try:
        for n, proxy in enumerate(proxies):
            members[f"node {n}"] = start_node(n, proxy)
    except BaseException:
        for job in members.values():
            job.terminate(0)
        raise
    return GangJob(lambda port: members, essential={"mpiexec"},
                   self_prefixed=frozenset({"mpiexec"}), port=1, retry_port=False)
