"""Calls to the Prefect API that must not stall: a write that lost a race for the embedded
server's database (503) is retried soon, not after Prefect's 2, 4, 8 s waits.

The server here is a real HTTP server answering with the status codes a Prefect server
gives; the client is Prefect's own."""

from __future__ import annotations

import http.server
import threading
import time
import uuid

import httpx
import pytest
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from prefect_mltrain import prefect_api, quick_retries


class Answers(http.server.BaseHTTPRequestHandler):
    """Answers the codes in ``server.codes`` in turn, then 200 with a JSON body."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.seen += 1
        code = self.server.codes.pop(0) if self.server.codes else 200
        body = b'{"detail": "database is locked"}' if code != 200 else b'{"ok": true}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        with self.server.guard:
            self.server.inside += 1
            self.server.most = max(self.server.most, self.server.inside)
        time.sleep(0.5)
        with self.server.guard:
            self.server.inside -= 1
        self.do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    """The server, and Prefect's settings pointing at it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    server.codes, server.seen = [], 0
    server.guard, server.inside, server.most = threading.Lock(), 0, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{server.server_port}/api"}):
        yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def pauses(monkeypatch):
    """Every pause taken in this process (ours and Prefect's client's), taken but recorded."""
    taken = []
    real_sleep = time.sleep

    def sleep(seconds):
        taken.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    return taken


def read_flow_run():
    with prefect_api.quick_client() as client:
        client.read_flow_run(uuid.uuid4())


def test_a_lost_race_is_retried_soon_below_prefects_client(api, pauses):
    api.codes = [503, 503, 503, 404]

    with pytest.raises(ObjectNotFound):  # the answer after the lost races reaches the caller
        read_flow_run()

    assert api.seen == 4
    assert len(pauses) == 3 and max(pauses) < 1.0  # 50 ms doubling, not Prefect's 2, 4, 8 s


@pytest.mark.parametrize("code", [400, 409, 422, 500])
def test_any_other_answer_is_not_retried_here(api, pauses, code):
    api.codes = [code]

    with pytest.raises(httpx.HTTPStatusError) as raised:
        read_flow_run()

    assert raised.value.response.status_code == code
    assert api.seen == 1 and pauses == []


def test_a_server_that_stays_locked_is_handed_to_prefects_client(api, pauses, monkeypatch):
    api.codes = [503] * 1000
    monkeypatch.setattr(quick_retries, "LOST_RACE_PATIENCE_SECONDS", 0.3)

    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), \
            pytest.raises(httpx.HTTPStatusError) as raised:
        read_flow_run()

    assert raised.value.response.status_code == 503
    ours = [p for p in pauses if p < 1.0]
    assert 2 <= api.seen < 1000 and sum(ours) <= 0.3 * 1.5  # within its patience


@pytest.mark.parametrize("url", ["https://api.prefect.example/api",
                                 "https://127.0.0.1:4200/api"])
def test_a_remote_or_tls_api_keeps_prefects_own_transport_and_verifies_its_certificate(url):
    with temporary_settings({PREFECT_API_URL: url}):
        client = prefect_api.quick_client()
    transports = [client._client._transport, *client._client._mounts.values()]
    assert not any(isinstance(t, quick_retries.QuickRetries) for t in transports)
    tls = client._client._transport._pool._ssl_context
    assert tls.verify_mode.name == "CERT_REQUIRED" and tls.cert_store_stats()["x509_ca"] > 0


@pytest.mark.parametrize(("path", "one_at_a_time"), [("/api/flow_runs/", True),
                                                     ("/api/logs/", False)])
def test_processes_take_turns_at_a_new_flow_runs_insert_only(api, tmp_path, path,
                                                            one_at_a_time):
    """Runners retrying their inserts together kept SQLite locked for one another."""
    url = f"http://127.0.0.1:{api.server_port}{path}"
    codes = []

    def post():  # each as its own runner would: its own transport, one lock file
        transport = quick_retries.QuickRetries(insert_lock=tmp_path / "insert.lock")
        with httpx.Client(transport=transport) as client:
            codes.append(client.post(url, json={}).status_code)

    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert codes == [200] * 3  # asserted here: an assert in a thread fails no test
    assert api.seen == 3 and (api.most == 1) == one_at_a_time
