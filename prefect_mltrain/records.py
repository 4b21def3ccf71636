"""The run record (``run.json``): one schema, its states, and where runs live.

Standard library only: this module is imported inside training scripts.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from enum import StrEnum
from typing import Any


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


TERMINAL = {RunStatus.COMPLETED.value, RunStatus.FAILED.value, RunStatus.CANCELED.value}

STD_LOG = "logs/std_log.txt"  # the script's merged stdout and stderr

# Files the runner owns in a run folder; user uploads may not replace them.
DEPLOYED = "deployment.json"  # a run sent to a work pool: its deployment and flow run id
RESERVED_NAMES = {"run.json", "tags.json", "heartbeat.json", "cancel.json", "events", DEPLOYED}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")


def check_name(value: str, what: str) -> str:
    """Experiment names, metric names and tag keys: letters, digits, ``_ . -``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-255 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def run_dir(experiment: str, run_id: str) -> str:
    return f"experiments/{experiment}/runs/{run_id}"


def new_run_id(experiment: str) -> str:
    """Sortable and collision-free across processes: ``<experiment>_<ms>_<random>``."""
    return f"{experiment}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def new_record(experiment: str, run_id: str, **fields: Any) -> dict[str, Any]:
    now = time.time()
    record = {
        "run_id": run_id,
        "experiment": experiment,
        "status": RunStatus.NOT_STARTED.value,
        "status_history": [{"status": RunStatus.NOT_STARTED.value, "time": now}],
        "created_at": now,
        "started_at": None,
        "ended_at": None,
        "parent_run_id": None,
        "display_name": None,
        "properties": {},
        "exit_code": None,
        "error": None,
        "log_tail": None,
    }
    record.update(fields)
    return record


def set_status(record: dict[str, Any], status: RunStatus | str, **fields: Any) -> dict[str, Any]:
    """Move a record to ``status`` (terminal states are final) and stamp the time."""
    status = RunStatus(status).value
    if record["status"] in TERMINAL:
        return record
    now = time.time()
    record["status"] = status
    record.setdefault("status_history", []).append({"status": status, "time": now})
    if status == RunStatus.RUNNING.value and not record.get("started_at"):
        record["started_at"] = now
    if status in TERMINAL:
        record["ended_at"] = now
    record.update(fields)
    return record


def runner_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
