"""Datasets: files in datastores, found by paths and globs, registered with versions.

A registered version is ``datasets/<name>/<version>.json`` in the workspace: the
definition and a manifest of every file (its path, size and version token — the store's
ETag, else its modification time), with a hash of the whole. A run that uses the version
sees exactly those files, or stops in Preparing with a clear error naming what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..workspace import Workspace
from .datastore import Datastore, _files, join
from .references import (
    DataPath,
    DatasetConsumptionConfig,
    DatasetSpec,
    check_data_name,
    store_path,
)
from .s3_bulk import bulk_lister

REGISTRY = "datasets"
_GLOB = set("*?[")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a dataset: where it is, and what it was when the dataset saw it."""

    datastore: str
    path: str  # in the datastore
    rel: str  # in the dataset's folder, as the script sees it
    size: int
    token: str  # ETag, else modification time: changes whenever the content does

    def as_dict(self) -> dict[str, Any]:
        return {"datastore": self.datastore, "path": self.path, "rel": self.rel,
                "size": self.size, "token": self.token}


def version_token(info: dict[str, Any]) -> str:
    """What changes when a file's content does, as the store tells it."""
    for key in ("ETag", "etag", "md5_checksum", "content_settings", "generation"):
        if info.get(key):
            return str(info[key]).strip('"')
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is not None:
            return str(value.timestamp() if hasattr(value, "timestamp") else value)
    return ""


def list_path(store: Datastore, path: str) -> list[ManifestFile]:
    """The files a path or glob names in the datastore ``store`` (a folder: every file under
    it); their ``rel`` is relative to the path's folder part before any glob."""
    fs, root = store.filesystem()
    pattern = store_path(path)
    parts = pattern.split("/") if pattern else []
    fixed = []
    for part in parts:
        if _GLOB & set(part):
            break
        fixed.append(part)
    base = "/".join(p for p in (root, *fixed) if p)
    full = "/".join(p for p in (root, pattern) if p)
    try:
        if len(fixed) < len(parts):
            found = {fs._strip_protocol(k): v for k, v in fs.glob(full, detail=True).items()
                     if v.get("type") == "file"}
        else:  # a folder's files, or the one file the path names (fsspec's find gives it)
            find = bulk_lister(store.url, store.options())
            found = find(fs._strip_protocol(full)) if find else _files(fs, full)
            if list(found) == [fs._strip_protocol(full)]:
                base = full.rsplit("/", 1)[0]
    except (PermissionError, OSError) as exc:
        raise DataError(f"cannot list {store.full_url(pattern)} of datastore {store.name!r}: "
                        f"{exc}. Check its credentials ({store.credentials or 'none'}) and "
                        "that the store is reachable") from exc
    prefix = fs._strip_protocol(base).rstrip("/") + "/"
    in_store = fs._strip_protocol(root).rstrip("/") + "/"
    return [ManifestFile(store.name, name[len(in_store):], name[len(prefix):],
                         int(info.get("size") or 0), version_token(info))
            for name, info in sorted(found.items()) if name.startswith(prefix)]


def build_manifest(ws: Workspace, spec: DatasetSpec) -> list[ManifestFile]:
    files: dict[str, ManifestFile] = {}
    stores: dict[str, Datastore] = {}  # each read once (its credentials with it)
    for data_path in spec.paths:
        if data_path.datastore not in stores:
            stores[data_path.datastore] = Datastore.get(ws, data_path.datastore)
        listed = list_path(stores[data_path.datastore], data_path.path)
        if not listed:
            raise DataError(f"{data_path.path!r} in datastore {data_path.datastore!r} names no "
                            "files: check the path and glob (paths are relative to the "
                            "datastore's root)")
        for f in listed:
            if f.rel in files and files[f.rel] != f:
                raise DataError(f"two files of the dataset would both be {f.rel!r} (from "
                                f"{files[f.rel].path} and {f.path}): give paths whose files "
                                "have distinct names")
            files[f.rel] = f
    return [files[k] for k in sorted(files)]


