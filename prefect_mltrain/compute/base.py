"""The seam every compute target implements: ``prepare`` the run's environment for the
target, then ``launch`` the prepared script there and hand back a ``Job``.

A target is a saved Prefect block (connection settings, editable in the UI). It decides
what its runs need before they start (a virtualenv on this machine, an image on its
engine, or a virtualenv that each Dask worker finds or builds for itself) and how their
processes start; the flow asks nothing else of it. Everything the same for every target
(snapshot, syncing, states, the job loop) lives in the flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from prefect.blocks.core import Block

from ..config import ScriptRunConfig
from ..environment import Environment
from ..errors import ConfigurationError
from .jobs import Job

OnLine = Callable[[str], None]
Stop = Callable[[], bool]  # true once the run was canceled: stop what you are doing


def never() -> bool:
    return False


@dataclass
class Prepared:
    """A run's environment, ready for one target: the interpreter (a path here, a name in
    an image, or ``WORKER_PYTHON`` where each host finds its own) and what to record."""

    interpreter: str
    image: str | None = None
    lock: str | None = None  # the pinned packages, for targets that build on each host
    record: dict[str, Any] = field(default_factory=dict)  # the run's environment_build


@dataclass
class LaunchSpec:
    """A prepared run: what to start, in which folder, with which variables."""

    run_id: str
    experiment: str
    config: ScriptRunConfig
    prepared: Prepared
    cwd: str  # the restored snapshot
    stage_dir: str  # where the run's context writes; mirrored into the workspace
    env: dict[str, str]  # for a process on this machine: its environment plus the run's
    run_env: dict[str, str]  # only the run's own variables, for containers and other hosts
    stop: Stop = never  # true once the run was canceled: a launch that waits gives up
    data: Any = None  # the run's DataPlan (data/staging.py), or None
    data_paths: dict[str, str] = field(default_factory=dict)  # data argument -> local path

    @property
    def argv(self) -> list[str]:
        return self.config.argv(self.prepared.interpreter, self.data_paths)

    @property
    def distributed(self) -> Any:
        return self.config.distributed_job_config


class ComputeTarget(Block):
    """Base of the compute target blocks."""

    _block_schema_capabilities = ["launch"]
    # Whether the runner makes a run's data inputs local before ``launch`` (its host's
    # paths, which the target may map); a target whose scripts run on other machines
    # stages them there itself, from ``LaunchSpec.data``.
    _stages_data_on_runner: ClassVar[bool] = True

    def check(self, stop: Stop = never, distributed: Any = None) -> None:
        """Raise ``ComputeTargetUnavailableError`` when the target cannot be used now, or
        can never hold the ``distributed`` job (its configuration) — before anything is
        built (and ``RunCanceledError`` when ``stop()`` turns true while it waits)."""

    def check_framework(self, framework: str) -> None:
        """Raise ``ConfigurationError`` when this target cannot run ``framework`` scripts
        (``ComputeTargetUnavailableError`` when what they need is missing here)."""
        if framework != "python":
            raise ConfigurationError(
                f"framework={framework!r} cannot run on {type(self).__name__} "
                f"{self.describe()!r}: a pyspark script "
                "runs on a SparkCompute target (master='spark://HOST:7077' or 'local[*]') "
                "or on 'local' (local[*]); submit it there, or set "
                "src.run_config.framework = 'python'")

    def prepare(self, environment: Environment | None, on_line: OnLine,
                stop: Stop = never) -> Prepared:
        """Make the run's environment ready for this target: build output to ``on_line``,
        and ``RunCanceledError`` within a second once ``stop()`` is true."""
        raise NotImplementedError

    def launch(self, spec: LaunchSpec) -> Job:
        raise NotImplementedError

    def describe(self) -> str:
        return getattr(self, "_block_document_name", None) or type(self).__name__
