"""A run's data, from its arguments to local paths where its script runs, and back.

``plan_data`` (on the runner, in Preparing) resolves each data argument to the files it
names, with the store's credentials: a datastore that does not exist, a path without
files, credentials that fail or a dataset whose files changed stop the run there.
``stage_inputs`` (on the machine that runs the script: the runner, or each Dask worker)
makes the files local: a download through a content cache under ``$MLTRAIN_HOME`` (a file
already fetched with the same version token is linked, not fetched again), or a
read-only FUSE mount where FUSE works (else the download, said in the log).
``upload_outputs`` sends each ``OutputFileDatasetConfig`` folder to its destination
when the run ends, whatever the ending, and registers it when asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, RunCanceledError
from .references import (
    DataReference,
    DatasetConsumptionConfig,
    OutputFileDatasetConfig,
    data_arguments,
    store_path,
)

BATCH_FILES = 256  # files per fsspec get: s3fs fetches a batch concurrently
LOCK_WAIT_SECONDS = 600.0  # another run on this host fetching the same files


@dataclass
class Source:
    """Files of one store: the store's URL and options (credentials in memory only)."""

    url: str
    options: dict[str, Any]
    files: list[tuple[str, str, int, str]]  # (path in the store, rel, size, version token)

    def filesystem(self):
        from fsspec.core import url_to_fs

        from .datastore import transfer_options

        fs, root = url_to_fs(self.url, **transfer_options(self.url, self.options))
        return fs, root.rstrip("/") or "/"


@dataclass
class InputPlan:
    """One input: its files, how the script gets them, and what the run records of it."""

    key: str
    mode: str  # "download" or "mount"
    sources: list[Source]
    target: str = ""  # below the input's folder: what the argument points at
    path_on_compute: str | None = None
    overwrite: bool = False
    mount_root: str | None = None  # the store folder a mount shows (None: just the files)
    named: bool = False  # a dataset: in Run.input_datasets
    reader: dict[str, Any] | None = None  # a tabular dataset: how its files read as a table
    lineage: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputPlan:
    key: str
    url: str  # the destination datastore
    options: dict[str, Any]
    path: str  # with {run-id} and {output-name}
    source: str | None
    overwrite: bool
    globs: list[str] | None
    datastore: str
    register: dict[str, Any] | None


@dataclass
class DataPlan:
    inputs: list[InputPlan] = field(default_factory=list)
    outputs: list[OutputPlan] = field(default_factory=list)

    def secrets(self) -> list[str]:
        """The credential values in the plan, masked wherever output goes."""
        from ..workspace import secret_values

        return [v for options in [*(s.options for i in self.inputs for s in i.sources),
                                  *(o.options for o in self.outputs)]
                for v in secret_values(options)]


# -- planning (the runner, in Preparing) ------------------------------------------------------


def plan_data(ws, arguments: list[Any]) -> DataPlan | None:
    """Resolve every data argument to its files (``DataError`` naming the fix when one
    cannot be used); None when the run has none."""
    from .dataset import pinned_files
    from .datastore import Datastore

    refs = data_arguments(arguments)
    if not refs:
        return None
    plan, stores = DataPlan(), {}

    def store(name: str | None):
        from .datastore import default_name

        name = name or default_name(ws)
        if name not in stores:
            stores[name] = Datastore.get(ws, name)
            stores[name].filesystem()
        return stores[name]

    for ref in refs:
        if isinstance(ref, OutputFileDatasetConfig):
            ds = store(ref.destination_datastore)
            plan.outputs.append(OutputPlan(
                ref.key, ds.url, ds.options(), ref.destination_path, ref.source, ref.overwrite,
                ref.source_globs, ds.name, {"name": ref.register_name,
                                            "description": ref.register_description,
                                            "tags": ref.register_tags}
                if ref.register_name else None))
        elif isinstance(ref, DataReference):
            plan.inputs.append(_plan_reference(store(ref.datastore_name), ref))
        elif isinstance(ref, DatasetConsumptionConfig):
            files, digest = pinned_files(ws, ref.dataset)
            by_store: dict[str, list] = {}
            for f in files:
                by_store.setdefault(f.datastore, []).append((f.path, f.rel, f.size, f.token))
            sources = [Source(store(n).url, store(n).options(), fs) for n, fs in by_store.items()]
            paths = ref.dataset.paths
            plan.inputs.append(InputPlan(
                ref.key, "download" if ref.mode in ("direct", "download") else "mount",
                sources, path_on_compute=ref.path_on_compute, named=True,
                reader=ref.dataset.reader if ref.dataset.type == "tabular" else None,
                lineage={"name": ref.key, "dataset": ref.dataset.name,
                         "version": ref.dataset.version, "type": ref.dataset.type,
                         "manifest_hash": digest, "datastores": sorted(by_store),
                         "paths": [p.path for p in paths], "mode": ref.mode}))
    return plan


