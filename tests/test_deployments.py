"""Compute targets as work pools, deployments and a real Prefect worker.

Every test here talks to the session's real `prefect server` and starts a real
`prefect worker start --pool ... --run-once` process (with a timeout), which runs the
flow runs that are waiting in its pool and exits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_script

from prefect_mltrain import Environment, Experiment, ScriptRunConfig, Workspace
from prefect_mltrain.compute.process import process_alive

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKER_TIMEOUT = 240


def mltrain(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mltrain"), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def start_worker(pool: str, run_once: bool = True) -> subprocess.Popen:
    """A real Prefect worker of ``pool``: by default it runs what is waiting and exits."""
    return subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool,
                             *(["--run-once"] if run_once else [])], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def serve_until_final(pool: str, flow_run_ids: list) -> str:
    """A long-running worker of ``pool`` until every one of ``flow_run_ids`` is final.

    A pool's concurrency limit holds back what a `--run-once` worker takes in its one
    poll; a worker that keeps polling runs the rest as slots free, as a user's does.
    """
    from prefect.client.orchestration import get_client

    worker = start_worker(pool, run_once=False)
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        with get_client(sync_client=True) as client:
            while not all(client.read_flow_run(i).state.is_final() for i in flow_run_ids):
                if time.monotonic() > deadline or worker.poll() is not None:
                    break
                time.sleep(1)
    finally:
        worker.send_signal(signal.SIGINT)  # what Ctrl-C does to a worker at a terminal
        try:
            out, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    return out


def finish(worker: subprocess.Popen) -> str:
    try:
        out, _ = worker.communicate(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        out, _ = worker.communicate()
        pytest.fail(f"the worker did not finish in {WORKER_TIMEOUT} s:\n{out[-3000:]}")
    return out


def with_secret(token: str) -> Environment:
    """This interpreter, with the secret variable API_TOKEN."""
    env = Environment("with-secret")
    env.python.user_managed_dependencies = True
    env.secret_environment_variables = {"API_TOKEN": token}
    return env


def flow_run(flow_run_id: str, timeout: float = 30):
    """The flow run, once final (its state may lag the run's record by a moment)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not (found := client.read_flow_run(flow_run_id)).state.is_final() \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    return found


@pytest.fixture(scope="module")
def cpu_box(prefect_server):
    """The local-type target "cpu-box", created through the CLI like a user would."""
    result = mltrain("compute", "create", "cpu-box", "--type", "local", "--json")
    assert result.returncode == 0, result.stderr
    yield json.loads(result.stdout)
    mltrain("compute", "delete", "cpu-box")


def test_compute_create_makes_block_pool_and_deployment_idempotently(cpu_box):
    from prefect.client.orchestration import get_client

    assert cpu_box["created"] is True
    assert cpu_box["deployment"] == "submit-run/cpu-box"
    again = mltrain("compute", "create", "cpu-box", "--concurrency-limit", "2", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["created"] is False
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("cpu-box")
        deployment = client.read_deployment_by_name("submit-run/cpu-box")
    assert pool.type == "process" and pool.concurrency_limit == 2
    env = pool.base_job_template["variables"]["properties"]["env"]["default"]
    assert env == {"MLTRAIN_COMPUTE_TARGET": "mltrain-local-compute/cpu-box"}
    assert deployment.work_pool_name == "cpu-box"
    assert deployment.parameters == {"compute_target": "cpu-box"}
    listed = json.loads(mltrain("compute", "list", "--json").stdout)
    assert {"name": "cpu-box", "work_pool": "cpu-box"}.items() <= next(
        r for r in listed if r["name"] == "cpu-box").items()


def test_submit_to_a_pooled_target_goes_through_a_worker(cpu_box, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    proj = tmp_path / "proj"
    write_script(proj, "train.py", """
        import os
        from prefect_mltrain import Run
        run = Run.get_context()
        run.log("acc", 0.75)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/model.txt", "w").write(os.environ["API_TOKEN"][::-1])
        print("trained on the worker")
    """)
    ws = Workspace(tmp_path / "ws")
    run = Experiment(ws, "pooled").submit(ScriptRunConfig(
        source_directory=proj, script="train.py", compute_target="cpu-box",
        environment=with_secret("s3cr3t-value")))
    assert run.get_status() == "Queued"  # waits for a worker of the pool
    deployed = run.get_details()["deployment"]
    assert deployed["name"] == "submit-run/cpu-box"

    out = finish(start_worker("cpu-box"))
    details = run.wait_for_completion(timeout=60)
    assert details["status"] == "Completed", out[-3000:]
    assert run.get_metrics() == {"acc": 0.75}
    run.download_file("outputs/model.txt", tmp_path / "model.txt")
    assert (tmp_path / "model.txt").read_text() == "eulav-t3rc3s"
    assert "s3cr3t-value" not in json.dumps(flow_run(deployed["flow_run_id"]).parameters)
    assert flow_run(deployed["flow_run_id"]).state.is_completed()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[deployed["flow_run_id"]])))
        secret_blocks = [b.name for b in client.read_block_documents()
                         if b.name.startswith("mltrain-run-")]
    assert {a.type for a in artifacts} >= {"markdown", "table"}
    summary = next(a.data for a in artifacts if a.type == "markdown")
    assert "| Status | Completed |" in summary and "trained on the worker" in summary
    assert secret_blocks == []  # the run's secrets were taken once and deleted


