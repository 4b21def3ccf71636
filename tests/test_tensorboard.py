"""TensorBoard over running and finished runs (local and S3 workspaces), export of logged
metrics as event files, and the command. A real TensorBoard process, queried through its
HTTP data endpoints, and real runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import write_script

from prefect_mltrain import Experiment, ScriptRunConfig, Workspace
from prefect_mltrain.errors import ConfigurationError
from prefect_mltrain.tensorboard import Tensorboard, export_to_tensorboard

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(240)]

WRITER = """
    import os, sys, time
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    flags = sys.argv[1]
    writer = EventFileWriter("logs/tb")

    def scalar(step, value):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="loss",
                                                                        simple_value=value)])
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        writer.flush()

    scalar(0, 1.0)
    for _ in range(600):  # until the test has TensorBoard up
        if os.path.exists(os.path.join(flags, "go")):
            break
        time.sleep(0.1)
    scalar(1, 0.5)
    for _ in range(600):
        if os.path.exists(os.path.join(flags, "stop")):
            break
        time.sleep(0.1)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def scalars(board: Tensorboard, run_name: str, tag: str = "loss") -> list[tuple[int, float]]:
    query = urllib.parse.urlencode({"run": run_name, "tag": tag})
    try:
        return [(step, value) for _, step, value in
                get(f"{board.url}data/plugin/scalars/scalars?{query}")]
    except OSError:  # not loaded yet (TensorBoard answers 400 for an unknown run)
        return []


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.5)
    return found


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Workspace(tmp_path / "ws")
    s3 = request.getfixturevalue("s3_workspace_options")
    return Workspace(f"{s3['url']}/tb-{tmp_path.name}", storage_options=s3["storage_options"])


def test_tensorboard_follows_a_running_run_and_shows_a_finished_one_beside_it(store, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    write_script(tmp_path / "p", "train.py", WRITER)
    exp = Experiment(store, "tb")
    src = ScriptRunConfig(source_directory=tmp_path / "p", script="train.py",
                          arguments=[str(flags)], max_run_duration_seconds=180)
    finished = exp.submit(src)
    (flags / "go").touch()
    (flags / "stop").touch()
    assert finished.wait_for_completion(timeout=120)["status"] == "Completed"
    for name in ("go", "stop"):
        (flags / name).unlink()
    running = exp.submit(src)
    wait_for(lambda: any(n.startswith("logs/tb/") for n in running.get_file_names()),
             "the running run's first event file stored")

    board = Tensorboard([running, finished], port=free_port(), sync_interval=0.5)
    url = board.start()
    try:
        assert url == f"http://127.0.0.1:{board.port}/"
        names = {r: f"tb/{r.id}/tb" for r in (running, finished)}
        wait_for(lambda: set(names.values()) <= set(get(f"{url}data/runs")),
                 "both runs listed by TensorBoard")
        assert wait_for(lambda: scalars(board, names[finished]), "the finished run's scalars") \
            == [(0, 1.0), (1, 0.5)]
        assert wait_for(lambda: scalars(board, names[running]), "the running run's first "
                        "scalar") == [(0, 1.0)]
        (flags / "go").touch()  # the script logs its second value only now
        assert wait_for(lambda: len(s := scalars(board, names[running])) == 2 and s,
                        "the value logged after TensorBoard started", timeout=45) == [
            (0, 1.0), (1, 0.5)]
    finally:
        (flags / "stop").touch()
        board.stop()
    with socket.socket() as probe:  # TensorBoard is gone: its port is free again
        probe.bind(("127.0.0.1", board.port))
    assert running.wait_for_completion(timeout=120)["status"] == "Completed"


def test_a_port_in_use_is_refused_with_the_fix(ws):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigurationError, match=r"port \d+ is in use: pass another"):
            Tensorboard([], port=busy.getsockname()[1]).start()


def test_without_the_extra_the_error_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from prefect_mltrain.tensorboard import Tensorboard\n"
            "try:\n    Tensorboard([]).start()\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert "ConfigurationError TensorBoard is not installed: pip install " \
           "'prefect-mltrain[tensorboard]'" in out.stdout, out.stderr


METRICS = """
    from prefect_mltrain import Run
    run = Run.get_context()
    for i, loss in enumerate([0.9, 0.6, 0.4]):
        run.log("loss", loss)
    run.log("accuracy", 0.75)
    run.log("lr", 0.1, step=10)
    run.log("lr", 0.05, step=20)
    run.log_list("curve", [3, 2, 1])
    run.log("kernel", "linear")        # not a number: no scalar
    run.tag("team", "vision")
    child = run.child_run("fold-1")
    child.log("loss", 0.3)
    child.complete()
"""


def test_export_writes_every_numeric_metric_with_its_steps_and_the_hparams(ws, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_script(tmp_path / "p", "train.py", METRICS)
    run = Experiment(ws, "export").submit(ScriptRunConfig(source_directory=tmp_path / "p",
                                                          script="train.py"))
    assert run.wait_for_completion(timeout=120)["status"] == "Completed"
    folders = export_to_tensorboard(run, str(tmp_path / "tb"))
    [child] = run.get_children()
    assert [f.name for f in folders] == [run.id, child.id]

    def read(folder: Path) -> EventAccumulator:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        return acc

    acc = read(folders[0])
    got = {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]
           for tag in acc.Tags()["scalars"]}
    assert got == {"loss": [(0, 0.9), (1, 0.6), (2, 0.4)], "accuracy": [(0, 0.75)],
                   "lr": [(10, 0.1), (20, 0.05)], "curve": [(0, 3.0), (1, 2.0), (2, 1.0)]}
    hparams = acc.PluginTagToContent("hparams")
    assert hparams, "the run's tags are in TensorBoard's HParams view"
    assert b"team" in b"".join(hparams.values()) and b"vision" in b"".join(hparams.values())
    assert [(e.step, round(e.value, 6)) for e in read(folders[1]).Scalars("loss")] == [(0, 0.3)]
