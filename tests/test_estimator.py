"""An Estimator is the v1 shorthand for a ScriptRunConfig: same record, same environment."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from prefect_mltrain import (
    ConfigurationError,
    Environment,
    Estimator,
    MpiConfiguration,
    PyTorch,
    PyTorchConfiguration,
    ScriptRunConfig,
    SKLearn,
    TensorFlow,
    TensorflowConfiguration,
)
from prefect_mltrain.environment_build import resolve_interpreter


@pytest.fixture
def proj(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("print('hi')\n")
    return tmp_path / "proj"


def pip(est):
    return est.to_script_run_config().environment.python.conda_dependencies.pip_packages


def test_estimator_equals_the_hand_written_script_run_config(proj):
    est = Estimator(proj, entry_script="train.py",
                    script_params={"--data-folder": "/data", "--regularization": 0.8},
                    pip_packages=["numpy>=1.26"], conda_packages=["libgomp"],
                    custom_docker_base_image="python:3.11-slim",
                    environment_variables={"OMP_NUM_THREADS": "1"},
                    max_run_duration_seconds=600)

    env = Environment("estimator")
    env.python.conda_dependencies.pip_packages = ["numpy>=1.26"]
    env.python.conda_dependencies.conda_packages = ["libgomp"]
    env.docker.base_image = "python:3.11-slim"
    env.environment_variables = {"OMP_NUM_THREADS": "1"}
    by_hand = ScriptRunConfig(source_directory=proj, script="train.py",
                              arguments=["--data-folder", "/data", "--regularization", 0.8],
                              environment=env, max_run_duration_seconds=600)

    src = est.to_script_run_config()
    assert src.model_dump(mode="json") == by_hand.model_dump(mode="json")
    assert src.environment.spec_hash() == env.spec_hash()
    assert src.distributed_job_config is None


def test_nothing_asked_means_the_default_environment(proj):
    src = Estimator(proj, entry_script="train.py").to_script_run_config()
    assert src.environment is None
    assert src.arguments == [] and src.compute_target == "local"
    assert src.model_dump(mode="json") == ScriptRunConfig(
        source_directory=proj, script="train.py").model_dump(mode="json")


def test_variables_alone_keep_this_python(proj):
    env = Estimator(proj, entry_script="train.py",
                    environment_variables={"SEED": "7"}).to_script_run_config().environment
    assert env.python.user_managed_dependencies and not env.needs_build
    assert resolve_interpreter(env.build_spec()) == sys.executable
    assert env.process_env() == {"SEED": "7"}


def test_script_params_keep_their_order_and_bare_flags(proj):
    params = {"--zeta": 1, "--alpha": 0.5, "--flag": "", "--verbose": None, "--name": "x"}
    src = Estimator(proj, entry_script="train.py", script_params=params).to_script_run_config()
    assert src.arguments == ["--zeta", 1, "--alpha", 0.5, "--flag", "--verbose", "--name", "x"]
    assert src.argv("python")[3:] == ["--zeta", "1", "--alpha", "0.5", "--flag", "--verbose",
                                      "--name", "x"]


def test_each_call_gives_a_fresh_config(proj):
    est = Estimator(proj, entry_script="train.py", script_params={"--lr": 0.1})
    first = est.to_script_run_config()
    est.script_params["--lr"] = 0.2
    assert first.arguments == ["--lr", 0.1]
    assert est.to_script_run_config().arguments == ["--lr", 0.2]


@pytest.mark.parametrize("backend, expected", [
    ("mpi", MpiConfiguration(process_count_per_node=2, node_count=3)),
    ("pytorch", PyTorchConfiguration(communication_backend="gloo", process_count=6,
                                     node_count=3)),
    ("gloo", PyTorchConfiguration(communication_backend="gloo", process_count=6,
                                  node_count=3)),
    ("nccl", PyTorchConfiguration(communication_backend="nccl", process_count=6,
                                  node_count=3)),
    ("tensorflow", TensorflowConfiguration(worker_count=6)),
])
def test_distributed_backend_maps_to_the_job_configuration(proj, backend, expected):
    est = Estimator(proj, entry_script="train.py", node_count=3, process_count_per_node=2,
                    distributed_backend=backend)
    assert est.to_script_run_config().distributed_job_config == expected


def test_framework_flavours_map_their_backends(proj):
    torch = PyTorch(proj, entry_script="train.py", node_count=2, distributed_backend="nccl")
    assert torch.to_script_run_config().distributed_job_config == PyTorchConfiguration(
        communication_backend="nccl", process_count=2, node_count=2)
    ps = TensorFlow(proj, entry_script="train.py", worker_count=2, parameter_server_count=1,
                    distributed_backend="ps")
    assert ps.to_script_run_config().distributed_job_config == TensorflowConfiguration(
        worker_count=2, parameter_server_count=1)
    horovod = TensorFlow(proj, entry_script="train.py", node_count=2, process_count_per_node=2,
                         distributed_backend="mpi")
    assert horovod.to_script_run_config().distributed_job_config == MpiConfiguration(
        process_count_per_node=2, node_count=2)
    single = SKLearn(proj, entry_script="train.py").to_script_run_config()
    assert single.distributed_job_config is None


@pytest.mark.parametrize("cls, kwargs, expected", [
    (SKLearn, {}, ["scikit-learn"]),
    (SKLearn, {"framework_version": "1.5.1"}, ["scikit-learn==1.5.1"]),
    (PyTorch, {}, ["torch"]),
    (PyTorch, {"framework_version": "2.3.1"}, ["torch==2.3.1"]),
    (PyTorch, {"framework_version": ">=2.2"}, ["torch>=2.2"]),
    (TensorFlow, {"framework_version": "2.16"}, ["tensorflow==2.16"]),
    (TensorFlow, {"pip_packages": ["numpy"]}, ["numpy", "tensorflow"]),
])
def test_flavours_add_their_framework_package(proj, cls, kwargs, expected):
    est = cls(proj, entry_script="train.py", **kwargs)
    assert pip(est) == expected
    assert est.to_script_run_config().environment.name == f"{cls.__name__.lower()}-estimator"


@pytest.mark.parametrize("cls, kwargs, expected_pip", [
    (SKLearn, {"pip_packages": ["Scikit_Learn==1.4.2"]}, ["Scikit_Learn==1.4.2"]),
    (SKLearn, {"conda_packages": ["conda-forge::scikit-learn=1.5"]}, []),
    (PyTorch, {"pip_packages": ["torch==2.2.0", "torchvision"]}, ["torch==2.2.0", "torchvision"]),
    (PyTorch, {"conda_packages": ["pytorch"]}, []),
    (TensorFlow, {"pip_packages": ["tensorflow-cpu==2.16.1"]}, ["tensorflow-cpu==2.16.1"]),
])
def test_a_package_the_user_lists_wins(proj, cls, kwargs, expected_pip):
    assert pip(cls(proj, entry_script="train.py", **kwargs)) == expected_pip


def test_pip_requirements_file_is_honoured(proj):
    (proj / "requirements.txt").write_text(
        "--extra-index-url https://example.org/simple\nscikit-learn==1.5.1\n-r more.txt\n")
    (proj / "more.txt").write_text("pandas  # for the data\n")
    est = SKLearn(proj, entry_script="train.py", pip_packages=["joblib"],
                  pip_requirements_file="requirements.txt")
    deps = est.to_script_run_config().environment.python.conda_dependencies
    assert deps.pip_packages == ["joblib", "scikit-learn==1.5.1", "pandas"]
    assert deps.pip_options == ["--extra-index-url https://example.org/simple"]

    absolute = Estimator(proj, entry_script="train.py",
                         pip_requirements_file=proj / "more.txt")
    assert pip(absolute) == ["pandas"]


def test_environment_definition_is_used_as_given(proj):
    env = Environment("team-env")
    env.python.conda_dependencies.pip_packages = ["torch==2.3.1"]
    env.environment_variables = {"A": "1"}
    src = PyTorch(proj, entry_script="train.py",
                  environment_definition=env).to_script_run_config()
    assert src.environment == env and src.environment is not env
    assert src.environment.spec_hash() == env.spec_hash()


@pytest.mark.parametrize("kwargs", [
    {"pip_packages": ["numpy"]},
    {"conda_packages": ["numpy"]},
    {"custom_docker_base_image": "python:3.11"},
    {"pip_requirements_file": "requirements.txt"},
    {"environment_variables": {"A": "1"}},
])
def test_environment_definition_conflicts_name_the_fix(proj, kwargs):
    with pytest.raises(ConfigurationError,
                       match=f"environment_definition conflicts with {next(iter(kwargs))}: "
                             "put them into the Environment"):
        Estimator(proj, entry_script="train.py", environment_definition=Environment("e"),
                  **kwargs)


@pytest.mark.parametrize("cls, kwargs, message", [
    (Estimator, {"node_count": 2}, "distributed_backend is None: set distributed_backend='mpi'"),
    (Estimator, {"process_count_per_node": 4}, "asks for 4 processes"),
    (Estimator, {"distributed_backend": "horovod"}, "use one of None, 'mpi', 'pytorch'"),
    (Estimator, {"node_count": 0}, "node_count must be an integer >= 1"),
    (Estimator, {"process_count_per_node": "2"}, "process_count_per_node must be an integer"),
    (Estimator, {"script_params": ["--lr", 0.1]}, "script_params must be a dict"),
    (Estimator, {"script_params": {"--data": object()}}, r"script_params\['--data'\] must be"),
    (Estimator, {"pip_packages": "numpy"}, "pip_packages must be a list of strings"),
    (Estimator, {"pip_requirements_file": "nope.txt"}, "relative to source_directory"),
    (Estimator, {"environment_definition": "my-env"}, "must be an Environment"),
    (Estimator, {"inputs": ["ds"]}, "pass data locations in script_params"),
    (Estimator, {"max_run_duration_seconds": 0}, "max_run_duration_seconds: .*greater than 0"),
    (SKLearn, {"node_count": 2}, "SKLearn runs one process; leave both at 1"),
    (SKLearn, {"distributed_backend": "mpi"}, "SKLearn does not support"),
    (PyTorch, {"distributed_backend": "ps"}, "use one of None, 'mpi', 'pytorch', 'nccl'"),
    (PyTorch, {"framework_version": "2.3", "pip_packages": ["torch"]},
     "give the version in one place only"),
    (PyTorch, {"framework_version": 2.3}, "framework_version must be a string"),
    (TensorFlow, {"worker_count": 2}, "need distributed_backend='ps'"),
    (TensorFlow, {"node_count": 2, "distributed_backend": "ps"}, "leave node_count"),
    (TensorFlow, {"framework_version": "2.16", "environment_definition": Environment("e")},
     "conflicts with framework_version"),
])
def test_bad_inputs_are_configuration_errors_that_name_the_fix(proj, cls, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        cls(proj, entry_script="train.py", **kwargs)


@pytest.mark.parametrize("source, script", [
    ("/no/such/dir", "train.py"), (None, "missing.py"), (None, "../outside.py"),
])
def test_source_and_script_mistakes_keep_script_run_configs_message(proj, source, script):
    source = source or proj
    with pytest.raises(ValidationError) as expected:
        ScriptRunConfig(source_directory=source, script=script)
    with pytest.raises(ConfigurationError) as got:
        Estimator(source, entry_script=script)
    assert expected.value.errors()[0]["msg"].removeprefix("Value error, ") in str(got.value)
