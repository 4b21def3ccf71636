"""Every call this package makes to the Prefect API about a run outside its own flow:
sending it to a work pool's deployment, looking its flow run up, canceling it, and the
Secret block that carries its secrets to the worker.

Each call talks to the configured Prefect API, else to the embedded local server
(``server.using_server``). Work-pool administration is in ``pools.py``; the flow itself,
its tasks and artifacts in ``flows.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .compute.registry import resolve_compute_target, saved_target_name
from .records import Deployment
from .server import using_server

FLOW_NAME = "submit-run"


def deployment_name(target: str) -> str:
    return f"{FLOW_NAME}/{target}"


def deployment_for(recorded: Any) -> str | None:
    """``submit-run/NAME`` when a run's target (as its record names it) has a work pool;
    None to run it here. A name that is no saved target raises."""
    from prefect.exceptions import ObjectNotFound

    target = saved_target_name(recorded)
    if target is None:
        return None
    name = deployment_name(target)
    with quick_context() as client:
        try:
            if client.read_deployment_by_name(name).work_pool_name:
                return name
        except ObjectNotFound:
            pass
        resolve_compute_target(recorded)  # a saved target without a pool runs here; else raise
    return None


def send_to_pool(deployment: str, parameters: dict[str, Any], private: dict[str, str],
                 tags: list[str]) -> Deployment:
    """A flow run of ``deployment`` (a worker of its pool runs it). ``private`` (secrets,
    store credentials) travels in a Secret block the flow reads once and deletes, never in
    the flow run's parameters."""
    from prefect.blocks.system import Secret
    from prefect.deployments import run_deployment

    block = None
    with quick_context():
        if private:
            block = f"mltrain-run-{parameters['run_id'].lower().replace('_', '-')}"
            Secret(value=private).save(block, overwrite=True)
            parameters = {**parameters, "private_block": block}
        flow_run = run_deployment(deployment, parameters=parameters, timeout=0, tags=tags)
    return Deployment(name=deployment, flow_run_id=str(flow_run.id), private_block=block)


def take_secret(block: str) -> dict[str, str] | None:
    """The values of a run's Secret block, deleted once read (None: already taken)."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block).get()
    except ValueError:
        return None
    Secret.delete(block)
    return value


def delete_secret(block: str) -> None:
    from prefect.blocks.system import Secret

    with using_server(), contextlib.suppress(Exception):  # taken by the flow meanwhile
        Secret.delete(block)


def flow_run_state(flow_run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with using_server(), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def cancel_if_scheduled(flow_run_id: str) -> bool:
    """Cancel a flow run that no worker has taken yet; False when one has."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    with using_server(), get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if not (state and state.is_scheduled()):
            return False
        result = client.set_flow_run_state(flow_run_id, Cancelled(message="canceled by request"))
    return result.status.value == "ACCEPT"


def end_flow_run(flow_run_id: str, canceled: bool, message: str) -> None:
    """Make a flow run that is not final agree with its run's record: Cancelled, or Crashed
    (its runner died without telling Prefect)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Crashed

    with using_server(), get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if state is None or not state.is_final():
            client.set_flow_run_state(flow_run_id, (Cancelled if canceled else Crashed)(
                message=message), force=True)


def flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI where it is now, if known."""
    from .server import ui_url

    base = ui_url()
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


def cancelling(flow_run_id: str) -> bool:
    """Whether someone asked Prefect to cancel the flow run (the UI's Cancel button).
    Uses the caller's Prefect settings as they are: the runner's own flow run's API."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and state.type.value in ("CANCELLING", "CANCELLED")


def subflow_run(flow: Any, name: str, parameters: dict[str, Any]) -> tuple[str, str] | None:
    """A flow run of ``flow`` made now, to be run by another process, shown in Prefect as a
    subflow of the current flow run (as ``run_deployment`` links its runs): a task run
    stands for it in the parent. Returns (flow run id, task run id); None outside a flow."""
    from prefect import Task
    from prefect.context import FlowRunContext
    from prefect.states import Pending

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    placeholder = Task(name=name, fn=lambda: None)
    placeholder.task_key = f"mltrain-trial-{name}"
    with quick_client() as client:
        task_run = client.create_task_run(task=placeholder, flow_run_id=context.flow_run.id,
                                          dynamic_key=name, state=Pending())
        flow_run = client.create_flow_run(flow, name=name, parameters=parameters,
                                          parent_task_run_id=task_run.id, state=Pending(),
                                          tags=["mltrain", "trial"])
    return str(flow_run.id), str(task_run.id)


@contextlib.contextmanager
def quick_context() -> Iterator[Any]:
    """The configured API, else the embedded server (``using_server``), and one
    ``quick_client`` that Prefect hands to every sync client asked for within (its engine
    too): one client, one connection, for all of a run's or a submit's calls."""
    from prefect.context import SyncClientContext

    # Made from a client, not from httpx settings: Prefect's get_client() hands out a
    # context's client only to a caller that passes the same settings.
    with using_server(), SyncClientContext.model_construct(client=quick_client()) as context:
        yield context.client


def quick_client() -> Any:
    """A sync Prefect client for writes that race others: through ``QuickRetries`` when the
    API is plain HTTP on this machine (a remote server's proxies, TLS and retries are left
    as they are).

    Prefect's client loads the CA bundle into a new TLS context unless it is given one
    (~30 ms of CPU per client); plain HTTP never uses it, so it gets one that loads nothing.
    """
    import ssl

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from .home import mltrain_home
    from .quick_retries import QuickRetries

    url = httpx.URL(PREFECT_API_URL.value() or "")
    if url.scheme != "http" or url.host not in ("127.0.0.1", "localhost", "::1"):
        return get_client(sync_client=True)
    unused = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    transport = QuickRetries(retries=3, verify=unused,
                             insert_lock=mltrain_home() / f"flow-run-insert-{url.port or 80}.lock")
    return get_client(sync_client=True,
                      httpx_settings={"transport": transport, "verify": unused})


def end_task_run(task_run_id: str, status: str, message: str | None = None) -> None:
    """Set the task run that stands for a subflow to its run's ending."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Completed, Failed

    state = {"Completed": Completed, "Canceled": Cancelled}.get(status, Failed)
    with get_client(sync_client=True) as client:
        client.set_task_run_state(task_run_id, state(message=message), force=True)
