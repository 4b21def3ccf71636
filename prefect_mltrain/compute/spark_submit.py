"""A pyspark run as a job: the ``spark-submit`` command that starts it, the Java it needs,
and the standalone master it may run on.

``spark-submit`` comes from the ``pyspark`` package (the ``spark`` extra) of the process
that runs the flow; nothing of pyspark is imported, it is only found. In client mode (the
only mode Spark has for Python applications on standalone and local masters) the driver
runs here, so its output, ``./outputs`` and ``Run.get_context()`` work as for any run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..distributed import free_port
from ..errors import ComputeTargetUnavailableError
from ..events import EventLog
from ..layout import EVENTS, run_dir
from .base import LaunchSpec
from .jobs import script_env, zip_files
from .process import GuardedProcess

JAVA_FIX = ("install one (on Debian: apt-get install -y openjdk-17-jre-headless), or point "
            "java_home= of the target (or JAVA_HOME) at it")
HTTP_TIMEOUT = 5.0  # seconds for one request to a master's or a driver's web UI
KILL_TIMEOUT = 30.0  # seconds for a killed application to leave the master
_java_checked: dict[str, int] = {}  # java path -> its major version, once per process


def spark_home() -> Path:
    """The Spark distribution inside the installed ``pyspark`` package."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise ComputeTargetUnavailableError(
            "framework='pyspark' needs pyspark where the run's flow runs (it provides "
            "spark-submit): pip install 'prefect-mltrain[spark]'")
    return Path(next(iter(spec.submodule_search_locations)))


def java_needed() -> int:
    """The oldest Java the installed pyspark runs on (Spark 4 dropped Java 8 and 11)."""
    major = int(importlib.metadata.version("pyspark").split(".")[0])
    return 17 if major >= 4 else 8


def find_java(java_home: str | None = None) -> str:
    """The ``java`` spark-submit will start (``java_home``, else ``$JAVA_HOME``, else the
    one on PATH), checked to be new enough for the installed pyspark."""
    home = java_home or os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    needed, version = java_needed(), importlib.metadata.version("pyspark")
    if not java or not os.access(java, os.X_OK):
        where = (f"{java} does not exist ({'java_home' if java_home else 'JAVA_HOME'} is "
                 f"{home})") if home else "JAVA_HOME is unset and there is no java on PATH"
        raise ComputeTargetUnavailableError(
            f"Spark needs Java {needed} or newer (pyspark {version}), and none was found: "
            f"{where}; {JAVA_FIX}")
    if java not in _java_checked:
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True,
                                 timeout=60)
            text = out.stderr + out.stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = str(exc)
        found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
        major = int(found[1]) if found else 0
        _java_checked[java] = int(found[2] or 0) if major == 1 and found else major  # 1.8
    if _java_checked[java] < needed:
        raise ComputeTargetUnavailableError(
            f"Spark needs Java {needed} or newer (pyspark {version}), and {java} is "
            f"Java {_java_checked[java] or '(unknown version)'}; {JAVA_FIX}")
    return java


def master_ui_urls(master: str, master_ui: str | None) -> list[str]:
    """Where a standalone master's web UI is: ``master_ui``, else port 8080 of each host
    of ``spark://HOST:PORT[,HOST:PORT]`` (a master with standbys)."""
    if master_ui:
        return [master_ui.rstrip("/")]
    hosts = master.removeprefix("spark://").split(",")
    return [f"http://{host.rsplit(':', 1)[0]}:8080" for host in hosts]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        return json.load(response)


def master_state(urls: list[str]) -> tuple[str, dict[str, Any]]:
    """The alive master's UI address and its state (``/json/``: workers, active apps)."""
    errors = []
    for url in urls:
        try:
            state = _get_json(f"{url}/json/")
        except Exception as exc:  # refused, timed out, not JSON
            errors.append(f"{url}: {exc}")
            continue
        if state.get("status") == "ALIVE":
            return url, state
        errors.append(f"{url}: {state.get('status')}")
    raise ComputeTargetUnavailableError(
        f"no alive Spark master answers at {', '.join(urls)} ({'; '.join(errors)}): start "
        "the master (spark-class org.apache.spark.deploy.master.Master), or set master_ui= "
        "to its web UI address")


def is_this_machine(host: str) -> bool:
    """Whether ``host`` (a worker's address) is one of this machine's addresses."""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    if address.is_loopback:
        return True
    import psutil

    return any(a.address == str(address) for addrs in psutil.net_if_addrs().values()
               for a in addrs)


def check_workers(state: dict[str, Any], executor_python: str | None) -> None:
    """A standalone cluster can take a run: it has alive workers, and executors on other
    hosts get an interpreter that exists there."""
    alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
    if not alive:
        raise ComputeTargetUnavailableError(
            f"the Spark master {state.get('url')} has no alive worker: start one "
            f"(spark-class org.apache.spark.deploy.worker.Worker {state.get('url')})")
    remote = sorted({w["host"] for w in alive if not is_this_machine(w["host"])})
    if remote and not executor_python:
        raise ComputeTargetUnavailableError(
            f"Spark workers on {', '.join(remote)} would start the run's Python "
            "environment, which is built on this machine only: set executor_python= on the "
            "target to an interpreter that exists at that path on every worker, with the "
            "packages the script's executor code imports (e.g. a virtualenv on a shared "
            "file system, or one built the same way on each host)")


