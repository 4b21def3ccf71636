"""Progress bars for a terminal (rich), or nothing at all when there is no one to see them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(enabled: bool, description: str, total: int,
                 unit: str = "bytes") -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; with ``enabled`` a rich bar on stderr counts ``total``
    bytes (or files, with ``unit="files"``)."""
    if not enabled:
        yield lambda n: None
        return
    # Imported lazily: rich adds to the start-up time of every submit.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (
        MofNCompleteColumn(), TextColumn(unit))
    with Progress(TextColumn("{task.description}"), BarColumn(), *counts,
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
