"""One launch contract for every compute target: plan the ranks once, then launch them.

``plan_ranks`` turns a distributed configuration into slots (rank, node rank, local rank,
TensorFlow role); ``rank_env`` gives a slot the variables scripts look for — torchrun's
(``MASTER_ADDR`` … ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``), Azure ML's
(``NODE_RANK``, ``AZ_BATCH_MASTER_NODE``, ``AZ_BATCHAI_MPI_MASTER_NODE``) and
``TF_CONFIG``. MPI ranks are started by a real ``mpiexec``; ``compute/rank.py`` maps
MPI's own variables onto the same contract inside each rank.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby
from typing import Any

from .errors import ConfigurationError

# A line a rank's launcher prints when the rank fails; the runner stops the whole gang on the
# first one and reports that rank.
FAILURE_MARK = "prefect-mltrain: rank {rank} exited with code {code}"
FAILURE_RE = re.compile(r"^\[rank (\d+)\] prefect-mltrain: rank \d+ exited with code (-?\d+)$")
PREFIX_RE = re.compile(r"^\[rank (\d+)\] ")
# Started as a file, without site: it imports nothing from the package (see its docstring).
RANK_LAUNCHER = os.path.join(os.path.dirname(__file__), "compute", "rank.py")
# Output of a launcher that could not bind its rendezvous port: retried with a new port.
PORT_IN_USE = ("Address already in use", "EADDRINUSE", "address already in use")
# Variables of an enclosing MPI world (e.g. a dask-mpi worker): never passed to our ranks.
MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPI_LOCAL", "MPIR_", "OMPI_",
                    "I_MPI_", "MPICH_")


@dataclass(frozen=True)
class Slot:
    """One rank: its global rank, its node and place on the node, its TensorFlow role."""

    rank: int
    node_rank: int
    local_rank: int
    role: str = "worker"  # "worker", or for TensorFlow with parameter servers "chief"/"ps"
    index: int = 0  # index of the task within its role (TensorFlow)


@dataclass
class RankPlan:
    """The ranks of a job, placed on ``node_count`` nodes of ``per_node`` slots each."""

    kind: str  # "mpi" | "pytorch" | "tensorflow"
    node_count: int
    per_node: int
    slots: list[Slot]
    backend: str | None = None

    @property
    def world_size(self) -> int:
        return len(self.slots)

    @property
    def essential(self) -> set[int]:
        """Ranks whose exit ends the job: the chief when there are parameter servers (they
        never exit on their own), else every rank."""
        if any(s.role == "ps" for s in self.slots):
            return {s.rank for s in self.slots if s.role == "chief"}
        return {s.rank for s in self.slots}

    def describe(self) -> str:
        return (f"{self.world_size} ranks ({self.kind}) on {self.node_count} node(s) × "
                f"{self.per_node}")


def plan_ranks(config: Any) -> RankPlan | None:
    """The rank plan of a distributed configuration (model or its JSON form); None for one
    process."""
    if config is None:
        return None
    data = config if isinstance(config, dict) else config.model_dump()
    kind = data["kind"]
    if kind == "mpi":
        nodes, per_node = data.get("node_count") or 1, data.get("process_count_per_node") or 1
    elif kind == "pytorch":
        nodes = data.get("node_count") or 1
        world = data.get("process_count") or nodes
        if world % nodes:
            raise ConfigurationError(
                f"process_count={world} cannot be spread evenly over node_count={nodes}: "
                "make process_count a multiple of node_count")
        per_node = world // nodes
    elif kind == "tensorflow":
        workers, ps = data.get("worker_count") or 1, data.get("parameter_server_count") or 0
        roles = ([("chief", 0)] + [("worker", i) for i in range(workers - 1)]
                 if ps else [("worker", i) for i in range(workers)])
        roles += [("ps", i) for i in range(ps)]
        slots = [Slot(rank, rank, 0, role, index) for rank, (role, index) in enumerate(roles)]
        return RankPlan(kind, len(slots), 1, slots)  # a task per node: TF places tasks itself
    else:
        raise ConfigurationError(f"unknown distributed job kind {kind!r}")
    slots = [Slot(node * per_node + local, node, local)
             for node in range(nodes) for local in range(per_node)]
    return RankPlan(kind, nodes, per_node, slots, data.get("communication_backend"))


def free_port(host: str = "") -> int:
    """A TCP port that is free on this machine now (a race is caught by the retry)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def job_env(plan: RankPlan, master_addr: str, master_port: int, run_id: str) -> dict[str, str]:
    """Variables every rank of the job shares."""
    env = {
        "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(plan.world_size), "LOCAL_WORLD_SIZE": str(plan.per_node),
        "GROUP_WORLD_SIZE": str(plan.node_count), "ROLE_WORLD_SIZE": str(plan.world_size),
        "MLTRAIN_NODE_COUNT": str(plan.node_count),
        "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "AZ_BATCH_MASTER_NODE": f"{master_addr}:{master_port}",
        "AZ_BATCHAI_MPI_MASTER_NODE": master_addr,
    }
    if plan.per_node > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = "1"  # as torchrun: ranks sharing a node don't oversubscribe
    return env


