"""Capture a run's source directory into the workspace, and restore it where the run starts.

A snapshot is a manifest, ``snapshots/<id>.json``, that maps each relative path to a blob
(sha256), size and mode, plus the symlinks that stay inside the directory. File contents
are stored once in ``blobs/``. The id is the sha256 of the canonical manifest, so an
unchanged directory gets the same id and uploads nothing. A stat cache on this machine
means that re-submitting costs only ``stat`` calls.

Example:
    ```python
    result = take_snapshot(ws, "./proj")
    restore_snapshot(ws, result.snapshot_id, "/tmp/run-src")
    ```
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from pathspec import GitIgnoreSpec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SnapshotError, SnapshotTooLargeError
from .files import atomic_write
from .home import cache_dir
from .progress import progress_bar
from .workspace import Workspace

ALWAYS_EXCLUDED = frozenset({
    ".git", "__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".mltrain", ".mltrain-offline",
})
IGNORE_FILES = (".amlignore", ".gitignore")  # the first one present in a folder wins
_CHUNK = 1024 * 1024
_PARALLEL_HASH_MIN_FILES = 8
_SHA = re.compile(r"[0-9a-f]{64}")


class FileEntry(BaseModel):
    """One captured file: its content's blob, its size and its permission bits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    mode: int = Field(ge=0, le=0o777)


