"""Datastores: named places that hold data, on any store fsspec reaches.

A datastore is registered in the workspace as ``datastores/<name>.json``: its URL, its
non-secret storage options and the name of the Prefect block that holds its credentials.
Credentials are read from the block when the data is used, and are never written to the
workspace or a run record. ``workspaceblobstore`` is always there: the workspace's own
``data/`` folder, reached with the workspace's own storage options.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs

from ..errors import DataError, WorkspaceError
from ..workspace import _SECRET_KEY, Workspace
from .references import (
    DEFAULT_DATASTORE,
    DataReference,
    check_data_name,
    store_path,
)

REGISTRY = "datastores"
TRANSFER_BATCH = 256  # files per fsspec put/get call: concurrent on object stores


class Datastore:
    """A named place for data: ``Datastore.register(ws, "raw", "s3://bucket/raw", ...)``.

    Example:
        ```python
        ds = ws.get_default_datastore()
        ds.upload(src_dir="./data", target_path="mnist", overwrite=False)
        s3 = Datastore.register(ws, "raw", "s3://bucket/raw", credentials="aws-raw")
        est = Estimator("proj", entry_script="train.py",
                        script_params={"--data-folder": ds.as_mount()})
        ```
    """

    def __init__(self, workspace: Workspace, name: str | None = None, *,
                 _entry: dict[str, Any] | None = None):
        entry = _entry or _read_entry(workspace, name or default_name(workspace))
        self.workspace, self.name, self.url = workspace, entry["name"], entry["url"]
        self.credentials: str | None = entry.get("credentials")
        self.storage_options: dict[str, Any] = dict(entry.get("storage_options") or {})
        self._credentials: dict[str, Any] | None = None

    # -- the registry ---------------------------------------------------------------------------

    @classmethod
    def register(cls, workspace: Workspace, name: str, url: str, *,
                 credentials: str | None = None, storage_options: dict[str, Any] | None = None,
                 overwrite: bool = False) -> Datastore:
        """Register ``url`` (any fsspec URL, or a local folder) as datastore ``name``.

        ``credentials`` names a Prefect block that holds the store's secrets: a ``Secret``
        block whose value is the storage options (``{"key": ..., "secret": ...}``), or any
        block given as ``"<block-type-slug>/<name>"``. ``storage_options`` are the
        non-secret ones (endpoint, region, anon); a secret among them is refused.
        """
        check_data_name(name, "datastore name")
        if name == DEFAULT_DATASTORE:
            raise DataError(f"{DEFAULT_DATASTORE!r} is the workspace's own datastore: "
                            "register yours under another name")
        options = dict(storage_options or {})
        secret = sorted(k for k in _keys(options) if _SECRET_KEY.search(k))
        if secret:
            raise DataError(
                f"storage_options of datastore {name!r} hold secrets ({', '.join(secret)}): "
                "they would be written to the workspace. Save them in a Prefect Secret block "
                "(Secret(value={...}).save('my-creds')) and pass credentials='my-creds'")
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
        rel = f"{REGISTRY}/{name}.json"
        if workspace.exists(rel) and not overwrite:
            old = workspace.read_json(rel)
            if (old.get("url"), old.get("credentials"), old.get("storage_options") or {}) != (
                    url, credentials, options):
                raise DataError(f"datastore {name!r} is already registered for {old['url']}: "
                                "pass overwrite=True to change it")
        entry = {"name": name, "url": url.rstrip("/") or "/", "credentials": credentials,
                 "storage_options": options, "created_at": time.time()}
        store = cls(workspace, _entry=entry)
        store.filesystem()  # the backend is installed and the block exists, before it is kept
        workspace.write_json(rel, entry)
        return store

    @classmethod
    def get(cls, workspace: Workspace, datastore_name: str) -> Datastore:
        return cls(workspace, datastore_name)

    @classmethod
    def get_default(cls, workspace: Workspace) -> Datastore:
        return cls(workspace)

    @classmethod
    def list(cls, workspace: Workspace) -> list[Datastore]:
        names = {n[:-5] for n in workspace.list_dir(REGISTRY) if n.endswith(".json")}
        return [cls(workspace, n) for n in sorted(names | {DEFAULT_DATASTORE})]

    def set_as_default(self) -> None:
        """Make this the workspace's default datastore (``ws.get_default_datastore()``)."""
        self.workspace.write_json(f"{REGISTRY}/default", {"name": self.name})

    def unregister(self) -> None:
        if self.name == DEFAULT_DATASTORE:
            raise DataError(f"{DEFAULT_DATASTORE!r} is the workspace's own: it cannot go")
        self.workspace.delete(f"{REGISTRY}/{self.name}.json")

    def __repr__(self) -> str:
        return f"Datastore({self.name!r}, {self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Datastore) and (other.name, other.url) == (self.name, self.url)

    def __hash__(self) -> int:
        return hash((self.name, self.url))

    # -- reaching the store ---------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        """The storage options with the credentials from the block (for this process only;
        the block is read once per ``Datastore`` object)."""
        if self.name == DEFAULT_DATASTORE and self.credentials is None:
            return dict(self.workspace.storage_options)
        if self._credentials is None:
            self._credentials = load_credentials(self.credentials, self.name)
        return {**self.storage_options, **self._credentials}

    def filesystem(self):
        """``(fs, root)``: the fsspec filesystem and the datastore's root path on it."""
        try:
            fs, root = url_to_fs(self.url, **transfer_options(self.url, self.options()))
        except (ImportError, ValueError, TypeError) as exc:
            raise DataError(f"cannot open datastore {self.name!r} ({self.url}): {exc}. Install "
                            "the fsspec backend of its protocol (e.g. `pip install s3fs`) or "
                            "fix its URL") from exc
        return fs, root.rstrip("/") or "/"

    def full_url(self, path: str = "") -> str:
        path = store_path(path)
        return f"{self.url}/{path}" if path else self.url

    # -- v1's data references -------------------------------------------------------------------

    def path(self, path: str | None = None, data_reference_name: str | None = None
             ) -> DataReference:
        return DataReference(self, data_reference_name or self.name, store_path(path))

    def as_mount(self) -> DataReference:
        return self.path().as_mount()

    def as_download(self, path_on_compute: str | None = None) -> DataReference:
        return self.path().as_download(path_on_compute)

    # -- moving files -----------------------------------------------------------------------------

    def upload(self, src_dir: str | os.PathLike, target_path: str | None = None,
               overwrite: bool = False, show_progress: bool = True) -> DataReference:
        """Upload the files under ``src_dir`` to ``target_path`` (default: the root);
        files already there are kept unless ``overwrite``."""
        src = Path(src_dir).expanduser()
        if not src.is_dir():
            raise DataError(f"src_dir {str(src)!r} is not a folder: give the folder to upload")
        files = sorted(p for p in src.rglob("*") if p.is_file())
        return self.upload_files(files, relative_root=src, target_path=target_path,
                                 overwrite=overwrite, show_progress=show_progress)

    def upload_files(self, files: Iterable[str | os.PathLike],
                     relative_root: str | os.PathLike | None = None,
                     target_path: str | None = None, overwrite: bool = False,
                     show_progress: bool = True) -> DataReference:
        """Upload ``files``; their paths in the store are relative to ``relative_root``
        (default: their common folder), under ``target_path``."""
        files = [Path(f).expanduser().resolve() for f in files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"not a file: {missing[0]}: give paths of existing files")
        if not files:
            raise DataError("no files to upload: give a folder or files that exist")
        root = Path(relative_root).expanduser().resolve() if relative_root else Path(
            os.path.commonpath([f.parent for f in files]))
        outside = [str(f) for f in files if not f.is_relative_to(root)]
        if outside:
            raise DataError(f"{outside[0]} is not under relative_root {root}: give the "
                            "common folder of every file")
        target = store_path(target_path, "target_path")
        fs, base = self.filesystem()
        pairs = [(str(f), "/".join(p for p in (base, target, f.relative_to(root).as_posix())
                                   if p)) for f in files]
        if not overwrite:
            existing = set(_files(fs, "/".join(p for p in (base, target) if p)))
            pairs = [(local, remote) for local, remote in pairs if remote not in existing]
        _transfer(fs, pairs, upload=True, what=f"uploading to {self.name}",
                  show=show_progress)
        return self.path(target)

    def download(self, target_path: str | os.PathLike, prefix: str | None = None,
                 overwrite: bool = False, show_progress: bool = True) -> int:
        """Download the files under ``prefix`` into ``target_path`` at their paths in the
        datastore; returns how many were downloaded (existing files are kept unless
        ``overwrite``)."""
        fs, base = self.filesystem()
        root = "/".join(p for p in (base, store_path(prefix, "prefix")) if p)
        found = {root: fs.info(root)} if fs.isfile(root) else _files(fs, root)
        target, inside = Path(target_path).expanduser(), fs._strip_protocol(base).rstrip("/")
        pairs = []
        for remote in sorted(found):  # kept at their paths in the datastore, as v1 does
            local = target / remote[len(inside):].lstrip("/")
            if overwrite or not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                pairs.append((str(local), remote))
        _transfer(fs, pairs, upload=False, what=f"downloading from {self.name}",
                  show=show_progress)
        return len(pairs)


