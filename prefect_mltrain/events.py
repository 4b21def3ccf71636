"""The event lines a run's processes append: metrics, tags and properties.

One format, written by ``EventLog`` (inside the training script, one file per rank, or
per handle outside it) and read back by ``metrics``/``tags``/``properties``. Appending
JSON lines to a local file never waits on the network and needs no store credentials;
the runner mirrors the files into the workspace. Standard library only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class EventLog:
    """Append-only JSON lines in one local file."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)

    def write(self, event: dict[str, Any]) -> None:
        event.setdefault("time", time.time())
        self._file.write(json.dumps(event, default=_jsonable) + "\n")

    def close(self) -> None:
        self._file.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def parse(texts: Iterable[bytes]) -> list[dict[str, Any]]:
    """The events of some files' contents; a line still being written is skipped."""
    events = []
    for text in texts:
        for line in text.decode(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


# Metrics logged as one JSON document with a ``schema_type`` (Azure ML's artifact-backed
# metrics): the last one logged under a name is its value.
SCHEMA_KINDS = ("confusion_matrix", "accuracy_table", "residuals", "predictions")


def metrics(events: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """Logged metrics: a single value, a list for a series, a dict of columns for rows and
    tables, the document itself for a confusion matrix, accuracy table, residuals or
    predictions."""
    series: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("type") == "metric" and (name is None or event["name"] == name):
            series.setdefault(event["name"], []).append(event)
    out: dict[str, Any] = {}
    for key, logged in series.items():
        logged.sort(key=lambda e: (e.get("time", 0), e.get("rank", 0)))
        kind = logged[-1].get("kind")
        if kind in ("row", "table"):
            columns: dict[str, list[Any]] = {}
            for e in logged:
                if e.get("kind") == "table":
                    for col, vals in e["value"].items():
                        columns.setdefault(col, []).extend(vals)
                elif e.get("kind") == "row":
                    for col, val in e["value"].items():
                        columns.setdefault(col, []).append(val)
            out[key] = columns
        elif kind in SCHEMA_KINDS:
            out[key] = logged[-1]["value"]
        elif len(logged) == 1:
            out[key] = logged[0]["value"]
        else:
            out[key] = [e["value"] for e in logged]
    return out


def tags(events: list[dict[str, Any]], submitted: dict[str, str] | None = None
         ) -> dict[str, str]:
    """Tags given at submit, then every tag set or removed since, in the order it was."""
    out = dict(submitted or {})
    for e in sorted((e for e in events if e.get("type") == "tag"),
                    key=lambda e: e.get("time", 0)):
        if e.get("removed"):
            out.pop(e["key"], None)
        else:
            out[e["key"]] = e["value"]
    return out


def properties(events: list[dict[str, Any]]) -> dict[str, str]:
    """Properties never change once set: the first value of a key is its value."""
    out: dict[str, str] = {}
    for e in sorted((e for e in events if e.get("type") == "property"),
                    key=lambda e: e.get("time", 0)):
        out.setdefault(e["key"], e["value"])
    return out


def latest(events: list[dict[str, Any]], kind: str) -> Any:
    """The value of the last event of type ``kind`` (e.g. a new display name), or None."""
    found = [e for e in events if e.get("type") == kind]
    return max(found, key=lambda e: e.get("time", 0))["value"] if found else None


class EventTail:
    """The complete event lines added to some ``*.jsonl`` files since the last ``read``:
    a reader that looks every few seconds reads each byte once, not the whole log again."""

    def __init__(self) -> None:
        self.offsets: dict[Path, int] = {}

    def read(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        chunks = []
        for path in sorted(paths):
            start = self.offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]  # a line being written waits
            self.offsets[path] = start + len(complete)
            chunks.append(complete)
        return parse(chunks)