def test_repository_deployments_run_with_prefect_cli_and_run_deployment(cpu_box, tmp_path):
    """`prefect deploy --all` of deployments/prefect.yaml, then trigger both ways."""
    from prefect.deployments import run_deployment

    for folder in ("deployments", "flows", "prefect_mltrain/demo"):
        shutil.copytree(REPO / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    assert mltrain("compute", "create", "gpu-box", "--type", "docker", "--network-mode",
                   "host").returncode == 0
    try:
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
                                cwd=tmp_path / "deployments", capture_output=True, text=True,
                                timeout=180, env=dict(os.environ))
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        for name in ("submit-run/local", "retrain/nightly", "submit-run/gpu",
                     "hyperdrive/sweep"):
            assert f"'{name}' successfully created" in " ".join(deploy.stdout.split()), name
    finally:
        mltrain("compute", "delete", "gpu-box")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        nightly_schedules = client.read_deployment_by_name("retrain/nightly").schedules
    assert [(s.schedule.cron, s.active) for s in nightly_schedules] == [("0 3 * * *", False)]
    ws = tmp_path / "ws"
    params = {"experiment": "from-cli", "workspace": str(ws),
              "config": {"source_directory": "../prefect_mltrain/demo", "script": "train.py",
                         "arguments": ["--epochs", "3"]}}
    triggered = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "submit-run/local", "--params",
         json.dumps(params)], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    cli_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout).group(1)
    nightly = run_deployment("retrain/nightly", timeout=0,
                             parameters={"workspace": str(ws)})
    sweep = run_deployment("hyperdrive/sweep", timeout=0, parameters={
        "workspace": str(ws), "config": params["config"], "sweep": {
            "sampling": {"kind": "grid", "parameter_space": {
                "--alpha": {"kind": "choice", "args": [0.1, 0.5]}}},
            "primary_metric_name": "mse", "primary_metric_goal": "MINIMIZE",
            "max_total_runs": 4}})

    # cpu-box may hold a concurrency limit of 2 (set by the first test): three runs then
    # take two rounds of the worker
    out = serve_until_final("cpu-box", [cli_run_id, nightly.id, sweep.id])
    for flow_run_id in (cli_run_id, nightly.id, sweep.id):
        assert flow_run(flow_run_id).state.is_completed(), out[-4000:]
    [swept] = Experiment(Workspace(ws), "sweep").get_runs()
    assert swept.get_status() == "Completed"
    assert sorted(p["--alpha"] for p in swept.get_hyperparameters().values()) == [0.1, 0.5]
    cli_runs = Experiment(Workspace(ws), "from-cli").get_runs()
    assert [r.get_status() for r in cli_runs] == ["Completed"]
    assert len(cli_runs[0].get_metrics()["mse"]) == 3
    retrained = Experiment(Workspace(ws), "retrain").get_runs()
    assert [r.get_tags().get("best") for r in retrained] == ["true"]  # the first is the best