class Manifest(BaseModel):
    """A snapshot: relative path -> file, and the symlinks that stay inside the directory.
    Its id is the sha256 of its canonical JSON form (``_manifest_id``).

    Validation refuses what could write outside a restore's destination: absolute paths,
    ``..`` components, and links whose target leaves the directory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    files: dict[str, FileEntry]
    symlinks: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _inside(self) -> Manifest:
        for rel in [*self.files, *self.symlinks]:
            if not _safe_rel(rel):
                raise ValueError(f"unsafe path {rel!r}")
        if both := set(self.files) & set(self.symlinks):
            raise ValueError(f"{sorted(both)[0]!r} is both a file and a link")
        for rel, target in self.symlinks.items():
            if not target or _is_absolute(target) or not _stays_inside(rel, target):
                raise ValueError(f"symlink {rel!r} -> {target!r} leaves the directory")
        return self


@dataclass
class SnapshotResult:
    """What ``take_snapshot`` captured and how much work it took."""

    snapshot_id: str
    file_count: int
    total_bytes: int
    hashed_files: int
    uploaded_files: int
    uploaded_bytes: int
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Tree:
    files: dict[str, os.stat_result] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def preview_snapshot(source_directory: str | os.PathLike,
                     ws: Workspace | None = None) -> list[tuple[str, int]]:
    """List the regular files that a snapshot would capture, as sorted ``(relpath, size)`` pairs.

    Use it to tune ``.amlignore`` before you submit. Internal symlinks are also captured,
    as links, but they are not listed here. With ``ws``, a tree over that workspace's
    budget raises ``SnapshotTooLargeError``, as a submit would.
    """
    root = _source_root(source_directory)
    tree = _walk(root, _workspace_inside(ws, root) if ws else ())
    if ws is not None:
        _check_budget(root, tree, ws.settings.snapshot_max_bytes, ws.settings.snapshot_max_files)
    return sorted((rel, st.st_size) for rel, st in tree.files.items())


def take_snapshot(
    ws: Workspace,
    source_directory: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    max_files: int | None = None,
    progress: bool = False,
) -> SnapshotResult:
    """Capture ``source_directory`` into ``ws``, uploading only the blobs the store lacks.

    Args:
        ws: The workspace that receives the blobs and the manifest.
        source_directory: The folder to capture. Ignore files apply at every level.
        max_bytes: The size budget. Defaults to ``ws.settings.snapshot_max_bytes``.
        max_files: The file-count budget. Defaults to ``ws.settings.snapshot_max_files``.
        progress: If True, show a progress bar while files are hashed or uploaded.

    Raises:
        SnapshotTooLargeError: The directory is over budget. Nothing was hashed or written.
        SnapshotError: The directory is missing or unreadable, or the upload failed.
    """
    root = _source_root(source_directory)
    tree = _walk(root, _workspace_inside(ws, root))
    _check_budget(
        root, tree,
        ws.settings.snapshot_max_bytes if max_bytes is None else max_bytes,
        ws.settings.snapshot_max_files if max_files is None else max_files,
    )
    cache = _StatCache(root)
    shas = {rel: cache.lookup(rel, st) for rel, st in tree.files.items()}
    todo = [rel for rel, sha in shas.items() if sha is None]
    shas.update(_hash_files(root, tree, todo, progress))
    fresh = {rel: [st.st_size, st.st_mtime_ns, st.st_ino, shas[rel]]
             for rel, st in tree.files.items()}
    if todo or fresh != cache.entries:
        cache.save(fresh)

    manifest = {  # a Manifest's JSON form, built directly: ~40 ms less per 10,000 files
        "files": {rel: {"sha256": shas[rel], "size": st.st_size, "mode": _mode(st)}
                  for rel, st in sorted(tree.files.items())},
        "symlinks": dict(sorted(tree.symlinks.items())),
    }
    result = SnapshotResult(
        snapshot_id=_manifest_id(manifest), file_count=len(tree.files),
        total_bytes=sum(st.st_size for st in tree.files.values()), hashed_files=len(todo),
        uploaded_files=0, uploaded_bytes=0, skipped=sorted(tree.skipped),
    )
    manifest_rel = f"snapshots/{result.snapshot_id}.json"
    if ws.exists(manifest_rel):
        return result
    source_of: dict[str, str] = {}  # sha -> one file with that content
    for rel, sha in shas.items():
        source_of.setdefault(sha, rel)
    missing = {sha: source_of[sha] for sha in sorted(set(source_of) - ws.existing_blobs(source_of))}
    _upload(ws, root, tree, missing, set(todo), progress)
    result.uploaded_files = len(missing)
    result.uploaded_bytes = sum(tree.files[rel].st_size for rel in missing.values())
    ws.write_json(manifest_rel, manifest)  # last: a manifest never names a missing blob
    return result


def load_manifest(ws: Workspace, snapshot_id: str) -> Manifest:
    """Read a snapshot's manifest; SnapshotError if it is missing, does not match its id, or
    names a path that would leave a restore's destination."""
    if not isinstance(snapshot_id, str) or not _SHA.fullmatch(snapshot_id):
        raise SnapshotError(f"{snapshot_id!r} is not a snapshot id (64 lowercase hex characters).")
    try:
        manifest = ws.read_json(f"snapshots/{snapshot_id}.json")
    except FileNotFoundError:
        raise SnapshotError(
            f"snapshot {snapshot_id} is not in workspace {ws.url}. Check the id "
            "(the run's details name it), or re-submit to capture the source again."
        ) from None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or _manifest_id(manifest) != snapshot_id:
        raise SnapshotError(
            f"the manifest of snapshot {snapshot_id} in {ws.url} is damaged (its content "
            "does not match its id). Re-submit the run to capture the source again."
        )
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise SnapshotError(f"snapshot {snapshot_id} has a malformed or unsafe manifest "
                            f"({problem}); refusing to restore it. Re-submit the run.") from None


