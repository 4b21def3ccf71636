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

from .environment import Environment, _Model


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


DistributedConfig = Annotated[
    MpiConfiguration | PyTorchConfiguration | TensorflowConfiguration,
    Field(discriminator="kind"),
]


class ScriptRunConfig(_Model):
    """Everything needed to run a training script once.

    Example:
        ```python
        src = ScriptRunConfig(source_directory="proj", script="train.py",
                              arguments=["--alpha", 0.5], max_run_duration_seconds=600)
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
    arguments: list[str | int | float | bool] = Field(
        default_factory=list, description="Command-line arguments passed to the script."
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
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ValueError("arguments must be a list, e.g. ['--lr', 0.01]")
        return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]

    @field_validator("compute_target", mode="before")
    @classmethod
    def _check_target(cls, value: Any) -> Any:
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

    def argv(self, python: str) -> list[str]:
        """The process arguments, with ``python`` as the interpreter: of a script, or of a
        command that starts with ``python``/``python3``."""
        args = [str(a) for a in self.arguments]
        if self.script is not None:
            return [python, "-u", self.script, *args]
        command = list(self.command)
        if command[0] in ("python", "python3"):
            command[0] = python
        return [*command, *args]


def _recorded(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("recorded"))