def _plan_reference(ds, ref: DataReference) -> InputPlan:
    from .dataset import list_path, manifest_hash

    files = list_path(ds, ref.path_on_datastore)
    if not files:
        raise DataError(f"{ds.full_url(ref.path_on_datastore)} (datastore {ds.name!r}) holds "
                        "no files: upload them first (ds.upload(src_dir=..., target_path=...)) "
                        "or fix the path")
    _, root = ds.filesystem()
    full = "/".join(p for p in (root, ref.path_on_datastore) if p)
    path = ref.path_on_datastore
    single = len(files) == 1 and files[0].path == path  # the path names one file
    # The input's folder mirrors the datastore, so the argument is the path in it.
    rels = [(f.path, f.path, f.size, f.token) for f in files]
    return InputPlan(
        ref.key, ref.mode, [Source(ds.url, ds.options(), rels)], target=path,
        path_on_compute=ref.path_on_compute, overwrite=ref.overwrite,
        mount_root=None if single else full,
        lineage={"name": ref.key, "datastore": ds.name, "path": path, "mode": ref.mode,
                 "manifest_hash": manifest_hash(files)})


# -- staging (where the script runs) ----------------------------------------------------------


@dataclass
class Staged:
    """The inputs as local paths; mounts stay until ``close()``."""

    paths: dict[str, str] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    _mounts: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        self._mounts.close()


def stage_inputs(plan: DataPlan | None, cwd: Path, data_root: Path,
                 on_line: Callable[[str], None] = lambda line: None,
                 stop: Callable[[], bool] = lambda: False) -> Staged:
    """Make every input of ``plan`` local; the caller closes the result (unmounts)."""
    staged = Staged()
    try:
        for item in plan.inputs if plan else []:
            folder = _folder(item, cwd, data_root)
            started = time.monotonic()
            mounted = item.mode == "mount" and _mount(item, folder, staged, on_line)
            stats = {"files": sum(len(s.files) for s in item.sources),
                     "bytes": sum(f[2] for s in item.sources for f in s.files),
                     "mounted": mounted, "downloaded_files": 0, "downloaded_bytes": 0}
            if not mounted:
                stats.update(_download(item, folder, on_line, stop))
            stats["seconds"] = round(time.monotonic() - started, 3)
            staged.paths[item.key] = str(folder / item.target) if item.target else str(folder)
            staged.stats[item.key] = stats
            on_line(f"input {item.key}: {stats['files']} files, {_mb(stats['bytes'])}"
                    + (" mounted" if mounted else
                       f", {stats['downloaded_files']} downloaded "
                       f"({_mb(stats['downloaded_bytes'])}), "
                       f"{stats['files'] - stats['downloaded_files']} from the cache")
                    + f" in {stats['seconds']:.2f} s -> {staged.paths[item.key]}")
    except BaseException:
        staged.close()
        raise
    return staged


def _folder(item: InputPlan, cwd: Path, data_root: Path) -> Path:
    if not item.path_on_compute:
        return data_root / item.key
    path = Path(item.path_on_compute).expanduser()
    return path if path.is_absolute() else cwd / path


def _mount(item: InputPlan, folder: Path, staged: Staged, on_line) -> bool:
    """Mount the input read-only at ``folder``: a datastore folder as the store has it, a
    dataset version (or one file) as exactly its files; False (and why, in the log) when it
    is downloaded instead."""
    from .datastore import join
    from .mount import Mount, fuse_unusable

    reason = fuse_unusable() if len(item.sources) == 1 else (
        "its files are in several datastores, which one mount cannot show")
    if reason is None:
        try:
            source = item.sources[0]
            fs, root = source.filesystem()
            if item.mount_root:  # the datastore folder itself, where the argument points
                mount = Mount(fs, item.mount_root, folder / item.target)
            else:
                mount = Mount(fs, root, folder, files={
                    rel: (join(root, path), size) for path, rel, size, _ in source.files})
            staged._mounts.enter_context(mount)
            return True
        except Exception as exc:
            reason = f"the mount failed ({exc})"
    on_line(f"input {item.key}: as_mount() is a download here: {reason}")
    return False


