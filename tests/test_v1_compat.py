"""A real Azure ML v1 project runs unchanged: its training scripts as they are, its submit
code with one import line added."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import BASE_IMAGE, write_script
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


# -- 2. azureml imports ---------------------------------------------------------------------

def run_v1_script(ws, tmp_path, **config):
    """V1_TRAIN submitted with ``config``: it completes with the expected metrics; returns
    the run and its std log."""
    write_script(tmp_path / "p", "train.py", V1_TRAIN)
    run = Experiment(ws, "v1").submit(ScriptRunConfig(tmp_path / "p", "train.py", **config))
    details = run.wait_for_completion(timeout=240, raise_on_error=False)
    log = run.download_file("logs/std_log.txt", tmp_path / "log").read_text()
    assert details["status"] == "Completed", log
    assert run.get_metrics() == EXPECTED
    return run, log


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["default", "built", "other-interpreter"])
def test_v1_script_runs_unchanged_on_local_compute(ws, tmp_path, kind):
    env = None
    if kind == "built":  # a virtualenv without prefect-mltrain in it
        env = Environment.get(ws, "AzureML-Minimal")
        env.docker.enabled = True
    elif kind == "other-interpreter":
        other = shutil.which("python3.11", path="/usr/bin:/usr/local/bin")
        if not other or Path(other).resolve() == Path(sys.executable).resolve():
            pytest.skip("no system Python 3.11 other than this interpreter")
        env = Environment("system-python")
        env.python.user_managed_dependencies = True
        env.python.interpreter_path = other
    run, log = run_v1_script(ws, tmp_path, environment=env)
    assert "child prefect_mltrain.run" in log
    if kind == "built":
        build_log = run.download_file("logs/environment_build.log", tmp_path / "b").read_text()
        assert "AzureML-Minimal: Azure's curated environment is prefect-mltrain's " \
               "mltrain-minimal" in build_log
        assert "docker.enabled is ignored on local compute" in build_log


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_v1_script_runs_unchanged_in_a_container(ws, tmp_path, docker_engine):
    from prefect_mltrain.compute import DockerCompute

    env = Environment("v1-docker")
    env.python.user_managed_dependencies = True  # the image's python3, nothing installed
    env.docker.base_image = BASE_IMAGE
    run_v1_script(ws, tmp_path, environment=env,
                  compute_target=DockerCompute(image=BASE_IMAGE, network_mode="host"))


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_v1_script_runs_unchanged_on_dask(ws, tmp_path, dask_cluster):
    from prefect_mltrain.compute import DaskCompute

    run_v1_script(ws, tmp_path, compute_target=DaskCompute(address=dask_cluster))


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_a_real_azureml_package_wins_over_the_shim(ws, tmp_path):
    write_script(tmp_path / "p" / "azureml", "__init__.py", "")
    write_script(tmp_path / "p" / "azureml" / "core", "__init__.py", "class Run:\n    REAL = 1\n")
    write_script(tmp_path / "p", "train.py", """
        from azureml.core import Run
        from prefect_mltrain import Run as Ours
        Ours.get_context().log("real", getattr(Run, "REAL", 0))
        try:
            import azureml.train.estimator
            Ours.get_context().log("shim_under_real", 1)
        except ImportError:
            Ours.get_context().log("shim_under_real", 0)
    """)
    run = Experiment(ws, "v1").submit(ScriptRunConfig(tmp_path / "p", "train.py"))
    assert run.wait_for_completion(timeout=240)["status"] == "Completed"
    assert run.get_metrics() == {"real": 1, "shim_under_real": 0}


def test_nothing_is_installed_azureml_needs_an_explicit_opt_in():
    out = python("""
        import importlib.util, sys
        from prefect_mltrain import Run, ScriptRunConfig
        print(importlib.util.find_spec("azureml") is None)
        import prefect_mltrain.compat
        from azureml.core import Workspace, Experiment, ScriptRunConfig as S, Environment
        from azureml.core.runconfig import (RunConfiguration, MpiConfiguration,
                                            PyTorchConfiguration, TensorflowConfiguration)
        from azureml.core.conda_dependencies import CondaDependencies
        from azureml.core.environment import Environment as E
        from azureml.train.estimator import Estimator
        from azureml.train.dnn import PyTorch, TensorFlow
        from azureml.train.sklearn import SKLearn
        print(S is ScriptRunConfig, E is Environment, Estimator.__module__)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "prefect_mltrain.estimator"]


