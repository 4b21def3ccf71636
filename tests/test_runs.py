"""A user's story on local compute: submit, watch, inspect, cancel — real Prefect, real processes.

Crash, timeout, cancel from another process and a killed runner are the contract every
target keeps: ``test_contract.py`` runs them on local compute too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import write_script

from prefect_mltrain import (
    Environment,
    Experiment,
    Run,
    ScriptRunConfig,
    UnsafePathError,
    Workspace,
)

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(180)]

TRAIN = """
    import sys, time
    from prefect_mltrain import Run
    run = Run.get_context()
    alpha = float(sys.argv[sys.argv.index("--alpha") + 1])
    for step in range(3):
        run.log("mse", 3.2 / (step + 1), step=step)
    run.log("alpha", alpha)
    run.log_list("weights", [1, 2, 3])
    run.log_row("curve", epoch=1, loss=0.5)
    run.log_row("curve", epoch=2, loss=0.25)
    run.tag("framework", "stdlib")
    child = run.child_run("fold-0")
    child.log("fold_mse", 1.5)
    child.complete()
    open("outputs/model.pkl", "wb").write(b"model-bytes")
    open("logs/extra.txt", "w").write("extra log")
    print("training done")
"""


def _pids_alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return alive


def _flow_run_state(flow_run_id, timeout=30):
    """The flow run's final state (it may lag the run's record by a moment)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(flow_run_id).state).is_final() \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    return state.type.value


def _flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _flow_run_logs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def test_submit_completes_with_metrics_outputs_and_details(ws, tmp_path, capsys):
    proj = tmp_path / "proj"
    write_script(proj, "train.py", TRAIN)
    env = Environment("user-managed-env")
    env.python.user_managed_dependencies = True
    src = ScriptRunConfig(source_directory=proj, script="train.py", arguments=["--alpha", 0.5],
                          environment=env, max_run_duration_seconds=600)
    run = Experiment(ws, "demo").submit(src, tags={"kind": "ridge"})
    assert run.get_status() in ("Queued", "Preparing", "Starting", "Running", "Completed")

    details = run.wait_for_completion(show_output=True)
    out = capsys.readouterr().out
    assert "training done" in out and "Completed" in out

    assert details["status"] == "Completed" and details["exit_code"] == 0
    assert [h["status"] for h in details["status_history"]] == [
        "NotStarted", "Queued", "Preparing", "Starting", "Running", "Finalizing", "Completed"]
    assert details["snapshot_id"] and details["flow_run_id"]
    assert details["flow_run_url"].endswith(details["flow_run_id"])
    assert details["tags"] == {"kind": "ridge", "framework": "stdlib"}
    assert _flow_run_state(details["flow_run_id"]) == "COMPLETED"
    assert "training done" in _flow_run_logs(details["flow_run_id"])
    flow_run = _flow_run(details["flow_run_id"])  # what Prefect's UI lists the run by
    assert flow_run.name == run.id
    assert flow_run.parameters["experiment"] == "demo"
    assert flow_run.parameters["run_id"] == run.id

    metrics = run.get_metrics()
    assert metrics["mse"] == pytest.approx([3.2, 1.6, 3.2 / 3])
    assert metrics["alpha"] == 0.5
    assert metrics["weights"] == [1, 2, 3]
    assert metrics["curve"] == {"epoch": [1, 2], "loss": [0.5, 0.25]}

    files = run.get_file_names()
    assert {"outputs/model.pkl", "logs/extra.txt", "logs/std_log.txt"} <= set(files)
    target = run.download_file("outputs/model.pkl", tmp_path / "model.pkl")
    assert target.read_bytes() == b"model-bytes"
    got = run.download_files(prefix="outputs/", output_directory=tmp_path / "out")
    assert (tmp_path / "out" / "outputs" / "model.pkl").read_bytes() == b"model-bytes"
    assert len(got) == 1

    children = run.get_children()
    assert len(children) == 1
    assert children[0].get_metrics() == {"fold_mse": 1.5}
    assert children[0].get_status() == "Completed"
    assert [r.id for r in Experiment(ws, "demo").get_runs()] == [run.id]


def test_the_flow_run_link_follows_the_ui_where_it_is_now(ws, tmp_path, monkeypatch):
    write_script(tmp_path / "p", "t.py", "print('hi')\n")
    run = Experiment(ws, "link").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                        script="t.py"))
    details = run.wait_for_completion()
    assert details["flow_run_url"] == (f"{os.environ['PREFECT_UI_URL']}/runs/flow-run/"
                                       f"{details['flow_run_id']}")
    monkeypatch.setenv("PREFECT_UI_URL", "http://127.0.0.1:4299")  # the server moved
    assert run.get_details()["flow_run_url"] == (
        f"http://127.0.0.1:4299/runs/flow-run/{details['flow_run_id']}")


