"""The seam every compute target implements: ``launch(spec) -> Job``.

A target is a saved Prefect block (connection settings, editable in the UI) whose only
job is to start the prepared command somewhere and hand back a ``Job`` the runner can
poll, read output from, and kill. Everything else (snapshot, environment, syncing,
states) is the same for every target and lives in the flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from prefect.blocks.core import Block

from ..errors import ComputeTargetUnavailableError


@dataclass
class LaunchSpec:
    """A prepared run: the command, its folder and environment, and its staging folder."""

    run_id: str
    experiment: str
    argv: list[str]
    cwd: str
    env: dict[str, str]  # for a process on this machine: its environment plus the run's
    portable_env: dict[str, str]  # only the run's own variables, for containers and hosts
    stage_dir: str
    image: str | None = None
    distributed: Any = None  # the distributed job configuration (JSON form)
    environment: dict[str, Any] | None = None  # the environment record, for remote hosts
    interpreter: str = ""  # the interpreter in argv, for targets that find their own


class Job(Protocol):
    """A started script: poll it, read its output lines, kill it."""

    def read_lines(self, timeout: float) -> list[str]: ...
    def poll(self) -> int | None: ...
    def finish_output(self, timeout: float = 5.0) -> list[str]: ...
    def terminate(self, grace: float = 10.0) -> None: ...
    def close(self) -> None: ...


class ComputeTarget(Block):
    """Base of the compute target blocks."""

    _block_schema_capabilities = ["launch"]

    def launch(self, spec: LaunchSpec) -> Job:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ``ComputeTargetUnavailableError`` when the target cannot be used now."""

    def describe(self) -> str:
        return getattr(self, "_block_document_name", None) or type(self).__name__

    @property
    def runs_in_containers(self) -> bool:
        """Whether the environment must be an image (True) or a local virtualenv."""
        return False

    def default_image(self) -> str | None:
        return None


def target_classes() -> list[type[ComputeTarget]]:
    """Every compute target class (importing them registers their block types)."""
    from . import blocks  # noqa: F401

    return ComputeTarget.__subclasses__()


def resolve_compute_target(target: Any) -> ComputeTarget:
    """``"local"``, a saved target's name (``"docker-compute/gpu-box"`` or ``"gpu-box"``),
    or a target object -> a ready target."""
    from .local import LocalCompute

    if isinstance(target, ComputeTarget):
        return target
    if target in (None, "", "local"):
        return LocalCompute()
    if isinstance(target, dict):  # an unsaved target, recorded with its settings
        cls = Block.get_block_class_from_key(target["block_type_slug"])
        return cls.model_validate(target["settings"])
    name = str(target)
    candidates = [name] if "/" in name else [
        f"{cls.get_block_type_slug()}/{name}" for cls in target_classes()
    ]
    for candidate in candidates:
        try:
            return Block.load(candidate)
        except (ValueError, KeyError):
            continue
    raise ComputeTargetUnavailableError(
        f"no compute target named {name!r}: use 'local', create one first (e.g. "
        "`mltrain compute create gpu-box --type docker`), or see `mltrain compute list`"
    )
