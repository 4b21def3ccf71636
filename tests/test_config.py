"""Bad configuration fails at construction, with a message that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from prefect_mltrain import (
    Environment,
    Experiment,
    MpiConfiguration,
    PyTorchConfiguration,
    Run,
    ScriptRunConfig,
)


@pytest.fixture
def proj(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("print('hi')\n")
    return tmp_path / "proj"


def test_valid_config_normalises_paths_and_arguments(proj):
    src = ScriptRunConfig(source_directory=proj, script="train.py",
                          arguments=["--lr", 0.01, "--epochs", 3, "--data", Path("/data/x")])
    assert src.source_directory == str(proj.resolve())
    assert src.arguments == ["--lr", 0.01, "--epochs", 3, "--data", "/data/x"]
    assert src.argv("python")[-6:] == ["--lr", "0.01", "--epochs", "3", "--data", "/data/x"]
    assert src.compute_target == "local"


def test_command_instead_of_script(proj):
    src = ScriptRunConfig(source_directory=proj, command="python -m http.server --help")
    assert src.command == ["python", "-m", "http.server", "--help"]


@pytest.mark.parametrize("kwargs, message", [
    ({"source_directory": "/no/such/dir", "script": "train.py"}, "does not exist"),
    ({"script": "missing.py"}, "not found in"),
    ({"script": "../outside.py"}, "outside source_directory"),
    ({}, "exactly one of script= or command="),
    ({"script": "train.py", "command": ["python"]}, "exactly one of script= or command="),
    ({"script": "train.py", "max_run_duration_seconds": 0}, "greater than 0"),
    ({"script": "train.py", "max_run_duration_seconds": "soon"}, "valid integer"),
    ({"script": "train.py", "arguments": {"--lr": 0.1}}, "arguments must be a list"),
    ({"script": "train.py", "compute_target": 42}, "compute_target must be"),
    ({"script": "train.py", "scirpt": "x"}, "Extra inputs are not permitted"),
])
def test_bad_config_is_a_clear_error_at_construction(proj, kwargs, message):
    (proj.parent / "outside.py").write_text("")
    kwargs = {"source_directory": proj, **kwargs}
    with pytest.raises(ValidationError, match=message):
        ScriptRunConfig(**kwargs)


def test_arguments_as_one_string_are_split_as_a_shell_would_as_v1_takes_them(proj):
    config = ScriptRunConfig(proj, "train.py", arguments="--lr 0.1 --name 'a b'")
    assert config.arguments == ["--lr", "0.1", "--name", "a b"]


def test_source_directory_that_is_a_file(proj):
    with pytest.raises(ValidationError, match="is a file: pass its folder"):
        ScriptRunConfig(source_directory=proj / "train.py", script="train.py")


def test_distributed_configurations(proj):
    src = ScriptRunConfig(source_directory=proj, script="train.py",
                          distributed_job_config=PyTorchConfiguration(process_count=4,
                                                                      node_count=2))
    assert src.distributed_job_config.world_size == 4
    assert MpiConfiguration(process_count_per_node=2, node_count=3).world_size == 6
    with pytest.raises(ValidationError):
        PyTorchConfiguration(communication_backend="carrier-pigeon")


def test_environment_record_never_holds_secret_values():
    env = Environment("e", environment_variables={"A": "1"})
    env.secret_environment_variables = {"TOKEN": "hunter2"}
    env.python.user_managed_dependencies = True
    assert env.name == "e"
    assert env.model_dump(mode="json")["secret_environment_variables"] == ["TOKEN"]
    assert "hunter2" not in repr(env) and "hunter2" not in str(env.model_dump(mode="json"))
    assert env.process_env() == {"A": "1", "TOKEN": "hunter2"}
    with pytest.raises(ValidationError):
        env.python.user_managed_dependencies = "maybe"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 300, " lead"])
def test_experiment_names_are_validated(ws, bad):
    with pytest.raises(ValueError, match="invalid experiment name"):
        Experiment(ws, bad)


def test_offline_run_validates_metric_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in ("MLTRAIN_CONTEXT_DIR", "MLTRAIN_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    run = Run.get_context()
    assert run.is_offline
    with pytest.raises(ValueError, match="invalid metric name"):
        run.log("", 1)
    with pytest.raises(ValueError, match="invalid metric name"):
        run.log(None, 1)
    with pytest.raises(ValueError, match="invalid tag key"):
        run.tag("bad key", 1)
    with pytest.raises(ValueError, match="reserved for the run record"):
        run.upload_file("run.json", __file__)
    run.log("ok", float("nan"))
    run.log("../evil", 1)  # a name, as Azure takes any: never a path
    assert run.get_metrics() == {"ok": "nan", "../evil": 1}
