"""Real Azure ML v1 projects run unchanged: their metric names, the Run API they call, the
details they read, child runs and interactive runs — real Prefect, real processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import write_script

from prefect_mltrain import (
    Experiment,
    ImmutablePropertyError,
    Run,
    RunContextError,
    ScriptRunConfig,
    Workspace,
)

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(180)]

AZURE_NAMES = """
    from prefect_mltrain import Run
    run = Run.get_context()
    run.log('Kernel type', 'linear')
    run.log('точность / val: 1', 0.5)
    for i in range(2):
        child = run.child_run()
        child.log('Hello from child run ', i)
        child.complete()
    open("pic.png", "wb").write(b"png")
    run.log_image('../../etc/x y', path='pic.png')
    try:
        run.log('', 1)
    except ValueError as exc:
        print("empty name:", exc)
    print("so far:", sorted(run.get_metrics()))
    left = run.child_run("left behind")
    left.log("x", 1)
"""


def test_azure_metric_names_children_and_metrics_so_far(ws, tmp_path, capsys):
    write_script(tmp_path / "p", "train.py", AZURE_NAMES)
    run = Experiment(ws, "names").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                         script="train.py"))
    details = run.wait_for_completion(show_output=True)
    out = capsys.readouterr().out
    assert details["status"] == "Completed", details["error"]
    assert "empty name: invalid metric name ''" in out
    # inside the script, get_metrics() has what it logged so far (before any sync)
    assert "so far: ['../../etc/x y', 'Kernel type', 'точность / val: 1']" in out

    metrics = run.get_metrics()
    assert metrics["Kernel type"] == "linear" and metrics["точность / val: 1"] == 0.5
    image = metrics["../../etc/x y"]  # the original name; an encoded, safe file name
    assert image in run.get_file_names() and image.startswith("images/")
    assert "/" not in image[len("images/"):] and ".." not in image

    [left] = [c for c in run.get_children() if c.display_name == "left behind"]
    children = [c for c in run.get_children() if c.id != left.id]
    assert sorted(c.get_metrics()["Hello from child run "] for c in children) == [0, 1]
    assert all(c.get_status() == "Completed" for c in children)
    assert left.get_status() == "Failed"  # never left Running after its parent ended
    assert left.get_details()["error"] == "parent run ended"

    everything = run.get_metrics(recursive=True)
    assert set(everything) == {run.id, left.id, *(c.id for c in children)}
    assert everything[run.id] == metrics and everything[left.id] == {"x": 1}


def test_children_end_with_their_parent_whatever_its_ending(ws, tmp_path):
    write_script(tmp_path / "p", "slow.py", """
        import time
        from prefect_mltrain import Run
        child = Run.get_context().child_run("worker")
        child.log("started", 1)
        time.sleep(600)
    """)
    run = Experiment(ws, "ends").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                        script="slow.py"))
    deadline = time.monotonic() + 90
    while not run.get_children():
        assert time.monotonic() < deadline, run.get_status()
        time.sleep(0.3)
    [child] = run.get_children()
    assert child.get_status() == "Running"
    run.cancel()
    assert run.wait_for_completion(raise_on_error=False, timeout=60)["status"] == "Canceled"
    assert child.get_status() == "Canceled"
    assert child.get_details()["error"] == "parent run ended"

    notebook = Experiment(ws, "ends").start_logging()  # an interactive parent that fails
    grandchild = notebook.child_run("fold").child_run("inner")
    notebook.fail("out of memory")
    assert [c.get_status() for c in notebook.get_children()] == ["Failed"]
    assert grandchild.get_status() == "Failed"
    assert grandchild.get_details()["error"] == "parent run ended"


TABLES = """
    import json
    from prefect_mltrain import Run
    run = Run.get_context()
    run.log_table("Sweep", {"alpha": [0.1, 0.2], "rmse": [3.5, 3.1]})
    run.log_row("Sweep", alpha=0.3, rmse=2.9)
    run.log_confusion_matrix("Confusion", {
        "schema_type": "confusion_matrix", "schema_version": "1.0.0",
        "data": {"class_labels": ["cat", "dog"], "matrix": [[5, 1], [2, 7]]}})
    run.log_accuracy_table("Accuracy", json.dumps({
        "schema_type": "accuracy_table", "schema_version": "1.0.1",
        "data": {"probability_tables": [[[1, 2, 0, 0]]], "percentile_tables": [[[1, 2, 0, 0]]],
                 "probability_thresholds": [0.5], "percentile_thresholds": [0.5],
                 "class_labels": ["1"]}}))
    run.log_residuals("Residuals", {"schema_type": "residuals", "schema_version": "1.0.0",
                                    "data": {"bin_edges": [0, 1, 2], "bin_counts": [3, 4]}})
    run.log_predictions("Predictions", {
        "schema_type": "predictions", "schema_version": "1.0.0",
        "data": {"bin_averages": [0.25, 0.75], "bin_errors": [0.01, 0.04],
                 "bin_counts": [56, 34], "bin_edges": [0.0, 0.5, 1.0]}})
    for bad in ({"matrix": [[1]]}, "not json", {"schema_type": "residuals", "data": {}}):
        try:
            run.log_confusion_matrix("Bad", bad)
        except ValueError as exc:
            print("refused:", str(exc)[:60])