@pytest.mark.parametrize("statement, message", [
    ("from azureml.core import Model", "there is no model registry"),
    ("from azureml.data import HDFSOutputDatasetConfig",
     "azureml.data has: FileDataset, OutputFileDatasetConfig"),
    ("from azureml.core import Keyvault", "not provided by prefect-mltrain; azureml.core has"),
    ("from azureml.core.compute import AmlCompute", "compute_target='gpu-box'"),
    ("from azureml.train.dnn import Mpi", "distributed_backend='mpi'"),
    ("from azureml.train.hyperdrive import HyperDriveStep",
     "azureml.train.hyperdrive has: BanditPolicy"),
    ("import azureml.pipeline.core", "pipelines are Prefect flows"),
])
def test_what_is_not_implemented_is_an_import_error_naming_what_exists(statement, message):
    out = python(f"""
        import prefect_mltrain.compat
        try:
            {statement}
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    assert out.returncode == 0, out.stderr
    assert "Error" in out.stdout and message in out.stdout, out.stdout


def test_the_bootstrap_keeps_the_sitecustomize_it_hides(tmp_path):
    """Debian's (or a venv's) sitecustomize still runs when the run's bootstrap is first."""
    from prefect_mltrain.compute.jobs import script_env

    write_script(tmp_path / "site", "sitecustomize.py", "import builtins; builtins.HIDDEN = 1\n")
    env = script_env({"PYTHONPATH": str(tmp_path / "site")}, sys.executable)
    out = python("import builtins; from azureml.core import Run; print(builtins.HIDDEN)",
                 env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_v1_submit_code_runs_with_only_an_import_line_added(tmp_path):
    """The seed article's driver code, verbatim but for `import prefect_mltrain.compat`."""
    project_folder = tmp_path / "proj"
    write_script(project_folder, "train.py", V1_TRAIN)
    (tmp_path / "mltrain.json").write_text(json.dumps({"url": str(tmp_path / "ws")}))
    driver = f"""
        import prefect_mltrain.compat
        from azureml.core import Workspace, Experiment, Environment, ScriptRunConfig

        ws = Workspace.from_config()
        experiment = Experiment(workspace=ws, name='my_experiment')
        my_environment = Environment("user-managed-env")
        my_environment.python.user_managed_dependencies = True
        project_folder = {str(project_folder)!r}
        script_run_config = ScriptRunConfig(source_directory=project_folder, script='train.py')
        script_run_config.run_config.target = 'local'
        script_run_config.run_config.environment = my_environment
        run = experiment.submit(config=script_run_config)
        run.wait_for_completion(show_output=True)
        run.download_file(name='outputs/model.txt', output_file_path='my_destination_path')
        print("STATUS", run.get_status(), open('my_destination_path').read())
    """
    out = python(driver, cwd=tmp_path, timeout=250)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "STATUS Completed v1" in out.stdout


V1_PROJECT = """
    from azureml.core.run import Run

    run = Run.get_context()
    run.log('Kernel type', 'linear')
    run.log('Penalty', 1.0)
    for i in range(2):
        child = run.child_run(name=f'child {i}')
        child.log('Hello from child run ', i)
        child.complete()
    run.log_table('ROC: train', {'fpr': [0.0, 0.5, 1.0], 'tpr': [0.0, 0.8, 1.0]})
    run.log_confusion_matrix('Confusion matrix', {
        'schema_type': 'confusion_matrix', 'schema_version': '1.0.0',
        'data': {'class_labels': ['0', '1'], 'matrix': [[5, 1], [2, 7]]}})
"""


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_a_v1_project_runs_end_to_end_with_only_the_import_line_changed(tmp_path):
    """One v1 project as a migrating user brings it: a script with spaced metric names,
    children, a table and a confusion matrix; driver code written positionally, with
    ``run_config.*``; Azure's recursive metrics shape read back."""
    project_folder = tmp_path / "proj"
    write_script(project_folder, "train.py", V1_PROJECT)
    (tmp_path / "mltrain.json").write_text(json.dumps({"url": str(tmp_path / "ws")}))
    driver = f"""
        import json
        import prefect_mltrain.compat
        from azureml.core import Workspace, Experiment, ScriptRunConfig

        ws = Workspace.from_config()
        src = ScriptRunConfig({str(project_folder)!r}, 'train.py', arguments=None)
        src.run_config.target = 'local'
        src.run_config.max_run_duration_seconds = 200
        run = Experiment(ws, 'svm').submit(src)
        run.wait_for_completion(show_output=False)
        children = {{c.id: (c.get_status(), c.get_metrics()) for c in run.get_children()}}
        print(json.dumps({{"status": run.get_status(), "id": run.id, "children": children,
                          "metrics": run.get_metrics(recursive=True)}}))
    """
    out = python(driver, cwd=tmp_path, timeout=250)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "Completed"
    children = result["children"]
    assert sorted(children.values(), key=lambda c: c[1]["Hello from child run "]) == [
        ["Completed", {"Hello from child run ": 0}], ["Completed", {"Hello from child run ": 1}]]
    metrics = result["metrics"]
    assert set(metrics) == {result["id"], *children}  # Azure's shape: {run_id: metrics}
    own = metrics[result["id"]]
    assert own["Kernel type"] == "linear" and own["Penalty"] == 1.0
    assert own["ROC: train"] == {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0]}
    assert own["Confusion matrix"]["data"]["matrix"] == [[5, 1], [2, 7]]


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