def kill_application(ui: str, app_name: str) -> list[str]:
    """Kill the standalone master's active applications named ``app_name`` (a run's id)
    and wait until they are gone; returns the ids it killed."""
    try:
        _, state = master_state([ui])
    except ComputeTargetUnavailableError:
        return []
    killed = [a["id"] for a in state.get("activeapps", []) if a.get("name") == app_name]
    for app in killed:
        data = urllib.parse.urlencode({"id": app, "terminate": "true"}).encode()
        with contextlib.suppress(Exception):  # the master UI answers with a redirect
            urllib.request.urlopen(f"{ui}/app/kill/", data=data, timeout=HTTP_TIMEOUT).close()
    deadline = time.monotonic() + KILL_TIMEOUT
    while killed and time.monotonic() < deadline:
        with contextlib.suppress(ComputeTargetUnavailableError):
            if not {a["id"] for a in master_state([ui])[1].get("activeapps", [])} & set(killed):
                break
        time.sleep(0.5)
    return killed


def submit_argv(script: str, arguments: list[str], master: str, conf: Mapping[str, str],
                py_files: str) -> list[str]:
    argv = [str(spark_home() / "bin" / "spark-submit"), "--master", master,
            "--deploy-mode", "client"]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, "--py-files", py_files, script, *arguments]


def zip_python_files(folder: Path, destination: Path) -> str:
    """The snapshot's Python files as one zip for ``--py-files``: executors import the
    project's modules from it (the driver imports them from the snapshot itself)."""
    files = [(p, p.relative_to(folder).as_posix()) for p in sorted(folder.rglob("*.py"))
             if p.relative_to(folder).parts[0] not in ("outputs", "logs")]
    destination.write_bytes(zip_files(files))
    return str(destination)


class SparkJob:
    """``spark-submit`` of one run: the driver as a guarded process group here.

    Once the driver's web UI answers, the application's id and UI address are written as
    the run's properties (``spark_application_id``, ``spark_ui_url``) and told in its log.
    A stop sends SIGTERM to the driver, whose shutdown hook ends the application on the
    cluster; what a standalone master still runs under the run's name is then killed.
    """

    def __init__(self, spec: LaunchSpec, master: str, conf: Mapping[str, str],
                 java_home: str | None = None, executor_python: str | None = None,
                 master_ui: str | None = None):
        interpreter = spec.prepared.interpreter
        conf = {**conf, "spark.app.name": spec.run_id}
        self.ui_port = None
        if conf.get("spark.ui.enabled", "true").lower() != "false":
            conf.setdefault("spark.ui.port", str(free_port()))
            self.ui_port = int(conf["spark.ui.port"])
        env = {**script_env(spec.env, interpreter), "SPARK_HOME": str(spark_home()),
               "PYSPARK_DRIVER_PYTHON": interpreter,
               "PYSPARK_PYTHON": executor_python or interpreter}
        if java_home:
            env["JAVA_HOME"] = java_home
        cwd = Path(spec.cwd)
        py_files = zip_python_files(cwd, cwd.parent / f"{spec.run_id}-py-files.zip")
        argv = submit_argv(spec.config.script, spec.config.script_arguments(spec.data_paths),
                           master, conf, py_files)
        self.run_id = spec.run_id
        self.master_ui = master_ui
        self.application: dict[str, str] = {}
        self._events = Path(spec.stage_dir) / run_dir(spec.experiment, spec.run_id) / EVENTS
        self._notes: list[str] = []
        self._ended = threading.Event()
        self.process = GuardedProcess(argv, cwd=spec.cwd, env=env)
        self.pgid = self.process.pgid
        if self.ui_port:
            threading.Thread(target=self._find_application, daemon=True).start()

    def _find_application(self) -> None:
        """Ask the driver's UI for the application (it answers once the context is up)."""
        base = f"http://127.0.0.1:{self.ui_port}/api/v1/applications"
        while not self._ended.wait(0.5):
            try:
                app = _get_json(base)[0]["id"]
                props = dict(_get_json(f"{base}/{app}/environment")["sparkProperties"])
            except Exception:  # not up yet
                continue
            host = props.get("spark.driver.host", socket.gethostname())
            self.application = {"spark_application_id": app,
                                "spark_ui_url": f"http://{host}:{self.ui_port}"}
            log = EventLog(self._events / "spark.jsonl")
            for key, value in self.application.items():
                log.write({"type": "property", "key": key, "value": value})
            log.close()
            self._notes.append(f"prefect-mltrain: Spark application {app}, web UI "
                               f"{self.application['spark_ui_url']}")
            return

    def read_lines(self, timeout: float) -> list[str]:
        lines = self.process.read_lines(timeout)
        while self._notes:
            lines.append(self._notes.pop(0))
        return lines

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self._ended.set()
        return code

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        return self.process.finish_output(timeout)

    def terminate(self, grace: float = 10.0) -> None:
        self._ended.set()
        self.process.terminate(grace)
        if self.master_ui:
            kill_application(self.master_ui, self.run_id)

    def close(self) -> None:
        self._ended.set()
        self.process.close()
