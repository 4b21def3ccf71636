"""The workspace store on a local folder, in memory, and on a real S3 API (moto_server)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from prefect_mltrain.errors import WorkspaceError
from prefect_mltrain.workspace import Workspace, WorkspaceSettings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def s3_server(s3_workspace_options):
    """The session's moto_server; every test gets its own prefix in the bucket."""
    return s3_workspace_options


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request, tmp_path):
    """``(url, storage_options)`` of a fresh, empty workspace on each kind of store."""
    unique = uuid.uuid4().hex[:12]
    if request.param == "local":
        yield str(tmp_path / "ws"), {}
    elif request.param == "memory":
        url = f"memory://mltrain-{unique}"
        yield url, {}
        Workspace(url).delete("", recursive=True)
    else:
        s3 = request.getfixturevalue("s3_server")
        yield f"{s3['url']}/{unique}", s3["storage_options"]


@pytest.fixture
def ws(backend) -> Workspace:
    return Workspace(*backend)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- files ------------------------------------------------------------------------------------


def test_json_round_trip(ws):
    record = {"status": "Running", "metrics": [1, 2.5, None], "name": "Übung", "ok": True}

    ws.write_json("experiments/e1/runs/r1/run.json", record)
    assert ws.read_json("experiments/e1/runs/r1/run.json") == record

    ws.write_json("experiments/e1/runs/r1/run.json", {**record, "status": "Completed"})
    assert ws.read_json("experiments/e1/runs/r1/run.json")["status"] == "Completed"

    ws.write_json("paths.json", {"model": Path("outputs/model.pkl")})  # not JSON: stored as text
    assert ws.read_json("paths.json") == {"model": "outputs/model.pkl"}


def test_read_json_default_when_missing(ws):
    assert ws.read_json("missing.json", None) is None
    assert ws.read_json("no/such/folder/run.json", {}) == {}
    assert not ws.exists("missing.json")
    with pytest.raises(FileNotFoundError):
        ws.read_json("missing.json")


def test_local_atomic_writes_leave_no_temp_files_and_never_show_half_a_file(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.write_json("runs/r1/status.json", {"i": -1, "pad": ""})
    seen, errors = [], []

    def writer(n: int) -> None:
        for i in range(50):
            ws.write_json("runs/r1/status.json", {"i": i, "pad": "x" * 20000 * n})

    def reader() -> None:
        for _ in range(200):
            try:
                seen.append(ws.read_json("runs/r1/status.json")["i"])
            except json.JSONDecodeError as exc:  # a torn write
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2, 3)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == [] and len(seen) == 200
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["ws/runs/r1/status.json"]


