"""Azure ML v1 configuration code, as Azure's docs write it, runs unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_script
from pydantic import ValidationError

from prefect_mltrain import (
    CondaDependencies,
    ConfigurationError,
    Environment,
    EnvironmentBuildError,
    Experiment,
    MLTrainError,
    MpiConfiguration,
    RunConfiguration,
    ScriptRunConfig,
)

ROOT = Path(__file__).resolve().parents[1]

# A v1 training script, as Azure's docs write it: no line of it mentions prefect-mltrain.
V1_TRAIN = """
    import subprocess, sys
    from azureml.core import Run
    from azureml.core.run import Run as RunToo

    run = Run.get_context()
    run.log("same_class", RunToo is Run)
    run.log("implemented_by", Run.__module__)
    run.log("prefect_imported", "prefect" in sys.modules)
    run.log("pydantic_imported", "pydantic" in sys.modules)
    child = subprocess.run([sys.executable, "-c", "from azureml.core import Run; print('child', Run.__module__)"],
                           capture_output=True, text=True)
    print(child.stdout.strip(), child.stderr.strip()[-300:])
    run.log("child_ok", child.returncode == 0)
    open("outputs/model.txt", "w").write("v1")
"""
EXPECTED = {"same_class": True, "implemented_by": "prefect_mltrain.run",
            "prefect_imported": False, "pydantic_imported": False, "child_ok": True}


def python(code: str, env: dict[str, str] | None = None, cwd: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the finder never leaks into this test process)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                          timeout=timeout)


# -- 3. ScriptRunConfig as Azure's docs write it ---------------------------------------------

@pytest.fixture
def proj(tmp_path):
    write_script(tmp_path / "proj", "train.py", "print('hi')\n")
    return tmp_path / "proj"


def test_positional_source_and_script_and_arguments_none(proj):
    src = ScriptRunConfig(proj, "train.py", arguments=None, compute_target=None)
    assert (src.source_directory, src.script) == (str(proj.resolve()), "train.py")
    assert src.arguments == [] and src.compute_target == "local"
    with pytest.raises(ValidationError, match="not found in"):
        ScriptRunConfig(proj, "missing.py")


def test_run_config_is_a_view_of_the_config_not_a_copy(proj):
    src = ScriptRunConfig(proj, "train.py")
    env = Environment("myenv")
    src.run_config.target = "gpu-box"
    src.run_config.environment = env
    src.run_config.arguments = ["--lr", 0.1]
    src.run_config.max_run_duration_seconds = 60
    assert (src.compute_target, src.environment, src.arguments, src.max_run_duration_seconds) \
        == ("gpu-box", env, ["--lr", 0.1], 60)
    src.compute_target = "local"
    src.arguments = ["--x"]
    assert (src.run_config.target, src.run_config.arguments) == ("local", ["--x"])
    with pytest.raises(ValidationError, match="greater than 0"):  # validated as the field is
        src.run_config.max_run_duration_seconds = 0
    with pytest.raises(ConfigurationError, match="needs a distributed job"):
        src.run_config.node_count = 2
    src.distributed_job_config = MpiConfiguration(node_count=2)
    src.run_config.node_count = 3
    assert src.distributed_job_config.node_count == 3 == src.run_config.node_count
    with pytest.raises(AttributeError, match="has no 'taget'"):
        src.run_config.taget = "typo"


def test_a_run_configuration_made_beforehand_is_taken_by_the_config(proj):
    rc = RunConfiguration(arguments=["--a", 1], framework="Python")
    rc.target = "gpu-box"
    src = ScriptRunConfig(proj, "train.py", run_config=rc)
    assert (src.compute_target, src.arguments, src.framework) == ("gpu-box", ["--a", 1],
                                                                    "python")


def test_pyspark_is_accepted_and_submitting_it_says_not_yet(ws, proj):
    src = ScriptRunConfig(proj, "train.py")
    src.run_config.framework = "PySpark"
    assert src.framework == "pyspark"
    with pytest.raises(ValidationError, match="'python' or 'pyspark'"):
        src.run_config.framework = "r"
    with pytest.raises(ConfigurationError, match="pyspark' is not supported yet"):
        Experiment(ws, "v1").submit(src)
    assert Experiment(ws, "v1").get_runs() == []  # nothing recorded


# -- 6. Environment as v1 writes it ----------------------------------------------------------

def test_conda_dependencies_as_v1_writes_them():
    cd = CondaDependencies.create(python_version="3.11", pip_packages=["pandas"],
                                  conda_packages=["libgomp"], pip_indexurl="https://pypi.org/simple")
    cd.add_pip_package("numpy")
    cd.add_conda_package("zlib")
    env = Environment("v1")
    env.python.conda_dependencies = cd
    spec = env.build_spec()
    assert spec.python == "3.11" and spec.pip == ("numpy", "pandas")
    assert spec.conda == ("libgomp", "zlib") and spec.pip_options == (
        "--index-url https://pypi.org/simple",)
    env.python.python_version = "3.12"
    with pytest.raises(MLTrainError, match="keep one of them"):
        env.build_spec()


def test_python_version_in_a_conda_file_is_honoured(tmp_path):
    yml = tmp_path / "environment.yml"
    yml.write_text("dependencies:\n  - python=3.11\n  - pip\n")
    built = Environment.from_conda_specification("py311", yml).build_local()
    version = subprocess.run([built.interpreter, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout
    assert version.strip() == "(3, 11)"


def test_a_python_that_is_not_here_is_a_clear_error_never_dropped(tmp_path):
    yml = tmp_path / "environment.yml"
    yml.write_text("dependencies:\n  - python=3.1\n")
    env = Environment.from_conda_specification("py31", yml)
    assert env.python.python_version == "3.1"
    with pytest.raises(EnvironmentBuildError, match=r"Python 3.1 is not installed.*uv python "
                                                    r"install 3.1"):
        env.build_local()
    yml.write_text("dependencies:\n  - python>=3.9\n")
    with pytest.raises(MLTrainError, match="pin one Python version"):
        Environment.from_conda_specification("range", yml)


@pytest.mark.parametrize("azure, ours", [
    ("AzureML-sklearn-1.0-ubuntu20.04-py38-cpu", "mltrain-sklearn"),
    ("AzureML-Scikit-learn-0.20.3", "mltrain-sklearn"),
    ("AzureML-PyTorch-1.6-CPU", "mltrain-pytorch-cpu"),
    ("AzureML-pytorch-1.10-ubuntu18.04-py38-cuda11-gpu", "mltrain-pytorch-cpu"),
    ("AzureML-TensorFlow-2.3-CPU", "mltrain-tensorflow-cpu"),
    ("AzureML-Minimal", "mltrain-minimal"),
])
def test_azure_curated_names_map_to_ours(ws, azure, ours):
    env = Environment.get(workspace=ws, name=azure)
    assert env.name == azure
    assert env.spec_hash() == Environment.get(ws, ours).spec_hash()
    assert ours in env.build_notes()[0]


def test_an_azure_curated_name_without_a_match_names_those_that_map(ws):
    with pytest.raises(MLTrainError, match="AzureML-sklearn-\\*, AzureML-pytorch-\\*"):
        Environment.get(ws, "AzureML-lightgbm-3.2-ubuntu18.04-py37-cpu")
