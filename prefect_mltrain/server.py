"""The embedded default: one local Prefect server, started on first use and then reused.

Prefect's ephemeral mode starts a server inside every process (~8 s each). Runs are
Prefect flow runs, so instead the first submit without ``PREFECT_API_URL`` starts
``prefect server start`` (SQLite under ``$MLTRAIN_HOME/prefect``) in the background and
every later submit, on any process, finds it in ~10 ms. Set ``PREFECT_API_URL`` (or a
Prefect profile) to use your own server or Prefect Cloud instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from .errors import MLTrainError
from .files import atomic_write
from .home import mltrain_home

START_TIMEOUT_SECONDS = 120
BUSY_SECONDS = 30.0  # how long a live server may take to answer before it is replaced
DEFAULT_PORT = 4200


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile, if any."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    try:
        profiles = tomllib.loads((prefect_home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


def _state_dir() -> Path:
    folder = mltrain_home() / "prefect"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def ui_url() -> str | None:
    """Where the Prefect UI is now: ``PREFECT_UI_URL``, else the embedded server's last
    address (it may have moved to another port since a run recorded its link)."""
    if os.environ.get("PREFECT_UI_URL"):
        return os.environ["PREFECT_UI_URL"].rstrip("/")
    if configured_api_url():
        return None
    info = _recorded()
    return info.get("ui_url") if info else None


def running_server() -> dict | None:
    """The embedded server's ``{"api_url", "ui_url", "pid"}`` when it answers, else None.

    A server whose process lives but answers slowly (a loaded machine) is waited for, up to
    ``BUSY_SECONDS``: starting a second one would split the runs between two servers.
    """
    info = _recorded()
    if info is None or healthy(info["api_url"]):
        return info
    # one that is still starting (another process started it) is waited for as its starter does
    deadline = max(time.time() + BUSY_SECONDS,
                   info.get("started_at", 0) + START_TIMEOUT_SECONDS)
    while _alive(info.get("pid")) and time.time() < deadline:
        if healthy(info["api_url"], timeout=5.0):
            return info
        time.sleep(0.5)
    return None


def _recorded() -> dict | None:
    try:
        return json.loads((_state_dir() / "server.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live Prefect process (not a zombie, nor a reused pid)."""
    import psutil

    try:
        process = psutil.Process(pid) if pid else None
        return bool(process and process.status() != psutil.STATUS_ZOMBIE
                    and "prefect" in " ".join(process.cmdline()))
    except psutil.Error:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", DEFAULT_PORT))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_executable() -> str:
    beside = Path(sys.executable).parent / "prefect"
    return str(beside) if beside.exists() else (shutil.which("prefect") or "prefect")


def ensure_server(wait: bool = True) -> dict:
    """Start the embedded server unless it runs already; safe to call from many processes.

    With ``wait=False`` a server this call starts is not waited for: the caller overlaps its
    own start-up (a runner importing Prefect) with the server's, then ``wait_until_up``.
    """
    info = running_server()
    if info:
        return info
    state = _state_dir()
    with FileLock(state / "server.lock"):
        info = running_server()
        if info:
            return info
        silent = _recorded()
        if silent and _alive(silent.get("pid")):  # alive, but silent for BUSY_SECONDS
            with contextlib.suppress(OSError):
                os.killpg(silent["pid"], signal.SIGKILL)
        port = _free_port()
        api_url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
        print(f"prefect-mltrain: starting the local Prefect server at {ui_url} (once; it "
              "takes ~20 s, later commands reuse it)", file=sys.stderr, flush=True)
        env = {**os.environ, "PREFECT_HOME": str(state), "PREFECT_API_URL": "",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": api_url}
        with open(state / "server.log", "ab") as log:
            proc = subprocess.Popen(
                [_prefect_executable(), "server", "start", "--host", "127.0.0.1",
                 "--port", str(port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        info = {"api_url": api_url, "ui_url": ui_url, "pid": proc.pid,
                "started_at": time.time()}
        atomic_write(state / "server.json", json.dumps(info))
        if wait:
            wait_until_up(api_url)
        else:
            _STARTING.add(api_url)
        return info


_STARTING: set[str] = set()  # servers this process started and has not waited for yet


def wait_if_starting(api_url: str) -> None:
    """``wait_until_up`` for a server this process started with ``wait=False``; any other
    (one that answered already, a configured one) costs nothing."""
    if api_url in _STARTING:
        _STARTING.discard(api_url)
        wait_until_up(api_url)


def wait_until_up(api_url: str) -> None:
    """Wait until the embedded server at ``api_url``, being started, answers; if it dies
    or does not answer within ``START_TIMEOUT_SECONDS`` of its start, stop it and say so.
    Any other API (a configured server) is not waited for."""
    info = _recorded()
    if not info or info["api_url"] != api_url:
        return
    deadline = info.get("started_at", time.time()) + START_TIMEOUT_SECONDS
    while not healthy(api_url, timeout=1.0):
        if not _alive(info["pid"]) or time.time() > deadline:
            with contextlib.suppress(OSError):
                os.killpg(info["pid"], signal.SIGKILL)
            raise MLTrainError(
                f"the local Prefect server did not start (see {_state_dir() / 'server.log'}); "
                "set PREFECT_API_URL to a running Prefect server instead"
            )
        time.sleep(0.1)


def stop_server() -> bool:
    """Stop the embedded server; returns whether it was running."""
    info = running_server()
    if not info:
        return False
    try:
        os.killpg(info["pid"], 15)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 15
    while healthy(info["api_url"], 0.5) and time.monotonic() < deadline:
        time.sleep(0.2)
    (_state_dir() / "server.json").unlink(missing_ok=True)
    return True


# The last settings made by ``using_server``: (the settings they were made from, the URL,
# those settings with it). Prefect's temporary_settings() validates all its settings anew
# on each call (~60 ms of CPU), twice in a submit to a work pool.
_switched: tuple[Any, str, Any] | None = None


@contextmanager
def using_server() -> Iterator[None]:
    """Within it, this process's Prefect client talks to the configured API, else to the
    embedded server (started if needed)."""
    global _switched
    if configured_api_url():
        yield
        return
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import PREFECT_API_URL

    url, context = ensure_server()["api_url"], get_settings_context()
    if _switched is None or _switched[0] is not context.settings or _switched[1] != url:
        _switched = (context.settings, url,
                     context.settings.copy_with_update(updates={PREFECT_API_URL: url}))
    with SettingsContext(profile=context.profile, settings=_switched[2]):
        yield


def prefect_env(wait: bool = True) -> dict[str, str]:
    """Environment for a runner process so that it talks to the right Prefect API (with
    ``wait=False``, possibly a server still starting: see ``ensure_server``)."""
    if configured_api_url():
        return {}
    info = ensure_server(wait)
    return {"PREFECT_API_URL": info["api_url"], "PREFECT_UI_URL": info["ui_url"]}
