"""Retrying, soon, a write to a Prefect server on this machine that lost a race for its
SQLite database. Apart from ``prefect_api`` so that importing that does not import httpx."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

# How long a write that lost a race for the embedded server's SQLite database is retried.
LOST_RACE_PATIENCE_SECONDS = 30.0


class QuickRetries(httpx.HTTPTransport):
    """An HTTP transport that retries a 503 soon, for a Prefect server on this machine.

    The embedded server's SQLite database answers 503 ("database is locked") at once to a
    write that lost a race with another writer. Prefect's client then waits 2, 4, 8 s (and
    2 s even with its retries set to 0), which every run of a burst (many submits, a
    sweep's trials) feels. Below the client, this retries after 50 ms, doubling to 1 s,
    jittered, for up to ``LOST_RACE_PATIENCE_SECONDS``, then hands the 503 up to
    Prefect's client.

    A new flow run's insert is the write that loses (it is the one the server refuses
    under load), so the processes of this machine take turns at it, holding
    ``insert_lock`` while they try: with 200 runs starting at once, 150 runners retrying
    their inserts every second kept the database locked for one another, and some waited
    minutes.
    """

    def __init__(self, *args, insert_lock: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._insert_lock = FileLock(insert_lock, mode=0o600)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith("/flow_runs/"):
            return self._retry_lost_races(request)
        with contextlib.ExitStack() as turn:
            with contextlib.suppress(Timeout):  # a stuck holder: try without a turn
                turn.enter_context(self._insert_lock.acquire(LOST_RACE_PATIENCE_SECONDS))
            return self._retry_lost_races(request)

    def _retry_lost_races(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + LOST_RACE_PATIENCE_SECONDS
        pause = 0.05
        while True:
            response = super().handle_request(request)
            if response.status_code != 503 or time.monotonic() + pause > deadline:
                return response
            response.close()
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 1.0)
