"""Where runs live in a workspace, and how runs and names are spelled.

Standard library only: training scripts import this (through ``context.py``).

A run's folder, ``experiments/<experiment>/runs/<run_id>/``, holds:

    run.json          the run record; written by ``store.RunStore`` only
    heartbeat.json    the runner's pulse (its host, pid and process group); the runner only
    cancel.json       a request to stop the run; anyone who may cancel it
    events/*.jsonl    metrics, tags and child runs, one file per writer (``events.py``)
    git_diff.patch    the uncommitted changes of the source at submit
    outputs/ logs/    the script's folders, mirrored while it runs; images/, uploads

A run's *stage*, on the machine (or container, or Dask worker) that runs its script, has
the same layout under ``$MLTRAIN_CONTEXT_DIR``: the script appends to it, the runner
mirrors it into the workspace.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from pathlib import PurePosixPath

from .errors import UnsafePathError

RECORD = "run.json"
HEARTBEAT = "heartbeat.json"
CANCEL = "cancel.json"
EVENTS = "events"
GIT_DIFF = "git_diff.patch"
STD_LOG = "logs/std_log.txt"  # the script's merged stdout and stderr
OUTPUTS, LOGS = "outputs", "logs"

# Names the run owns in its folder: uploads may not replace them, listings leave them out.
RESERVED_NAMES = frozenset({RECORD, HEARTBEAT, CANCEL, EVENTS})

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")


def check_name(value: str, what: str) -> str:
    """Experiment names, metric names and tag keys: letters, digits, ``_ . -``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-255 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_metric_name(value: str, what: str = "metric name") -> str:
    """Metric names and property keys: any non-empty string, as Azure ML takes them
    (``'Kernel type'``, ``'Hello from child run '``, ``'loss/val'``, unicode)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid {what} {value!r}: use a non-empty string, like 'accuracy' "
                         "or 'Kernel type'")
    return value


def file_safe(name: str, limit: int = 100) -> str:
    """``name`` as one file name: letters, digits, ``_`` and ``-`` kept, every other byte
    ``%XX`` (so no ``/``, no ``..``, no hidden file); a long name is cut and keeps a hash
    of the whole, so two names never share a file."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else
                  "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    if len(out) > limit:
        out = f"{out[:limit - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return out


def experiment_dir(experiment: str) -> str:
    return f"experiments/{experiment}"


def runs_dir(experiment: str) -> str:
    return f"experiments/{experiment}/runs"


def index_dir(experiment: str, parent_run_id: str | None = None) -> str:
    """Where the experiment's index names its runs: ``index/top/`` the runs without a
    parent, ``index/children/<parent>/`` the children of each."""
    base = f"experiments/{experiment}/index"
    return f"{base}/children/{parent_run_id}" if parent_run_id else f"{base}/top"


def run_dir(experiment: str, run_id: str) -> str:
    return f"experiments/{experiment}/runs/{run_id}"


def new_run_id(experiment: str) -> str:
    """Sortable and collision-free across processes: ``<experiment>_<ms>_<random>``."""
    return f"{experiment}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def safe_relpath(name: str) -> str:
    """A run-relative file name, or ``UnsafePathError`` if it could leave the run's folder."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise UnsafePathError(f"invalid file name {name!r}: use a relative path like 'outputs/model.pkl'")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafePathError(
            f"file name {name!r} leaves the run's folder: use a path inside the run, "
            "like 'outputs/model.pkl' (see run.get_file_names())"
        )
    return str(path)
