"""Runner processes: a warm runner does not outlive the local Prefect server it serves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prefect_mltrain.distributed import free_port


@pytest.mark.timeout(120)
def test_a_warm_runner_exits_once_its_local_server_stops_answering(tmp_path):
    port = free_port("127.0.0.1")  # nothing listens there: the server has stopped
    env = {**os.environ, "MLTRAIN_HOME": str(tmp_path / "home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    (tmp_path / "home").mkdir()
    socket = tmp_path / "home" / "w.sock"
    runner = subprocess.Popen([sys.executable, "-m", "prefect_mltrain.runner", "--serve",
                               str(socket)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert runner.wait(timeout=90) == 0
    finally:
        runner.kill()
    assert not socket.exists()
