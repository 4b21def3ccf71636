"""Estimators: the Azure ML SDK v1 shorthand for a ``ScriptRunConfig`` and its ``Environment``.

An ``Estimator`` takes the v1 arguments (``script_params``, ``pip_packages``,
``distributed_backend``, ...) and translates them, at construction, into the one
representation a run has: ``to_script_run_config()``. ``SKLearn``, ``PyTorch`` and
``TensorFlow`` add their framework package and map their distributed backends.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from .config import (
    MpiConfiguration,
    PyTorchConfiguration,
    ScriptRunConfig,
    TensorflowConfiguration,
)
from .data.references import DataReference, DatasetConsumptionConfig, OutputFileDatasetConfig
from .environment import Environment
from .errors import ConfigurationError


class Estimator:
    """A training script with its packages, image and distribution, in v1 terms.

    Example:
        ```python
        est = Estimator("./my-sklearn-proj", entry_script="train.py",
                        script_params={"--regularization": 0.8, "--verbose": ""},
                        pip_packages=["scikit-learn"])
        run = Experiment(ws, "demo").submit(est)
        ```
    """

    _backends: ClassVar[tuple[str | None, ...]] = (
        None, "mpi", "pytorch", "nccl", "gloo", "tensorflow", "ps")
    _framework: ClassVar[tuple[str, ...]] = ()  # pip name first, then names that count as it
    framework_version: str | None = None

    def __init__(self, source_directory: str | os.PathLike, *, compute_target: Any = "local",
                 entry_script: str, script_params: Mapping[str, Any] | None = None,
                 node_count: int = 1, process_count_per_node: int = 1,
                 distributed_backend: str | None = None,
                 conda_packages: list[str] | None = None, pip_packages: list[str] | None = None,
                 pip_requirements_file: str | os.PathLike | None = None,
                 custom_docker_base_image: str | None = None,
                 environment_definition: Environment | None = None,
                 environment_variables: dict[str, str] | None = None,
                 max_run_duration_seconds: int | None = None, use_gpu: bool = False,
                 inputs: list[Any] | None = None):
        self.source_directory = source_directory
        self.compute_target = compute_target
        self.entry_script = entry_script
        self.script_params = script_params
        self.node_count = node_count
        self.process_count_per_node = process_count_per_node
        self.distributed_backend = distributed_backend
        self.conda_packages = conda_packages
        self.pip_packages = pip_packages
        self.pip_requirements_file = pip_requirements_file
        self.custom_docker_base_image = custom_docker_base_image
        self.environment_definition = environment_definition
        self.environment_variables = environment_variables
        self.max_run_duration_seconds = max_run_duration_seconds
        self.use_gpu = use_gpu  # GPUs come from the compute target; kept for v1 scripts
        self.inputs = inputs
        self.to_script_run_config()  # mistakes show here, not at submit

    def to_script_run_config(self) -> ScriptRunConfig:
        """A new ``ScriptRunConfig`` equivalent to this estimator."""
        if self.inputs:
            raise ConfigurationError(
                "inputs (data references) are not supported: pass data locations in "
                "script_params instead, e.g. {'--data-folder': '/mnt/data'}")
        try:
            config = ScriptRunConfig(
                source_directory=self.source_directory, script=self.entry_script,
                arguments=_arguments(self.script_params), compute_target=self.compute_target,
                max_run_duration_seconds=self.max_run_duration_seconds)
            config.environment = self._environment(Path(config.source_directory))
            config.distributed_job_config = self._distribution()
            return config
        except ValidationError as exc:
            raise ConfigurationError(_message(exc)) from None

    # -- environment ------------------------------------------------------------------------

    def _environment(self, source: Path) -> Environment | None:
        pip = _strings("pip_packages", self.pip_packages)
        conda = _strings("conda_packages", self.conda_packages)
        variables = self.environment_variables or {}
        if not isinstance(variables, Mapping):
            raise ConfigurationError("environment_variables must be a dict, e.g. {'SEED': '1'}")
        if self.environment_definition is not None:
            return self._given_environment(pip=pip, conda=conda, variables=variables)
        name = type(self).__name__.lower()
        name = name if name.endswith("estimator") else f"{name}-estimator"
        env = (Environment.from_pip_requirements(name, self._requirements_file(source))
               if self.pip_requirements_file is not None else Environment(name))
        deps = env.python.conda_dependencies
        framework = self._framework_requirement([*pip, *deps.pip_packages, *conda])
        deps.pip_packages = [*pip, *deps.pip_packages, *([framework] if framework else [])]
        deps.conda_packages = conda
        env.docker.base_image = self.custom_docker_base_image
        env.environment_variables = dict(variables)
        if not (deps.pip_packages or deps.conda_packages or deps.pip_options
                or env.docker.base_image):
            if not variables:
                return None  # the default environment
            env.python.user_managed_dependencies = True  # this Python, with the variables
        return env

    def _given_environment(self, *, pip: list[str], conda: list[str],
                           variables: Mapping[str, str]) -> Environment:
        if not isinstance(self.environment_definition, Environment):
            raise ConfigurationError(
                "environment_definition must be an Environment, e.g. "
                f"Environment.get(ws, 'my-env'); got {type(self.environment_definition).__name__}")
        given = [name for name, value in (
            ("conda_packages", conda), ("pip_packages", pip),
            ("pip_requirements_file", self.pip_requirements_file),
            ("custom_docker_base_image", self.custom_docker_base_image),
            ("environment_variables", variables), ("framework_version", self.framework_version),
        ) if value]
        if given:
            raise ConfigurationError(
                f"environment_definition conflicts with {', '.join(given)}: put them into the "
                "Environment (python.conda_dependencies, docker.base_image, "
                "environment_variables) or drop environment_definition")
        return self.environment_definition.model_copy(deep=True)

    def _requirements_file(self, source: Path) -> Path:
        path = source / Path(self.pip_requirements_file).expanduser()  # absolute stays so
        if not path.is_file():
            raise ConfigurationError(
                f"pip_requirements_file {str(path)!r} not found: relative paths are relative "
                "to source_directory")
        return path

    def _framework_requirement(self, listed: list[str]) -> str | None:
        """The framework's pip requirement, unless the user lists the package already."""
        if not self._framework:
            return None
        version = self.framework_version
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ConfigurationError(f"framework_version must be a string like '2.1', not "
                                     f"{version!r}")
        names = {_package_name(p) for p in listed}
        if names & {_package_name(n) for n in self._framework}:
            if version is not None:
                raise ConfigurationError(
                    f"framework_version={version!r} conflicts with the {self._framework[0]} "
                    "you listed in your packages: give the version in one place only")
            return None
        if version is None:
            return self._framework[0]
        return self._framework[0] + (version if version[:1] in "<>=!~" else f"=={version}")

    # -- distribution -----------------------------------------------------------------------

    def _distribution(self) -> Any:
        nodes = _count("node_count", self.node_count)
        per_node = _count("process_count_per_node", self.process_count_per_node)
        backend = self.distributed_backend
        if backend not in self._backends:
            accepted = ", ".join(repr(b) for b in self._backends)
            raise ConfigurationError(f"{type(self).__name__} does not support "
                                     f"distributed_backend={backend!r}: use one of {accepted}")
        if backend is None:
            if nodes * per_node > 1:
                others = ", ".join(repr(b) for b in self._backends[2:])
                hint = (f"set distributed_backend='mpi' (or {others})" if others else
                        f"{type(self).__name__} runs one process; leave both at 1")
                raise ConfigurationError(
                    f"node_count={nodes} x process_count_per_node={per_node} asks for "
                    f"{nodes * per_node} processes but distributed_backend is None: {hint}")
            return None
        if backend == "mpi":
            return MpiConfiguration(process_count_per_node=per_node, node_count=nodes)
        if backend in ("pytorch", "nccl", "gloo"):
            return PyTorchConfiguration(
                communication_backend="nccl" if backend == "nccl" else "gloo",
                process_count=nodes * per_node, node_count=nodes)
        return self._tensorflow_config(nodes * per_node)

    def _tensorflow_config(self, ranks: int) -> TensorflowConfiguration:
        return TensorflowConfiguration(worker_count=ranks)