"""


def test_tables_and_azure_documents_are_stored_and_shown_in_prefect(ws, tmp_path, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    write_script(tmp_path / "p", "t.py", TABLES)
    run = Experiment(ws, "tables").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                          script="t.py"))
    details = run.wait_for_completion(show_output=True)
    assert capsys.readouterr().out.count("refused: log_confusion_matrix('Bad')") == 3
    metrics = run.get_metrics()
    assert metrics["Sweep"] == {"alpha": [0.1, 0.2, 0.3], "rmse": [3.5, 3.1, 2.9]}
    assert metrics["Confusion"]["data"]["matrix"] == [[5, 1], [2, 7]]
    assert metrics["Accuracy"]["schema_type"] == "accuracy_table"
    assert metrics["Residuals"]["data"]["bin_counts"] == [3, 4]
    assert metrics["Predictions"]["data"]["bin_edges"] == [0.0, 0.5, 1.0]
    assert "Bad" not in metrics

    with get_client(sync_client=True) as client:
        tables = [json.loads(a.data) if isinstance(a.data, str) else a.data
                  for a in client.read_artifacts(artifact_filter=ArtifactFilter(
                      flow_run_id=ArtifactFilterFlowRunId(any_=[details["flow_run_id"]])))
                  if a.type == "table"]
    assert [{"alpha": 0.1, "rmse": 3.5}, {"alpha": 0.2, "rmse": 3.1},
            {"alpha": 0.3, "rmse": 2.9}] in tables  # one row per row, not a JSON blob
    assert [{"actual": "cat", "cat": 5, "dog": 1},
            {"actual": "dog", "cat": 2, "dog": 7}] in tables


def _git_project(proj: Path) -> None:
    write_script(proj, "train.py", """
        from prefect_mltrain import Run
        run = Run.get_context()
        run.add_properties({"stage": "train"})
        run.add_properties({"stage": "train"})  # the same value again is fine
        try:
            run.add_properties({"stage": "eval"})
        except ValueError as exc:
            print("immutable:", type(exc).__name__)
        run.display_name = "renamed in script"
        print("named:", run.display_name)
        open("logs/extra.log", "w").write("x")
    """)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=proj, check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://example.com/o/r.git"], cwd=proj,
                   check=True)
    subprocess.run([*git, "add", "."], cwd=proj, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=proj, check=True)


def test_details_properties_and_the_run_api_of_azure(ws, tmp_path, capsys):
    proj = tmp_path / "repo"
    _git_project(proj)
    exp = Experiment(ws, "azure-api")
    run = exp.submit(ScriptRunConfig(source_directory=proj, script="train.py"),
                     tags={"team": "vision", "tmp": "x"}, properties={"owner": "ml"})
    details = run.wait_for_completion(show_output=True)
    out = capsys.readouterr().out
    assert "immutable: ImmutablePropertyError" in out and "named: renamed in script" in out

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert details["runId"] == run.id and details["status"] == "Completed"
    assert details["target"] == "local" and details["inputDatasets"] == []
    for key in ("startTimeUtc", "endTimeUtc"):
        assert details[key].endswith("Z") and details[key][:2] == "20"
    assert details["startTimeUtc"] < details["endTimeUtc"]
    assert details["runDefinition"]["script"] == "train.py"
    assert Path(details["logFiles"]["logs/extra.log"]).read_text() == "x"
    assert "logs/std_log.txt" in details["logFiles"]
    assert details["submittedBy"]
    assert details["properties"] == run.properties
    assert {"owner": "ml", "stage": "train", "azureml.git.repository_uri":
            "https://example.com/o/r.git", "azureml.git.branch": "main",
            "azureml.git.commit": commit, "azureml.git.dirty": "False",
            "mlflow.source.git.commit": commit}.items() <= run.properties.items()

    with pytest.raises(ImmutablePropertyError, match="'owner'.*'ml' already"):
        run.add_properties({"owner": "someone else"})
    run.add_properties({"owner": "ml", "reviewed": "yes"})  # from outside the run
    assert run.get_properties()["reviewed"] == "yes"
    assert run.display_name == "renamed in script"
    run.display_name = "final"
    assert Run.get(ws, run.id).get_details()["display_name"] == "final"
    run.remove_tags(["tmp"])
    assert run.get_tags() == {"team": "vision"}

    assert run.get_portal_url() == details["flow_run_url"]
    assert run.get_portal_url().endswith(details["flow_run_id"])
    assert run.get_snapshot_id() == details["snapshot_id"]
    assert run.get_environment() is None  # submitted without one: the default
    restored = run.restore_snapshot(path=tmp_path / "snap" / "code.zip")
    assert restored == str(tmp_path / "snap" / "code.zip")
    assert "train.py" in zipfile.ZipFile(restored).namelist()

    second = exp.submit(ScriptRunConfig(source_directory=proj, script="train.py"))
    assert (run.number, second.number) == (1, 2)
    second.wait_for_completion()


def test_interactive_run_keeps_every_upload_and_handle_api(ws, tmp_path):
    run = Experiment(ws, "notebook").start_logging(display_name="explore")
    run.log("acc", 0.5)
    run.upload_file("outputs/notes.txt", io.BytesIO(b"from a stream"))  # after a log()
    (tmp_path / "plots" / "sub").mkdir(parents=True)
    (tmp_path / "plots" / "a.txt").write_text("a")
    (tmp_path / "plots" / "sub" / "b.txt").write_text("b")
    run.upload_folder("plots", tmp_path / "plots")
    run.complete()

    # another process sees all of it
    code = (f"from prefect_mltrain import Run, Workspace; r = Run.get(Workspace({str(ws.url)!r}),"
            f" {run.id!r}); print(r.get_file_names(), r.get_metrics(), r.get_status())")
    seen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert seen.stdout.strip() == ("['outputs/notes.txt', 'plots/a.txt', 'plots/sub/b.txt'] "
                                   "{'acc': 0.5} Completed"), seen.stderr
    assert run.download_file("outputs/notes.txt", tmp_path / "n.txt").read_bytes() \
        == b"from a stream"

    fresh = Run.get(ws, run.id)
    assert fresh.display_name == "explore" and fresh.get_portal_url() is None
    with pytest.raises(RunContextError, match="allow_offline=True"):
        Run.get_context(allow_offline=False)


def test_download_file_to_a_folder_that_does_not_exist_yet(ws, tmp_path):
    run = Experiment(ws, "downloads").start_logging()
    run.upload_file("outputs/model.pkl", io.BytesIO(b"weights"))
    run.complete()

    into = run.download_file("outputs/model.pkl", f"{tmp_path / 'new' / 'folder'}{os.sep}")
    assert into == tmp_path / "new" / "folder" / "model.pkl" and into.read_bytes() == b"weights"
    assert run.download_file("outputs/model.pkl", tmp_path / "deep" / "er" / "m.bin") \
        .read_bytes() == b"weights"
    assert run.download_file("outputs/model.pkl", tmp_path / "new") \
        == tmp_path / "new" / "model.pkl"  # an existing folder
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file() and "ws" not in p.parts)
    assert written == ["deep/er/m.bin", "new/folder/model.pkl", "new/model.pkl"]


def test_a_workspace_from_before_run_numbers_counts_on(tmp_path):
    from prefect_mltrain.store import RunStore

    ws = Workspace(tmp_path / "old")
    store = RunStore(ws)
    first = store.create("legacy")
    ws.write_json("experiments/legacy/experiment.json", {"name": "legacy"})  # no counter
    assert first.number == 1 and store.create("legacy").number == 2
