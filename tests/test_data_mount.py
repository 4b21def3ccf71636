"""The read-only FUSE mount of fsspec paths (``as_mount()`` inputs): real mounts, real reads."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import fsspec
import pytest

from prefect_mltrain.data import mount as mount_module
from prefect_mltrain.data.mount import Mount, fuse_unusable


@pytest.fixture(scope="module")
def fuse_ready():
    reason = fuse_unusable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def memory_tree():
    """A nested ``memory://`` tree: {relative path: content}, removed at the end."""
    fs = fsspec.filesystem("memory")
    root = f"/mount-{uuid.uuid4().hex}"
    files = {
        "top.txt": b"top level\n",
        "empty.bin": b"",
        "a/one.csv": b"x,y\n1,2\n",
        "a/b/two.bin": bytes(range(256)) * 1000,
        "a/b/c/three.txt": "d\u00e9j\u00e0 vu\n".encode(),
        "z/last.txt": b"last\n",
    }
    fs.pipe({f"{root}/{rel}": data for rel, data in files.items()})
    yield fs, root, files
    fs.rm(root, recursive=True)


def _tree(path) -> dict[str, bytes]:
    found = {}
    for folder, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found


@pytest.mark.timeout(60)
def test_memory_tree_reads_as_files_and_refuses_writes(fuse_ready, memory_tree, tmp_path):
    fs, root, files = memory_tree
    mountpoint = tmp_path / "mnt" / "data"  # made by Mount
    caught = mount_module._caught_signals()
    with Mount(fs, f"memory://{root}", mountpoint) as path:
        assert path == mountpoint and os.path.ismount(path)
        assert sorted(os.listdir(path)) == ["a", "empty.bin", "top.txt", "z"]
        assert sorted(os.listdir(path / "a" / "b")) == ["c", "two.bin"]
        assert _tree(path) == files
        with open(path / "a" / "b" / "two.bin", "rb") as f:  # a seek inside a file
            f.seek(1000)
            assert f.read(3) == bytes([1000 % 256, 1001 % 256, 1002 % 256])
        assert os.stat(path / "top.txt").st_mode & 0o777 == 0o444
        assert os.stat(path / "a").st_mode & 0o777 == 0o555
        assert os.stat(path / "a" / "b" / "two.bin").st_size == 256_000
        assert not os.path.exists(path / "missing.txt")
        for write in (lambda: open(path / "new.txt", "w"),
                      lambda: open(path / "top.txt", "r+b"),
                      lambda: os.mkdir(path / "newdir"),
                      lambda: os.remove(path / "top.txt"),
                      lambda: os.rename(path / "top.txt", path / "moved.txt"),
                      lambda: os.chmod(path / "top.txt", 0o666)):
            with pytest.raises(OSError) as raised:
                write()
            assert raised.value.errno == errno.EROFS
        # libfuse takes SIGTERM while it is at its default; Mount gives it back, so a
        # canceled run is still stopped by a SIGTERM rather than just losing its mount.
        assert mount_module._caught_signals() & (1 << (signal.SIGTERM - 1)) == \
            caught & (1 << (signal.SIGTERM - 1))
    assert not os.path.ismount(mountpoint)
    assert os.listdir(mountpoint) == []


