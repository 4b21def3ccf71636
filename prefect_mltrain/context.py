"""What a training script writes to: its run's stage, a local folder the runner mirrors.

``Run.get_context()`` inside a submitted script finds its run here (``current()``) and logs
through a ``RunWriter``: JSON event lines, images and uploads appended to local files, so
scripts never wait on the network and never need store credentials. A child run started
inside the script is a folder of its own in the stage, whose life (started, completed)
is told by events; the runner turns them into the child's record. Standard library only:
any Python that runs a script can import this.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import events as event_lines
from .events import EventLog
from .layout import EVENTS, file_safe, run_dir

CONTEXT_DIR = "MLTRAIN_CONTEXT_DIR"  # the stage root, given to the script's processes


@dataclass(frozen=True)
class Context:
    """The run a script belongs to, as its runner told it through the environment."""

    experiment: str
    run_id: str
    stage: Path  # the stage root; the run's folder is ``stage / run_dir(...)``
    rank: int

    def folder(self, run_id: str | None = None) -> Path:
        return self.stage / run_dir(self.experiment, run_id or self.run_id)


def rank() -> int:
    return int(os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")
               or os.environ.get("PMI_RANK") or 0)


def current() -> Context | None:
    """The submitted run of this process, or None (a script started by hand)."""
    stage, run_id = os.environ.get(CONTEXT_DIR), os.environ.get("MLTRAIN_RUN_ID")
    if not (stage and run_id):
        return None
    return Context(os.environ.get("MLTRAIN_EXPERIMENT", "default"), run_id, Path(stage), rank())


class RunWriter:
    """Writes one run's events, images and uploads into a local folder laid out as the
    run's folder in the workspace. ``publish(path, rel)`` (for a handle outside any
    script) sends each written file on at once; a script's files wait for the runner."""

    def __init__(self, folder: Path, rank: int,
                 publish: Callable[[Path, str], None] | None = None):
        self.folder, self.publish = folder, publish
        if publish is None:
            self._events_name = f"{EVENTS}/rank{rank}.jsonl"
        else:  # one file per handle: several processes may log to one run from outside
            self._events_name = (f"{EVENTS}/client-{socket.gethostname()}-{os.getpid()}-"
                                 f"{uuid.uuid4().hex[:8]}.jsonl")
        self.rank = rank
        self._log: EventLog | None = None

    def event(self, event: dict[str, Any]) -> None:
        if self._log is None:
            self._log = EventLog(self.folder / self._events_name)
        event["rank"] = self.rank
        self._log.write(event)
        self._published(self._events_name)

    def copy(self, rel: str, source: str | os.PathLike | Any) -> None:
        """Copy a file, or the rest of a binary stream (``open(..., "rb")``, ``BytesIO``)."""
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if hasattr(source, "read"):
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)
        else:
            shutil.copyfile(source, target)
        self._published(rel)

    def events(self) -> list[dict[str, Any]]:
        """What was logged to this folder so far, by every writer of it on this machine."""
        return event_lines.parse(p.read_bytes() for p in sorted((self.folder / EVENTS)
                                                                .glob("*.jsonl")))

    def image(self, name: str, path: str | os.PathLike | None, plot: Any) -> str:
        """An image file (or a matplotlib figure as PNG) under ``images/``; its name."""
        ext = file_safe(Path(path).suffix[1:], 16) if path is not None else "png"
        rel = f"images/{file_safe(name)}_{time.time_ns()}{'.' + ext if ext else ''}"
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if plot is not None:
            plot.savefig(target, format="png")
        else:
            shutil.copyfile(path, target)
        self._published(rel)
        return rel

    def _published(self, rel: str) -> None:
        if self.publish is not None:
            self.publish(self.folder / rel, rel)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
