"""The sweep's controller: start trials, watch their primary metric, cancel the losers.

A sweep's trials are its child runs, each an ordinary run with its own runner (or a
worker of its target's pool), so they outlive the controller: the workspace is the
sweep's memory. Each trial's record holds its index, its draw from the sampler and its
hyperparameters; ``sweep.json`` beside the sweep's record holds the table of trials,
rewritten after every trial event. A controller that starts on a sweep that already has
trials (``HyperDriveRun.resume()``, after its process was killed) reads them back,
follows the running ones, starts those recorded but never started, and samples on from
where the sweep was: no finished trial runs again.
"""

from __future__ import annotations

import contextvars
import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import events as event_lines
from ..layout import EVENTS, STD_LOG, run_dir
from ..records import RunRecord, RunStatus
from ..store import RunStore
from ..submission import start_trial, trial_deployment
from ..watch import Watcher, cancel
from .config import SweepSpec
from .parameters import argument_name, format_value
from .policies import Curve
from .sampling import Trial

POLL_SECONDS = 0.2  # a freed slot is filled within this; a poll reads the running trials (~ms)
SUBFLOW_WAIT_SECONDS = 10.0  # a trial whose subflow run is not made by then makes its own
STOP_WAIT_SECONDS = 120.0  # how long ending trials are waited for when the sweep stops
SWEEP_FILE = "sweep.json"
PARAMETERS = "hyperparameters"  # a trial's property: its hyperparameters, as JSON
DRAW = "hyperdrive.draw"  # a trial's property: which draw of the sampler it is


@dataclass
class TrialState:
    """One trial as the controller follows it."""

    index: int
    run_id: str
    parameters: dict[str, Any]
    draw: int
    status: str = RunStatus.NOT_STARTED.value
    values: list[float] = field(default_factory=list)
    error: str | None = None
    task_run_id: str | None = None  # what stands for it in the sweep's flow run
    starting: Future | None = None  # its start, in the background
    stopping: bool = False
    duration: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("Completed", "Failed", "Canceled")

    def best(self, maximize: bool) -> float | None:
        if not self.values:
            return None
        return max(self.values) if maximize else min(self.values)

    def row(self, maximize: bool) -> dict[str, Any]:
        return {"trial": self.index, "run_id": self.run_id, "status": self.status,
                "best": self.best(maximize), "intervals": len(self.values),
                "parameters": self.parameters, "error": self.error,
                "duration": self.duration, "curve": self.values}


def primary_values(events: list[dict[str, Any]], name: str) -> list[float]:
    """The values a run logged of ``name`` (rank 0), in order: one per interval."""
    logged = [e for e in events if e.get("type") == "metric" and e.get("name") == name
              and e.get("rank", 0) == 0 and isinstance(e.get("value"), int | float)
              and not isinstance(e.get("value"), bool)]
    logged.sort(key=lambda e: e.get("time", 0))
    return [float(e["value"]) for e in logged]


def trial_parameters(record: RunRecord) -> dict[str, Any]:
    return json.loads(record.properties.get(PARAMETERS) or "{}")


