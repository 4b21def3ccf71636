"""Compute targets as Prefect work pools: one block, one pool and one deployment per name.

Every function here talks to the configured Prefect API, else to the embedded server.

``create_target("gpu-box", DockerCompute(...))`` saves the target's block (settings and
secrets), creates or updates the work pool "gpu-box" (built-in ``process`` type, a base
job template generated from the target) and deploys the ``submit-run`` flow to it as
``submit-run/gpu-box``. A worker started on the machine that owns the target
(``prefect worker start --pool gpu-box``) then runs every run sent there: from the UI,
``prefect deployment run``, or ``Experiment.submit`` with ``compute_target="gpu-box"``.
"""

from __future__ import annotations

import shlex
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from .compute.base import ComputeTarget
from .compute.registry import BUILTIN, target_classes
from .errors import ComputeTargetUnavailableError, ConfigurationError
from .layout import check_name
from .prefect_api import deployment_name
from .server import using_server


def base_job_template(name: str, target: ComputeTarget,
                      python: str | None = None) -> dict[str, Any]:
    """Prefect's process template, with defaults that tie the pool's runs to ``target``.

    Only names go in: settings and secrets stay in the block, which the flow loads. With
    ``python`` (the workers' interpreter) the worker starts ``python -m prefect.engine``
    itself instead of a supervisor process that then starts it: ~3 s less per run
    (``benchmarks/README.md``, f).
    """
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    props = template["variables"]["properties"]
    slug = target.get_block_type_slug()
    props["env"]["default"] = {"MLTRAIN_COMPUTE_TARGET": f"{slug}/{name}"}
    props["labels"]["default"] = {"mltrain.compute-target": name, "mltrain.target-type": slug}
    props["name"]["default"] = f"mltrain-{name}"
    if python:
        props["command"]["default"] = shlex.join([python, "-m", "prefect.engine"])
    return template


@using_server()
def create_target(name: str, target: ComputeTarget, concurrency_limit: int | None = None,
                  description: str | None = None, python: str | None = None) -> dict[str, Any]:
    """Save ``target`` as ``name``, and create (or update) its work pool and deployment.

    Idempotent: running it again with new settings updates all three. ``python``: the
    path of the Python (with prefect-mltrain) that the pool's workers run, for a faster
    start of every run; it must exist on every worker's machine.
    """
    check_name(name, "compute target name")
    if name == BUILTIN:
        raise ConfigurationError(
            "'local' is the built-in target (the machine the run's flow runs on); "
            "give this target another name, e.g. 'cpu-box'")
    block_id = target.save(name, overwrite=True)
    template = base_job_template(name, target, python)
    description = description or f"prefect-mltrain compute target {name!r} ({type(target).__name__})"
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            client.update_work_pool(name, WorkPoolUpdate(
                base_job_template=template, concurrency_limit=concurrency_limit,
                description=description))
            created = False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", base_job_template=template,
                concurrency_limit=concurrency_limit, description=description))
            created = True
    deployment_id = _deploy(name)
    return {"name": name, "type": target.get_block_type_slug(), "block_id": str(block_id),
            "work_pool": name, "deployment": deployment_name(name),
            "deployment_id": str(deployment_id), "created": created}


def _deploy(name: str) -> Any:
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    from .flows import submit_run

    deployment = RunnerDeployment.from_flow(
        submit_run, name=name, work_pool_name=name, parameters={"compute_target": name},
        entrypoint_type=EntrypointType.MODULE_PATH, tags=["mltrain"],
        description=f"Runs submitted to the compute target {name!r}.")
    return deployment.apply()


@using_server()
def list_targets() -> list[dict[str, Any]]:
    """Every saved compute target with its work pool (if any), plus the built-in ``local``."""
    rows = [{"name": BUILTIN, "type": "mltrain-local-compute", "work_pool": None,
             "deployment": None, "description": "this machine (built in)"}]
    with get_client(sync_client=True) as client:
        pools = {pool.name: pool for pool in client.read_work_pools()}
        for cls in target_classes():
            try:
                docs = client.read_block_documents_by_type(cls.get_block_type_slug(),
                                                           include_secrets=False)
            except PrefectHTTPStatusError:  # that type was never registered: none saved
                continue
            for doc in docs:
                pool = pools.get(doc.name)
                rows.append({"name": doc.name, "type": cls.get_block_type_slug(),
                             "work_pool": pool.name if pool else None,
                             "deployment": deployment_name(doc.name) if pool else None,
                             "description": pool.description if pool else ""})
    return rows


@using_server()
def delete_target(name: str) -> dict[str, bool]:
    """Delete the target's deployment, work pool and block; reports what existed."""
    done = {"deployment": False, "work_pool": False, "block": False}
    with get_client(sync_client=True) as client:
        try:
            client.delete_deployment(client.read_deployment_by_name(deployment_name(name)).id)
            done["deployment"] = True
        except ObjectNotFound:
            pass
        try:
            client.delete_work_pool(name)
            done["work_pool"] = True
        except ObjectNotFound:
            pass
        for cls in target_classes():
            try:
                doc = client.read_block_document_by_name(name, cls.get_block_type_slug())
            except ObjectNotFound:
                continue
            client.delete_block_document(doc.id)
            done["block"] = True
    if not any(done.values()):
        raise ComputeTargetUnavailableError(
            f"no compute target named {name!r}: see `mltrain compute list`")
    return done