def default_name(workspace: Workspace) -> str:
    return workspace.read_json(f"{REGISTRY}/default", {}).get("name") or DEFAULT_DATASTORE


def _read_entry(workspace: Workspace, name: str) -> dict[str, Any]:
    if name == DEFAULT_DATASTORE and not workspace.exists(f"{REGISTRY}/{name}.json"):
        return {"name": name, "url": workspace.fs.unstrip_protocol(workspace.path("data"))
                if workspace.protocol not in ("file", "local") else workspace.path("data")}
    try:
        return workspace.read_json(f"{REGISTRY}/{check_data_name(name, 'datastore name')}.json")
    except FileNotFoundError:
        known = ", ".join(d.name for d in Datastore.list(workspace))
        raise DataError(f"no datastore {name!r} in {workspace}: register it with "
                        f"Datastore.register(ws, {name!r}, url) (known: {known})") from None
    except (OSError, ValueError) as exc:
        raise WorkspaceError(f"cannot read datastore {name!r} from {workspace}: {exc}") from exc


def load_credentials(block: str | None, datastore: str) -> dict[str, Any]:
    """Storage options from a Prefect block: a ``Secret`` holding them (a dict, or JSON), or
    ``"<type-slug>/<name>"`` of any block (its fields; ``SecretStr`` values revealed)."""
    if not block:
        return {}
    from prefect.blocks.core import Block
    from prefect.blocks.system import Secret

    try:
        loaded = Block.load(block) if "/" in block else Secret.load(block)
    except Exception as exc:
        raise DataError(f"the credentials of datastore {datastore!r} are in Prefect block "
                        f"{block!r}, which cannot be loaded ({exc}): save it (e.g. "
                        f"Secret(value={{'key': ..., 'secret': ...}}).save({block!r})) or "
                        "register the datastore with the right block name") from exc
    if isinstance(loaded, Secret):
        value = loaded.get()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict):
            raise DataError(f"Secret block {block!r} of datastore {datastore!r} must hold the "
                            "storage options as a dict, e.g. {'key': ..., 'secret': ...}")
        return value
    return _aws_options(_revealed(loaded.model_dump()))


