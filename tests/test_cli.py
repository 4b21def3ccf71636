"""The ``mltrain`` command as users run it: real processes, exit codes, ``--json`` output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_script

from prefect_mltrain.errors import WorkspaceError

BIN = Path(sys.executable).parent


@pytest.fixture
def cli(prefect_server, tmp_path):
    """``mltrain ARGS --workspace WS`` in ``tmp_path``; returns (exit code, stdout, stderr)."""
    ws = tmp_path / "ws"

    def run(*args: str, timeout: float = 180) -> tuple[int, str, str]:
        cut = args.index("--") if "--" in args else len(args)  # the script's own arguments
        argv = [*args[:cut], "--workspace", str(ws), *args[cut:]]
        result = subprocess.run([str(BIN / "mltrain"), *argv],
                                capture_output=True, text=True, timeout=timeout,
                                cwd=tmp_path, env=dict(os.environ))
        return result.returncode, result.stdout, result.stderr

    return run


@pytest.fixture
def project(tmp_path):
    proj = tmp_path / "proj"
    write_script(proj, "train.py", """
        import os, sys
        from prefect_mltrain import Run
        run = Run.get_context()
        run.log("lr", float(sys.argv[2]))
        os.makedirs("outputs", exist_ok=True)
        open("outputs/model.txt", "w").write("weights")
        print("args", sys.argv[1:])
        sys.exit(int(os.environ.get("EXIT", "0")))
    """)
    write_script(proj, "fail.py", "raise SystemExit('bad data')\n")
    (proj / "requirements.txt").write_text("")
    return proj


def test_submit_runs_show_logs_download(cli, project, tmp_path):
    code, out, err = cli("submit", str(project), "train.py", "-e", "cli", "-t", "kind=test",
                         "--json", "--", "--lr", "0.5")
    assert code == 0, err
    details = json.loads(out)
    run_id = details["run_id"]
    assert details["status"] == "Completed" and details["tags"] == {"kind": "test"}

    code, out, _ = cli("runs", "list", "-e", "cli", "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == [run_id]
    code, out, _ = cli("runs", "show", run_id, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["metrics"] == {"lr": 0.5}
    assert "outputs/model.txt" in shown["files"]
    code, out, _ = cli("logs", run_id)
    assert code == 0 and "args ['--lr', '0.5']" in out

    code, out, _ = cli("download", run_id, "outputs/model.txt", "-o", "got", "--json")
    assert code == 0 and json.loads(out) == [str(Path("got/outputs/model.txt"))]
    assert (tmp_path / "got/outputs/model.txt").read_text() == "weights"
    code, out, _ = cli("download", run_id, "--prefix", "logs/", "-o", "all")
    assert code == 0 and (tmp_path / "all/logs/std_log.txt").is_file()
    code, _, err = cli("download", run_id, "outputs/missing.bin")
    assert code == 2 and "has no file 'outputs/missing.bin'" in err

    code, out, _ = cli("cancel", run_id, "--json")  # a finished run stays as it ended
    assert code == 0 and json.loads(out)["status"] == "Completed"


def test_failed_run_exits_1_and_no_wait_returns_the_id(cli, project):
    code, out, err = cli("submit", str(project), "fail.py", "--json")
    assert code == 1
    assert json.loads(out)["status"] == "Failed" and "bad data" in json.loads(out)["log_tail"]

    code, out, _ = cli("submit", str(project), "train.py", "--env",
                       str(project / "requirements.txt"), "--no-wait", "--json", "--",
                       "--lr", "1")
    assert code == 0 and json.loads(out)["run_id"].startswith("default_")
    code, out, _ = cli("logs", json.loads(out)["run_id"], "--follow")
    assert code == 0 and "Completed" in out


@pytest.mark.parametrize("args, message", [
    (["submit", "nowhere", "train.py"], "source_directory"),
    (["submit", "proj", "missing.py"], "script 'missing.py' not found"),
    (["submit", "proj", "train.py", "-t", "novalue"], "tags are key=value"),
    (["submit", "proj", "train.py", "--compute", "no-such-box", "--no-wait"],
     "no compute target named 'no-such-box'"),
    (["runs", "show", "nope"], "no run 'nope'"),
    (["compute", "create", "local"], "'local' is the built-in target"),
    (["compute", "create", "x", "--type", "dask", "--cluster-kwargs", "{bad"], "must be JSON"),
    (["compute", "delete", "never-made"], "no compute target named 'never-made'"),
    (["env", "build", "no-such-env"], "no environment 'no-such-env'"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, project, args, message):
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_compute_env_server_and_snapshot_commands(cli, project):
    code, out, _ = cli("compute", "create", "cli-box", "--type", "dask", "--address",
                       "tcp://127.0.0.1:1", "--json")
    assert code == 0 and json.loads(out)["type"] == "mltrain-dask-compute"
    code, out, _ = cli("compute", "list", "--json")
    names = {r["name"]: r for r in json.loads(out)}
    assert names["cli-box"]["work_pool"] == "cli-box" and names["local"]["work_pool"] is None
    code, out, _ = cli("compute", "delete", "cli-box", "--json")
    assert code == 0 and json.loads(out)["deleted"] == {
        "deployment": True, "work_pool": True, "block": True}

    code, out, _ = cli("env", "list", "--json")
    assert code == 0 and {"mltrain-minimal", "mltrain-sklearn"} <= {
        r["name"] for r in json.loads(out)}
    code, out, _ = cli("env", "build", "mltrain-minimal", "--json")
    assert code == 0 and Path(json.loads(out)["interpreter"]).exists()

    code, out, _ = cli("server", "status", "--json")
    assert code == 0 and json.loads(out)["api_url"] == os.environ["PREFECT_API_URL"]
    code, out, _ = cli("snapshot", str(project), "--json")
    assert code == 0 and {name for name, _ in json.loads(out)} == {
        "train.py", "fail.py", "requirements.txt"}


def test_snapshot_preview_over_the_budget_fails_as_a_submit_would(cli, project, tmp_path):
    from prefect_mltrain import Workspace

    Workspace(tmp_path / "ws").update_settings(snapshot_max_files=2)
    code, out, err = cli("snapshot", str(project))
    assert code == 2, (out, err)
    assert "over the snapshot budget: 3 files (limit 2)" in err and "Largest files" in err
    assert "Traceback" not in err


def test_help_of_every_command(cli):
    for args in (["--help"], ["submit", "--help"], ["compute", "create", "--help"],
                 ["runs", "list", "--help"], ["env", "build", "--help"]):
        code, out, _ = cli(*args)
        assert code == 0 and "Usage: mltrain" in out, args


@pytest.mark.timeout(180)
def test_the_first_start_of_the_local_server_says_what_it_waits_for(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["MLTRAIN_HOME"] = str(tmp_path / "home")  # no server runs for this home yet
    try:
        started = subprocess.run([str(BIN / "mltrain"), "server", "start"], env=env,
                                 capture_output=True, text=True, timeout=150)
        assert started.returncode == 0, started.stderr
        assert "starting the local Prefect server" in started.stderr
        assert "~20 s" in started.stderr
        again = subprocess.run([str(BIN / "mltrain"), "server", "start"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert "starting" not in again.stderr  # found running: nothing to wait for
    finally:
        subprocess.run([str(BIN / "mltrain"), "server", "stop"], env=env, timeout=60)


def test_a_damaged_record_is_named_and_the_others_still_listed(cli, tmp_path):
    from prefect_mltrain import Experiment, Workspace
    from prefect_mltrain.store import RunStore

    ws = Workspace(tmp_path / "ws")
    store = RunStore(ws)
    good = [store.create("many").run_id for _ in range(2)]
    bad = {}
    for damage in (b'{"run_id": "x", "exper', b"[]", None):
        record = store.create("many")
        path = f"experiments/many/runs/{record.run_id}/run.json"
        if damage is None:  # a field of the wrong type
            damage = ws.read_bytes(path).replace(b'"created_at": ', b'"created_at": "soon", "x": ')
        ws.write_bytes(path, damage)
        bad[record.run_id] = damage

    code, out, err = cli("runs", "list", "--json")
    assert code == 0, err
    assert sorted(r["run_id"] for r in json.loads(out)) == sorted(good)
    for run_id in bad:
        assert f"the record of run '{run_id}'" in err and "is damaged" in err
    code, out, err = cli("runs", "show", next(iter(bad)))
    assert code == 2 and "is damaged" in err and "Traceback" not in err
    runs = Experiment(ws, "many").get_runs()  # found in the index: every run is named,
    assert sorted(r.id for r in runs) == sorted(good + list(bad))  # and a damaged one says so
    with pytest.raises(WorkspaceError, match="is damaged"):
        [r for r in runs if r.id in bad][0].get_status()
    with pytest.warns(UserWarning, match="is damaged"):  # a filter reads: it leaves them out
        assert sorted(r.id for r in Experiment(ws, "many").get_runs(status="NotStarted")) \
            == sorted(good)