def test_local_failed_write_leaves_no_temp_file(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.write_json("runs/r1/run.json", {})

    with pytest.raises(OSError):
        ws.write_bytes("runs/r1", b"a folder cannot be replaced by a file")

    assert [p.name for p in (tmp_path / "ws" / "runs").iterdir()] == ["r1"]


def test_list_dir_and_find_with_nested_paths(ws):
    ws.write_json("experiments/a/runs/r1/run.json", {"n": 1})
    ws.write_bytes("experiments/a/runs/r1/outputs/model/weights.bin", b"\0" * 1000)
    ws.write_json("experiments/a/runs/r2/run.json", {"n": 2})
    ws.write_bytes("experiments/ab/runs/r3/run.json", b"{}")  # shares the prefix "a"
    ws.write_bytes("experiments/b/tags.json", b"{}")

    assert ws.list_dir("experiments") == ["a", "ab", "b"]
    assert ws.list_experiments() == ["a", "ab", "b"]
    assert ws.list_dir("experiments/a/runs") == ["r1", "r2"]
    assert ws.list_dir("experiments/a/runs/r1") == ["outputs", "run.json"]
    assert ws.list_dir("experiments/a/runs/r1/") == ["outputs", "run.json"]
    assert ws.list_dir("no/such/folder") == []

    size = len(ws.read_bytes("experiments/a/runs/r1/run.json"))
    assert ws.find("experiments/a") == {
        "runs/r1/run.json": size,
        "runs/r1/outputs/model/weights.bin": 1000,
        "runs/r2/run.json": size,
    }
    assert ws.find("experiments/a/runs/r1/outputs") == {"model/weights.bin": 1000}
    assert ws.find("no/such/folder") == {}


def test_put_files_and_get_file_round_trip(ws, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    contents = {
        "z.bin": os.urandom(300_000),
        "a.txt": "héllo\n".encode(),
        "sub/m.json": b'{"k": 1}',
        "empty": b"",
    }
    for name, data in contents.items():
        (src / name).write_bytes(data)
    # Sources and destinations in different sort orders: each file must land where asked.
    pairs = [
        (str(src / "z.bin"), "snap/aa/first"),
        (str(src / "a.txt"), "snap/zz/last"),
        (str(src / "sub/m.json"), "snap/mm/middle.json"),
        (str(src / "empty"), "snap/empty"),
    ]

    ws.put_files(pairs)
    ws.put_files([])

    for local, rel in pairs:
        down = tmp_path / "down" / "deeper" / rel.replace("/", "_")
        ws.get_file(rel, down)
        assert down.read_bytes() == Path(local).read_bytes(), rel
    assert ws.find("snap") == {
        "aa/first": 300_000,
        "zz/last": len(contents["a.txt"]),
        "mm/middle.json": 8,
        "empty": 0,
    }


def test_delete(ws):
    ws.write_bytes("runs/r1/a", b"a")
    ws.write_bytes("runs/r1/sub/b", b"b")

    ws.delete("runs/r1/a")
    assert ws.find("runs") == {"r1/sub/b": 1}
    ws.delete("runs", recursive=True)
    assert ws.find("runs") == {}
    ws.delete("runs/never-existed")


# -- content-addressed blobs -------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 20], ids=["few", "many"])
def test_existing_blobs(ws, count):
    blobs = [f"blob {i}".encode() for i in range(2 * count)]
    stored, missing = blobs[:count], blobs[count:]
    for data in stored:
        ws.write_bytes(Workspace.blob_rel(sha(data)), data)
    candidates = [sha(d) for d in blobs]
    assert (len(candidates) > 32) == (count == 20)  # both code paths are exercised

    assert ws.existing_blobs(candidates) == {sha(d) for d in stored}
    assert ws.existing_blobs(sha(d) for d in missing) == set()
    assert ws.existing_blobs([]) == set()
    assert ws.read_bytes(Workspace.blob_rel(sha(stored[0]))) == stored[0]


def test_s3_exists_sees_files_written_by_another_process(s3_server):
    """The run's process and the submitter share run folders; neither may trust stale listings."""
    import boto3

    ws = Workspace(f"{s3_server['url']}/{uuid.uuid4().hex[:12]}", s3_server["storage_options"])
    ws.write_bytes("runs/r1/a.txt", b"a")
    assert ws.list_dir("runs/r1") == ["a.txt"]  # s3fs now caches this listing
    other = boto3.client(
        "s3",
        endpoint_url=s3_server["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    bucket, prefix = ws.root.split("/", 1)
    other.put_object(Bucket=bucket, Key=f"{prefix}/runs/r1/b.txt", Body=b"b")
    other.delete_object(Bucket=bucket, Key=f"{prefix}/runs/r1/a.txt")

    assert ws.find("runs/r1") == {"b.txt": 1}  # listings are fresh
    assert (ws.exists("runs/r1/b.txt"), ws.exists("runs/r1/a.txt")) == (True, False)


# -- settings ---------------------------------------------------------------------------------


def test_update_settings_persists_to_config_json(backend):
    ws = Workspace(*backend)
    assert ws.settings == WorkspaceSettings()

    ws.update_settings(snapshot_max_files=5000, sync_interval_seconds=0.5)
    ws.update_settings(snapshot_max_bytes=10_000)

    assert ws.read_json("config.json") == {
        "snapshot_max_files": 5000,
        "sync_interval_seconds": 0.5,
        "snapshot_max_bytes": 10_000,
    }
    fresh = Workspace(*backend).settings
    assert (fresh.snapshot_max_files, fresh.snapshot_max_bytes) == (5000, 10_000)
    assert fresh.sync_interval_seconds == 0.5
    assert fresh.heartbeat_timeout_seconds == WorkspaceSettings().heartbeat_timeout_seconds

    with pytest.raises(WorkspaceError, match="snapshot_max_file"):
        ws.update_settings(snapshot_max_file=1)  # typo
    assert "snapshot_max_file" not in ws.read_json("config.json")


def test_settings_ignore_keys_from_newer_versions(ws):
    ws.write_json("config.json", {"snapshot_max_files": 7, "added_in_v9": True})

    assert Workspace(ws.url, ws.storage_options).settings.snapshot_max_files == 7


# -- opening a workspace ----------------------------------------------------------------------


def test_to_env_from_env_round_trip(ws):
    env = ws.to_env()
    ws.write_json("hello.json", {"v": 1})

    again = Workspace.from_env(env)

    assert again == ws
    assert again.read_json("hello.json") == {"v": 1}
    assert ("MLTRAIN_WORKSPACE_OPTIONS" in env) == bool(ws.storage_options)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_child_process_reopens_the_workspace_from_env(kind, tmp_path, request):
    if kind == "local":
        ws = Workspace(tmp_path / "ws")
    else:
        s3 = request.getfixturevalue("s3_server")
        ws = Workspace(f"{s3['url']}/{uuid.uuid4().hex[:12]}", s3["storage_options"])
    code = (
        "from prefect_mltrain.workspace import Workspace\n"
        "ws = Workspace.from_env()\n"
        "ws.write_json('from-child.json', {'url': ws.url})\n"
    )

    subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **ws.to_env()},
        cwd=tmp_path / "..",
        check=True,
        timeout=60,
    )

    assert ws.read_json("from-child.json") == {"url": ws.url}


def test_default_workspace_is_dot_mltrain_in_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    ws = Workspace()

    assert ws.url == str(tmp_path / ".mltrain")
    assert Workspace.from_env(ws.to_env()) == ws  # absolute: valid from any cwd


def test_from_config_finds_mltrain_json_upward(tmp_path, monkeypatch):
    project = tmp_path / "project"
    nested = project / "src" / "deep"
    nested.mkdir(parents=True)
    (project / "mltrain.json").write_text(json.dumps({"url": "store/ws"}))
    monkeypatch.chdir(nested)

    ws = Workspace.from_config()
    ws.write_json("a.json", {"ok": True})

    expected = os.path.realpath(project / "store" / "ws")  # relative to the file, not the cwd
    assert ws.url == expected
    assert json.loads((Path(expected) / "a.json").read_text()) == {"ok": True}
    assert Workspace.from_config(nested) == ws
    assert Workspace.from_config(project / "mltrain.json") == ws


def test_from_config_with_a_remote_url_and_storage_options(tmp_path, monkeypatch, s3_server):
    url = f"{s3_server['url']}/{uuid.uuid4().hex[:12]}"
    config = {"url": url, "storage_options": s3_server["storage_options"]}
    (tmp_path / "mltrain.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)

    ws = Workspace.from_config()
    ws.write_json("a.json", [1])

    assert ws.protocol == "s3" and ws.url == url
    assert Workspace(url, s3_server["storage_options"]).read_json("a.json") == [1]


def test_from_config_finds_the_nearest_dot_mltrain_folder(tmp_path, monkeypatch):
    (tmp_path / "mltrain.json").write_text(json.dumps({"url": "outer"}))
    project = tmp_path / "project"
    (project / ".mltrain").mkdir(parents=True)
    (project / "src").mkdir()
    monkeypatch.chdir(project / "src")

    assert Workspace.from_config().url == os.path.realpath(project / ".mltrain")


def test_from_config_without_config_names_the_fix(tmp_path, monkeypatch):
    start = tmp_path / "a" / "b"
    start.mkdir(parents=True)
    found = [
        p
        for p in start.resolve().parents
        if (p / "mltrain.json").exists() or (p / ".mltrain").is_dir()
    ]
    if found:
        pytest.skip(f"a workspace config above the temp folder would be found: {found[0]}")
    monkeypatch.chdir(start)

    with pytest.raises(WorkspaceError) as err:
        Workspace.from_config()

    message = str(err.value)
    assert "mltrain.json" in message and ".mltrain/" in message
    assert str(start.resolve()) in message and "Workspace()" in message


def test_from_config_with_unreadable_file(tmp_path):
    (tmp_path / "mltrain.json").write_text("{not json")

    with pytest.raises(WorkspaceError, match="mltrain.json"):
        Workspace.from_config(tmp_path)


def test_unknown_protocol_is_a_workspace_error(tmp_path):
    with pytest.raises(WorkspaceError, match="nosuchproto"):
        Workspace("nosuchproto://bucket/ws")

    (tmp_path / "mltrain.json").write_text(json.dumps({"url": "nosuchproto://bucket/ws"}))
    with pytest.raises(WorkspaceError, match="fix the URL"):
        Workspace.from_config(tmp_path)