def cache_key(url: str, path: str, size: int, token: str) -> str | None:
    if not token:
        return None  # the store tells nothing that changes with the content: fetch it anew
    return hashlib.sha256(f"{url}\0{path}\0{size}\0{token}".encode()).hexdigest()


def _download(item: InputPlan, folder: Path, on_line, stop) -> dict[str, int]:
    """Each file into the cache (only those not in it yet), then linked into ``folder``."""
    from filelock import FileLock, Timeout

    from ..home import cache_dir
    from .datastore import join
    from .s3_bulk import bulk_getter

    cache = cache_dir("data")
    got_files = got_bytes = 0
    for source in item.sources:
        fs, root = source.filesystem()
        get = bulk_getter(source.url, source.options) or fs.get
        wanted = []
        for path, rel, size, token in source.files:
            dest = folder / rel
            _check_inside(dest, folder)
            key = cache_key(source.url, path, size, token)
            obj = cache / key[:2] / key if key else folder.parent / f".{uuid.uuid4().hex}"
            wanted.append((join(root, path), obj, dest, size))
        lock = FileLock(str(cache / f"{_digest(source.url, item.key)}.lock"))
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:  # another run on this host may be fetching the same files
            try:
                lock.acquire(timeout=0.5)
                break
            except Timeout:
                if stop():
                    raise RunCanceledError(f"input {item.key}: the run was canceled") from None
                if time.monotonic() > deadline:
                    raise DataError(f"input {item.key}: the data cache {cache} stayed locked "
                                    f"for {LOCK_WAIT_SECONDS:.0f} s") from None
        try:
            missing = [w for w in wanted if not w[1].exists()]
            for start in range(0, len(missing), BATCH_FILES):
                if stop():
                    raise RunCanceledError(f"input {item.key}: the run was canceled")
                batch = missing[start:start + BATCH_FILES]
                tmps = [w[1].with_name(f".{w[1].name}.{uuid.uuid4().hex[:8]}.tmp")
                        for w in batch]
                for tmp in tmps:
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                try:
                    get([w[0] for w in batch], [str(t) for t in tmps])
                    for (remote, obj, _, size), tmp in zip(batch, tmps, strict=True):
                        # changed since the plan: never cached under the plan's key (a
                        # size of 0 is one the store did not tell)
                        if size and os.path.getsize(tmp) != size:
                            raise DataError(
                                f"input {item.key}: {remote} changed in the store since the "
                                f"run was planned ({size} -> {os.path.getsize(tmp)} bytes): "
                                "submit again (a pinned dataset version then says so)")
                        os.chmod(tmp, 0o444)  # linked into runs: no script may change it
                        os.replace(tmp, obj)
                finally:
                    for tmp in tmps:
                        tmp.unlink(missing_ok=True)
                got_files += len(batch)
                got_bytes += sum(w[3] for w in batch)
                if len(missing) > BATCH_FILES:
                    on_line(f"input {item.key}: {got_files}/{len(missing)} files downloaded")
            for _, obj, dest, size in wanted:
                _place(obj, dest, size, item.overwrite)
        finally:
            lock.release()
            for _, obj, _, _ in wanted:  # fetched for this run only: never cached
                if obj.parent == folder.parent:
                    obj.unlink(missing_ok=True)
    return {"downloaded_files": got_files, "downloaded_bytes": got_bytes}


def _place(obj: Path, dest: Path, size: int, overwrite: bool) -> None:
    if dest.exists() or dest.is_symlink():
        if not overwrite and dest.is_file() and dest.stat().st_size == size:
            return  # there already (a path_on_compute of an earlier run)
        if not overwrite:
            raise DataError(f"{dest} exists and differs from the input: delete it, choose "
                            "another path_on_compute, or pass overwrite=True")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(obj, dest)  # no copy: the cache and the run share the bytes
    except OSError:
        shutil.copyfile(obj, dest)


def _check_inside(dest: Path, folder: Path) -> None:
    if not dest.resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{dest} would be outside the input's folder {folder}: a file name in "
                        "the store leaves it ('..'); rename that file in the store")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# -- the script's view ------------------------------------------------------------------------


