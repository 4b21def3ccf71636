"""What runs inside a Dask worker for one rank (or one MPI node proxy) of a run.

The task restores the run's snapshot in the worker's own folder, finds or builds the
environment there, starts the command as its own process group, publishes its output lines
as Dask events, and stops it when the run is stopped or its runner has gone silent
(Prefect does not stop processes on external workers; this does). It returns the rank's
files (``outputs/``, ``logs/`` and its run-context events) as one zip.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALIVE_TIMEOUT = 60.0  # seconds without a beat from the runner before the rank stops itself
PUBLISH_INTERVAL = 0.2
CHECK_INTERVAL = 1.0  # how often a rank asks the scheduler whether to stop


@dataclass
class RankTask:
    """One process to run on a worker."""

    run_id: str
    label: str  # "rank 3", or "node 1" for an MPI proxy
    argv: list[str]
    env: dict[str, str]
    environment: dict[str, Any] | None  # the run's environment record; None: the worker's
    interpreter: str  # the runner's interpreter as it appears in argv, replaced on the worker
    collect: list[str] = field(default_factory=lambda: ["outputs", "logs"])
    grace: float = 10.0

    @property
    def topic(self) -> str:
        return f"mltrain-{self.run_id}"

    @property
    def stop_event(self) -> str:
        return f"mltrain-stop-{self.run_id}"

    @property
    def alive_variable(self) -> str:
        return f"mltrain-alive-{self.run_id}"


def worker_interpreter(environment: dict[str, Any] | None) -> str:
    """The run's environment on this worker: built (or found) here by its hash."""
    if not environment:
        return sys.executable
    from ..environment import Environment
    from ..environment_build import build_environment

    return build_environment(Environment.from_record(environment)).interpreter


def run_rank(task: RankTask, snapshot: bytes) -> dict[str, Any]:
    from distributed import Event, Variable, get_worker

    from ..distributed import without_mpi_world
    from ..environment import run_context_path
    from .process import group_alive, kill_process_group

    worker = get_worker()
    root = Path(worker.local_directory) / "mltrain" / task.run_id / task.label.replace(" ", "")
    shutil.rmtree(root, ignore_errors=True)
    src, stage = root / "src", root / "stage"
    with zipfile.ZipFile(io.BytesIO(snapshot)) as zf:
        zf.extractall(src)
    for name in ("outputs", "logs"):
        (src / name).mkdir(exist_ok=True)
    interpreter = worker_interpreter(task.environment)
    argv = [interpreter if a == task.interpreter else a for a in task.argv]
    env = {**without_mpi_world(dict(os.environ)), **task.env,
           "MLTRAIN_CONTEXT_DIR": str(stage), "MLTRAIN_RANK_CWD": str(src)}
    env["PATH"] = os.pathsep.join([os.path.dirname(interpreter),
                                   os.path.dirname(sys.executable), env.get("PATH", "")])
    if "MLTRAIN_RANK_ARGV" in env:  # an MPI proxy: its ranks run the script with our python
        env["MLTRAIN_RANK_ARGV"] = env["MLTRAIN_RANK_ARGV"].replace(
            task.interpreter, interpreter)
    if interpreter != sys.executable:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [run_context_path(),
                                                          env.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv, cwd=src, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines: list[str] = []
    lock = threading.Lock()

    def read() -> None:
        for raw in iter(proc.stdout.readline, b""):
            with lock:
                lines.append(raw.decode(errors="replace").rstrip("\r\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    published = 0

    def publish() -> None:
        nonlocal published
        with lock:
            batch = lines[published:]
        if batch:
            worker.log_event(task.topic, {"label": task.label, "lines": batch})
            published += len(batch)

    stop, alive = Event(task.stop_event), Variable(task.alive_variable)
    stopped, checked = None, 0.0
    while proc.poll() is None:
        publish()
        time.sleep(PUBLISH_INTERVAL)
        if time.monotonic() - checked < CHECK_INTERVAL:
            continue
        checked = time.monotonic()
        if stop.is_set():
            stopped = "stopped by the runner"
        elif time.time() - float(alive.get(timeout=10) or 0) > ALIVE_TIMEOUT:
            stopped = "the runner went silent"
        if stopped:
            kill_process_group(proc.pid, task.grace)
            break
    code = proc.wait()
    reader.join(5)
    publish()
    if group_alive(proc.pid):  # a grandchild left behind by the script
        kill_process_group(proc.pid, 1.0)
    files = _zip(src, task.collect, stage)
    shutil.rmtree(root, ignore_errors=True)
    return {"label": task.label, "exit_code": 128 - code if code < 0 else code,
            "lines": published, "stopped": stopped, "files": files}


def _zip(src: Path, names: list[str], stage: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for base, prefix in [(src / n, n) for n in names] + [(stage / "runs", "stage/runs")]:
            for path in sorted(base.rglob("*")) if base.is_dir() else []:
                if path.is_file() and not path.is_symlink():
                    zf.write(path, f"{prefix}/{path.relative_to(base)}")
    return buf.getvalue()


def free_port_here() -> tuple[str, int]:
    """A free port on the worker's own address (for the rendezvous and TF tasks)."""
    from distributed import get_worker

    from ..distributed import free_port

    host = get_worker().address.split("://")[-1].rsplit(":", 1)[0]
    return host, free_port(host)