def test_pyspark_is_accepted_and_needs_a_target_that_runs_spark(ws, proj):
    from prefect_mltrain.compute import DaskCompute

    src = ScriptRunConfig(proj, "train.py", compute_target=DaskCompute(address="tcp://x:1"))
    src.run_config.framework = "PySpark"
    assert src.framework == "pyspark"
    src.run_config.spark.configuration = {"spark.sql.shuffle.partitions": 8}  # Azure's name
    assert src.spark.configuration == {"spark.sql.shuffle.partitions": "8"}
    with pytest.raises(ValidationError, match="'python' or 'pyspark'"):
        src.run_config.framework = "r"
    with pytest.raises(ConfigurationError, match="runs on a SparkCompute target"):
        Experiment(ws, "v1").submit(src)
    assert Experiment(ws, "v1").get_runs() == []  # nothing recorded
    rc = RunConfiguration(framework="pyspark")
    rc.spark.configuration = {"spark.executor.memory": "2g"}
    assert ScriptRunConfig(proj, "train.py", run_config=rc).spark.configuration == {
        "spark.executor.memory": "2g"}


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


# -- README: "Coming from Azure ML v1" --------------------------------------------------------

def readme_rows() -> list[tuple[str, str]]:
    """(v1 name, status) of every row of the README's v1 table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Coming from Azure ML v1", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and not set(cells[0]) <= {"-"} and cells[0] != "v1 name":
            status = re.match(r"(supported|different|not supported)\b", cells[1])
            assert status, f"README row without a status: {line}"
            rows.extend((name.strip("` "), status.group(1)) for name in cells[0].split(","))
    return rows


def test_readme_v1_table_is_true_every_supported_name_imports():
    rows = readme_rows()
    assert len(rows) > 50
    names = {name: status for name, status in rows if re.fullmatch(r"azureml(\.\w+)+", name)}
    assert names["azureml.core.Run"] == "supported"
    code = "import importlib, prefect_mltrain.compat\n" + "".join(
        f"getattr(importlib.import_module({n.rsplit('.', 1)[0]!r}), {n.rsplit('.', 1)[1]!r})\n"
        for n, status in names.items() if status != "not supported")
    out = python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    refused = [n for n, status in names.items() if status == "not supported"]
    checks = "".join(
        f"try:\n    getattr(importlib.import_module({n.rsplit('.', 1)[0]!r}), "
        f"{n.rsplit('.', 1)[1]!r})\nexcept ImportError as e:\n    print('refused', {n!r})\n"
        for n in refused)
    out = python("import importlib, prefect_mltrain.compat\n" + checks)
    assert sorted(re.findall(r"refused (\S+)", out.stdout)) == sorted(refused), out.stderr