SCRATCH_IN, SCRATCH_OUT = "data", "data-out"  # a run's inputs and data outputs, beside src/


def output_dirs(plan: DataPlan | None, cwd: Path, out_root: Path) -> dict[str, str]:
    """A local folder for each output (its ``source``, relative to the script's folder,
    else one made for it), created empty."""
    paths = {}
    for out in plan.outputs if plan else []:
        path = (cwd / out.source) if out.source and not os.path.isabs(out.source) else (
            Path(out.source) if out.source else out_root / out.key)
        path.mkdir(parents=True, exist_ok=True)
        paths[out.key] = str(path)
    return paths


def data_token(key: str) -> str:
    """Stands for a data path in a rank's argv and variables until its worker knows it."""
    return f"<mltrain-data:{key}>"


def with_paths(values: list[str] | dict[str, str], paths: dict[str, str]):
    """``values`` (an argv, or variables) with each ``data_token`` replaced by its path."""
    def put(text: str) -> str:
        for key, path in paths.items():
            text = text.replace(data_token(key), path)
        return text

    if isinstance(values, dict):
        return {k: put(v) for k, v in values.items()}
    return [put(v) for v in values]


def data_env(plan: DataPlan | None, paths: dict[str, str]) -> dict[str, str]:
    """v1's variables: ``AZUREML_DATAREFERENCE_<name>`` of each input, ``<name>`` of each
    output; and the named inputs for ``Run.input_datasets``."""
    if plan is None:
        return {}
    env = {f"AZUREML_DATAREFERENCE_{i.key}": paths[i.key] for i in plan.inputs}
    env.update({o.key: paths[o.key] for o in plan.outputs})
    env["MLTRAIN_INPUT_DATASETS"] = json.dumps({i.key: paths[i.key] for i in plan.inputs
                                                if i.named})
    env["MLTRAIN_INPUT_TABLES"] = json.dumps({i.key: i.reader for i in plan.inputs
                                              if i.reader is not None})
    env["MLTRAIN_OUTPUT_DATASETS"] = json.dumps({o.key: paths[o.key] for o in plan.outputs})
    return env


# -- outputs (the runner, at the end) ---------------------------------------------------------


def upload_outputs(ws, plan: DataPlan | None, paths: dict[str, str], run_id: str,
                   on_line: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
    """Upload each output folder to its destination; what was written, for the lineage."""
    from fnmatch import fnmatch

    from .datastore import Datastore, _files, put

    written = []
    for out in plan.outputs if plan else []:
        folder = Path(paths[out.key])
        dest = store_path(out.path.replace("{run-id}", run_id).replace("{output-name}",
                                                                       out.key))
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        if out.globs:
            files = [p for p in files if any(fnmatch(p.relative_to(folder).as_posix(), g)
                                             for g in out.globs)]
        fs, root = Source(out.url, out.options, []).filesystem()
        base = "/".join(p for p in (root, dest) if p)
        pairs = [(str(p), f"{base}/{p.relative_to(folder).as_posix()}") for p in files]
        if not out.overwrite and pairs:
            existing = set(_files(fs, base))
            clash = [r for _, r in pairs if fs._strip_protocol(r) in existing]
            if clash:
                raise DataError(f"output {out.key}: {clash[0]} already exists in datastore "
                                f"{out.datastore!r}: use a destination with {{run-id}}, or "
                                "as_upload(overwrite=True)")
        for start in range(0, len(pairs), BATCH_FILES):
            batch = pairs[start:start + BATCH_FILES]
            put(fs, [p[0] for p in batch], [p[1] for p in batch])
        entry = {"name": out.key, "datastore": out.datastore, "path": dest,
                 "files": len(pairs), "bytes": sum(os.path.getsize(p[0]) for p in pairs)}
        if out.register and pairs:
            from .dataset import Dataset

            ds = Datastore.get(ws, out.datastore)
            dataset = Dataset.File.from_files([(ds, dest)]).register(
                ws, out.register["name"], out.register.get("description"),
                out.register.get("tags"), create_new_version=True)
            entry["registered"] = {"name": dataset.name, "version": dataset.version}
        on_line(f"output {out.key}: {entry['files']} files ({_mb(entry['bytes'])}) -> "
                f"{out.datastore}:{dest}")
        written.append(entry)
    return written

