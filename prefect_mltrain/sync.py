"""Mirror a run's local folders (``./outputs``, ``./logs``, staging) into the workspace.

Called every few seconds while the script runs and once more at the end, whatever the
ending; each pass uploads only files whose size or mtime changed since the last pass.
"""

from __future__ import annotations

import os
from pathlib import Path

from .workspace import Workspace


class FolderSync:
    """Upload changed files from local folders to workspace prefixes."""

    def __init__(self, ws: Workspace, pairs: list[tuple[Path, str]]):
        self.ws = ws
        self.pairs = pairs  # (local folder, workspace-relative prefix)
        self._seen: dict[str, tuple[int, int]] = {}
        self.uploaded_files = 0
        self.uploaded_bytes = 0

    def _changed(self) -> list[tuple[str, str, int]]:
        out = []
        for folder, prefix in self.pairs:
            if not folder.is_dir():
                continue
            root = folder.resolve()
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if name.startswith(".") and name.endswith(".tmp"):
                        continue  # a file being written atomically
                    try:
                        if os.path.islink(path) and not Path(path).resolve().is_relative_to(root):
                            continue  # never upload what a link outside the folder points to
                        st = os.stat(path)
                    except OSError:
                        continue
                    key = (st.st_size, st.st_mtime_ns)
                    if self._seen.get(path) != key:
                        rel = Path(path).relative_to(root).as_posix()
                        out.append((path, f"{prefix}/{rel}", st.st_size))
                        self._seen[path] = key
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
