"""Retrying, soon, a write to a Prefect server on this machine that lost a race for its
SQLite database. Apart from ``prefect_api`` so that importing that does not import httpx."""

from __future__ import annotations

import random
import time

import httpx

# How long a write that lost a race for the embedded server's SQLite database is retried.
LOST_RACE_PATIENCE_SECONDS = 30.0


class QuickRetries(httpx.HTTPTransport):
    """An HTTP transport that retries a 503 soon, for a Prefect server on this machine.

    The embedded server's SQLite database answers 503 ("database is locked") at once to a
    write that lost a race with another writer. Prefect's client then waits 2, 4, 8 s (and
    2 s even with its retries set to 0), which many runs starting together (a burst of
    submits, a sweep's trials) feel on every run. Below the client, this retries after
    50 ms, doubling to 1 s, jittered, for up to ``LOST_RACE_PATIENCE_SECONDS``, then hands
    the 503 up to Prefect's client.
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + LOST_RACE_PATIENCE_SECONDS
        pause = 0.05
        while True:
            response = super().handle_request(request)
            if response.status_code != 503 or time.monotonic() + pause > deadline:
                return response
            response.close()
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 1.0)