class _Framework(Estimator):
    """An estimator whose framework package can be pinned with ``framework_version``."""

    def __init__(self, source_directory: str | os.PathLike, *,
                 framework_version: str | None = None, **kwargs: Any):
        self.framework_version = framework_version
        super().__init__(source_directory, **kwargs)


class SKLearn(_Framework):
    """An ``Estimator`` with scikit-learn installed; runs one process.

    Example:
        ```python
        est = SKLearn("./proj", entry_script="train.py", script_params={"--C": 0.8})
        ```
    """

    _backends = (None,)
    _framework = ("scikit-learn", "sklearn")


class PyTorch(_Framework):
    """An ``Estimator`` with torch installed; ``distributed_backend`` 'nccl', 'gloo' or 'mpi'.

    Example:
        ```python
        est = PyTorch("./proj", entry_script="train.py", framework_version="2.3.1",
                      node_count=2, distributed_backend="gloo")
        ```
    """

    _backends = (None, "mpi", "pytorch", "nccl", "gloo")
    _framework = ("torch", "pytorch")


class TensorFlow(_Framework):
    """An ``Estimator`` with tensorflow installed; 'ps' (``TF_CONFIG``) or 'mpi' (Horovod).

    Example:
        ```python
        est = TensorFlow("./proj", entry_script="train.py", worker_count=2,
                         parameter_server_count=1, distributed_backend="ps")
        ```
    """

    _backends = (None, "mpi", "tensorflow", "ps")
    _framework = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu")

    def __init__(self, source_directory: str | os.PathLike, *,
                 worker_count: int = 1, parameter_server_count: int = 0, **kwargs: Any):
        self.worker_count = worker_count
        self.parameter_server_count = parameter_server_count
        super().__init__(source_directory, **kwargs)

    def _distribution(self) -> Any:
        workers = _count("worker_count", self.worker_count)
        servers = _count("parameter_server_count", self.parameter_server_count, minimum=0)
        if self.distributed_backend in (None, "mpi") and workers + servers > 1:
            raise ConfigurationError(
                f"worker_count={workers} and parameter_server_count={servers} need "
                "distributed_backend='ps' (or 'tensorflow'); for MPI/Horovod set node_count "
                "and process_count_per_node instead")
        return super()._distribution()

    def _tensorflow_config(self, ranks: int) -> TensorflowConfiguration:
        if ranks > 1:
            raise ConfigurationError(
                f"distributed_backend={self.distributed_backend!r} counts tasks with "
                "worker_count= and parameter_server_count=; leave node_count and "
                "process_count_per_node at 1 (or use distributed_backend='mpi')")
        return TensorflowConfiguration(worker_count=self.worker_count,
                                       parameter_server_count=self.parameter_server_count)