def test_prefect_artifacts_describe_the_run(ws, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    write_script(tmp_path / "p", "t.py", """
        from prefect_mltrain import Run
        Run.get_context().log("acc", 0.9)
        open("outputs/a.txt", "w").write("a")
    """)
    run = Experiment(ws, "art").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                       script="t.py"))
    details = run.wait_for_completion()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[details["flow_run_id"]])))
    kinds = {a.type for a in artifacts}
    assert kinds == {"markdown", "table"}
    text = json.dumps([a.data for a in artifacts], default=str)
    assert "acc" in text and "outputs/a.txt" in text and "Completed" in text


def test_progress_metric_drives_a_live_progress_artifact(ws, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    write_script(tmp_path / "p", "t.py", """
        import os, time
        from prefect_mltrain import Run
        run = Run.get_context()
        run.log("progress", 0.25)
        while not os.path.exists("outputs/go"):  # the test looks at the bar, then lets go
            time.sleep(0.1)
        run.log("progress", 1.0)
    """)
    run = Experiment(ws, "bar").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                       script="t.py"))

    def progress_values():
        flow_run_id = run.get_details().get("flow_run_id")
        if not flow_run_id:
            return []
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        return [a.data for a in artifacts if a.type == "progress"]

    deadline = time.monotonic() + 60
    while progress_values() != [25.0]:
        assert time.monotonic() < deadline, progress_values()
        time.sleep(0.3)
    assert run.get_status() == "Running"  # the bar is live, not a summary at the end
    run_cwd = next((Path(os.environ["MLTRAIN_HOME"]) / "runs").glob(f"{run.id}/src"))
    (run_cwd / "outputs" / "go").write_text("")
    run.wait_for_completion()
    assert progress_values() == [100.0]


SLOW = """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open("outputs/pids.txt", "w").write(f"{os.getpid()} {child.pid}")
    print("started", flush=True)
    time.sleep(600)
"""


def _wait_for_file(run, name, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name in run.get_file_names():
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never appeared; status {run.get_status()}")


@pytest.mark.timeout(300)
def test_twenty_concurrent_submissions_make_twenty_complete_records(ws, tmp_path):
    write_script(tmp_path / "p", "t.py", """
        import sys
        from prefect_mltrain import Run
        Run.get_context().log("i", int(sys.argv[1]))
    """)
    exp = Experiment(ws, "many")

    def submit(i):
        return exp.submit(ScriptRunConfig(source_directory=tmp_path / "p", script="t.py",
                                          arguments=[i]))

    with ThreadPoolExecutor(20) as pool:
        runs = list(pool.map(submit, range(20)))
    assert len({r.id for r in runs}) == 20
    for r in runs:
        r.wait_for_completion(timeout=240)
    assert sorted(r.get_metrics()["i"] for r in runs) == list(range(20))
    assert len(exp.get_runs()) == 20


TOKEN = "ghp_9sK2mQ7xR4vL1nB8cT5yW3zP6dF0hJ2aE4uX"  # looks like a real token
S3_KEY, S3_SECRET = "AKIAIOSFODNN7MLTRAIN", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYmltrainKEY"

LEAKY = """
    import os, subprocess, sys, time
    from prefect_mltrain import Run
    value = os.environ["API_TOKEN"]
    open("outputs/len.txt", "w").write(str(len(value)))
    print("plain", os.environ["PLAIN"])
    print("careless print of", value)
    print("my environment:", dict(os.environ))
    run = Run.get_context()
    run.log("token", value)
    run.tag("token", value)
    open("outputs/started", "w").close()
    while not os.path.exists("outputs/go"):  # the test looks at every process's argv
        time.sleep(0.1)
"""


def _everything_prefect_keeps(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        params = client.read_flow_run(flow_run_id).parameters
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return json.dumps([params, [log.message for log in logs], [a.data for a in artifacts]],
                      default=str)


def test_secrets_and_store_credentials_never_reach_records_logs_artifacts_or_argv(
        s3_workspace_options, tmp_path):
    import psutil

    options = {**s3_workspace_options["storage_options"], "key": S3_KEY, "secret": S3_SECRET}
    ws = Workspace(s3_workspace_options["url"] + "/secrets", storage_options=options)
    write_script(tmp_path / "p", "s.py", LEAKY)
    env = Environment("secretive", environment_variables={"PLAIN": "visible"})
    env.secret_environment_variables = {"API_TOKEN": TOKEN}
    run = Experiment(ws, "secret").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                          script="s.py", environment=env))
    _wait_for_file(run, "outputs/started")
    argv = " ".join(" ".join(p.info["cmdline"] or [])
                    for p in psutil.process_iter(["cmdline"]))
    scratch = Path(os.environ["MLTRAIN_HOME"]) / "runs" / run.id / "src"
    (scratch / "outputs" / "go").write_text("")
    details = run.wait_for_completion(timeout=120)

    assert run.download_file("outputs/len.txt", tmp_path).read_text() == str(len(TOKEN))
    stored = "".join(ws.read_bytes(f"{run._dir}/{name}").decode(errors="replace")
                     for name in ws.find(run._dir)
                     if not name.startswith("events/"))  # what the script logged, as it was
    kept = _everything_prefect_keeps(details["flow_run_id"])
    record = json.dumps({k: v for k, v in details.items() if k != "tags"})  # the user's own
    for secret in (TOKEN, S3_KEY, S3_SECRET):
        assert secret not in stored and secret not in kept and secret not in argv
        assert secret not in record
    assert "plain visible" in stored and "careless print of [secret]" in stored
    assert "careless print of [secret]" in kept  # the script's output reached Prefect, masked
    assert details["config"]["environment"]["secret_environment_variables"] == ["API_TOKEN"]


