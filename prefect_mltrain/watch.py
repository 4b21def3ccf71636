"""Watching a run from outside: stream its output, wait for its end, and end a run that
nobody else will (its runner died, or it never started).

Reading a run never changes it. Ending a run whose runner is gone is the watcher's job:
``follow_run`` (behind ``wait_for_completion`` and ``mltrain logs --follow``), ``cancel``
and the CLI's listings ask ``Watcher.settle``, which writes through the store like any
other writer, so a runner that finishes at the same moment cannot be overwritten.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from pathlib import Path
from typing import TextIO

from .compute.process import kill_process_group, process_alive
from .layout import STD_LOG, run_dir
from .records import RunRecord, RunStatus
from .store import RunStore

FLOW_CHECK_SECONDS = 5.0  # how often a queued work-pool run's flow run is looked at


class Watcher:
    """Ends runs that have nobody to end them, with the reason in their record."""

    def __init__(self, store: RunStore):
        self.store = store
        self._flow_checked: dict[str, float] = {}

    def settle(self, record: RunRecord) -> RunRecord:
        """``record``, or the record as ended when its run cannot end by itself."""
        if record.finished:
            return record
        verdict = self._verdict(record)
        if verdict is None:
            return record
        status, reason, pgid = verdict
        if pgid:  # the script of a runner that died on this machine: stop it too
            kill_process_group(pgid, grace=0)
        ended = self.store.move(record.experiment, record.run_id, status, error=reason)
        self.store.end_children(record.experiment, record.run_id,
                                canceled=ended.status == RunStatus.CANCELED)
        if ended.flow_run_id:  # nobody else will tell Prefect
            try:
                from .prefect_api import end_flow_run

                end_flow_run(ended.flow_run_id, status == RunStatus.CANCELED, reason)
            except Exception as exc:  # the record stands; Prefect's view may lag behind
                logging.getLogger("prefect_mltrain").warning(
                    "could not end flow run %s in Prefect: %s", ended.flow_run_id, exc)
        return ended

    def _verdict(self, record: RunRecord) -> tuple[RunStatus, str, int | None] | None:
        exp, run_id = record.experiment, record.run_id
        canceled = self.store.cancel_requested(exp, run_id)
        if canceled and record.status == RunStatus.NOT_STARTED:
            return RunStatus.CANCELED, "canceled before it started", None
        beat = self.store.heartbeat(exp, run_id)
        if beat is None and record.deployment:  # no worker has started its flow run yet
            return self._pool_verdict(record, canceled)
        runner = beat or (record.runner.model_dump() if record.runner else None)
        if not runner:
            return None  # a child run, or an interactive one: its writer ends it
        if runner.get("host") == socket.gethostname():  # the process table knows
            if process_alive(runner["pid"]):
                return None
            reason = f"the runner process {runner['pid']} on {runner['host']} exited"
            pgid = runner.get("pgid")
        else:
            silent = time.time() - (runner.get("time") or record.created_at)
            if silent <= self.store.ws.settings.heartbeat_timeout_seconds:
                return None
            reason, pgid = f"no heartbeat from the runner on {runner['host']} for {int(silent)} s", None
        reason += " without finishing the run (killed or crashed); outputs synced so far are kept"
        local = record.local_files
        if local and local.host == socket.gethostname() and Path(local.path).exists():
            reason += (f"; its files not stored yet are in {local.path}: `mltrain runs sync "
                       f"{record.run_id}` stores them")
        return RunStatus.FAILED, reason, pgid

    def _pool_verdict(self, record: RunRecord, canceled: bool
                      ) -> tuple[RunStatus, str, None] | None:
        from .prefect_api import flow_run_state

        flow_run_id = record.deployment.flow_run_id
        if time.monotonic() - self._flow_checked.get(flow_run_id, -FLOW_CHECK_SECONDS) \
                < FLOW_CHECK_SECONDS:
            return None
        self._flow_checked[flow_run_id] = time.monotonic()
        state = flow_run_state(flow_run_id)
        if not (state and state.is_final()):
            return None
        if state.is_cancelled():
            return (RunStatus.CANCELED, "canceled before it started" if canceled else
                    f"its flow run was canceled ({state.message or 'no message'})", None)
        return (RunStatus.FAILED, f"its flow run ended {state.name} "
                f"({state.message or 'no message'})", None)


def cancel(store: RunStore, experiment: str, run_id: str,
           reason: str | None = None) -> RunRecord:
    """Ask a run to stop: a request its runner sees within a second or two, and ends the
    run with (``reason`` or "canceled by request"). A run sent to a work pool that no
    worker has taken is canceled in Prefect (its secrets deleted); a run that never started
    ends Canceled at once."""
    record = store.read(experiment, run_id)
    if record.finished:
        return record
    store.request_cancel(experiment, run_id, reason)
    if record.deployment and record.status == RunStatus.QUEUED:
        from .prefect_api import cancel_if_scheduled, delete_secret

        if cancel_if_scheduled(record.deployment.flow_run_id) and record.deployment.private_block:
            delete_secret(record.deployment.private_block)
    return Watcher(store).settle(store.read(experiment, run_id))


class LogFollower:
    """Reads the new part of a run's ``logs/std_log.txt`` on each call."""

    def __init__(self, store: RunStore, experiment: str, run_id: str):
        self.fs = store.ws.fs
        self.path = store.ws.path(f"{run_dir(experiment, run_id)}/{STD_LOG}")
        self.offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            size = self.fs.size(self.path)
            if size <= self.offset:
                return []
            data = self.fs.cat_file(self.path, start=self.offset, end=size)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [line.decode(errors="replace") for line in lines]


def follow_run(store: RunStore, experiment: str, run_id: str, show_output: bool = False,
               poll_interval: float = 0.25, timeout: float | None = None,
               out: TextIO | None = None) -> RunRecord:
    """Wait for the run to end; print its output lines as they come when ``show_output``."""
    out = out or sys.stdout
    follower = LogFollower(store, experiment, run_id) if show_output else None
    watcher = Watcher(store)
    deadline = time.monotonic() + timeout if timeout else None
    if show_output:
        print(f"Run {run_id} ({experiment})", file=out, flush=True)
    while True:
        record = watcher.settle(store.read(experiment, run_id))
        for line in follower.new_lines() if follower else ():
            print(line, file=out, flush=True)
        if record.finished:
            break
        if deadline and time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {record.status.value} after {timeout} s")
        time.sleep(poll_interval)
    if follower:
        for line in follower.new_lines():
            print(line, file=out, flush=True)
        print(summary(record), file=out, flush=True)
    return record


def summary(record: RunRecord) -> str:
    lines = [f"\nRun {record.run_id}: {record.status.value}"]
    if record.started_at and record.ended_at:
        lines.append(f"  duration: {record.ended_at - record.started_at:.1f} s")
    if record.exit_code is not None:
        lines.append(f"  exit code: {record.exit_code}")
    if record.error:
        lines.append(f"  error: {record.error}")
    if record.flow_run_url:
        lines.append(f"  Prefect: {record.flow_run_url}")
    return "\n".join(lines)