def _arguments(script_params: Any) -> list[Any]:
    """``{"--alpha": 0.5, "--flag": ""}`` -> ``["--alpha", 0.5, "--flag"]``."""
    if script_params is None:
        return []
    if not isinstance(script_params, Mapping):
        raise ConfigurationError("script_params must be a dict of argument to value, e.g. "
                                 f"{{'--alpha': 0.5, '--verbose': ''}}; got {script_params!r}")
    args: list[Any] = []
    for key, value in script_params.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"script_params key {key!r} must be a string like '--lr'")
        args.append(key)
        if value is None or (isinstance(value, str) and not value):
            continue  # a bare flag
        if hasattr(value, "_as_argument"):  # a dataset given as it is: mounted, as in v1
            value = value._as_argument()
        if not isinstance(value, str | int | float | os.PathLike | DataReference
                          | DatasetConsumptionConfig | OutputFileDatasetConfig):
            raise ConfigurationError(f"script_params[{key!r}] must be a string, number, "
                                     f"path or data reference, not {type(value).__name__}")
        args.append(value)
    return args


def _strings(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{name} must be a list of strings, e.g. ['numpy>=1.26']")
    return list(value)


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


def _package_name(spec: str) -> str:
    """The canonical package name of a pip requirement or a conda spec (``ch::pkg=1.0``)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    spec = spec.split("::")[-1].strip()
    try:
        return canonicalize_name(Requirement(spec).name)
    except InvalidRequirement:
        return canonicalize_name(re.match(r"[A-Za-z0-9._-]*", spec).group())


def _message(exc: ValidationError) -> str:
    """A pydantic error as the validators wrote it, without pydantic's framing."""
    parts = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
