"""Where a Dask run's ranks go: a node is a group of workers on one host.

Workers stand for slots and their addresses for hosts. Nodes take distinct hosts while the
cluster has them; with fewer hosts than nodes, nodes share a host (each keeps its own
ranks, LOCAL_RANK from 0), unless the target asks for one node per host. Nodes sharing a
host are numbered one after the other, so an MPI job starts their ranks through one
proxy. TensorFlow tasks and a single process go on any worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import zip_longest

from ..distributed import RankPlan
from ..errors import ComputeTargetUnavailableError, RunCanceledError
from .base import Stop, never


@dataclass
class Placement:
    """A worker per rank (``workers[rank]``) and the host of each node."""

    workers: list[str]
    hosts: list[str]  # hosts[node_rank]

    def shared(self) -> dict[str, list[int]]:
        """Hosts holding more than one node, with those nodes' ranks."""
        nodes: dict[str, list[int]] = {}
        for node, host in enumerate(self.hosts):
            nodes.setdefault(host, []).append(node)
        return {h: ns for h, ns in nodes.items() if len(ns) > 1}


def host_of(worker: str) -> str:
    return worker.split("://")[-1].rsplit(":", 1)[0]


def survey(client) -> dict[str, list[str]]:
    """The cluster's workers by host, idle workers first."""
    busy = {w: len(keys) for w, keys in client.processing().items()}
    workers = client.scheduler_info(n_workers=-1)["workers"]
    hosts: dict[str, list[str]] = {}
    for address in sorted(workers, key=lambda w: (busy.get(w, 0), w)):
        hosts.setdefault(workers[address].get("host") or host_of(address), []).append(address)
    return hosts


def fit(hosts: dict[str, list[str]], plan: RankPlan,
        one_node_per_host: bool = False) -> Placement | None:
    """The plan's ranks on these workers, or None when they cannot hold it."""
    if plan.kind in ("tensorflow", "single"):  # tasks go anywhere, one per worker
        anywhere = [w for ws in zip_longest(*hosts.values()) for w in ws if w]  # hosts in turn
        if len(anywhere) < plan.world_size:
            return None
        chosen = anywhere[:plan.world_size]
        return Placement(chosen, [host_of(w) for w in chosen])
    per = plan.per_node
    groups = {h: [ws[i:i + per] for i in range(0, len(ws) - per + 1, per)]
              for h, ws in hosts.items()}
    rounds = 1 if one_node_per_host else max((len(g) for g in groups.values()), default=0)
    picked = [(h, g[r]) for r in range(rounds) for h, g in groups.items() if r < len(g)]
    picked = picked[:plan.node_count]  # distinct hosts first, then a second node on each …
    if len(picked) < plan.node_count:
        return None
    order = list(dict.fromkeys(h for h, _ in picked))
    nodes = sorted(picked, key=lambda p: order.index(p[0]))  # a host's nodes side by side
    return Placement([nodes[s.node_rank][1][s.local_rank] for s in plan.slots],
                     [h for h, _ in nodes])


def capacity(hosts: dict[str, list[str]], plan: RankPlan, one_node_per_host: bool) -> str:
    """What the job needs and what the cluster has, in words."""
    have = ", ".join(f"{h}: {len(ws)}" for h, ws in hosts.items()) or "no workers"
    if plan.kind in ("tensorflow", "single"):
        need = f"{plan.world_size} worker(s)"
    elif one_node_per_host:
        need = (f"{plan.node_count} node(s) × {plan.per_node} process(es) per node on "
                f"{plan.node_count} distinct host(s) (one_node_per_host=True)")
    else:
        need = (f"{plan.node_count} node(s) × {plan.per_node} process(es) per node: "
                f"{plan.world_size} workers, {plan.per_node} of them on one host for each node")
    return f"{plan.describe()} need {need}; the cluster has {have} (workers per host)"


def place(client, plan: RankPlan, *, wait: float, where: str, one_node_per_host: bool = False,
          stop: Stop = never) -> Placement:
    """The plan's ranks on the cluster's workers, idle workers first; fails before anything
    starts when the cluster cannot hold the job after waiting ``wait`` seconds for workers
    (a cancel ends the wait)."""
    deadline = time.monotonic() + wait
    while True:
        hosts = survey(client)
        placement = fit(hosts, plan, one_node_per_host)
        if placement:
            return placement
        if time.monotonic() >= deadline:
            fix = ("Add hosts, or set one_node_per_host=False, or lower node_count"
                   if one_node_per_host and plan.kind not in ("tensorflow", "single")
                   else "Add workers, or lower node_count / process counts")
            raise ComputeTargetUnavailableError(
                f"{capacity(hosts, plan, one_node_per_host)} at {where}. {fix}")
        if stop():
            raise RunCanceledError(f"waiting for workers of {where}: the run was canceled")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