def test_download_refuses_names_that_leave_the_run(ws, tmp_path):
    write_script(tmp_path / "p", "t.py", "open('outputs/a.txt','w').write('a')\n")
    run = Experiment(ws, "trav").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                        script="t.py"))
    run.wait_for_completion()
    for bad in ("../../etc/passwd", "/etc/passwd", "outputs/../../run.json", ""):
        with pytest.raises(UnsafePathError):
            run.download_file(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_stored_names_that_leave_the_run_are_never_listed_or_downloaded(
        s3_workspace_options, tmp_path):
    """Anyone who can write to a shared bucket can store a key with ``..`` in a run's
    folder; downloading the run's outputs must not write it outside the chosen folder."""
    from prefect_mltrain.store import RunStore

    ws = Workspace(s3_workspace_options["url"] + "/names",
                   storage_options=s3_workspace_options["storage_options"])
    record = RunStore(ws).create("names")
    folder = f"experiments/names/runs/{record.run_id}"
    ws.fs.pipe_file(ws.path(folder) + "/outputs/../../../../../escaped.txt", b"pwned")
    ws.write_bytes(f"{folder}/outputs/model.txt", b"weights")
    run = Run.get(ws, record.run_id)

    assert run.get_file_names() == ["outputs/model.txt"]
    out = tmp_path / "a" / "b" / "c" / "d"
    run.download_files(prefix="outputs/", output_directory=out)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file())
    assert written == ["a/b/c/d/outputs/model.txt"]
    with pytest.raises(UnsafePathError):
        run.download_file("outputs/../../../../../escaped.txt", tmp_path / "x")


def test_git_provenance_is_stored_with_the_run(ws, tmp_path):
    proj = tmp_path / "repo"
    write_script(proj, "t.py", "print('hi')\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=proj, check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://user:tok123@example.com/o/r.git"],
                   cwd=proj, check=True)
    subprocess.run([*git, "add", "."], cwd=proj, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=proj, check=True)
    (proj / "t.py").write_text("print('changed')\n")
    run = Experiment(ws, "git").submit(ScriptRunConfig(source_directory=proj, script="t.py"))
    details = run.wait_for_completion()
    assert details["git"]["repository"] == "https://example.com/o/r.git"
    assert details["git"]["branch"] == "main" and details["git"]["dirty"] is True
    assert "tok123" not in json.dumps(details)
    diff = run.download_file("git_diff.patch", tmp_path / "d.patch").read_text()
    assert "+print('changed')" in diff


