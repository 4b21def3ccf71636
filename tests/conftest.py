"""Shared fixtures: an isolated MLTRAIN_HOME, one real local Prefect server, workspaces."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def mltrain_home(tmp_path_factory):
    """Every test process and the runners they start use a private MLTRAIN_HOME."""
    home = tmp_path_factory.mktemp("mltrain-home")
    old = os.environ.get("MLTRAIN_HOME")
    os.environ["MLTRAIN_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    yield home
    if old is None:
        os.environ.pop("MLTRAIN_HOME", None)
    else:
        os.environ["MLTRAIN_HOME"] = old


@pytest.fixture(scope="session")
def prefect_server(mltrain_home):
    """A real `prefect server start` (SQLite), the embedded default, stopped at the end."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_mltrain import runner, server

    info = server.ensure_server()
    os.environ["PREFECT_API_URL"] = info["api_url"]  # for the runners this process starts
    os.environ["PREFECT_UI_URL"] = info["ui_url"]
    with temporary_settings(updates={PREFECT_API_URL: info["api_url"]}):  # for this process
        yield info
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # what this process still has to send goes while the server
        EventsWorker.drain_all()  # is up
    runner.stop_all()
    server.stop_server()
    # PREFECT_API_URL stays set: without it, a late log line at exit would make Prefect
    # start a temporary server just to send it.
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"


@pytest.fixture
def ws(tmp_path):
    from prefect_mltrain import Workspace

    return Workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def s3_workspace_options():
    from s3_server import moto_s3

    with moto_s3() as s3:
        yield s3


BASE_IMAGE = os.environ.get("MLTRAIN_TEST_BASE_IMAGE", "mltrain-base:bookworm")


@pytest.fixture(scope="session")
def docker_engine():
    """A reachable Docker engine with the offline base image, or a skip that says how."""
    from prefect_mltrain.errors import ComputeTargetUnavailableError
    from prefect_mltrain.image_build import docker_client

    try:
        client = docker_client(timeout=10)
    except ComputeTargetUnavailableError as exc:
        pytest.skip(f"no Docker engine ({exc}); run `bash .ci/docker-engine.sh` as root "
                    "to install and start one")
    try:
        client.images.get(BASE_IMAGE)
    except Exception:
        pytest.skip(f"base image {BASE_IMAGE} missing; run `bash .ci/docker-engine.sh` to "
                    "build it offline")
    return client


def write_script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A real Dask cluster: two "hosts" (127.0.0.2, 127.0.0.3) with two workers each."""
    from prefect_mltrain.testing import loopback_cluster

    with loopback_cluster(tmp_path_factory.mktemp("dask")) as address:
        yield address


@pytest.fixture
def silent_address():
    """``host:port`` of a server that accepts connections and never answers (the kernel
    completes the handshake; nobody reads): a hung index, scheduler or engine."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB tmpfs mounted for the test, to fill up (root only: skips elsewhere).
    ``small_disk.grow()`` makes it 64 MB, as freeing space on a full disk would;
    ``small_disk.read_only()`` remounts it read-only (``read_only(False)``: writable)."""
    import subprocess

    path = tmp_path / "small-disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): a full disk is "
                    "tested as root on a machine or in a privileged container")

    class Disk(type(path)):
        def grow(self):
            subprocess.run(["mount", "-o", "remount,size=64m", str(self)], check=True)

        def read_only(self, yes: bool = True):
            subprocess.run(["mount", "-o", f"remount,{'ro' if yes else 'rw'}", str(self)],
                           check=True)

    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
