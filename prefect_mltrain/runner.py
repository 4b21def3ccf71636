"""Runner processes: each runs the ``submit_run`` flow of one prepared run.

``start(experiment, run_id, ...)`` hands the run to a *warm* runner — one process that
imported Prefect once and forks a runner per run — or, when none answers, starts a *cold*
one, ``python -m prefect_mltrain.runner EXPERIMENT RUN_ID``.

A cold runner pays ~2.5 s (interpreter start, Prefect import) before its flow run begins;
a fork of a process that has imported everything costs milliseconds. A warm runner is
keyed by interpreter, Prefect API URL and the installed package files, listens on a unix
socket under ``$MLTRAIN_HOME/warm`` and exits after 30 idle minutes, or once its local
Prefect server (the embedded one) has stopped answering. A cold runner starts
a warm one for the next submit once its own run is over (so the two never compete for the
CPU). Secrets arrive in ``MLTRAIN_SECRETS`` (the runner's environment only) and go to the
script's process, never to Prefect parameters.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

from filelock import FileLock

from .errors import MLTrainError
from .home import mltrain_home
from .pip_settings import pip_config, pip_settings_sources
from .server import healthy, wait_until_up

IDLE_SECONDS = 1800
SERVER_CHECK_SECONDS = 30.0  # how often an idle warm runner checks that its server answers
CONNECT_TIMEOUT_SECONDS = 10
START_PATIENCE_SECONDS = 300.0  # how long a run stays Queued for a busy Prefect server
SUBMIT_RUN = "prefect_mltrain.flows:submit_run"  # the flow of a run; a sweep names its own
FLOW_RUN_VAR = "MLTRAIN_FLOW_RUN_ID"  # a flow run made beforehand (a sweep's trial, a subflow)
_PRIVATE = ("MLTRAIN_SECRETS", "MLTRAIN_WORKSPACE", "MLTRAIN_WORKSPACE_OPTIONS")


# What a run's flow imports on first use, imported once by a warm runner instead of in
# every fork (~0.3 s of CPU a run, measured with py-spy on a sweep's trials): Prefect's
# engines and what they import lazily (graphviz for flow visualization, fastapi's encoders
# for a subflow's parameters, rich's emoji table for the first console line), the client
# transport of a run's Prefect calls, the target blocks a run resolves, the
# sweep's flow, the Docker SDK (0.2 s) and dask.distributed (1.4 s) for runs on those
# targets, and matplotlib for a sweep's pictures.
PRELOAD = ("prefect.flow_engine", "prefect.task_engine", "prefect.utilities.visualization",
           "fastapi.encoders", "prefect_mltrain.quick_retries", "prefect_mltrain.compute.blocks",
           "prefect_mltrain.hyperdrive.flow", "docker", "distributed", "matplotlib.pyplot",
           "rich._emoji_replace")


def _folder() -> Path:
    folder = mltrain_home() / "warm"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _fingerprint(env: dict[str, str]) -> list[Any]:
    """What a warm runner has loaded: the package, and pip's settings (read once)."""
    package = Path(__file__).parent
    return [sorted(p.stat().st_mtime_ns for p in package.rglob("*.py")),
            pip_settings_sources(env)]


def socket_path(env: dict[str, str]) -> Path | None:
    key = json.dumps([sys.executable, env.get("PREFECT_API_URL", ""), _fingerprint(env)])
    path = _folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.sock"
    return path if len(str(path)) < 100 else None  # AF_UNIX paths are short


def start(experiment: str, run_id: str, env: dict[str, str], flow: str = SUBMIT_RUN) -> int:
    """Start a runner for a prepared run (warm if one answers, else cold); its pid.
    ``flow`` is the entrypoint (``module:function``) of the flow that runs it."""
    runs = mltrain_home() / "runs"  # each run's scratch folder is made below it
    runs.mkdir(parents=True, exist_ok=True)
    log = runs / f"{run_id}.runner.log"
    path = socket_path(env)
    if path is not None:
        request = json.dumps({"experiment": experiment, "run_id": run_id, "env": env,
                              "cwd": str(runs), "log": str(log), "flow": flow}).encode() + b"\n"
        pid = _request(path, request)
        if pid is not None:
            return pid
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect_mltrain.runner", experiment, run_id, flow],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=runs).pid


