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


SLOW_SERVER = """
import http.server, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(3)  # busier than the first health check waits
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
"""


@pytest.mark.timeout(120)
def test_a_live_server_that_answers_slowly_is_waited_for_not_replaced(tmp_path, monkeypatch):
    """On a loaded machine the embedded server may take seconds to answer: a second server
    started beside it would split the runs between two."""
    import json

    from prefect_mltrain import server

    port = free_port()
    slow = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port), "prefect-like"])
    try:
        monkeypatch.setenv("MLTRAIN_HOME", str(tmp_path / "home"))
        info = {"api_url": f"http://127.0.0.1:{port}/api", "ui_url": f"http://127.0.0.1:{port}",
                "pid": slow.pid}
        state = server._state_dir()
        (state / "server.json").write_text(json.dumps(info))
        assert server.running_server() == info
        slow.kill()
        slow.wait(10)
        assert server.running_server() is None  # gone: at once, nothing to wait for
    finally:
        slow.kill()
