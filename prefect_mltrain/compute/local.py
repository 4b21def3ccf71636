"""The default target: the script runs on this machine as a local process tree (a gang of
them when distributed), in a virtualenv built here."""

from __future__ import annotations

from ..distributed import (
    free_port,
    job_env,
    mpi_argv,
    mpi_node_env,
    plan_ranks,
    rank_env,
    without_mpi_world,
)
from ..environment import Environment
from ..environment_build import build_environment
from .base import ComputeTarget, LaunchSpec, OnLine, Prepared, Stop, never
from .gang import GangJob
from .jobs import Job, script_env
from .process import GuardedProcess
from .spark_submit import SparkJob, find_java, spark_home

LOOPBACK = "127.0.0.1"


class LocalCompute(ComputeTarget):
    """Run on this machine, in the restored snapshot, as its own process group.

    A distributed job's ranks are local processes: through ``mpiexec`` for MPI, else one
    process per rank with the torchrun / ``TF_CONFIG`` contract. A ``framework="pyspark"``
    script runs through ``spark-submit`` on a ``local[*]`` master.

    Example:
        ```python
        ScriptRunConfig(source_directory="proj", script="train.py", compute_target="local")
        ```
    """

    _block_type_name = "Local Compute"
    _block_type_slug = "mltrain-local-compute"
    _description = "Runs prefect-mltrain training scripts as local processes."

    def check_framework(self, framework: str) -> None:
        if framework == "pyspark":  # spark-submit and its Java, before anything is built
            spark_home()
            find_java()

    def prepare(self, environment: Environment | None, on_line: OnLine,
                stop: Stop = never) -> Prepared:
        if environment and environment.docker.enabled:
            on_line("docker.enabled is ignored on local compute: the script runs on this "
                    "machine in its environment's virtualenv; submit to a DockerCompute "
                    "target to run it in a container")
        spec = environment.build_spec() if environment else None
        built = build_environment(spec, on_line=on_line, stop=stop)
        return Prepared(built.interpreter, record={
            "name": environment.name if environment else "default", **built.record()})

    def launch(self, spec: LaunchSpec) -> Job:
        if spec.config.framework == "pyspark":
            return SparkJob(spec, "local[*]", spec.config.spark.configuration)
        env = script_env(spec.env, spec.prepared.interpreter)
        plan = plan_ranks(spec.distributed)
        if plan is None:
            return GuardedProcess(spec.argv, cwd=spec.cwd, env=env)
        if plan.kind == "mpi":
            env = {**without_mpi_world(env), **job_env(plan, LOOPBACK, free_port(), spec.run_id),
                   **mpi_node_env()}
            return GuardedProcess(mpi_argv(plan, spec.argv), cwd=spec.cwd, env=env)

        def start(port: int) -> dict[str, Job]:
            tf = [f"{LOOPBACK}:{free_port()}" for _ in plan.slots] \
                if plan.kind == "tensorflow" else None
            return {f"rank {slot.rank}": GuardedProcess(spec.argv, cwd=spec.cwd, env={
                **env, **rank_env(plan, slot, master_addr=LOOPBACK, master_port=port,
                                  run_id=spec.run_id, tf_addresses=tf)})
                for slot in plan.slots}

        return GangJob(start, essential={f"rank {r}" for r in plan.essential})
