"""Mirror a run's local folders (``./outputs``, ``./logs``, its stage) into the workspace.

Called every few seconds while the script runs and once more at the end, whatever the
ending; each pass uploads only files whose size or mtime changed since the last pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .files import is_partial
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
        out = []
        for folder, prefix, skip in self.pairs:
            if not folder.is_dir():
                continue
            root = folder.resolve()
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
                for name in filenames:
                    if is_partial(name):
                        continue  # a file being written atomically
                    path = os.path.join(dirpath, name)
                    try:
                        if os.path.islink(path) and not Path(path).resolve().is_relative_to(root):
                            continue  # never upload what a link outside the folder points to
                        st = os.stat(path)
                    except OSError:
                        continue
                    key = (st.st_size, st.st_mtime_ns)
                    if self._seen.get(path) != key:
                        rel = Path(path).relative_to(root).as_posix()
                        self._seen[path] = key
                        if skip is None or not skip(rel):
                            out.append((path, f"{prefix}/{rel}", st.st_size))
        return out

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
