"""What runs inside a Dask worker for one rank (or one MPI node proxy) of a run.

The task restores the run's snapshot in the worker's own folder, finds or builds the run's
environment there (by its build key: a cache hit after the first run), starts the command
as its own process group, publishes its output lines as Dask events, and stops it when
the run is stopped or its runner has gone silent (Prefect does not stop processes on
external workers; this does). It returns the rank's files (``outputs/``, ``logs/`` and
its run-context stage) as one zip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..environment_build import BuildSpec, build_environment
from .jobs import LineQueue, exit_code, run_context_path, unzip, zip_folders
from .process import group_alive, kill_process_group

WORKER_PYTHON = "<worker-python>"  # argv[0] of a rank: the run's interpreter on its worker
PUBLISH_INTERVAL = 0.2
CHECK_INTERVAL = 1.0  # how often a rank asks the scheduler whether to stop


@dataclass
class RankTask:
    """One process to run on a worker."""

    run_id: str
    label: str  # "rank 3", or "node 1" for an MPI proxy
    argv: list[str]
    env: dict[str, str]
    spec: BuildSpec | None  # the run's environment; None: the worker's own interpreter
    lock: str | None  # its pinned packages, resolved once by the runner
    collect: list[str] = field(default_factory=lambda: ["outputs", "logs"])
    grace: float = 10.0
    silence: float = 60.0  # seconds without a beat from the runner before the rank stops

    @property
    def topic(self) -> str:
        return f"mltrain-{self.run_id}"

    @property
    def stop_event(self) -> str:
        return f"mltrain-stop-{self.run_id}"

    @property
    def alive_variable(self) -> str:
        return f"mltrain-alive-{self.run_id}"


def _with_python(argv: list[str], python: str) -> list[str]:
    return [python, *argv[1:]] if argv and argv[0] == WORKER_PYTHON else argv


def run_rank(task: RankTask, snapshot: bytes) -> dict[str, Any]:
    import json

    from distributed import Event, Variable, get_worker

    from ..distributed import without_mpi_world

    worker = get_worker()
    root = Path(worker.local_directory) / "mltrain" / task.run_id / task.label.replace(" ", "")
    shutil.rmtree(root, ignore_errors=True)
    src, stage = root / "src", root / "stage"
    unzip(snapshot, lambda name: src / name)
    for name in ("outputs", "logs"):
        (src / name).mkdir(exist_ok=True)
    python = build_environment(task.spec, lock=task.lock).interpreter
    env = {**without_mpi_world(dict(os.environ)), **task.env,
           "MLTRAIN_CONTEXT_DIR": str(stage), "MLTRAIN_RANK_CWD": str(src)}
    env["PATH"] = os.pathsep.join([os.path.dirname(python), os.path.dirname(sys.executable),
                                   env.get("PATH", "")])
    if "MLTRAIN_RANK_ARGV" in env:  # an MPI proxy: its ranks run the script with this python
        env["MLTRAIN_RANK_ARGV"] = json.dumps(
            _with_python(json.loads(env["MLTRAIN_RANK_ARGV"]), python))
    if python != sys.executable:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [run_context_path(),
                                                          env.get("PYTHONPATH")]))
    proc = subprocess.Popen(_with_python(task.argv, python), cwd=src, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines = LineQueue()
    lines.follow(iter(proc.stdout.readline, b""))
    published = 0

    def publish(batch: list[str]) -> None:
        nonlocal published
        if batch:
            worker.log_event(task.topic, {"label": task.label, "lines": batch})
            published += len(batch)

    stop, alive = Event(task.stop_event), Variable(task.alive_variable)
    stopped, checked = None, 0.0
    while proc.poll() is None:
        publish(lines.take(PUBLISH_INTERVAL))
        if time.monotonic() - checked < CHECK_INTERVAL:
            continue
        checked = time.monotonic()
        if stop.is_set():
            stopped = "stopped by the runner"
        elif time.time() - float(alive.get(timeout=10) or 0) > task.silence:
            stopped = "the runner went silent"
        if stopped:
            kill_process_group(proc.pid, task.grace)
            break
    code = proc.wait()
    publish(lines.finish(5))
    if group_alive(proc.pid):  # a grandchild left behind by the script
        kill_process_group(proc.pid, 1.0)
    files = zip_folders([(src / n, n) for n in task.collect] + [(stage, "stage")])
    shutil.rmtree(root, ignore_errors=True)
    return {"label": task.label, "exit_code": exit_code(code), "lines": published,
            "stopped": stopped, "files": files}


def free_port_here() -> tuple[str, int]:
    """A free port on the worker's own address (for the rendezvous and TF tasks)."""
    from distributed import get_worker

    from ..distributed import free_port

    host = get_worker().address.split("://")[-1].rsplit(":", 1)[0]
    return host, free_port(host)