def slot_env(slot: Slot, per_node: int) -> dict[str, str]:
    """Variables of one rank."""
    return {"RANK": str(slot.rank), "LOCAL_RANK": str(slot.local_rank),
            "NODE_RANK": str(slot.node_rank), "GROUP_RANK": str(slot.node_rank),
            "ROLE_RANK": str(slot.rank), "ROLE_NAME": slot.role,
            "LOCAL_WORLD_SIZE": str(per_node)}


def tf_config(plan: RankPlan, addresses: list[str], slot: Slot) -> str:
    """``TF_CONFIG`` for ``slot``; ``addresses[rank]`` is ``host:port`` of each task."""
    cluster: dict[str, list[str]] = {}
    for s in plan.slots:
        cluster.setdefault(s.role, []).append(addresses[s.rank])
    return json.dumps({"cluster": cluster, "task": {"type": slot.role, "index": slot.index}})


def rank_env(plan: RankPlan, slot: Slot, *, master_addr: str, master_port: int, run_id: str,
             tf_addresses: list[str] | None = None) -> dict[str, str]:
    """Everything one rank of a non-MPI job gets."""
    env = {**job_env(plan, master_addr, master_port, run_id), **slot_env(slot, plan.per_node)}
    if plan.kind == "tensorflow":
        env["TF_CONFIG"] = tf_config(plan, tf_addresses or [], slot)
    return env


def without_mpi_world(env: dict[str, str]) -> dict[str, str]:
    """``env`` minus the variables of an enclosing MPI world, so our ranks start their own."""
    return {k: v for k, v in env.items() if not k.startswith(MPI_ENV_PREFIXES)}


# A process that holds a known buffer, and one that reads it with process_vm_readv: the
# cross-memory attach (CMA) MPICH uses between ranks of a node, tried between two siblings,
# as ranks are. An unprivileged container (no SYS_PTRACE under Docker's default seccomp
# profile) or Yama's ptrace_scope=1 refuses it.
_HOLDER = ("import ctypes, sys; b = ctypes.create_string_buffer(b'mltrain'); "
           "print(ctypes.addressof(b), flush=True); sys.stdin.read()")
_READER = """
import ctypes, sys
class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(7)
local, remote = IOVec(ctypes.addressof(buf), 7), IOVec(int(sys.argv[2]), 7)
read = ctypes.CDLL(None, use_errno=True).process_vm_readv
n = read(int(sys.argv[1]), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
sys.exit(0 if n == 7 and buf.raw == b"mltrain" else 1)
"""


@lru_cache(maxsize=1)
def cross_memory_attach() -> bool:
    """Whether processes of this machine may read each other's memory (CMA)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        address = int(holder.stdout.readline())
        return subprocess.run([sys.executable, "-c", _READER, str(holder.pid), str(address)],
                              timeout=30).returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False
    finally:
        holder.kill()
        holder.wait()


def mpi_node_env() -> dict[str, str]:
    """What MPICH needs on this machine: without cross-memory attach, ranks of one node
    copy through shared memory instead (else MPI_Init fails: process_vm_readv, errno 1)."""
    return {} if cross_memory_attach() else {"MPIR_CVAR_CH4_CMA_ENABLE": "0"}


def mpiexec() -> str:
    """The ``mpiexec`` next to this interpreter (the ``mpich`` wheel), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    import shutil

    found = shutil.which("mpiexec")
    if not found:
        raise ConfigurationError("MPI jobs need mpiexec: `pip install mpich` (or install an "
                                 "MPI) where the runs are started")
    return found


def mpi_argv(plan: RankPlan, argv: list[str], hosts: list[str] | None = None,
             manual: bool = False) -> list[str]:
    """``mpiexec`` starting ``argv`` as the plan's ranks through the rank launcher.

    ``hosts`` (one per node) places ``per_node`` ranks on each; nodes that share a host
    (side by side in ``hosts``) are one MPI host with their ranks together, as mpiexec
    would merge them anyway (the rank launcher still numbers ``LOCAL_RANK`` per node).
    ``manual`` makes mpiexec print its proxy commands, one per host, for the target to
    start (how ranks reach Dask workers and containers), and pass the proxies'
    environment rather than its own.
    """
    cmd = [mpiexec(), "-n", str(plan.world_size)]
    if hosts:
        cmd += ["-hosts", ",".join(f"{h}:{len(list(nodes)) * plan.per_node}"
                                   for h, nodes in groupby(hosts))]
    else:
        cmd += ["-ppn", str(plan.per_node)]
    if manual:  # the nodes' folders differ from ours: the rank launcher moves into them
        cmd += ["-launcher", "manual", "-genvnone", "-wdir", "/"]
        return [*cmd, "python", "-m", "prefect_mltrain.compute.rank", "--", *argv]
    return [*cmd, sys.executable, "-S", "-E", RANK_LAUNCHER, "--", *argv]

