"""What to run and where: ``ScriptRunConfig`` and the distributed job configurations.

These are pydantic models because they are also the parameters of the ``submit_run``
flow: the Prefect UI renders them as a form and the server validates them. A run record
keeps its configuration in this same form; validated with the context
``{"recorded": True}`` (a record read back on any machine), the checks that look at this
machine's files are skipped.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .data.references import DataArgument, data_arguments
from .environment import Environment, _Model
from .errors import ConfigurationError


class MpiConfiguration(_Model):
    """An MPI job: ``node_count`` nodes with ``process_count_per_node`` ranks each."""

    kind: Literal["mpi"] = "mpi"
    process_count_per_node: int = Field(1, ge=1, description="Ranks started on each node.")
    node_count: int = Field(1, ge=1, description="Number of nodes (hosts) of the job.")

    @property
    def world_size(self) -> int:
        return self.process_count_per_node * self.node_count


class PyTorchConfiguration(_Model):
    """A ``torch.distributed`` job; ranks get the torchrun environment contract."""

    kind: Literal["pytorch"] = "pytorch"
    communication_backend: Literal["gloo", "nccl", "mpi"] = Field(
        "gloo", description="torch.distributed backend (gloo runs on CPU)."
    )
    process_count: int | None = Field(None, ge=1, description="Total ranks (default: node_count).")
    node_count: int = Field(1, ge=1, description="Number of nodes (hosts) of the job.")

    @property
    def world_size(self) -> int:
        return self.process_count or self.node_count


class TensorflowConfiguration(_Model):
    """A TensorFlow ``MultiWorkerMirroredStrategy`` / parameter-server job (``TF_CONFIG``)."""

    kind: Literal["tensorflow"] = "tensorflow"
    worker_count: int = Field(1, ge=1, description="Number of worker tasks.")
    parameter_server_count: int = Field(0, ge=0, description="Number of parameter servers.")

    @property
    def world_size(self) -> int:
        return self.worker_count + self.parameter_server_count


class SparkConfiguration(_Model):
    """v1's ``run_config.spark``: Spark properties of a ``framework="pyspark"`` run, merged
    over its Spark target's ``conf`` (the run's value wins)."""

    configuration: dict[str, str] = Field(
        default_factory=dict, description="Spark properties, e.g. "
        "{'spark.sql.shuffle.partitions': '8'}.")

    @field_validator("configuration", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        return spark_properties(value)


def spark_properties(value: Any) -> Any:
    """Spark properties as Spark reads them, strings (``True`` is ``"true"``)."""
    if isinstance(value, dict):
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in value.items()}
    return value


DistributedConfig = Annotated[
    MpiConfiguration | PyTorchConfiguration | TensorflowConfiguration,
    Field(discriminator="kind"),
]


class ScriptRunConfig(_Model):
    """Everything needed to run a training script once.

    The first two arguments may be positional, as Azure's docs write them, and
    ``run_config`` is v1's view of the same fields (see ``RunConfiguration``).

    Example:
        ```python
        src = ScriptRunConfig("proj", "train.py", arguments=["--alpha", 0.5],
                              max_run_duration_seconds=600)
        src.run_config.target = "gpu-box"          # the same as src.compute_target
        run = Experiment(ws, "demo").submit(src)
        ```
    """

    source_directory: str = Field(
        ".", description="Folder captured as the run's snapshot; the script runs inside it."
    )
    script: str | None = Field(
        None, description="Python file to run, relative to source_directory."
    )
    command: list[str] | None = Field(
        None, description="A command to run instead of a script, e.g. 'python -m pkg.train'."
    )
    arguments: list[str | int | float | bool | DataArgument] = Field(
        default_factory=list, description="Command-line arguments passed to the script; data "
        "references (ds.as_mount(), dataset.as_named_input('x').as_download(), "
        "OutputFileDatasetConfig) become local paths where the script runs."
    )
    compute_target: Any = Field(
        "local", description="Where the script runs: 'local' (default), the name of a "
        "saved compute target, or a compute target."
    )
    environment: Environment | None = Field(
        None, description="Python environment; the default environment when empty."
    )
    max_run_duration_seconds: int | None = Field(
        None, gt=0, description="Cancel the run when it runs longer than this."
    )
    distributed_job_config: DistributedConfig | None = Field(
        None, description="MPI, PyTorch or TensorFlow distributed job settings."
    )
    framework: Literal["python", "pyspark"] = Field(
        "python", description="'python', or 'pyspark': the script runs as a Spark "
        "application through spark-submit (on a SparkCompute target, or local[*] on local)."
    )
    spark: SparkConfiguration = Field(
        default_factory=SparkConfiguration,
        description="Spark properties of a pyspark run (v1's run_config.spark).")

    def __init__(self, source_directory: Any = ".", script: str | None = None, /,
                 run_config: RunConfiguration | None = None, **data: Any):
        data.setdefault("source_directory", source_directory)
        data.setdefault("script", script)
        if run_config is not None:  # v1: the settings of a RunConfiguration made beforehand
            data = {**run_config._settings(), **data}
        super().__init__(**data)

    @property
    def run_config(self) -> RunConfiguration:
        """v1's ``src.run_config``: a view of this config's own fields, not a copy."""
        return RunConfiguration(_config=self)

    @field_validator("source_directory", mode="before")
    @classmethod
    def _resolve_source(cls, value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str | os.PathLike):
            raise ValueError("source_directory must be a path (str or pathlib.Path)")
        if _recorded(info):
            return os.fspath(value)
        path = Path(value).expanduser().resolve()
        if not path.exists():
            raise ValueError(
                f"source directory {str(path)!r} does not exist: create it or pass the folder "
                "that holds your training script"
            )
        if not path.is_dir():
            raise ValueError(f"source_directory {str(path)!r} is a file: pass its folder instead")
        return str(path)

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("arguments", mode="before")
    @classmethod
    def _paths_to_str(cls, value: Any) -> Any:
        if value is None:  # v1's default
            return []
        if isinstance(value, str):  # v1 takes "list or str": a string is split as a shell would
            return shlex.split(value)
        if not isinstance(value, list | tuple):
            raise ValueError("arguments must be a list (or one string), e.g. ['--lr', 0.01]")
        return [os.fspath(v) if isinstance(v, os.PathLike) else
                v._as_argument() if hasattr(v, "_as_argument") else v for v in value]

    @field_validator("framework", mode="before")
    @classmethod
    def _framework_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value  # Azure writes "PySpark"

    @field_validator("compute_target", mode="before")
    @classmethod
    def _check_target(cls, value: Any) -> Any:
        if value is None:  # v1: no target means this machine
            return "local"
        if isinstance(value, str) and value.strip():
            return value
        if hasattr(value, "launch"):
            return value
        if isinstance(value, dict) and "block_type_slug" in value:
            return value  # an unsaved target as a run record names it
        raise ValueError(
            "compute_target must be 'local', the name of a saved compute target, or a "
            f"compute target object; got {value!r}"
        )

    @model_validator(mode="after")
    def _check_entry_point(self, info: ValidationInfo) -> ScriptRunConfig:
        if (self.script is None) == (self.command is None):
            raise ValueError("give exactly one of script= or command=")
        if self.command is not None and not self.command:
            raise ValueError("command= is empty: give the program and its arguments")
        if self.script is not None and not _recorded(info):
            source = Path(self.source_directory)
            script = (source / self.script).resolve()
            if not script.is_relative_to(source):
                raise ValueError(
                    f"script {self.script!r} is outside source_directory {str(source)!r}: "
                    "move it into that folder or choose a source_directory that contains it"
                )
            if not script.is_file():
                raise ValueError(
                    f"script {self.script!r} not found in {str(source)!r}: check the name, "
                    "it is relative to source_directory"
                )
        return self

    def script_arguments(self, data_paths: dict[str, str] | None = None) -> list[str]:
        """The arguments as strings; each data reference is its local path in
        ``data_paths`` (by its name)."""
        data_paths = data_paths or {}
        return [data_paths[a.key] if hasattr(a, "key") and a.key in data_paths else str(a)
                for a in self.arguments]

    def argv(self, python: str, data_paths: dict[str, str] | None = None) -> list[str]:
        """The process arguments, with ``python`` as the interpreter: of a script, or of a
        command that starts with ``python``/``python3``; each data reference is its local
        path in ``data_paths`` (by its name)."""
        args = self.script_arguments(data_paths)
        if self.script is not None:
            return [python, "-u", self.script, *args]
        command = list(self.command)
        if command[0] in ("python", "python3"):
            command[0] = python
        return [*command, *args]


def _recorded(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("recorded"))


def check_submittable(config: ScriptRunConfig, target: Any = None) -> None:
    """What a config may say but its target cannot run: one clear error before anything
    starts. ``target`` is the resolved target (else the config's own, when it is an
    object); a target says what it runs with ``check_framework``."""
    if config.framework == "pyspark" and config.script is None:
        raise ConfigurationError(
            "framework='pyspark' runs a script through spark-submit: give script= "
            "(e.g. ScriptRunConfig('proj', 'train_spark.py')), not command=")
    if config.framework == "pyspark" and config.distributed_job_config is not None:
        raise ConfigurationError(
            "framework='pyspark' with a distributed_job_config: Spark spreads the work over "
            "its executors itself; remove distributed_job_config (size the job with "
            "run_config.spark.configuration, e.g. spark.executor.instances)")
    names = [a.key for a in data_arguments(config.arguments)]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigurationError(
            f"two data arguments of the run are both named {', '.join(twice)}: give each its "
            "own name (data_reference_name=, as_named_input('...'), or "
            "OutputFileDatasetConfig(name='...'))")
    target = config.compute_target if target is None else target
    if hasattr(target, "check_framework"):
        target.check_framework(config.framework)


class RunConfiguration:
    """Azure ML v1's ``RunConfiguration``, as ``src.run_config`` of a ``ScriptRunConfig``.

    It is a view: reading or setting ``target``, ``environment``, ``arguments``,
    ``framework``, ``spark``, ``node_count``, ``max_run_duration_seconds``, ``script`` or
    ``command`` reads or sets the config's own field (``target`` is ``compute_target``; ``node_count``
    is the distributed configuration's). Made on its own (``RunConfiguration()``), it holds
    the settings until ``ScriptRunConfig(..., run_config=rc)`` takes them.

    Example:
        ```python
        src = ScriptRunConfig(project_folder, "train.py")
        src.run_config.target = "gpu-box"
        src.run_config.environment = env
        ```
    """

    _FIELDS = {"target": "compute_target", "environment": "environment",
               "arguments": "arguments", "framework": "framework", "script": "script",
               "command": "command", "max_run_duration_seconds": "max_run_duration_seconds",
               "spark": "spark"}

    def __init__(self, script: str | None = None, arguments: list[Any] | None = None,
                 framework: str | None = None, command: Any = None, *,
                 _config: ScriptRunConfig | None = None):
        object.__setattr__(self, "_config", _config)
        object.__setattr__(self, "_values", {})
        for name, value in (("script", script), ("arguments", arguments),
                            ("framework", framework), ("command", command)):
            if value is not None:
                setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if name == "node_count":
            dist = self._source("distributed_job_config")
            return getattr(dist, "node_count", 1) if dist is not None else 1
        if name not in self._FIELDS:
            raise AttributeError(f"RunConfiguration has no {name!r}; it has "
                                 f"{', '.join(sorted([*self._FIELDS, 'node_count']))}")
        return self._source(self._FIELDS[name])

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "node_count":
            return self._set_node_count(value)
        if name not in self._FIELDS:
            raise AttributeError(f"RunConfiguration has no {name!r}; it has "
                                 f"{', '.join(sorted([*self._FIELDS, 'node_count']))}")
        if self._config is not None:
            setattr(self._config, self._FIELDS[name], value)  # validated as the field is
        else:
            self._values[self._FIELDS[name]] = value

    def _source(self, field: str) -> Any:
        if self._config is not None:
            return getattr(self._config, field)
        if field in self._values:
            return self._values[field]
        value = ScriptRunConfig.model_fields[field].get_default(call_default_factory=True)
        if field == "spark":  # kept, so that ``rc.spark.configuration = {...}`` holds
            self._values[field] = value
        return value

    def _set_node_count(self, value: Any) -> None:
        dist = self._source("distributed_job_config")
        if dist is not None and "node_count" in type(dist).model_fields:
            dist.node_count = value
        elif value != 1:
            raise ConfigurationError(
                f"node_count={value!r} needs a distributed job: set distributed_job_config="
                "MpiConfiguration(node_count=...) or PyTorchConfiguration(node_count=...)")

    def _settings(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        shown = {k: self.__getattr__(k) for k in ("target", "framework", "node_count")}
        return f"RunConfiguration({', '.join(f'{k}={v!r}' for k, v in shown.items())})"
