"""Local files written whole: a reader sees the old content or the new, never half of it."""

from __future__ import annotations

import os
import uuid
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