def restore_snapshot(
    ws: Workspace, snapshot_id: str, destination: str | os.PathLike
) -> Path:
    """Recreate a snapshot's files, modes and internal symlinks under ``destination``.

    Every path is checked before anything is written, so a tampered workspace cannot
    write outside ``destination``: absolute paths, ``..`` components, writes through a
    symlink that leaves it, and links that resolve outside it raise SnapshotError. Each
    blob is downloaded once, in one batch; files with the same content are copied locally.
    """
    manifest = load_manifest(ws, snapshot_id)
    files, links = manifest.files, manifest.symlinks
    dest = Path(destination).resolve()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        first: dict[str, Path] = {}  # sha -> the path its blob is downloaded to
        copies: list[tuple[Path, Path]] = []
        for rel, entry in sorted(files.items()):
            path = _prepare(dest, rel)
            if entry.sha256 in first:
                copies.append((first[entry.sha256], path))
            else:
                first[entry.sha256] = path
        if first:
            blobs = [ws.path(ws.blob_rel(sha)) for sha in first]
            ws.fs.get(blobs, [str(p) for p in first.values()])  # one batch, concurrent remotely
        for src, dst in copies:
            shutil.copyfile(src, dst)
        for rel, entry in files.items():
            os.chmod(dest.joinpath(*rel.split("/")), entry.mode)
        for rel, target in sorted(links.items()):
            os.symlink(target, _prepare(dest, rel))
    except FileNotFoundError as exc:
        raise SnapshotError(
            f"snapshot {snapshot_id} names a blob that is missing from {ws.url} ({exc}). The "
            "workspace is damaged; re-submit the run to upload the source again."
        ) from exc
    except OSError as exc:
        raise SnapshotError(f"cannot restore snapshot {snapshot_id} into {dest}: {exc}") from exc
    for rel in links:  # chains such as a -> ".", b -> "a/.." can only be judged once all exist
        link = dest.joinpath(*rel.split("/"))
        if not _inside(str(dest), os.path.realpath(link)):
            link.unlink()
            raise SnapshotError(f"snapshot {snapshot_id}: symlink {rel!r} resolves outside {dest}.")
    return dest


# -- walking -----------------------------------------------------------------------------------


def _source_root(source_directory: str | os.PathLike) -> Path:
    path = Path(source_directory).expanduser()
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise SnapshotError(
            f"source directory {path.absolute()} {problem}. Set source_directory= to the folder "
            f"that holds your training script (relative paths start at {Path.cwd()})."
        )
    return path.resolve()


def _workspace_inside(ws: Workspace, root: Path) -> set[str]:
    """A local workspace kept inside the source folder must not capture itself."""
    if ws.protocol not in ("file", "local"):
        return set()
    store = Path(ws.root).resolve()
    return {str(store)} if root in store.parents else set()


def _walk(root: Path, exclude_dirs: Collection[str] = ()) -> _Tree:
    """Walk ``root`` using lstat only. Ignored folders are pruned and symlinks are not followed."""
    tree = _Tree()
    stack: list[tuple[str, str, list[tuple[str, GitIgnoreSpec]]]] = [(str(root), "", [])]
    while stack:
        folder, prefix, rules = stack.pop()
        spec = _read_rules(root, folder)
        rules = [*rules, (prefix, spec)] if spec is not None else rules
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise SnapshotError(
                f"cannot list {folder}: {exc}. Fix its permissions or add it to .amlignore."
            ) from exc
        for entry in entries:
            rel = prefix + entry.name
            is_link = entry.is_symlink()
            is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            if entry.name in ALWAYS_EXCLUDED or (not is_dir and entry.name.endswith(".pyc")):
                continue
            if _ignored(rules, rel, is_dir):
                continue
            if is_link:
                target = _internal_target(root, entry.path)
                if target is None:
                    tree.skipped.append(rel)
                else:
                    tree.symlinks[rel] = target
            elif is_dir:
                if entry.path not in exclude_dirs:
                    stack.append((entry.path, rel + "/", rules))
            elif entry.is_file(follow_symlinks=False):
                try:
                    tree.files[rel] = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted while we walk: it is simply not captured
                    pass
            else:
                tree.skipped.append(rel)  # a FIFO or socket: reading it could block forever
    return tree


def _read_rules(root: Path, folder: str) -> GitIgnoreSpec | None:
    for name in IGNORE_FILES:
        path = os.path.join(folder, name)
        if os.path.islink(path) and _internal_target(root, path) is None:
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return GitIgnoreSpec.from_lines(f.read().splitlines())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        except (OSError, ValueError) as exc:  # ValueError: an invalid pattern
            raise SnapshotError(f"cannot use {path}: {exc}. Fix the file.") from exc
    return None