def test_script_started_by_hand_gets_an_offline_run(tmp_path):
    write_script(tmp_path, "t.py", """
        from prefect_mltrain import Run
        run = Run.get_context()
        run.log("loss", 0.1); run.tag("k", "v"); run.log_row("r", a=1)
        print("offline", run.is_offline, run.get_metrics())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
    result = subprocess.run([sys.executable, "t.py"], cwd=tmp_path, env=env, timeout=60,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "offline True {'loss': 0.1, 'r': {'a': [1]}}" in result.stdout
    assert list((tmp_path / ".mltrain-offline").iterdir())


def test_s3_workspace_end_to_end(s3_workspace_options, tmp_path):
    from prefect_mltrain import Workspace

    ws = Workspace(s3_workspace_options["url"] + "/e2e",
                   storage_options=s3_workspace_options["storage_options"])
    write_script(tmp_path / "p", "t.py", """
        from prefect_mltrain import Run
        Run.get_context().log("acc", 0.75)
        open("outputs/m.txt", "w").write("s3 model")
        print("on s3")
    """)
    run = Experiment(ws, "s3").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                      script="t.py"))
    details = run.wait_for_completion(timeout=120)
    assert details["status"] == "Completed"
    assert run.get_metrics() == {"acc": 0.75}
    assert run.download_file("outputs/m.txt", tmp_path / "m.txt").read_text() == "s3 model"
    assert ws.fs.exists(ws.path("snapshots", details["snapshot_id"] + ".json"))


def test_upload_file_log_image_and_resubmit(ws, tmp_path):
    write_script(tmp_path / "p", "t.py", """
        from prefect_mltrain import Run
        run = Run.get_context()
        open("report.txt", "w").write("report")
        run.upload_file("reports/report.txt", "report.txt")
        open("pic.png", "wb").write(b"\\x89PNG fake")
        run.log_image("confusion", path="pic.png")
    """)
    run = Experiment(ws, "upl").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                       script="t.py"))
    run.wait_for_completion()
    files = run.get_file_names()
    assert "reports/report.txt" in files
    image = run.get_metrics()["confusion"]
    assert image.startswith("images/confusion_") and image in files

    again = run.resubmit()
    assert again.id != run.id
    details = again.wait_for_completion()
    assert details["snapshot_id"] == run.get_details()["snapshot_id"]
    assert details["properties"]["resubmitted_from"] == run.id


def test_interactive_run_with_start_logging(ws):
    run = Experiment(ws, "notebook").start_logging(display_name="explore")
    run.log("acc", 0.5)
    run.log("acc", 0.7)
    run.tag("where", "notebook")
    run.complete()
    fresh = Run.get(ws, run.id)
    assert fresh.get_status() == "Completed"
    assert fresh.get_metrics() == {"acc": [0.5, 0.7]}
    assert fresh.get_tags() == {"where": "notebook"}


def test_cancel_from_prefect_ends_canceled_with_no_process_left(ws, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    write_script(tmp_path / "p", "slow.py", SLOW)
    run = Experiment(ws, "ui-cancel").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                             script="slow.py"))
    _wait_for_file(run, "outputs/pids.txt")
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.get_details()["flow_run_id"], Cancelling(), force=True)
    details = run.wait_for_completion(timeout=60)
    assert details["status"] == "Canceled" and details["error"] == "canceled from Prefect"
    pids = [int(p) for p in run.download_file("outputs/pids.txt", tmp_path).read_text().split()]
    assert _pids_alive(pids) == []
    assert _flow_run_state(details["flow_run_id"]) == "CANCELLED"


def test_submit_run_flow_called_from_a_users_flow(ws, tmp_path, prefect_server):
    from prefect import flow
    from prefect.server.api.server import SubprocessASGIServer

    from prefect_mltrain import submit_run

    write_script(tmp_path / "p", "t.py", """
        from prefect_mltrain import Run
        Run.get_context().log("score", 0.8)
    """)

    @flow
    def pipeline():
        config = ScriptRunConfig(source_directory=tmp_path / "p", script="t.py")
        details = submit_run(experiment="pipe", config=config, workspace=str(ws.url),
                             tags={"stage": "train"})
        return Run.get(ws, details["run_id"]).get_metrics()["score"]

    assert pipeline() == 0.8
    [run] = Experiment(ws, "pipe").get_runs()
    details = run.get_details()
    assert details["status"] == "Completed" and details["tags"] == {"stage": "train"}
    assert ws.exists(f"snapshots/{details['snapshot_id']}.json")
    # the run's watchdog thread polled the caller's server, not a temporary one of its own
    assert not SubprocessASGIServer._instances


def test_a_memory_workspace_is_refused_at_submit_and_runs_in_this_process(tmp_path):
    from prefect_mltrain import ConfigurationError, submit_run

    write_script(tmp_path / "p", "t.py", """
        from prefect_mltrain import Run
        Run.get_context().log("acc", 0.5)
    """)
    ws = Workspace(f"memory://mem-{tmp_path.name}")
    config = ScriptRunConfig(source_directory=tmp_path / "p", script="t.py")
    with pytest.raises(ConfigurationError, match=r"memory://.*submit_run\("):
        Experiment(ws, "mem").submit(config)
    assert Experiment(ws, "mem").get_runs() == []  # nothing recorded

    details = submit_run(experiment="mem", config=config, workspace=ws.url)
    assert details["status"] == "Completed"
    assert Run.get(ws, details["run_id"]).get_metrics() == {"acc": 0.5}


def test_a_full_disk_fails_the_run_and_keeps_its_files_until_they_can_be_stored(
        small_disk, tmp_path):
    ws = Workspace(small_disk / "ws")
    write_script(tmp_path / "p", "big.py", """
        open("outputs/small.txt", "w").write("fits")
        open("outputs/big.bin", "wb").write(b"x" * 8_000_000)  # twice the disk
        print("wrote my outputs", flush=True)
    """)
    run = Experiment(ws, "full").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                        script="big.py"))
    details = run.wait_for_completion(raise_on_error=False, timeout=120)

    assert details["status"] == "Failed" and details["exit_code"] == 0
    assert "No space left on device" in details["error"]
    kept = Path(details["local_files"]["path"])
    assert f"mltrain runs sync {run.id}" in details["error"] and str(kept) in details["error"]
    assert (kept / "src" / "outputs" / "big.bin").stat().st_size == 8_000_000
    assert "outputs/big.bin" not in run.get_file_names()
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]  # no partial file

    small_disk.grow()  # space again: the kept files go where they belong
    stored = subprocess.run([str(Path(sys.executable).parent / "mltrain"), "runs", "sync",
                             run.id, "--workspace", str(ws.url)], capture_output=True,
                            text=True, timeout=120)
    assert stored.returncode == 0, stored.stderr
    assert run.download_file("outputs/big.bin", tmp_path / "b").stat().st_size == 8_000_000
    assert run.get_details()["local_files"] is None and not kept.exists()


def test_a_workspace_that_turns_read_only_mid_run_loses_nothing_and_says_why(
        small_disk, tmp_path):
    from prefect_mltrain import WorkspaceError

    ws = Workspace(small_disk / "ws")
    write_script(tmp_path / "p", "ro.py", """
        import os, time
        open("outputs/early.txt", "w").write("stored while the store took it")
        while not os.path.exists("go"):
            time.sleep(0.1)
        open("outputs/late.txt", "w").write("written after")
    """)
    run = Experiment(ws, "ro").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                      script="ro.py"))
    _wait_for_file(run, "outputs/early.txt")
    record_before = ws.read_bytes(f"{run._dir}/run.json")
    small_disk.read_only()
    try:
        (Path(os.environ["MLTRAIN_HOME"]) / "runs" / run.id / "src" / "go").write_text("")
        with pytest.raises(WorkspaceError, match="Read-only file system"):
            run.wait_for_completion(raise_on_error=False, timeout=60)
        assert ws.read_bytes(f"{run._dir}/run.json") == record_before  # untouched, whole
        assert "outputs/early.txt" in run.get_file_names()
    finally:
        small_disk.read_only(False)
    details = run.wait_for_completion(raise_on_error=False, timeout=60)
    assert details["status"] == "Failed" and f"mltrain runs sync {run.id}" in details["error"]
    stored = subprocess.run([str(Path(sys.executable).parent / "mltrain"), "runs", "sync",
                             run.id, "--workspace", str(ws.url)], capture_output=True,
                            text=True, timeout=120)
    assert stored.returncode == 0, stored.stderr
    assert {"outputs/early.txt", "outputs/late.txt"} <= set(run.get_file_names())


def test_a_script_cannot_forge_its_record_through_its_stage(ws, tmp_path):
    write_script(tmp_path / "p", "forge.py", """
        import json, os, pathlib
        stage = pathlib.Path(os.environ["MLTRAIN_CONTEXT_DIR"])
        own = (stage / "experiments" / os.environ["MLTRAIN_EXPERIMENT"] / "runs"
               / os.environ["MLTRAIN_RUN_ID"])
        own.mkdir(parents=True, exist_ok=True)
        (own / "run.json").write_text(json.dumps({"run_id": "forged", "status": "Completed"}))
        (own / "heartbeat.json").write_text("{}")
        raise SystemExit(3)
    """)
    run = Experiment(ws, "forge").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                         script="forge.py"))
    details = run.wait_for_completion(raise_on_error=False, timeout=120)
    assert details["status"] == "Failed" and details["exit_code"] == 3
    assert details["run_id"] == run.id