class Sweep:
    """Runs one sweep to its end, from the state the workspace holds."""

    def __init__(self, store: RunStore, record: RunRecord, secrets: dict[str, str],
                 cancel_reason: Callable[[], str | None], log: Callable[[str], None],
                 on_change: Callable[[Sweep], None] = lambda sweep: None):
        self.store, self.record, self.secrets = store, record, secrets
        self.spec: SweepSpec = record.hyperdrive
        self.exp, self.id = record.experiment, record.run_id
        self.cancel_reason, self._log, self.on_change = cancel_reason, log, on_change
        self.watcher = Watcher(store)
        self.trials: list[TrialState] = []
        self.draws = 0  # draws taken from the sampler so far
        self.exhausted = False
        self.earlier = self._earlier_trials()
        self.lines: list[str] = []
        self._log_lock = threading.Lock()
        # Starting a trial (its record, its subflow in Prefect, its runner) takes a few API
        # calls: it happens beside the loop, which goes on following the others.
        self._starts = ThreadPoolExecutor(max_workers=min(8, self.spec.concurrency),
                                          thread_name_prefix="mltrain-trial-start")
        self._view = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mltrain-sweep-view")
        self.deployment = trial_deployment(store, record.config)
        # Trial index -> its flow run and task run in Prefect, made ahead of need: making
        # the task run that shows a subflow under the sweep takes seconds on a busy server.
        self._premade: dict[int, Future] = {}
        self._makes = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mltrain-subflows")
        self._late: list[Future] = []

    # -- state in the workspace ---------------------------------------------------------------

    def load(self) -> None:
        """The trials the workspace holds (none for a new sweep)."""
        found = [r for r in self.store.children(self.exp, self.id) if DRAW in r.properties]
        for record in sorted(found, key=lambda r: int(r.run_id.rsplit("_", 1)[1])):
            trial = TrialState(index=int(record.run_id.rsplit("_", 1)[1]), run_id=record.run_id,
                               parameters=trial_parameters(record),
                               draw=int(record.properties[DRAW]))
            self._refresh(trial, record)
            self.trials.append(trial)
        self.draws = max((t.draw + 1 for t in self.trials), default=0)
        try:
            self.lines = self.store.ws.read_bytes(
                f"{run_dir(self.exp, self.id)}/{STD_LOG}").decode().splitlines()
        except FileNotFoundError:
            self.lines = []
        if self.trials:
            running = sum(not t.finished for t in self.trials)
            self.log(f"resuming: {len(self.trials)} trials so far, {running} still going")

    def save(self, finished: bool = False) -> None:
        maximize = self.spec.maximize
        self.store.ws.write_json(f"{run_dir(self.exp, self.id)}/{SWEEP_FILE}", {
            "primary_metric_name": self.spec.primary_metric_name,
            "primary_metric_goal": self.spec.primary_metric_goal.value,
            "draws": self.draws, "finished": finished, "updated_at": time.time(),
            "trials": [t.row(maximize) for t in self.trials]})

    def log(self, line: str) -> None:
        """A line of the sweep's own log (``logs/std_log.txt``, what ``wait_for_completion``
        shows) and of its flow run in Prefect."""
        with self._log_lock:
            self.lines.append(f"[{time.strftime('%H:%M:%S')}] {line}")
            text = ("\n".join(self.lines) + "\n").encode()
            self.store.ws.write_bytes(f"{run_dir(self.exp, self.id)}/{STD_LOG}", text)
        self._log(line)

    def _earlier_trials(self) -> list[Trial]:
        """The finished trials of the sweeps this one resumes from (warm start)."""
        out = []
        for sweep_id in self.spec.resume_from:
            exp = self.store.experiment_of(sweep_id)
            for record in self.store.children(exp, sweep_id):
                if not record.finished:
                    continue
                values = primary_values(self.store.events(exp, record.run_id),
                                        self.spec.primary_metric_name)
                out.append(Trial(index=-1, parameters=trial_parameters(record), finished=True,
                                 value=(max if self.spec.maximize else min)(values)
                                 if values else None))
        return out

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> tuple[RunStatus, str | None]:
        """Run the sweep to its end; its ending status and error."""
        self.load()
        started = self.record.started_at or time.time()
        deadline = started + self.spec.max_duration_minutes * 60
        stop: str | None = None
        while True:
            changed = self._follow()
            if stop is None and (reason := self.cancel_reason()):
                stop = reason
                self._stop_all(f"sweep canceled ({reason})")
            elif stop is None and time.time() >= deadline:
                stop = "max_duration_minutes"
                self.log(f"max_duration_minutes ({self.spec.max_duration_minutes:g}) reached")
                self._stop_all("the sweep reached its max_duration_minutes")
            if stop is None:
                changed |= self._terminate()
                changed |= self._launch()
                self._premake()
            if changed:
                self.save()
                self._in_view(self.on_change, self)
            going = [t for t in self.trials if not t.finished]
            if not going and (stop or self.exhausted or len(self.trials) >= self.spec.max_total_runs):
                break
            if stop and time.time() > self._stop_deadline:
                self.log(f"{len(going)} trials did not stop within {STOP_WAIT_SECONDS:g} s; "
                         "they end by themselves")
                break
            time.sleep(POLL_SECONDS)
        self._starts.shutdown(wait=True)  # quick: every trial's record says how it ended
        self.save(finished=True)
        if stop and stop != "max_duration_minutes":
            return RunStatus.CANCELED, stop
        if self.trials and all(t.status == "Failed" for t in self.trials):
            return RunStatus.FAILED, f"every trial failed; the first: {self.trials[0].error}"
        return RunStatus.COMPLETED, None

    _stop_deadline = float("inf")

    def _follow(self) -> bool:
        """Read the running trials' records and primary metric; True if anything changed."""
        changed = False
        for trial in self.trials:
            if trial.finished:
                continue
            record = self.watcher.settle(self.store.read(self.exp, trial.run_id))
            before = (trial.status, len(trial.values))
            self._refresh(trial, record)
            if (trial.status, len(trial.values)) != before:
                changed = True
                if trial.finished:
                    self._ended(trial)
            if record.status == RunStatus.NOT_STARTED and record.runner is None \
                    and record.deployment is None and trial.starting is None:
                self._start(trial, record)  # recorded by a controller that died before it
                changed = True
        return changed

    def _refresh(self, trial: TrialState, record: RunRecord) -> None:
        trial.status, trial.error = record.status.value, record.error
        if record.started_at and record.ended_at:
            trial.duration = record.ended_at - record.started_at
        name = self.spec.primary_metric_name
        stored = primary_values(self.store.events(self.exp, trial.run_id), name)
        fresh = primary_values(_staged_events(record), name)  # not yet synced, if here
        trial.values = fresh if len(fresh) > len(stored) else stored

    def _ended(self, trial: TrialState) -> None:
        best = trial.best(self.spec.maximize)
        metric = f"{self.spec.primary_metric_name}={best:g}" if best is not None else \
            f"no {self.spec.primary_metric_name} logged"
        self.log(f"trial {trial.index} {trial.status}: {metric}"
                 + (f" ({trial.error})" if trial.error else ""))
        if trial.task_run_id:
            from ..prefect_api import end_task_run

            self._in_view(end_task_run, trial.task_run_id, trial.status, trial.error)

    def _terminate(self) -> bool:
        curves = [Curve(trial=t.run_id, values=t.values, running=not t.finished)
                  for t in self.trials if t.values]
        decisions = self.spec.policy.terminate(curves, self.spec.primary_metric_goal)
        changed = False
        for trial in self.trials:
            reason = decisions.get(trial.run_id)
            if reason and not trial.stopping and not trial.finished:
                trial.stopping = changed = True
                self.log(f"trial {trial.index}: {reason}")
                cancel(self.store, self.exp, trial.run_id, reason)
        return changed

    def _launch(self) -> bool:
        changed = False
        while (not self.exhausted and len(self.trials) < self.spec.max_total_runs
               and sum(not t.finished for t in self.trials) < self.spec.concurrency):
            parameters = self._next_parameters()
            if parameters is None:
                self.exhausted = True
                self.log(f"the parameter space is used up after {len(self.trials)} trials")
                break
            self._create(len(self.trials), parameters)
            changed = True
        return changed

    def _next_parameters(self) -> dict[str, Any] | None:
        """The next draw from the sampler; a draw an earlier sweep already ran is skipped."""
        seen = [t.parameters for t in self.earlier]
        history = self.earlier + [
            Trial(index=t.index, parameters=t.parameters, finished=t.finished,
                  value=t.best(self.spec.maximize)) for t in self.trials]
        for _ in range(1000):
            parameters = self.spec.sampling.suggest(self.draws, history, self.spec.seed,
                                                    self.spec.maximize)
            self.draws += 1
            if parameters is None or parameters not in seen:
                return parameters
        return None

    def _create(self, index: int, parameters: dict[str, Any]) -> None:
        run_id = f"{self.id}_{index}"
        arguments = list(self.record.config.arguments)
        for name, value in parameters.items():
            arguments += [argument_name(name), format_value(value)]
        config = self.record.config.model_copy(update={"arguments": arguments})
        try:
            record = self.store.create(
                self.exp, run_id=run_id, config=config, parent_run_id=self.id,
                snapshot_id=self.record.snapshot_id, git=self.record.git,
                properties={PARAMETERS: json.dumps(parameters), DRAW: self.draws - 1},
                tags={"hyperdrive_trial": index})
        except FileExistsError:  # made by a controller that died just after
            record = self.store.read(self.exp, run_id)
        trial = TrialState(index=index, run_id=run_id, parameters=parameters,
                           draw=self.draws - 1)
        self.trials.append(trial)
        shown = " ".join(f"{argument_name(k)} {format_value(v)}" for k, v in parameters.items())
        self.log(f"trial {index} ({run_id}): {shown}")
        self._start(trial, record)

    def _start(self, trial: TrialState, record: RunRecord) -> None:
        if self.deployment is None:  # its own place in Prefect queues before later trials'
            self._make_ahead(trial.index)
        context = contextvars.copy_context()  # the sweep's flow run, for the trial's subflow
        trial.starting = self._starts.submit(context.run, self._start_now, trial, record)

    def _start_now(self, trial: TrialState, record: RunRecord) -> None:
        try:
            made = self._premade.pop(trial.index, None)
            try:  # a trial never waits long for its place in Prefect's view
                made = made.result(timeout=SUBFLOW_WAIT_SECONDS) if made else None
            except TimeoutError:
                self._late.append(made)  # made later: it ends Cancelled, "not needed"
                made = None
            trial.task_run_id = made[1] if made else None
            start_trial(self.store, record, self.secrets, self.deployment,
                        made[0] if made else None)
        except Exception as exc:  # this trial fails; the sweep goes on
            self.store.move(self.exp, trial.run_id, RunStatus.FAILED,
                            error=f"Queued: the trial could not be started: {exc}")
            self.log(f"trial {trial.index} could not be started: {exc}")

    def _make_subflow(self, index: int) -> tuple[str, str] | None:
        """The flow run of trial ``index`` under the sweep's flow run (None: not in a flow,
        or Prefect did not answer: the trial then makes its own flow run)."""
        from ..flows import submit_run
        from ..prefect_api import subflow_run

        run_id = f"{self.id}_{index}"
        try:
            return subflow_run(submit_run, run_id, {
                "experiment": self.exp, "run_id": run_id, "workspace": self.store.ws.url})
        except Exception:
            return None

    def _premake(self) -> None:
        """Make the next trials' flow runs while the current trials run: two slots' worth
        ahead, as one write to a busy embedded server can wait ~5 s for SQLite's lock."""
        if self.deployment is not None or self.exhausted:
            return
        upto = min(self.spec.max_total_runs, len(self.trials) + 2 * self.spec.concurrency)
        for index in range(len(self.trials), upto):
            self._make_ahead(index)

    def _make_ahead(self, index: int) -> None:
        if index not in self._premade:
            self._premade[index] = self._makes.submit(
                contextvars.copy_context().run, self._make_subflow, index)

    def close(self) -> None:
        """After the sweep's ending is recorded: tidy Prefect's view (flow runs made for
        trials that did not run end Cancelled; the trials' task runs get their state)."""
        self._starts.shutdown(wait=True)
        self._discard_premade()
        self._makes.shutdown(wait=True)
        self._view.shutdown(wait=True)

    def _discard_premade(self) -> None:
        """Flow runs made for trials the sweep did not run end Cancelled in Prefect."""
        from ..prefect_api import end_flow_run, end_task_run

        for future in [*self._premade.values(), *self._late]:
            made = future.result()
            if made:
                self._in_view(end_flow_run, made[0], True, "not needed: the sweep ended")
                self._in_view(end_task_run, made[1], "Canceled", "not needed")
        self._premade.clear()

    def _in_view(self, call: Callable[..., Any], *args: Any) -> None:
        """Update Prefect's view (artifacts, the trials' task runs) beside the loop."""
        def quietly() -> None:
            try:
                call(*args)
            except Exception:  # a view only: the sweep goes on without it
                pass
        self._view.submit(contextvars.copy_context().run, quietly)

    def _stop_all(self, reason: str) -> None:
        self._stop_deadline = time.time() + STOP_WAIT_SECONDS
        for trial in self.trials:
            if not trial.finished:
                trial.stopping = True
                cancel(self.store, self.exp, trial.run_id, reason)


def _staged_events(record: RunRecord) -> list[dict[str, Any]]:
    """What a run on this machine has logged so far, read from its stage before the runner
    syncs it (every ``sync_interval_seconds``): a policy then acts on the latest values."""
    local = record.local_files
    if record.finished or local is None or local.host != socket.gethostname():
        return []
    folder = Path(local.path) / "stage" / run_dir(record.experiment, record.run_id) / EVENTS
    try:
        return event_lines.parse(p.read_bytes() for p in sorted(folder.glob("*.jsonl")))
    except OSError:  # the run is just ending: its stage is being removed
        return []
