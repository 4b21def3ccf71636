"""The source directory of a run is captured at submit, deduplicated, and restored where it runs."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest

from prefect_mltrain import snapshot
from prefect_mltrain.errors import SnapshotError, SnapshotTooLargeError
from prefect_mltrain.home import cache_dir
from prefect_mltrain.snapshot import (
    load_manifest,
    preview_snapshot,
    restore_snapshot,
    take_snapshot,
)
from prefect_mltrain.workspace import Workspace


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLTRAIN_HOME", str(tmp_path / "home"))


def write(root: Path, rel: str, content: str | bytes = "x", mode: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    if mode is not None:
        path.chmod(mode)
    return path


def project(tmp_path: Path) -> Path:
    src = tmp_path / "proj"
    write(src, "train.py", "print('train')\n", mode=0o755)
    write(src, "conf/params.yaml", "lr: 0.1\n", mode=0o600)
    write(src, "data/small.csv", "a,b\n1,2\n")
    os.symlink("conf/params.yaml", src / "params.yaml")
    os.symlink("../conf", src / "data" / "conf")
    return src


def blob_count(ws: Workspace) -> int:
    return len(ws.find("blobs"))


def test_round_trip_restores_content_modes_and_internal_symlinks(tmp_path, ws):
    src = project(tmp_path)

    result = take_snapshot(ws, src)
    dest = restore_snapshot(ws, result.snapshot_id, tmp_path / "restored")

    assert (result.file_count, result.hashed_files, result.uploaded_files) == (3, 3, 3)
    assert ws.exists(f"snapshots/{result.snapshot_id}.json")
    assert (dest / "train.py").read_text() == "print('train')\n"
    assert (dest / "data/small.csv").read_text() == "a,b\n1,2\n"
    assert (dest / "train.py").stat().st_mode & 0o777 == 0o755
    assert (dest / "conf/params.yaml").stat().st_mode & 0o777 == 0o600
    assert os.readlink(dest / "params.yaml") == "conf/params.yaml"
    assert (dest / "params.yaml").read_text() == "lr: 0.1\n"
    assert os.readlink(dest / "data/conf") == "../conf"
    assert load_manifest(ws, result.snapshot_id).symlinks == {
        "data/conf": "../conf", "params.yaml": "conf/params.yaml"}


def test_unchanged_resubmit_of_2000_files_only_stats(tmp_path, ws, monkeypatch):
    src = tmp_path / "big"
    for i in range(2000):
        write(src, f"pkg{i % 20}/mod{i}.py", f"VALUE = {i}\n")

    first = take_snapshot(ws, src, max_files=5000)
    monkeypatch.setattr(snapshot, "_hash_file", lambda path: pytest.fail(f"read {path}"))
    second = take_snapshot(ws, src, max_files=5000)

    assert (first.file_count, first.hashed_files, first.uploaded_files) == (2000, 2000, 2000)
    assert (second.hashed_files, second.uploaded_files, second.uploaded_bytes) == (0, 0, 0)
    assert second.snapshot_id == first.snapshot_id


def test_one_changed_file_uploads_one_blob_and_gets_a_new_id(tmp_path, ws):
    src = project(tmp_path)
    first = take_snapshot(ws, src)

    write(src, "conf/params.yaml", "lr: 0.2\n")  # same size, new content
    second = take_snapshot(ws, src)

    assert second.snapshot_id != first.snapshot_id
    assert (second.uploaded_files, second.uploaded_bytes) == (1, len("lr: 0.2\n"))
    assert blob_count(ws) == 4
    restored = restore_snapshot(ws, second.snapshot_id, tmp_path / "out")
    assert (restored / "conf/params.yaml").read_text() == "lr: 0.2\n"


def test_identical_content_is_stored_once(tmp_path, ws):
    src = tmp_path / "proj"
    write(src, "a/weights.txt", "same")
    write(src, "b/weights.txt", "same")
    write(src, "c.txt", "other")

    result = take_snapshot(ws, src)

    assert (result.file_count, result.uploaded_files) == (3, 2)
    assert blob_count(ws) == 2
    restored = restore_snapshot(ws, result.snapshot_id, tmp_path / "out")
    assert (restored / "b/weights.txt").read_text() == "same"


def test_ignore_files_apply_at_every_level_with_gitignore_semantics(tmp_path, ws, monkeypatch):
    src = tmp_path / "proj"
    write(src, ".amlignore", "*.log\n!keep.log\nbuild/\n/top_only.txt\n")
    write(src, ".gitignore", "train.py\n")  # replaced by the .amlignore next to it
    for rel in ("train.py", "a.log", "keep.log", "build/out.bin", "top_only.txt",
                "sub/top_only.txt", "sub/build", "sub/b.log", "sub/c.log", "sub/x.tmp",
                "sub/deeper/d.csv", "sub/deeper/d.txt", "sub/deeper/e.tmp",
                ".git/config", "__pycache__/m.cpython-311.pyc", "sub/mod.pyc",
                ".ipynb_checkpoints/n.ipynb", ".mltrain/runs/x", "sub/.pytest_cache/v"):
        write(src, rel)
    write(src, "sub/.gitignore", "*.tmp\n!b.log\n")
    write(src, "sub/deeper/.amlignore", "*.csv\n")
    write(src, "sub/deeper/.gitignore", "*.txt\n")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: listed.append(p) or real_scandir(p))

    captured = [rel for rel, _ in preview_snapshot(src)]

    assert captured == [
        ".amlignore", ".gitignore", "keep.log",
        "sub/.gitignore", "sub/b.log", "sub/build", "sub/deeper/.amlignore",
        "sub/deeper/.gitignore", "sub/deeper/d.txt", "sub/top_only.txt", "train.py",
    ]
    assert not [p for p in listed if Path(p).name in ("build", ".git", "__pycache__")]
    result = take_snapshot(ws, src)
    assert sorted(load_manifest(ws, result.snapshot_id).files) == captured


def test_symlinks_leaving_the_directory_are_skipped_never_followed(tmp_path, ws):
    src = project(tmp_path)
    outside = tmp_path / "secrets"
    write(outside, "key.pem", "PRIVATE")
    os.symlink(outside / "key.pem", src / "key.pem")
    os.symlink(outside, src / "secrets")
    os.symlink("../../escape", src / "conf" / "up")
    os.symlink("missing.txt", src / "broken")
    os.mkfifo(src / "events.pipe")  # reading it would block forever

    result = take_snapshot(ws, src)

    assert result.skipped == ["broken", "conf/up", "events.pipe", "key.pem", "secrets"]
    manifest = load_manifest(ws, result.snapshot_id)
    assert sorted(manifest.files) == ["conf/params.yaml", "data/small.csv", "train.py"]
    assert sorted(manifest.symlinks) == ["data/conf", "params.yaml"]
    restored = restore_snapshot(ws, result.snapshot_id, tmp_path / "out")
    assert not os.path.lexists(restored / "secrets")
    assert b"PRIVATE" not in b"".join(ws.read_bytes(f"blobs/{r}") for r in ws.find("blobs"))


def test_over_file_budget_names_the_biggest_files_and_writes_nothing(tmp_path, ws, monkeypatch):
    src = tmp_path / "proj"
    for i in range(5):
        write(src, f"src/m{i}.py", "x" * 10)
    write(src, "data/huge_table.parquet", b"\0" * 5000)
    monkeypatch.setattr(snapshot, "_hash_file", lambda path: pytest.fail("hashed before check"))

    with pytest.raises(SnapshotTooLargeError) as err:
        take_snapshot(ws, src, max_files=3)

    message = str(err.value)
    assert "6 files (limit 3)" in message
    assert "data/huge_table.parquet" in message and "src/" in message
    assert ".amlignore" in message and "ws.update_settings(snapshot_max_files=6)" in message
    assert ws.find("snapshots") == {} and ws.find("blobs") == {}


def test_over_byte_budget_from_workspace_settings(tmp_path, ws):
    src = tmp_path / "proj"
    write(src, "train.py", "print()\n")
    write(src, "checkpoints/epoch_9.pt", b"\0" * 3 * 1024 * 1024)
    ws.update_settings(snapshot_max_bytes=1024 * 1024)

    with pytest.raises(SnapshotTooLargeError) as err:
        take_snapshot(ws, src)

    message = str(err.value)
    assert "3.0 MB (limit 1.0 MB)" in message
    assert "checkpoints/epoch_9.pt" in message and "`checkpoints/`" in message
    assert ws.find("snapshots") == {} and ws.find("blobs") == {}


def test_missing_or_file_source_directory_is_a_clear_error(tmp_path, ws):
    with pytest.raises(SnapshotError, match="does not exist.*source_directory="):
        take_snapshot(ws, tmp_path / "nope")
    write(tmp_path, "train.py")
    with pytest.raises(SnapshotError, match=r"train\.py is not a directory"):
        take_snapshot(ws, tmp_path / "train.py")


def store_manifest(ws: Workspace, manifest: dict) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    snapshot_id = hashlib.sha256(canonical.encode()).hexdigest()
    ws.write_json(f"snapshots/{snapshot_id}.json", manifest)
    return snapshot_id


@pytest.mark.parametrize("files, symlinks", [
    (["../evil"], {}),
    (["ok/../../evil"], {}),
    (["<abs>/evil"], {}),
    ([], {"evil": "../../evil"}),
    ([], {"l1": ".", "evil": "l1/.."}),
])
def test_hostile_manifest_cannot_write_outside_destination(tmp_path, ws, files, symlinks):
    sha = hashlib.sha256(b"pwned").hexdigest()
    ws.write_bytes(ws.blob_rel(sha), b"pwned")
    meta = {"sha256": sha, "size": 5, "mode": 0o644}
    files = [f.replace("<abs>", str(tmp_path)) for f in files]
    snapshot_id = store_manifest(ws, {"files": {f: meta for f in files}, "symlinks": symlinks})
    dest = tmp_path / "jail" / "dest"

    with pytest.raises(SnapshotError):
        restore_snapshot(ws, snapshot_id, dest)

    assert not (tmp_path / "evil").exists() and not (tmp_path / "jail" / "evil").exists()
    assert not os.path.lexists(dest / "evil")


def test_restore_does_not_write_through_a_symlink_already_in_the_destination(tmp_path, ws):
    snapshot_id = take_snapshot(ws, project(tmp_path)).snapshot_id
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "conf")

    with pytest.raises(SnapshotError, match="outside"):
        restore_snapshot(ws, snapshot_id, dest)
    assert list(outside.iterdir()) == []


def test_tampered_manifest_and_unknown_id_are_refused(tmp_path, ws):
    src = project(tmp_path)
    snapshot_id = take_snapshot(ws, src).snapshot_id
    ws.write_json(f"snapshots/{snapshot_id}.json", {"files": {"../x": {}}, "symlinks": {}})

    with pytest.raises(SnapshotError, match="damaged"):
        restore_snapshot(ws, snapshot_id, tmp_path / "out")
    with pytest.raises(SnapshotError, match="is not in workspace"):
        load_manifest(ws, "0" * 64)
    with pytest.raises(SnapshotError, match="not a snapshot id"):
        load_manifest(ws, "../../config")


def test_corrupt_stat_cache_is_ignored(tmp_path, ws):
    src = project(tmp_path)
    first = take_snapshot(ws, src)
    for cached in cache_dir("snapshot-stat").iterdir():
        cached.write_text("{not json")

    second = take_snapshot(ws, src)

    assert second.snapshot_id == first.snapshot_id
    assert (second.hashed_files, second.uploaded_files) == (3, 0)
    assert take_snapshot(ws, src).hashed_files == 0


def test_failed_upload_leaves_no_manifest(tmp_path, ws, monkeypatch):
    src = project(tmp_path)

    def unreachable(pairs):
        raise ConnectionError("store unreachable")

    monkeypatch.setattr(ws, "put_files", unreachable)
    with pytest.raises(SnapshotError, match="store unreachable"):
        take_snapshot(ws, src)
    assert ws.find("snapshots") == {}


def test_file_changed_during_upload_leaves_no_wrong_blob(tmp_path, ws, monkeypatch):
    src = project(tmp_path)
    upload = ws.put_files

    def upload_while_editing(pairs):
        write(src, "train.py", "print('edited meanwhile')\n")
        upload(pairs)

    monkeypatch.setattr(ws, "put_files", upload_while_editing)
    with pytest.raises(SnapshotError, match=r"train\.py changed while"):
        take_snapshot(ws, src)
    monkeypatch.setattr(ws, "put_files", upload)

    stored = {hashlib.sha256(ws.read_bytes(f"blobs/{rel}")).hexdigest() for rel in ws.find("blobs")}
    assert stored == {rel.rsplit("/", 1)[-1] for rel in ws.find("blobs")}
    assert ws.find("snapshots") == {}
    result = take_snapshot(ws, src)
    restored = restore_snapshot(ws, result.snapshot_id, tmp_path / "out")
    assert (restored / "train.py").read_text() == "print('edited meanwhile')\n"


def test_local_workspace_inside_the_source_is_not_captured(tmp_path):
    src = project(tmp_path)
    ws = Workspace(src / "store")

    first = take_snapshot(ws, src)
    second = take_snapshot(ws, src)

    assert second.snapshot_id == first.snapshot_id and second.uploaded_files == 0
    captured = load_manifest(ws, first.snapshot_id).files
    assert not any(rel.startswith("store/") for rel in captured)


def test_memory_workspace_round_trip_and_dedupe(tmp_path):
    ws = Workspace(f"memory://snapshot-test-{uuid.uuid4().hex}")
    src = project(tmp_path)
    write(src, "copy.yaml", "lr: 0.1\n")

    first = take_snapshot(ws, src, progress=True)
    write(src, "notes.md", "new")
    second = take_snapshot(ws, src)
    dest = restore_snapshot(ws, second.snapshot_id, tmp_path / "out")

    assert (first.file_count, first.uploaded_files) == (4, 3)
    assert (second.uploaded_files, second.hashed_files) == (1, 1)
    assert (dest / "copy.yaml").read_text() == "lr: 0.1\n" and (dest / "notes.md").exists()
    assert (dest / "train.py").stat().st_mode & 0o777 == 0o755
    assert os.readlink(dest / "params.yaml") == "conf/params.yaml"


def test_s3_workspace_uploads_only_what_changed(tmp_path, s3_workspace_options):
    s3 = s3_workspace_options
    ws = Workspace(f"{s3['url']}/snapshot-{uuid.uuid4().hex}", s3["storage_options"])
    src = project(tmp_path)
    for i in range(40):
        write(src, f"pkg/m{i}.py", f"X = {i}\n")

    first = take_snapshot(ws, src)
    write(src, "pkg/m7.py", "X = 'seven'\n")
    second = take_snapshot(ws, src)
    dest = restore_snapshot(ws, second.snapshot_id, tmp_path / "out")

    assert (first.file_count, first.uploaded_files) == (43, 43)
    assert (second.hashed_files, second.uploaded_files) == (1, 1)
    assert (dest / "pkg/m7.py").read_text() == "X = 'seven'\n"
    assert (dest / "train.py").stat().st_mode & 0o777 == 0o755
    assert os.readlink(dest / "data/conf") == "../conf"