@pytest.mark.timeout(60)
def test_a_large_s3_object_is_read_lazily(fuse_ready, s3_workspace_options, tmp_path,
                                          monkeypatch):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_workspace_options["storage_options"])
    prefix = s3_workspace_options["url"].removeprefix("s3://") + f"/big-{uuid.uuid4().hex}"
    size = 256 * 2**20
    block = bytes(range(256)) * (2**20 // 256)  # 1 MB whose byte at i is i % 256
    fs.pipe_file(f"{prefix}/big.bin", block * (size // len(block)))
    fs.pipe_file(f"{prefix}/sub/small.txt", b"small\n")
    fs.invalidate_cache()

    fetched = []  # bytes of every object body the store sends, however s3fs asks for it
    call_s3 = fs._call_s3

    async def counting(method, *args, **kwargs):
        response = await call_s3(method, *args, **kwargs)
        if method == "get_object":
            fetched.append(int(response.get("ContentLength") or 0))
        return response

    monkeypatch.setattr(fs, "_call_s3", counting)
    with Mount(fs, f"s3://{prefix}", tmp_path / "mnt", block_size=2**20) as path:
        assert sorted(os.listdir(path)) == ["big.bin", "sub"]
        assert os.path.getsize(path / "big.bin") == size
        with open(path / "big.bin", "rb") as f:
            assert f.read(1) == b"\x00"
            f.seek(size - 1000)
            assert f.read(1) == bytes([(size - 1000) % 256])
        assert (path / "sub" / "small.txt").read_bytes() == b"small\n"
    assert fetched, "no read reached the store"
    assert sum(fetched) < size // 16, f"fetched {sum(fetched)} bytes of {size}"
    fs.rm(prefix, recursive=True)


@pytest.mark.timeout(60)
def test_fuse_is_usable_here_or_says_why():
    reason = fuse_unusable()
    if reason:
        pytest.skip(reason)
    assert reason is None


@pytest.mark.timeout(60)
def test_unusable_fuse_names_the_missing_part(monkeypatch, tmp_path):
    monkeypatch.setattr(mount_module, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    reason = fuse_unusable()
    assert reason and str(tmp_path / "no-fuse") in reason and "--device /dev/fuse" in reason
    monkeypatch.undo()

    def no_binding():
        raise ImportError("No module named 'mfusepy'")

    if fuse_unusable() is None:  # past the device and library checks: the binding is next
        monkeypatch.setattr(mount_module, "_fuse", no_binding)
        reason = fuse_unusable()
        assert reason and "mfusepy" in reason and "prefect-mltrain[mount]" in reason


@pytest.mark.timeout(60)
def test_a_file_list_mount_shows_exactly_those_files(fuse_ready, memory_tree, tmp_path):
    """A dataset version's manifest (a glob's matches, under their names in the dataset):
    the other files of the store are not there, and nothing is listed from the store."""
    fs, root, files = memory_tree
    shown = {"two.bin": f"{root}/a/b/two.bin", "deep/three.txt": f"{root}/a/b/c/three.txt",
             "top.txt": f"{root}/top.txt"}
    listed = []
    fs_ls = fs.ls
    fs.ls = lambda *a, **k: listed.append(a) or fs_ls(*a, **k)
    try:
        with Mount(fs, root, tmp_path / "view", files={
                name: (where, len(fs.cat_file(where))) for name, where in shown.items()}) as path:
            assert sorted(os.listdir(path)) == ["deep", "top.txt", "two.bin"]
            assert _tree(path) == {name: fs.cat_file(where) for name, where in shown.items()}
            assert os.stat(path / "two.bin").st_size == 256_000
            assert not os.path.exists(path / "a") and not os.path.exists(path / "z/last.txt")
            with pytest.raises(OSError) as raised:
                open(path / "new.txt", "w")
            assert raised.value.errno == errno.EROFS
    finally:
        fs.ls = fs_ls
    assert listed == []
    with pytest.raises(mount_module.MountError, match="not a relative file name"):
        Mount(fs, root, tmp_path / "bad", files={"../escape.txt": (f"{root}/top.txt", 10)}).mount()
    assert not os.path.ismount(tmp_path / "bad")


@pytest.mark.timeout(60)
def test_a_missing_root_or_a_file_root_is_named(fuse_ready, memory_tree, tmp_path):
    fs, root, _files = memory_tree
    with pytest.raises(mount_module.MountError, match="no such folder"):
        Mount(fs, f"{root}/missing", tmp_path / "m1").__enter__()
    with pytest.raises(mount_module.MountError, match="not a folder"):
        Mount(fs, f"{root}/top.txt", tmp_path / "m2").__enter__()
    assert not os.path.ismount(tmp_path / "m1") and not os.path.ismount(tmp_path / "m2")


@pytest.mark.timeout(60)
def test_unmount_of_a_busy_mount_is_bounded(fuse_ready, memory_tree, tmp_path):
    fs, root, files = memory_tree
    mnt = Mount(fs, root, tmp_path / "mnt")
    path = mnt.__enter__()
    held = open(path / "top.txt", "rb")  # keeps the mount busy: a plain unmount fails
    try:
        started = time.monotonic()
        mnt.unmount(timeout=3.0)
        assert time.monotonic() - started < 5.0
        assert not os.path.ismount(path)
        assert held.read() == files["top.txt"]  # detached lazily; the open file still reads
    finally:
        held.close()


@pytest.mark.timeout(60)
def test_a_mount_left_by_a_killed_process_is_replaced(fuse_ready, memory_tree, tmp_path):
    fs, root, files = memory_tree
    mountpoint = tmp_path / "mnt"
    child = textwrap.dedent(f"""
        import os, signal, fsspec
        from prefect_mltrain.data.mount import Mount
        fs = fsspec.filesystem("memory")
        fs.pipe("/dead/x.txt", b"x")
        Mount(fs, "/dead", {str(mountpoint)!r}).__enter__()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", child], timeout=30)
    with pytest.raises(OSError) as dead:  # statvfs asks the server: stat may be cached
        os.statvfs(mountpoint)
    assert dead.value.errno == errno.ENOTCONN
    with Mount(fs, root, mountpoint) as path:
        assert (path / "top.txt").read_bytes() == files["top.txt"]
    assert not os.path.ismount(mountpoint)


@pytest.mark.timeout(60)
def test_a_docker_container_reads_the_mount(fuse_ready, docker_engine, memory_tree, tmp_path):
    from conftest import BASE_IMAGE

    fs, root, files = memory_tree
    with Mount(fs, root, tmp_path / "mnt") as path:
        for user in ("0", "1000"):  # root, and a user other than the mount's (allow_other)
            out = docker_engine.containers.run(
                BASE_IMAGE, ["cat", "/data/a/one.csv"], user=user, remove=True,
                network_mode="none", volumes={str(path): {"bind": "/data", "mode": "ro"}})
            assert out == files["a/one.csv"]
    assert not os.path.ismount(tmp_path / "mnt")
