"""The workspace: an fsspec root that holds every experiment, run, snapshot and environment.

Layout (relative to the root)::

    config.json                           workspace settings (snapshot budget, ...)
    blobs/<sha[:2]>/<sha>                 content-addressed file store
    snapshots/<snapshot_id>.json          manifest of one captured source directory
    environments/<name>/<version>.json    registered environments
    experiments/<name>/runs/<run_id>/     one run's folder (see ``layout.py``)

Writes are atomic: one put on object stores and in memory, write-then-rename on disks.
Read-modify-write of a shared file goes through ``Workspace.lock``: an exclusive create of
a lock object (``O_EXCL`` on disks, ``If-None-Match`` on S3, fsspec's ``mode="create"``
elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs

from .errors import WorkspaceError
from .files import atomic_write, is_partial

DEFAULT_WORKSPACE_DIR = ".mltrain"
CONFIG_FILE_NAME = "mltrain.json"
_RENAME_ATOMIC_PROTOCOLS = {"file", "local"}
# Storage options that hold credentials (s3fs key/secret/token, adlfs account_key and
# connection_string, gcsfs token, passwords, SAS tokens ...).
_SECRET_KEY = re.compile(r"key|secret|token|password|passwd|credential|sas|connection",
                         re.IGNORECASE)
LOCK_TIMEOUT_SECONDS = 60.0
LOCK_LEASE_SECONDS = 30.0  # a lock older than this was left by a writer that died


@dataclass
class WorkspaceSettings:
    """Settings stored in the workspace's ``config.json``; defaults apply where absent."""

    snapshot_max_bytes: int = 300 * 1024 * 1024
    snapshot_max_files: int = 2000
    sync_interval_seconds: float = 2.0
    heartbeat_interval_seconds: float = 5.0
    heartbeat_timeout_seconds: float = 60.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkspaceSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Workspace:
    """A place to keep runs: a local folder (default ``./.mltrain``) or any fsspec URL.

    Example:
        ```python
        ws = Workspace()                                  # ./.mltrain
        ws = Workspace("s3://bucket/ml", storage_options={"anon": False})
        ws = Workspace.from_config()                      # found upward from the cwd
        ```
    """

    def __init__(self, url: str | os.PathLike | None = None, storage_options: dict | None = None):
        url = os.fspath(url) if url is not None else DEFAULT_WORKSPACE_DIR
        self.storage_options = dict(storage_options or {})
        try:
            # Other processes write here all the time: a cached listing would hide their files.
            self.fs, root = url_to_fs(url, **{"use_listings_cache": False,
                                              **self.storage_options})
        except (ImportError, ValueError) as exc:
            raise WorkspaceError(
                f"cannot open workspace {url!r}: {exc}. Install the fsspec backend for its "
                "protocol (for example `pip install s3fs` for s3://) or fix the URL."
            ) from exc
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.root = root.rstrip("/") or "/"
        self.url = root if self.protocol in _RENAME_ATOMIC_PROTOCOLS else self.fs.unstrip_protocol(root)
        self._settings: WorkspaceSettings | None = None

    @classmethod
    def from_config(cls, path: str | os.PathLike | None = None) -> Workspace:
        """Open the workspace named by the nearest ``mltrain.json`` (or ``.mltrain/`` folder).

        The search starts at ``path`` (default: the current directory) and goes upward.
        ``mltrain.json`` holds ``{"url": "...", "storage_options": {...}}``; a relative
        ``url`` is taken relative to the file.
        """
        start = Path(path or Path.cwd()).resolve()
        if start.is_file():
            return cls._from_config_file(start)
        for folder in (start, *start.parents):
            if (folder / CONFIG_FILE_NAME).is_file():
                return cls._from_config_file(folder / CONFIG_FILE_NAME)
            if (folder / DEFAULT_WORKSPACE_DIR).is_dir():
                return cls(folder / DEFAULT_WORKSPACE_DIR)
        raise WorkspaceError(
            f"no {CONFIG_FILE_NAME} or {DEFAULT_WORKSPACE_DIR}/ found in {start} or above it. "
            f'Create {CONFIG_FILE_NAME} with {{"url": "<fsspec url>"}}, or use Workspace() '
            "for the default local workspace."
        )

    @classmethod
    def _from_config_file(cls, file: Path) -> Workspace:
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WorkspaceError(f"cannot read workspace config {file}: {exc}") from exc
        url = data.get("url", DEFAULT_WORKSPACE_DIR) if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise WorkspaceError(f'{file} must hold a JSON object like {{"url": "s3://bucket/ml"}}')
        if "://" not in url and not os.path.isabs(url):
            url = str(file.parent / url)
        return cls(url, data.get("storage_options"))

    def __repr__(self) -> str:
        return f"Workspace({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workspace) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    # -- addressing -------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """The full fsspec path of a workspace-relative path."""
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{self.root}/{rel}" if rel else self.root

    def to_env(self, credentials: bool = True) -> dict[str, str]:
        """Environment variables from which a child process reopens this workspace; without
        ``credentials`` (for a training script) the secret storage options are left out, so
        the store's own credentials (an instance role, AWS_* variables) must do."""
        options = self.storage_options if credentials else _without_secrets(self.storage_options)
        env = {"MLTRAIN_WORKSPACE": self.url}
        if options:
            env["MLTRAIN_WORKSPACE_OPTIONS"] = json.dumps(options)
        return env

    def secret_values(self) -> list[str]:
        """The credential values among the storage options, to mask wherever output goes."""
        return secret_values(self.storage_options)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Workspace:
        environ = os.environ if environ is None else environ
        if not environ.get("MLTRAIN_WORKSPACE"):
            raise WorkspaceError("MLTRAIN_WORKSPACE is not set: open the workspace by URL instead")
        options = environ.get("MLTRAIN_WORKSPACE_OPTIONS")
        return cls(environ["MLTRAIN_WORKSPACE"], json.loads(options) if options else None)

    # -- settings ---------------------------------------------------------------------------

    @property
    def settings(self) -> WorkspaceSettings:
        if self._settings is None:
            self._settings = WorkspaceSettings.from_dict(self.read_json("config.json", {}))
        return self._settings

    def update_settings(self, **values: Any) -> WorkspaceSettings:
        """Change and persist workspace settings, e.g. ``snapshot_max_files=5000``."""
        data = self.read_json("config.json", {})
        unknown = set(values) - {f.name for f in fields(WorkspaceSettings)}
        if unknown:
            raise WorkspaceError(f"unknown workspace settings: {sorted(unknown)}")
        data.update(values)
        self.write_json("config.json", data)
        self._settings = WorkspaceSettings.from_dict(data)
        return self._settings

    # -- files ------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        self.fs.invalidate_cache(path)  # other processes write here too
        return self.fs.exists(path)

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_many(self, rels: list[str]) -> dict[str, bytes | Exception]:
        """Whole files at once (concurrent on an object store), each to its bytes or to the
        error that reading it raised."""
        if not rels:
            return {}
        strip = self.fs._strip_protocol
        paths = {strip(self.path(rel)): rel for rel in rels}
        got = self.fs.cat(list(paths), on_error="return")
        return {paths[strip(path)]: value for path, value in got.items()}

    def read_json(self, rel: str, default: Any = ...) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError:
            if default is ...:
                raise
            return default

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old or the new content, never half."""
        target = self.path(rel)
        if self.protocol in _RENAME_ATOMIC_PROTOCOLS:
            atomic_write(target, data)
        else:
            self.fs.pipe_file(target, data)

    def write_many(self, files: dict[str, bytes]) -> None:
        """Whole files at once (concurrent on an object store), each as ``write_bytes``."""
        if self.protocol in _RENAME_ATOMIC_PROTOCOLS:
            for rel, data in files.items():
                self.write_bytes(rel, data)
        elif files:
            self.fs.pipe({self.path(rel): data for rel, data in files.items()})

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (files and folders); empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def list_first(self, rel: str, n: int) -> list[str]:
        """The first ``n`` names (sorted) of files directly under ``rel``; on S3 through
        obstore only the listing pages they need, where the options allow it."""
        from .data.s3_bulk import first_names

        first = first_names(self.url, self.storage_options)
        if first is None:
            return [name for name in self.list_dir(rel) if not is_partial(name)][:n]
        return first(self.fs._strip_protocol(self.path(rel)), n)

    def find(self, rel: str) -> dict[str, int]:
        """Every file under ``rel``, as relative path -> size."""
        base = self.path(rel)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.fs._strip_protocol(base).rstrip("/") + "/"
        out = {}
        for name, info in found.items():
            name = self.fs._strip_protocol(name)
            if info.get("type") == "file" and name.startswith(prefix):
                out[name[len(prefix):]] = int(info.get("size") or 0)
        return out

    def put_files(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Upload ``(local_path, rel)`` pairs in one batch (concurrent on object stores)."""
        pairs = list(pairs)
        if not pairs:
            return
        if self.protocol in _RENAME_ATOMIC_PROTOCOLS:
            for local, rel in pairs:
                atomic_write(self.path(rel), Path(local).read_bytes())
            return
        self.fs.put([p[0] for p in pairs], [self.path(p[1]) for p in pairs])

    def get_file(self, rel: str, local: str | os.PathLike) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        self.fs.get_file(self.path(rel), os.fspath(local))

    @contextlib.contextmanager
    def lock(self, rel: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
        """Hold the lock of ``rel`` (the object ``.<name>.lock`` beside it) against every
        process that reaches this store, for a read-modify-write of ``rel``.

        A lock older than ``LOCK_LEASE_SECONDS`` belongs to a writer that died and is
        broken; the critical sections it guards take milliseconds.
        """
        folder, _, name = rel.rpartition("/")
        lock = self.path(folder, f".{name}.lock")
        self.fs.makedirs(self.path(folder), exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}
        deadline, pause = time.monotonic() + timeout, 0.005
        while True:
            try:  # the lease starts when the lock is taken, not when the wait began
                self._create(lock, json.dumps({**owner, "time": time.time()}).encode())
                break
            except FileExistsError:
                self._break_if_stale(lock)
            if time.monotonic() > deadline:
                raise WorkspaceError(
                    f"{rel} in {self.url} stayed locked for {timeout:.0f} s: another process "
                    f"is writing it, or delete {lock} if no process is")
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        try:
            yield
        finally:
            if self._lock_owner(lock) == owner["id"]:  # never release a lock taken since
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(lock)

    def _create(self, path: str, data: bytes) -> None:
        """Write ``path`` only if it does not exist (``FileExistsError`` if it does), as one
        step no other writer can get between. fsspec's local ``mode="create"`` is a look
        and then an open, which two processes can both pass, so disks use ``O_EXCL``."""
        if self.protocol in _RENAME_ATOMIC_PROTOCOLS:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        elif self.protocol == "memory":  # one process: its threads take turns
            with _MEMORY_CREATE:
                self.fs.pipe_file(path, data, mode="create")
        else:
            self.fs.pipe_file(path, data, mode="create")

    def _lock_owner(self, lock: str) -> str | None:
        try:
            return json.loads(self.fs.cat_file(lock)).get("id")
        except (FileNotFoundError, ValueError):
            return None

    def _break_if_stale(self, lock: str) -> None:
        try:
            held = json.loads(self.fs.cat_file(lock))
        except FileNotFoundError:
            return  # released meanwhile
        except ValueError:  # being written, or left empty by a writer that died in between
            try:
                held = {"id": None, "time": _modified(self.fs.info(lock))}
            except FileNotFoundError:
                return
        if time.time() - float(held.get("time", 0)) > LOCK_LEASE_SECONDS \
                and self._lock_owner(lock) == held.get("id"):  # still the stale one
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(lock)

    def delete(self, rel: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(self.path(rel), recursive=recursive)
        except FileNotFoundError:
            pass

    # -- content-addressed blobs ------------------------------------------------------------

    @staticmethod
    def blob_rel(sha256: str) -> str:
        return f"blobs/{sha256[:2]}/{sha256}"

    def existing_blobs(self, candidates: Iterable[str]) -> set[str]:
        """Which of ``candidates`` are already stored; one listing when there are many."""
        candidates = set(candidates)
        if len(candidates) <= 32:
            return {c for c in candidates if self.exists(self.blob_rel(c))}
        stored = {rel.rsplit("/", 1)[-1] for rel in self.find("blobs")}
        return candidates & stored

    # -- experiments ------------------------------------------------------------------------

    def list_experiments(self) -> list[str]:
        return self.list_dir("experiments")

    # -- data (v1's entry points; the data layer sits above this one) -----------------------

    def get_default_datastore(self):
        """The default datastore: ``workspaceblobstore`` (the workspace's ``data/`` folder)
        unless another was made the default."""
        return _data("datastore").Datastore.get_default(self)

    @property
    def datastores(self) -> dict:
        """Every datastore of the workspace, by name."""
        return {d.name: d for d in _data("datastore").Datastore.list(self)}

    @property
    def datasets(self) -> dict:
        """The latest version of every registered dataset, by name."""
        dataset = _data("dataset")
        return {name: dataset.get_by_name(self, name) for name in dataset.list_datasets(self)}


def _data(module: str):
    """A module of the data layer, which builds on this one: imported by name when a v1
    script asks the workspace for its datastores, so that this layer never imports it."""
    import importlib

    return importlib.import_module(f"prefect_mltrain.data.{module}")


_MEMORY_CREATE = threading.Lock()


def secret_values(options: dict[str, Any]) -> list[str]:
    """The credential values among fsspec storage options (by their keys' names)."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, secret or bool(_SECRET_KEY.search(str(key))))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, secret)
        elif secret and isinstance(value, str) and value:
            found.append(value)

    walk(options, False)
    return found


def _modified(info: dict[str, Any]) -> float:
    """A file's modification time, as fsspec's backends spell it (now, if none does)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
    return time.time()


def _without_secrets(options: Any) -> Any:
    if isinstance(options, dict):
        return {k: _without_secrets(v) for k, v in options.items()
                if not _SECRET_KEY.search(str(k))}
    return options


def open_workspace(url: str | None) -> Workspace:
    """The workspace at ``url`` (default: this process's, else ``./.mltrain``), with the
    storage options this process was given for it (``MLTRAIN_WORKSPACE_OPTIONS``)."""
    if url is None or url == os.environ.get("MLTRAIN_WORKSPACE"):
        return Workspace.from_env() if os.environ.get("MLTRAIN_WORKSPACE") else Workspace()
    return Workspace(url)