def _revealed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items() if v is not None}
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def _aws_options(fields: dict[str, Any]) -> dict[str, Any]:
    """prefect-aws ``AwsCredentials`` fields as s3fs options; other blocks' fields as given."""
    names = {"aws_access_key_id": "key", "aws_secret_access_key": "secret",
             "aws_session_token": "token", "profile_name": "profile"}
    if not set(fields) & set(names):
        return fields
    out = {names[k]: v for k, v in fields.items() if k in names}
    client = {k: v for k, v in {"region_name": fields.get("region_name"),
                                "endpoint_url": (fields.get("aws_client_parameters") or {})
                                .get("endpoint_url")}.items() if v}
    if client:
        out["client_kwargs"] = client
    return out


S3_CONNECTIONS = 64  # s3fs's default pool of 10 caps a batch's concurrency on real S3


def transfer_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """fsspec options for moving many files: no listings cache (other writers), and on S3
    a connection pool as wide as s3fs's batches (with 50 ms added to each request of a
    loopback S3, a 200 MB download went from 26 to 40 MB/s; on loopback alone, no change)."""
    options = {"use_listings_cache": False, **options}
    if url.startswith(("s3://", "s3a://")):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("max_pool_connections", S3_CONNECTIONS)
        options["config_kwargs"] = config
    return options


def join(root: str, path: str) -> str:
    """A datastore-relative ``path`` under the store path ``root``."""
    return f"{root.rstrip('/')}/{path}" if path else root


def put(fs, local: list[str], remote: list[str]) -> None:
    """Upload files to their paths (folders made first: a local store needs them)."""
    for folder in sorted({r.rsplit("/", 1)[0] for r in remote if "/" in r}):
        fs.makedirs(folder, exist_ok=True)
    fs.put(local, remote)


def _keys(options: Any) -> list[str]:
    if isinstance(options, dict):
        return [str(k) for k in options] + [k for v in options.values() for k in _keys(v)]
    return []


def _files(fs, root: str) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` (full paths, as the filesystem spells them) with its info."""
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    return {fs._strip_protocol(name): info for name, info in found.items()
            if info.get("type") == "file"}


def _transfer(fs, pairs: list[tuple[str, str]], *, upload: bool, what: str,
              show: bool) -> None:
    """``(local, remote)`` pairs in batches, with a progress bar on the console."""
    if not pairs:
        return
    from ..progress import progress_bar

    with progress_bar(show, what, len(pairs), unit="files") as advance:
        for start in range(0, len(pairs), TRANSFER_BATCH):
            batch = pairs[start:start + TRANSFER_BATCH]
            local, remote = [p[0] for p in batch], [p[1] for p in batch]
            if upload:
                put(fs, local, remote)
            else:
                fs.get(remote, local)
            advance(len(batch))