def _ignored(rules: list[tuple[str, GitIgnoreSpec]], rel: str, is_dir: bool) -> bool:
    """Apply git's precedence: the deepest ignore file with a matching pattern decides."""
    for prefix, spec in reversed(rules):
        verdict = spec.check_file(rel[len(prefix):] + ("/" if is_dir else "")).include
        if verdict is not None:
            return verdict
    return False


def _internal_target(root: Path, link: str) -> str | None:
    """Return the link's target relative to the link, or None if it leaves ``root`` or is broken."""
    target = os.path.realpath(link)
    if not os.path.exists(target) or not _inside(str(root), target):
        return None
    return os.path.relpath(target, os.path.dirname(link)).replace(os.sep, "/")


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode) & 0o777  # no setuid/setgid/sticky bits


# -- budget, hashing, upload ------------------------------------------------------------------


def _check_budget(root: Path, tree: _Tree, max_bytes: int, max_files: int) -> None:
    count, total = len(tree.files), sum(st.st_size for st in tree.files.values())
    if count <= max_files and total <= max_bytes:
        return
    over, raise_to = [], []
    if count > max_files:
        over.append(f"{count:,} files (limit {max_files:,})")
        raise_to.append(f"snapshot_max_files={count}")
    if total > max_bytes:
        over.append(f"{_human(total)} (limit {_human(max_bytes)})")
        raise_to.append(f"snapshot_max_bytes={total}")
    folders: dict[str, list[int]] = {}
    for rel, st in tree.files.items():
        if "/" in rel:
            sums = folders.setdefault(rel.split("/", 1)[0], [0, 0])
            sums[0] += st.st_size
            sums[1] += 1
    key = 1 if count > max_files else 0  # rank folders by what is over the limit
    top = sorted(folders.items(), key=lambda kv: -kv[1][key])[:5]
    largest = sorted(tree.files.items(), key=lambda kv: -kv[1].st_size)[:10]
    lines = [f"source directory {root} is over the snapshot budget: {' and '.join(over)}.",
             "Largest files:"]
    lines += [f"  {_human(st.st_size):>10}  {rel}" for rel, st in largest]
    if top:
        lines.append("Largest top-level folders:")
        lines += [f"  {_human(b):>10}  {n:>7,} files  {name}/" for name, (b, n) in top]
    example = f"{top[0][0]}/" if top else f"/{largest[0][0]}"
    lines.append(
        f"Fix: add the files and folders that the run does not need to {root / '.amlignore'} "
        f"(gitignore syntax, e.g. the line `{example}`). Note that an .amlignore replaces the "
        f".gitignore in its folder. Or raise the limit with "
        f"ws.update_settings({', '.join(raise_to)})."
    )
    raise SnapshotTooLargeError("\n".join(lines))


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise SnapshotError(
            f"cannot read {path}: {exc}. Fix its permissions or add it to .amlignore."
        ) from exc
    return digest.hexdigest()


def _hash_files(root: Path, tree: _Tree, rels: list[str], progress: bool) -> dict[str, str]:
    """Hash the files the stat cache cannot vouch for; hashlib releases the GIL, so threads help."""
    if not rels:
        return {}
    with progress_bar(progress, "Hashing", sum(tree.files[r].st_size for r in rels)) as advance:
        def one(rel: str) -> str:
            sha = _hash_file(root / rel)
            advance(tree.files[rel].st_size)
            return sha

        if len(rels) < _PARALLEL_HASH_MIN_FILES:
            return {rel: one(rel) for rel in rels}
        with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
            return dict(zip(rels, pool.map(one, rels), strict=True))


