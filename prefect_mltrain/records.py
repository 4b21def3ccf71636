"""The run record (``run.json``): one typed schema for every run, and its states.

``store.RunStore`` is the only code that creates or changes a record; everything else
reads it. The configuration is kept as the ``ScriptRunConfig`` it was submitted as (its
compute target by name, its environment without secret values), so a record read back on
any machine gives the flow the same typed configuration.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from .config import ScriptRunConfig
from .hyperdrive.config import SweepSpec


class RunStatus(StrEnum):
    NOT_STARTED = "NotStarted"
    QUEUED = "Queued"
    PREPARING = "Preparing"
    STARTING = "Starting"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED})


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StatusChange(_Record):
    status: RunStatus
    time: float


class Runner(_Record):
    """The process that runs the run's flow on this machine (started by a local submit)."""

    host: str
    pid: int


class Deployment(_Record):
    """Where a run sent to a work pool went."""

    name: str  # "submit-run/<target>"
    flow_run_id: str
    private_block: str | None = None  # the Secret block with the run's secrets, until taken


class LocalFiles(_Record):
    """Where a run's files are on the machine that runs it, until they are stored: they stay
    there when the workspace could not take them, or the runner died (``mltrain runs sync
    RUN_ID`` on that host stores them)."""

    host: str
    path: str


class RunRecord(_Record):
    """Everything known about one run: what it is, where it stands, how it ended."""

    run_id: str
    experiment: str
    revision: int = Field(0, description="Incremented by every write: the record's version.")
    status: RunStatus = RunStatus.NOT_STARTED
    status_history: list[StatusChange] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    number: int | None = Field(None, description="The run's sequence number in its experiment.")
    parent_run_id: str | None = None
    display_name: str | None = None
    submitted_by: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    properties: dict[str, str] = Field(default_factory=dict)
    config: ScriptRunConfig | None = None  # None: an interactive run or a child run
    hyperdrive: SweepSpec | None = None  # a sweep: config is what each trial runs
    snapshot_id: str | None = None
    snapshot_skipped: list[str] = Field(default_factory=list)
    git: dict[str, Any] | None = None
    environment_build: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = Field(
        None, description="The data the run read (inputs: datasets with their versions and "
        "manifest hashes, datastore paths) and wrote (outputs).")
    runner: Runner | None = None
    deployment: Deployment | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    exit_code: int | None = None
    error: str | None = None
    log_tail: str | None = None
    local_files: LocalFiles | None = None

    @computed_field
    @property
    def compute_target(self) -> str | dict[str, Any] | None:
        return self.config.compute_target if self.config else None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def move_to(self, status: RunStatus | str, **fields: Any) -> bool:
        """Move to ``status`` (terminal states are final) and stamp the time; False when
        the run had already ended."""
        if self.finished:
            return False
        status, now = RunStatus(status), time.time()
        self.status = status
        self.status_history.append(StatusChange(status=status, time=now))
        if status == RunStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if status in TERMINAL:
            self.ended_at = now
        for name, value in fields.items():
            setattr(self, name, value)
        return True

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RunRecord:
        return cls.model_validate_json(data, context={"recorded": True})