def test_invalid_parameters_are_rejected_by_the_server(cpu_box):
    from prefect.deployments import run_deployment

    with pytest.raises(Exception, match="(?i)validation"):
        run_deployment("submit-run/cpu-box", timeout=0, parameters={
            "experiment": "bad", "config": {"source_directory": "proj",
                                            "max_run_duration_seconds": "soon"}})
    result = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "submit-run/cpu-box", "--params",
         json.dumps({"experiment": ["not", "a", "name"]})],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 1
    assert re.search(r"(?i)validation|not a valid", result.stdout + result.stderr), (
        result.stdout + result.stderr)


def test_cancel_through_the_api_kills_the_script_and_keeps_outputs(cpu_box, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    proj = tmp_path / "proj"
    write_script(proj, "train.py", """
        import os, time
        os.makedirs("outputs", exist_ok=True)
        open("outputs/pid.txt", "w").write(str(os.getpid()))
        print("training", flush=True)
        time.sleep(600)
    """)
    ws = Workspace(tmp_path / "ws")
    run = Experiment(ws, "cancel-me").submit(ScriptRunConfig(
        source_directory=proj, script="train.py", compute_target="cpu-box"))
    flow_run_id = run.get_details()["deployment"]["flow_run_id"]
    worker = start_worker("cpu-box")
    try:
        deadline = time.monotonic() + 180
        while "outputs/pid.txt" not in run.get_file_names():
            assert time.monotonic() < deadline and run.get_status() not in (
                "Failed", "Canceled"), run.get_details()
            time.sleep(0.5)
        run.download_file("outputs/pid.txt", tmp_path / "pid.txt")
        pid = int((tmp_path / "pid.txt").read_text())
        assert process_alive(pid)
        with get_client(sync_client=True) as client:  # what the UI's Cancel button does
            client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
        details = run.wait_for_completion(timeout=120, raise_on_error=False)
    finally:
        out = finish(worker)
    assert details["status"] == "Canceled", (details, out[-3000:])
    assert not process_alive(pid)
    assert "outputs/pid.txt" in run.get_file_names()
    assert flow_run(flow_run_id).state.is_cancelled()


def test_cancel_of_a_run_no_worker_has_taken(cpu_box, tmp_path):
    proj = tmp_path / "proj"
    write_script(proj, "train.py", "print('never runs')\n")
    from prefect.blocks.system import Secret

    ws = Workspace(tmp_path / "ws")
    run = Experiment(ws, "queued").submit(ScriptRunConfig(
        source_directory=proj, script="train.py", compute_target="cpu-box",
        environment=with_secret("never-used")))
    deployed = run.get_details()["deployment"]
    assert Secret.load(deployed["private_block"]).get() == {
        "MLTRAIN_SECRETS": json.dumps({"API_TOKEN": "never-used"})}
    run.cancel()
    assert run.get_status() == "Canceled"
    assert flow_run(deployed["flow_run_id"]).state.is_cancelled()
    with pytest.raises(ValueError):  # the secrets left with the run
        Secret.load(deployed["private_block"])


def test_memory_workspace_cannot_be_sent_to_a_worker(cpu_box, tmp_path):
    from prefect_mltrain.errors import ConfigurationError

    proj = tmp_path / "proj"
    write_script(proj, "train.py", "print('x')\n")
    with pytest.raises(ConfigurationError, match="memory://"):
        Experiment(Workspace("memory://deploy-test"), "m").submit(ScriptRunConfig(
            source_directory=proj, script="train.py", compute_target="cpu-box"))


def test_a_pool_given_the_workers_python_starts_the_engine_directly(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client

    created = mltrain("compute", "create", "fast-box", "--python", sys.executable, "--json")
    assert created.returncode == 0, created.stderr
    try:
        with get_client(sync_client=True) as client:
            template = client.read_work_pool("fast-box").base_job_template
        assert template["variables"]["properties"]["command"]["default"] == (
            f"{sys.executable} -m prefect.engine")
        proj = tmp_path / "proj"
        write_script(proj, "train.py", "print('fast start')\n")
        run = Experiment(Workspace(tmp_path / "ws"), "fast").submit(ScriptRunConfig(
            source_directory=proj, script="train.py", compute_target="fast-box"))
        out = finish(start_worker("fast-box"))
        assert run.wait_for_completion(timeout=60)["status"] == "Completed", out[-3000:]
        assert "_workspace_supervisor" not in out
    finally:
        mltrain("compute", "delete", "fast-box")
