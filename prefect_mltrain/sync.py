"""Mirror a run's local folders (``./outputs``, ``./logs``, its stage) into the workspace.

Called every few seconds while the script runs and once more at the end, whatever the
ending; each pass uploads only files whose size or mtime changed since the last pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .files import changed_files
from .workspace import Workspace


class FolderSync:
    """Upload changed files from local folders to workspace prefixes.

    Each pair is ``(local folder, workspace prefix)``, optionally with a third item:
    ``skip(relpath)``, true for files of that folder that must never be uploaded.
    """

    def __init__(self, ws: Workspace,
                 pairs: list[tuple[Path, str] | tuple[Path, str, Callable[[str], bool]]]):
        self.ws = ws
        self.pairs = [(p[0], p[1], p[2] if len(p) > 2 else None) for p in pairs]
        self._seen: dict[str, tuple[int, int]] = {}
        self.uploaded_files = 0
        self.uploaded_bytes = 0

    def _changed(self) -> list[tuple[str, str, int]]:
        return [(path, f"{prefix}/{rel}", size)
                for folder, prefix, skip in self.pairs
                for path, rel, size in changed_files(folder, self._seen)
                if skip is None or not skip(rel)]

    def sync(self) -> int:
        """One pass; returns the number of files uploaded."""
        changed = self._changed()
        if changed:
            try:
                self.ws.put_files([(local, rel) for local, rel, _ in changed])
            except Exception:
                for local, _, _ in changed:  # retry these next pass
                    self._seen.pop(local, None)
                raise
            self.uploaded_files += len(changed)
            self.uploaded_bytes += sum(size for _, _, size in changed)
        return len(changed)