def manifest_hash(files: list[ManifestFile]) -> str:
    text = json.dumps([f.as_dict() for f in files], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def pinned_files(ws: Workspace, spec: DatasetSpec) -> tuple[list[ManifestFile], str]:
    """The files a run of ``spec`` reads, and their manifest hash: a registered version's
    own (after checking that the store still holds them unchanged), else as listed now."""
    now = build_manifest(ws, spec)
    if spec.name is None:
        return now, manifest_hash(now)
    entry = _read_version(ws, spec.name, spec.version)
    pinned = [ManifestFile(**f) for f in entry["manifest"]]
    current = {f.rel: f for f in now}
    for f in pinned:
        seen = current.get(f.rel)
        if seen is None or (seen.size, seen.token) != (f.size, f.token):
            what = "is gone" if seen is None else (
                f"changed (size {f.size} -> {seen.size})" if seen.size != f.size
                else "changed (its version in the store differs)")
            raise DataError(
                f"dataset {spec.label} no longer matches its files: {f.path} in datastore "
                f"{f.datastore!r} {what}. Register a new version (register(ws, "
                f"{spec.name!r}, create_new_version=True)) to use the data as it is now, or "
                "restore the file")
    return pinned, entry["manifest_hash"]


class _Dataset:
    """A dataset: its definition, and the workspace its datastores are in."""

    def __init__(self, workspace: Workspace, spec: DatasetSpec,
                 description: str | None = None, tags: dict[str, str] | None = None):
        self.workspace, self._spec = workspace, spec
        self.description, self.tags = description, dict(tags or {})

    @property
    def name(self) -> str | None:
        return self._spec.name

    @property
    def version(self) -> int | None:
        return self._spec.version

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._spec.label}, {len(self._spec.paths)} path(s))"

    def register(self, workspace: Workspace, name: str, description: str | None = None,
                 tags: dict[str, str] | None = None, create_new_version: bool = False):
        """Register these files as a version of ``name``: the manifest pins their content.
        An existing name takes a new version only with ``create_new_version`` (registering
        the very same files again returns the version that has them)."""
        check_data_name(name, "dataset name")
        files = build_manifest(workspace, self._spec)
        digest = manifest_hash(files)
        with workspace.lock(f"{REGISTRY}/{name}/latest.json"):
            latest = workspace.read_json(f"{REGISTRY}/{name}/latest.json", {}).get("version")
            if latest is not None:
                last = _read_version(workspace, name, latest)
                if last["manifest_hash"] == digest and last["definition"]["paths"] == [
                        p.model_dump() for p in self._spec.paths]:
                    return get_by_name(workspace, name, latest)
                if not create_new_version:
                    raise DataError(f"dataset {name!r} is already registered (version "
                                    f"{latest}) with other files: pass "
                                    "create_new_version=True to add a version")
            version = (latest or 0) + 1
            spec = self._spec.model_copy(update={"name": name, "version": version})
            workspace.write_json(f"{REGISTRY}/{name}/{version}.json", {
                "name": name, "version": version, "description": description,
                "tags": dict(tags or {}), "definition": spec.model_dump(mode="json"),
                "manifest": [f.as_dict() for f in files], "manifest_hash": digest,
                "file_count": len(files), "total_bytes": sum(f.size for f in files),
                "created_at": time.time()})
            workspace.write_json(f"{REGISTRY}/{name}/latest.json", {"version": version})
        return type(self)(workspace, spec, description, tags)

    def as_named_input(self, name: str) -> DatasetConsumptionConfig:
        return DatasetConsumptionConfig(name=name, dataset=self._spec)

    def _as_argument(self) -> DatasetConsumptionConfig:
        """A dataset given as an argument as it is: mounted under a name of its own."""
        name = self.name or f"input_{manifest_hash(build_manifest(self.workspace, self._spec))[:8]}"
        return self.as_named_input(name).as_mount()

    def as_mount(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return self._as_argument().as_mount(path_on_compute)

    def as_download(self, path_on_compute: str | None = None) -> DatasetConsumptionConfig:
        return self._as_argument().as_download(path_on_compute)

    def files(self) -> list[ManifestFile]:
        """The dataset's files, checked against the registered version's manifest."""
        return pinned_files(self.workspace, self._spec)[0]

    def download(self, target_path: str | os.PathLike, overwrite: bool = False) -> list[str]:
        """Download the files into ``target_path``; their local paths."""
        target, out = Path(target_path).expanduser(), []
        by_store: dict[str, list[ManifestFile]] = {}
        for f in self.files():
            by_store.setdefault(f.datastore, []).append(f)
        for name, files in by_store.items():
            fs, root = Datastore.get(self.workspace, name).filesystem()
            pairs = []
            for f in files:
                local = target / f.rel
                out.append(str(local))
                if overwrite or not local.exists():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    pairs.append((join(root, f.path),
                                  str(local)))
            if pairs:
                fs.get([p[0] for p in pairs], [p[1] for p in pairs])
        return out

    def to_path(self) -> list[str]:
        """The files' paths as the script sees them, relative to the dataset's folder."""
        return [f"/{f.rel}" for f in self.files()]


class FileDataset(_Dataset):
    """Files in datastores (v1's ``FileDataset``), from ``Dataset.File.from_files``."""


class TabularDataset(_Dataset):
    """Delimited or Parquet files read as one table (v1's ``TabularDataset``)."""

    def to_pandas_dataframe(self):
        """The table as a pandas DataFrame (pandas, and pyarrow for Parquet, needed)."""
        stores: dict[str, tuple[Any, str]] = {}  # one filesystem per datastore

        def opener(f: ManifestFile):
            if f.datastore not in stores:
                stores[f.datastore] = Datastore.get(self.workspace, f.datastore).filesystem()
            fs, root = stores[f.datastore]
            return lambda: fs.open(join(root, f.path), "rb")

        return _table([opener(f) for f in self.files()], self._spec.reader)


class LocalTabularDataset(str):
    """A tabular dataset as a run's script gets it (``Run.input_datasets[name]``): the local
    path of its files, which also reads them as one table, as v1's ``TabularDataset`` did.

    Example:
        ```python
        df = Run.get_context().input_datasets["train"].to_pandas_dataframe()
        ```
    """

    def __new__(cls, path: str, reader: dict[str, Any]):
        self = super().__new__(cls, path)
        self.reader = reader
        return self

    def to_pandas_dataframe(self):
        """The table as a pandas DataFrame, from the files made local for the run."""
        path = Path(self)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return _table([lambda file=file: open(file, "rb") for file in files], self.reader)


def _table(opens: list[Any], reader: dict[str, Any]):
    """The files (each opened by a call of ``opens``) read as one table, as the dataset's
    reader settings say."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise DataError("to_pandas_dataframe needs pandas: pip install pandas "
                        "(and pyarrow for Parquet)") from exc
    frames = []
    for open_file in opens:
        with open_file() as handle:
            if reader.get("format") == "parquet":
                frames.append(pd.read_parquet(handle))
            else:
                frames.append(pd.read_csv(handle, sep=reader.get("separator", ","),
                                          header=0 if reader.get("header", True) else None))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _paths(path: Any) -> list[DataPath]:
    """v1's path forms: ``(datastore, "glob")``, a list of them, or a ``DataReference``."""
    items = path if isinstance(path, list) else [path]
    out = []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            store, pattern = item
            out.append(DataPath(datastore=getattr(store, "name", store),
                                path=store_path(pattern)))
        elif hasattr(item, "datastore_name"):
            out.append(DataPath(datastore=item.datastore_name, path=item.path_on_datastore))
        else:
            raise DataError(f"a dataset path is (datastore, 'path/**/*.png') or "
                            f"datastore.path('...'), got {item!r}")
    if not out:
        raise DataError("give at least one path: [(datastore, 'folder/**')]")
    return out


def _workspace_of(paths: Any) -> Workspace:
    items = paths if isinstance(paths, list) else [paths]
    for item in items:
        store = item[0] if isinstance(item, tuple) else None
        if isinstance(store, Datastore):
            return store.workspace
    raise DataError("give the datastore as an object (ws.get_default_datastore() or "
                    "Datastore.get(ws, name)), so the dataset knows its workspace")


class _FileFactory:
    @staticmethod
    def from_files(path: Any, validate: bool = True) -> FileDataset:
        """Files named by ``(datastore, path_or_glob)`` pairs; ``validate`` checks now that
        every path names files."""
        ws = _workspace_of(path)
        dataset = FileDataset(ws, DatasetSpec(type="file", paths=_paths(path)))
        if validate:
            build_manifest(ws, dataset._spec)
        return dataset


class _TabularFactory:
    @staticmethod
    def from_delimited_files(path: Any, validate: bool = True, separator: str = ",",
                             header: bool = True, **_: Any) -> TabularDataset:
        ws = _workspace_of(path)
        dataset = TabularDataset(ws, DatasetSpec(type="tabular", paths=_paths(path), reader={
            "format": "delimited", "separator": separator, "header": bool(header)}))
        if validate:
            build_manifest(ws, dataset._spec)
        return dataset

    @staticmethod
    def from_parquet_files(path: Any, validate: bool = True, **_: Any) -> TabularDataset:
        ws = _workspace_of(path)
        dataset = TabularDataset(ws, DatasetSpec(type="tabular", paths=_paths(path),
                                                 reader={"format": "parquet"}))
        if validate:
            build_manifest(ws, dataset._spec)
        return dataset


class Dataset:
    """v1's ``Dataset``: ``Dataset.File.from_files(...)``, ``Dataset.Tabular...``,
    ``Dataset.get_by_name(ws, name, version)``.

    Example:
        ```python
        files = Dataset.File.from_files(path=[(ds, "mnist/**/*.png")])
        files = files.register(ws, "mnist", create_new_version=True)
        src = ScriptRunConfig("proj", "train.py",
                              arguments=["--input", files.as_named_input("train").as_mount()])
        ```
    """

    File = _FileFactory
    Tabular = _TabularFactory

    @staticmethod
    def get_by_name(workspace: Workspace, name: str, version: int | str = "latest"):
        return get_by_name(workspace, name, version)

    @staticmethod
    def list(workspace: Workspace) -> list[str]:
        return list_datasets(workspace)


def get_by_name(workspace: Workspace, name: str, version: int | str | None = "latest"):
    entry = _read_version(workspace, name, version)
    spec = DatasetSpec.model_validate(entry["definition"])
    cls = TabularDataset if spec.type == "tabular" else FileDataset
    return cls(workspace, spec, entry.get("description"), entry.get("tags"))


def list_datasets(workspace: Workspace) -> list[str]:
    return [n for n in workspace.list_dir(REGISTRY)
            if workspace.exists(f"{REGISTRY}/{n}/latest.json")]


def versions(workspace: Workspace, name: str) -> list[dict[str, Any]]:
    """Every registered version of ``name`` (without their manifests), oldest first."""
    out = []
    for file in workspace.list_dir(f"{REGISTRY}/{name}"):
        if file.endswith(".json") and file[:-5].isdigit():
            entry = workspace.read_json(f"{REGISTRY}/{name}/{file}")
            out.append({k: v for k, v in entry.items() if k != "manifest"})
    return sorted(out, key=lambda e: e["version"])


def _read_version(workspace: Workspace, name: str, version: int | str | None) -> dict[str, Any]:
    check_data_name(name, "dataset name")
    if version in (None, "latest"):
        version = workspace.read_json(f"{REGISTRY}/{name}/latest.json", {}).get("version")
        if version is None:
            raise DataError(f"no dataset {name!r} in {workspace}: register it with "
                            f"Dataset.File.from_files(...).register(ws, {name!r}) (known: "
                            f"{', '.join(list_datasets(workspace)) or 'none'})")
    try:
        return workspace.read_json(f"{REGISTRY}/{name}/{int(version)}.json")
    except (FileNotFoundError, ValueError):
        known = [v["version"] for v in versions(workspace, name)]
        raise DataError(f"dataset {name!r} has no version {version!r} (versions: "
                        f"{', '.join(map(str, known)) or 'none'})") from None
