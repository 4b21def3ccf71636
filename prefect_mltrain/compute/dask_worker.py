"""What runs inside a Dask worker for one rank (or one MPI node proxy) of a run.

The task restores the run's snapshot in the worker's own folder, finds or builds the run's
environment there (by its build key: a cache hit after the first run), starts the command
as a guarded process group (it dies with the worker), and publishes as Dask events its
output lines and, every few seconds, the files it changed (``outputs/``, ``logs/`` and
its run-context stage, so the runner mirrors them while the rank runs). It stops the
command when the run is stopped, when the scheduler drops the task (its runner is gone),
or when the runner has gone silent (Prefect does not stop processes on external workers;
this does). It returns the rank's files once more, all of them, as one zip.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.staging import SCRATCH_IN, SCRATCH_OUT, output_dirs, stage_inputs, with_paths
from ..environment_build import BuildSpec, build_environment
from ..files import changed_files
from .jobs import script_env, unzip, zip_files
from .process import GuardedProcess

WORKER_PYTHON = "<worker-python>"  # argv[0] of a rank: the run's interpreter on its worker
PUBLISH_INTERVAL = 0.2
CHECK_INTERVAL = 0.25  # how often a rank asks the scheduler whether to stop
FILES_INTERVAL = 2.0  # how often changed files go to the runner while the rank runs
LIVE_FILE_BYTES = 8 * 1024 * 1024  # larger files travel only with the task's result


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
    data: Any = None  # the run's DataPlan: its inputs are made local on this worker

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

    from ..distributed import mpi_node_env, without_mpi_world

    worker = get_worker()
    key = worker.get_current_task()
    root = Path(worker.local_directory) / "mltrain" / task.run_id / task.label.replace(" ", "")
    shutil.rmtree(root, ignore_errors=True)
    src, stage = root / "src", root / "stage"
    unzip(snapshot, lambda name: src / name)
    for name in ("outputs", "logs"):
        (src / name).mkdir(exist_ok=True)
    stop, alive = Event(task.stop_event), Variable(task.alive_variable)
    python = build_environment(task.spec, lock=task.lock, stop=stop.is_set).interpreter
    env = {**without_mpi_world(dict(os.environ)), **task.env,
           "MLTRAIN_CONTEXT_DIR": str(stage), "MLTRAIN_RANK_CWD": str(src)}
    env["PATH"] = os.pathsep.join([os.path.dirname(python), os.path.dirname(sys.executable),
                                   env.get("PATH", "")])
    if "MLTRAIN_RANK_ARGV" in env:  # an MPI proxy: its ranks run the script with this python
        env["MLTRAIN_RANK_ARGV"] = json.dumps(
            _with_python(json.loads(env["MLTRAIN_RANK_ARGV"]), python))
        env.update(mpi_node_env())  # as this worker's machine allows
    env = script_env(env, python)
    notes: list[str] = []
    staged = stage_inputs(task.data, src, root / SCRATCH_IN, notes.append, stop.is_set)
    outputs = output_dirs(task.data, src, root / SCRATCH_OUT)
    paths = {**staged.paths, **outputs}
    argv = with_paths(_with_python(task.argv, python), paths)
    try:
        proc = GuardedProcess(argv, cwd=str(src), env=with_paths(env, paths))
    except BaseException:
        staged.close()
        raise
    folders = [(src / n, n) for n in task.collect] + [(stage, "stage")]
    # every rank's data outputs go home at its end (they are uploaded only then), wherever
    # the script wrote them (``source``)
    data_out = [(Path(path), f"{SCRATCH_OUT}/{key}") for key, path in outputs.items()]
    seen: dict[str, tuple[int, int]] = {}
    published = 0

    def publish(lines: list[str] = (), files: bool = False) -> None:
        nonlocal published
        message: dict[str, Any] = {"label": task.label, "lines": lines}
        if files:
            changed = [(path, f"{prefix}/{rel}") for folder, prefix in folders
                       for path, rel, size in changed_files(folder, seen)
                       if size <= LIVE_FILE_BYTES]
            if changed:
                message["files"] = zip_files(changed)
        if lines or "files" in message:
            worker.log_event(task.topic, message)
            published += len(lines)

    publish([f"[prefect-mltrain] {task.label}: {note}" for note in notes])
    stopped, checked, sent = None, 0.0, time.monotonic()
    while proc.poll() is None:
        publish(proc.read_lines(PUBLISH_INTERVAL))
        if time.monotonic() - sent >= FILES_INTERVAL:
            sent = time.monotonic()
            publish(files=True)
        if time.monotonic() - checked < CHECK_INTERVAL:
            continue
        checked = time.monotonic()
        state = worker.state.tasks.get(key)
        if state is None or state.state in ("cancelled", "released", "forgotten"):
            stopped = "the scheduler dropped the task (its runner is gone)"
        elif stop.is_set():
            stopped = "stopped by the runner"
        elif time.time() - float(alive.get(timeout=10) or 0) > task.silence:
            stopped = "the runner went silent"
        if stopped:
            proc.terminate(task.grace)
            break
    code = proc.poll()
    publish(proc.finish_output(5))
    proc.close()
    staged.close()  # unmounted before the folder is removed
    files = zip_files([(path, f"{prefix}/{rel}") for folder, prefix in folders + data_out
                       for path, rel, _ in changed_files(folder, {})])
    shutil.rmtree(root, ignore_errors=True)
    return {"label": task.label, "exit_code": code, "lines": published, "stopped": stopped,
            "files": files}


def free_port_here() -> tuple[str, int]:
    """A free port on the worker's own address (for the rendezvous and TF tasks)."""
    from distributed import get_worker

    from ..distributed import free_port

    host = get_worker().address.split("://")[-1].rsplit(":", 1)[0]
    return host, free_port(host)
