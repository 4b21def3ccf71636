"""The default target: the script runs as a local process tree (a gang of them when
distributed)."""

from __future__ import annotations

from ..distributed import (
    RankPlan,
    free_port,
    job_env,
    mpi_argv,
    plan_ranks,
    rank_env,
    without_mpi_world,
)
from .base import ComputeTarget, Job, LaunchSpec
from .gang import GangJob
from .process import GuardedProcess

LOOPBACK = "127.0.0.1"


class LocalCompute(ComputeTarget):
    """Run on this machine, in the restored snapshot, as its own process group.

    A distributed job's ranks are local processes: through ``mpiexec`` for MPI, else one
    process per rank with the torchrun / ``TF_CONFIG`` contract.

    Example:
        ```python
        ScriptRunConfig(source_directory="proj", script="train.py", compute_target="local")
        ```
    """

    _block_type_name = "Local Compute"
    _block_type_slug = "mltrain-local-compute"
    _description = "Runs prefect-mltrain training scripts as local processes."

    def launch(self, spec: LaunchSpec) -> Job:
        plan = plan_ranks(spec.distributed)
        if plan is None:
            return GuardedProcess(spec.argv, cwd=spec.cwd, env=spec.env)
        return launch_local_ranks(plan, spec)


def launch_local_ranks(plan: RankPlan, spec: LaunchSpec, host: str = LOOPBACK) -> Job:
    """The plan's ranks as processes of this machine (every "node" is this one)."""
    if plan.kind == "mpi":
        env = {**without_mpi_world(spec.env), **job_env(plan, host, free_port(), spec.run_id)}
        return GuardedProcess(mpi_argv(plan, spec.argv), cwd=spec.cwd, env=env)

    def start(port: int) -> dict[int, Job]:
        tf = [f"{host}:{free_port()}" for _ in plan.slots] if plan.kind == "tensorflow" else None
        return {f"rank {slot.rank}": GuardedProcess(spec.argv, cwd=spec.cwd, env={
            **spec.env, **rank_env(plan, slot, master_addr=host, master_port=port,
                                   run_id=spec.run_id, tf_addresses=tf)})
            for slot in plan.slots}

    return GangJob(start, essential={f"rank {r}" for r in plan.essential})