def _upload(ws: Workspace, root: Path, tree: _Tree, blobs: dict[str, str],
            hashed: set[str], progress: bool) -> None:
    """Upload ``sha -> relpath`` blobs. Then make sure that no file changed while it was read."""
    pairs = [(str(root / rel), ws.blob_rel(sha)) for sha, rel in blobs.items()]
    sizes = [tree.files[rel].st_size for rel in blobs.values()]
    batch = 64 if progress else max(len(pairs), 1)  # small batches only to move the bar
    try:
        with progress_bar(progress and bool(pairs), "Uploading", sum(sizes)) as advance:
            for i in range(0, len(pairs), batch):
                ws.put_files(pairs[i:i + batch])
                advance(sum(sizes[i:i + batch]))
    except OSError as exc:
        raise SnapshotError(
            f"uploading the snapshot of {root} to {ws.url} failed: {exc}. Check that the "
            "workspace is reachable and re-submit; blobs that were already uploaded are reused."
        ) from exc
    changed = [rel for rel in sorted(hashed | set(blobs.values()))
               if _current_key(root / rel) != _stat_key(tree.files[rel])]
    if changed:
        for sha, rel in blobs.items():
            if rel in changed:
                ws.delete(ws.blob_rel(sha))  # its content may not match its name
        raise SnapshotError(
            f"{root / changed[0]} changed while it was being captured. Re-submit after the "
            "program that writes it has finished, or add it to .amlignore."
        )


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _current_key(path: Path) -> tuple[int, int, int] | None:
    try:
        return _stat_key(os.lstat(path))
    except OSError:  # deleted meanwhile
        return None


# -- stat cache -------------------------------------------------------------------------------


class _StatCache:
    """Map relpath to ``[size, mtime_ns, inode, sha256]`` for one source folder on this machine.

    The cache exists so that a re-submit does not read any files. It is only a hint: a missing
    or corrupt cache file means that files are hashed again. As in git's "racy clean" rule,
    an entry is trusted only if the file's mtime is older than the cache file's mtime.
    Otherwise, an edit made in the same clock tick would go unnoticed.
    """

    def __init__(self, root: Path):
        self.root, self.entries, self.fence = str(root), {}, 0
        try:
            name = hashlib.sha256(self.root.encode()).hexdigest()[:32] + ".json"
            self.path = cache_dir("snapshot-stat") / name
            self.fence = self.path.stat().st_mtime_ns
            data = json.loads(self.path.read_bytes())
            if data["root"] == self.root and isinstance(data["files"], dict):
                self.entries = data["files"]
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def lookup(self, rel: str, st: os.stat_result) -> str | None:
        entry = self.entries.get(rel)
        if (isinstance(entry, list) and len(entry) == 4 and entry[:3] == list(_stat_key(st))
                and st.st_mtime_ns < self.fence
                and isinstance(entry[3], str) and _SHA.fullmatch(entry[3])):
            return entry[3]
        return None

    def save(self, entries: dict[str, list]) -> None:
        try:
            atomic_write(self.path, json.dumps({"root": self.root, "files": entries},
                                               separators=(",", ":")))
        except (OSError, AttributeError):  # no writable cache: the next submit just hashes again
            pass


# -- manifest paths ---------------------------------------------------------------------------


def _manifest_id(manifest: dict) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _is_absolute(rel: str) -> bool:
    return rel.startswith(("/", "\\")) or bool(PureWindowsPath(rel).drive)


def _safe_rel(rel: object) -> bool:
    """Accept a relative path made of plain names only (``\\`` counts as a separator too)."""
    if not isinstance(rel, str) or not rel or "\0" in rel or _is_absolute(rel):
        return False
    return all(part not in ("", ".", "..") for part in re.split(r"[\\/]", rel))


def _stays_inside(rel: str, target: str) -> bool:
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target.replace("\\", "/")))
    return joined != ".." and not joined.startswith("../")


def _prepare(dest: Path, rel: str) -> Path:
    """Create ``rel``'s parent folders and clear its path, never writing through a symlink
    that leaves ``dest``."""
    path = dest.joinpath(*rel.split("/"))
    if not _inside(str(dest), os.path.realpath(path.parent)):
        raise SnapshotError(f"restoring {rel!r} would write outside {dest}; refusing.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        path.unlink()
    return path
