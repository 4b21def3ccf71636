"""Local files written whole: a reader sees the old content or the new, never half of it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it over ``path``
    (a rename within one folder is atomic). Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_partial(name: str) -> bool:
    """Whether ``name`` is a file being written (``atomic_write``'s temporary file) or a
    store lock, which readers and mirrors skip."""
    return name.startswith(".") and name.endswith((".tmp", ".lock"))


def changed_files(folder: Path, seen: dict[str, tuple[int, int]]) -> Iterator[tuple[str, str, int]]:
    """``(path, relpath, size)`` of each regular file under ``folder`` whose size or mtime
    differs from ``seen`` (which is updated). Files being written are skipped, and so is
    what a symlink leaving ``folder`` points to."""
    if not folder.is_dir():
        return
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            if is_partial(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) and not Path(path).resolve().is_relative_to(root):
                    continue
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if seen.get(path) != key:
                seen[path] = key
                yield path, Path(path).relative_to(root).as_posix(), st.st_size
