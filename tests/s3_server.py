"""A real S3 API on loopback (``moto_server``) for tests of the remote-store path.

The server runs as a subprocess on a free port; the tests talk to it through ``s3fs``
exactly as they would talk to AWS, so the workspace code under test is the real one.

Example:
    ```python
    with moto_s3() as s3:
        ws = Workspace(s3["url"], storage_options=s3["storage_options"])
    ```
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 5.0
REGION = "us-east-1"
DUMMY_KEY = "test"
DUMMY_SECRET = "test"


class S3ServerError(RuntimeError):
    """moto_server did not start; the message carries the tail of its output."""


@contextlib.contextmanager
def moto_s3(bucket: str = "mltrain-test") -> Iterator[dict]:
    """Start ``moto_server`` on a free loopback port, create ``bucket``, stop it on exit.

    Yields ``{"url": "s3://<bucket>/ws", "storage_options": {...}, "endpoint_url": ...}``;
    ``storage_options`` go straight to ``Workspace``/``s3fs``.
    """
    with tempfile.TemporaryFile() as log:
        proc, endpoint = _start(log)
        try:
            _create_bucket(endpoint, bucket)
            yield {
                "url": f"s3://{bucket}/ws",
                "storage_options": {
                    "key": DUMMY_KEY,
                    "secret": DUMMY_SECRET,
                    "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
                },
                "endpoint_url": endpoint,
            }
        finally:
            _stop(proc)


def _start(log) -> tuple[subprocess.Popen, str]:
    """Start the server, retrying on a new port if another process took the chosen one."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": DUMMY_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": REGION,
    }
    for _attempt in range(3):
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(endpoint):
                return proc, endpoint
            time.sleep(0.1)
        _stop(proc)
        if time.monotonic() < deadline:
            continue  # it exited early (port race?): try another port
        break
    log.seek(0)
    tail = log.read()[-2000:].decode("utf-8", "replace")
    raise S3ServerError(
        f"moto_server did not answer on 127.0.0.1 within {START_TIMEOUT_SECONDS:.0f} s. "
        f"Install the test extra (`pip install -e .[test]`, which brings moto[server]). "
        f"Its output:\n{tail}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(endpoint: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    try:
        with opener.open(endpoint, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def _create_bucket(endpoint: str, bucket: str) -> None:
    """Create the bucket with boto3: s3fs's mkdir of a bucket fails against moto."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_SECRET,
    )
    client.create_bucket(Bucket=bucket)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