def run(experiment: str, run_id: str, flow: str = SUBMIT_RUN) -> None:
    """Run the flow of a prepared run in this process: ``flow`` (an entrypoint), as the
    flow run named by ``MLTRAIN_FLOW_RUN_ID`` when one was made for it (a sweep's trial,
    shown under the sweep in Prefect), else as a new flow run.

    Prefect's engine, and every sync client the flow asks Prefect for, use one client made
    here (``quick_context``): the embedded SQLite server refuses (503) a write that loses
    a race with another, and Prefect's client would wait 2, 4, 8 s before trying again
    (under 40 runs at once, a p90 of 32 s from submit to Running). The engine creates a new
    flow run itself: one made beforehand costs it one more write (it updates the flow
    run's retry policy).

    A busy server may refuse to start the flow run even after the client's retries: the run
    stays Queued and its start is tried again, for up to ``START_PATIENCE_SECONDS``. When
    Prefect cannot start it at all, the run ends Failed saying so.
    """
    from prefect.flow_engine import run_flow

    from .prefect_api import quick_context
    from .records import TERMINAL, RunStatus
    from .store import RunStore
    from .workspace import open_workspace

    ws = open_workspace(None)
    store = RunStore(ws)
    module, name = flow.split(":")
    flow_fn = getattr(importlib.import_module(module), name)
    parameters = {"experiment": experiment, "run_id": run_id, "workspace": ws.url}
    made = os.environ.pop(FLOW_RUN_VAR, None)
    deadline = time.monotonic() + START_PATIENCE_SECONDS
    while True:
        try:
            with quick_context() as client:
                flow_run = client.read_flow_run(made) if made else None
                run_flow(flow_fn, flow_run=flow_run, parameters=parameters,
                         return_type="state")
            return
        except Exception as exc:
            record = store.read(experiment, run_id)
            if record.flow_run_id is not None or record.status in TERMINAL:
                raise  # the flow ran (its record says how it ended), or the run was canceled
            if _server_busy(exc) and time.monotonic() < deadline:
                time.sleep(random.uniform(1.0, 5.0))  # spread out the runners that wait
                continue
            store.move(experiment, run_id, RunStatus.FAILED, error=(
                f"Queued: Prefect could not start the run's flow: {exc}"))
            raise


def _server_busy(exc: BaseException) -> bool:
    """A refusal that passes: the server is overloaded or restarting, not the request wrong."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (429, 502, 503, 504)
    return isinstance(exc, httpx.TransportError)


def ensure_running(env: dict[str, str]) -> None:
    """Start a warm runner for ``env`` unless one runs (called when a cold runner ends)."""
    path = socket_path(env)
    if path is not None and not _alive(path):
        _spawn_server(path, env)


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def _request(path: Path, request: bytes, timeout: float = CONNECT_TIMEOUT_SECONDS) -> int | None:
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(request)
            return int(json.loads(conn.makefile().readline())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _spawn_server(path: Path, env: dict[str, str]) -> None:
    server_env = {k: v for k, v in env.items() if k not in _PRIVATE}
    with open(path.with_suffix(".log"), "ab") as log:
        subprocess.Popen([sys.executable, "-m", "prefect_mltrain.runner", "--serve", str(path)],
                         env=server_env, cwd=_folder(), stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)


def stop_all() -> int:
    """Stop every warm runner of this MLTRAIN_HOME; returns how many were stopped."""
    stopped = 0
    for pid_file in _folder().glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            stopped += 1
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    return stopped


def _listen(path: Path) -> socket.socket | None:
    """Bind the socket unless another warm runner already serves it."""
    with FileLock(path.with_suffix(".lock")):
        if _alive(path):
            return None  # let it serve
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(128)
        path.with_suffix(".pid").write_text(str(os.getpid()))
        return listener


def serve(path: Path) -> None:
    """Accept runs until idle; fork a runner for each (clients queue while we import)."""
    listener = _listen(path)
    if listener is None:
        return
    from . import flows  # noqa: F401 - the expensive import (Prefect), paid once

    pip_config()  # its sources are part of the warm key
    for module in PRELOAD:  # importing them starts no thread, so forking after it is safe
        try:
            importlib.import_module(module)
        except ImportError:
            pass

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished runners
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener.settimeout(SERVER_CHECK_SECONDS)
    inode, idle_since = path.stat().st_ino, time.monotonic()
    api_url = os.environ.get("PREFECT_API_URL") or ""
    local = urllib.parse.urlsplit(api_url).hostname in ("127.0.0.1", "localhost")
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:  # idle too long, or its local Prefect server has stopped
            if time.monotonic() - idle_since >= IDLE_SECONDS or (local and not healthy(api_url)):
                break
            continue
        idle_since = time.monotonic()
        line = conn.makefile().readline()
        if not line:
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            _run_child(conn, json.loads(line))  # never returns
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        conn.close()
    listener.close()
    if path.exists() and path.stat().st_ino == inode:
        path.unlink()
        path.with_suffix(".pid").unlink(missing_ok=True)


def _run_child(conn: socket.socket, request: dict) -> None:
    """In the forked runner: become the run's own process, run the flow, exit."""
    conn.close()
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    code = 0
    try:
        run(request["experiment"], request["run_id"], request.get("flow", SUBMIT_RUN))
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit_without_teardown(code)


def _exit_without_teardown(code: int) -> None:
    """Do what interpreter shutdown must (join non-daemon threads, run ``atexit``, where
    Prefect drains its log and event queues), then skip tearing down the big heap of
    imported modules: ~0.45 s of CPU per runner that the next run would compete with."""
    sys.stdout.flush()
    sys.stderr.flush()
    threading._shutdown()  # what the interpreter itself calls first at exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]))
    else:  # a cold runner: its run, then a warm runner for the next one
        try:
            with contextlib.suppress(MLTrainError):  # if it never answers, run() says so
                wait_until_up(os.environ.get("PREFECT_API_URL", ""))  # it may be starting
            run(*sys.argv[1:4])
        finally:
            ensure_running(dict(os.environ))
