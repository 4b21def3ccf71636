"""l. Throughput: N no-op runs (200; 40 with ``--quick``) submitted back to back against one
embedded Prefect server, from one process (this one) and from 4 processes at once (N/4
each), every submitter waiting until all its runs have ended: runs per minute, the queueing
each run saw (its record's created_at → Running), and who used the CPU meanwhile — the
server, the warm runner and its forked runners with their scripts, the submitters, the
rest of the machine — to say what saturates first. One rep of each variant (N runs is long
enough to average over).

As a script (``python bench_throughput.py --child WS PROJ N EXPERIMENT DEADLINE``) it is one
of the 4 submitting processes: it prints its batch's JSON as its last line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    PHASES,
    SUBMIT_TO_RUNNING,
    base_env,
    check,
    ensure_server,
    first_submit,
    fmt,
    fresh_server_if_alone,
    log,
    log_rep,
    make_noop_project,
    phases_of,
    scratch,
    start_server,
    stop_server,
    submit_and_wait,
    tail,
    try_rep,
    wait_for_warm_runner,
    warm_runner_socket,
)

TITLE = "Throughput"
N_FULL, N_QUICK = 200, 40
PROCESSES = 4
DEADLINE_SECONDS = 1200.0  # one variant: its submits and every run's end
CHILD_GRACE_SECONDS = 120.0  # a submitting process's timeout beyond the deadline
POLL_SECONDS = 0.5  # how often a submitter looks at its oldest run that has not ended
SAMPLE_SECONDS = 0.5  # the CPU sampler's period
WINDOW_SECONDS = 5.0  # the busiest stretch of the server / the machine is measured over this
BASELINE_SECONDS = 5.0  # the machine's load before a variant (other work on the machine)
SETTLE_SECONDS = 180.0  # how long to wait for the last forked runners to exit
TERMINAL = ("Completed", "Failed", "Canceled")
RUNNING_TO_ENDED = "Running→ended (run record)"
SATURATED = 0.85  # a share of the CPU from which it counts as the bottleneck
VARIANTS = {"one_process": "1 process", "four_processes": f"{PROCESSES} processes"}


# -- one batch of submits (here, or in each of the submitting processes) ---------------------


def submit_batch(ws_dir: str, proj: str, n: int, experiment: str,
                 deadline: float) -> dict[str, Any]:
    """Submit ``n`` no-op runs back to back, then wait (until ``deadline``, a ``time.time()``)
    for all of them to end, polling the oldest that has not; what it took. The CPU is this
    thread's (not the sampler's, when in the benchmark's process) plus the children waited
    for (git, by the submits)."""
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace

    exp = Experiment(Workspace(ws_dir), experiment)
    config = ScriptRunConfig(source_directory=proj, script="noop.py", compute_target="local")
    cpu0, t_first = _submitter_cpu(), time.time()  # the submits' CPU, not the imports'
    runs, error = [], None
    for _ in range(n):
        try:
            runs.append(exp.submit(config))
        except Exception as exc:  # recorded: the runs submitted so far are still waited for
            error = f"{type(exc).__name__}: {exc}"
            break
    t_last, cpu1 = time.time(), _submitter_cpu()
    pending = list(runs)
    while pending and time.time() < deadline:
        while pending and pending[0].get_status() in TERMINAL:
            pending.pop(0)
        if pending:
            time.sleep(POLL_SECONDS)
    for run in pending:  # past the deadline: not left running behind the next variant
        try:
            run.cancel()
        except Exception:  # noqa: BLE001 - the run is reported as not ended either way
            pass
    return {"run_ids": [r.id for r in runs], "t_first": t_first, "t_last": t_last,
            "t_noticed": time.time(), "submit_cpu": cpu1 - cpu0,
            "cpu": _submitter_cpu() - cpu0, "not_ended": [r.id for r in pending],
            "error": error}


def _submitter_cpu() -> float:
    t = os.times()
    return time.thread_time() + t.children_user + t.children_system


def _child_main(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE.parent))  # the checkout's prefect_mltrain, as run.py does
    ws_dir, proj, n, experiment, deadline = argv
    print(json.dumps(submit_batch(ws_dir, proj, int(n), experiment, float(deadline))))


# -- who uses the CPU ---------------------------------------------------------------------------


def _own(info: dict[str, Any]) -> float:
    """A process's CPU seconds: its own and those of the children it has reaped."""
    t = info.get("cpu_times")
    return 0.0 if t is None else t.user + t.system + t.children_user + t.children_system


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    import psutil

    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # in user
    return total - t.idle - getattr(t, "iowait", 0.0), total


class Sampler:
    """Every ``SAMPLE_SECONDS``, in a thread: the CPU seconds of the server's process tree, of
    the warm runner itself and of each runner it forked (with the run's script and whatever
    else the runner started), of every other process (kernel threads apart), and of the
    whole machine by kind (user, system, irq, steal, ...).

    A forked runner is reaped by the kernel (the warm runner ignores SIGCHLD), so its CPU
    never shows in the warm runner's children times: it is counted from the samples while it
    lives (each process's last sample; what it spends after that, under ``SAMPLE_SECONDS``
    at its exit, is missed: a lower bound). So is every other process's own CPU.
    """

    def __init__(self, server_pid: int, warm_pid: int | None) -> None:
        self.server_pid, self.warm_pid = server_pid, warm_pid
        self.forks: dict[tuple[int, float], float] = {}
        self.series: list[tuple[float, float, float, int]] = []  # t, server, machine, forks
        self.warm_first: float | None = None
        self.warm_last, self.peak_forks, self.peak_memory = 0.0, 0, 0
        self.thread_cpu = 0.0
        # Not ours: (pid, start) -> own CPU at the first sample / the last, by kind
        self.others: dict[str, tuple[dict[tuple[int, float], float], ...]] = {
            "other_processes": ({}, {}), "kernel_threads": ({}, {})}
        self.machine_first: Any = None
        self.machine_last: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        import psutil

        infos: dict[int, dict[str, Any]] = {}
        kids: dict[int, list[int]] = defaultdict(list)
        for proc in psutil.process_iter(["ppid", "cpu_times", "create_time"]):
            infos[proc.pid] = proc.info
            kids[proc.info["ppid"]].append(proc.pid)

        def tree(pid: int) -> float:
            return _own(infos.get(pid, {})) + sum(tree(kid) for kid in kids.get(pid, ()))

        def members(pid: int) -> set[int]:
            out, todo = set(), [pid]
            while todo:
                out.add(p := todo.pop())
                todo += kids.get(p, [])
            return out

        forks = kids.get(self.warm_pid, []) if self.warm_pid else []
        for pid in forks:
            key = (pid, infos[pid].get("create_time") or 0.0)
            self.forks[key] = max(self.forks.get(key, 0.0), tree(pid))
        t = infos.get(self.warm_pid or -1, {}).get("cpu_times")
        if t is not None:  # the warm runner itself: its accepts and forks
            self.warm_last = t.user + t.system
            self.warm_first = self.warm_last if self.warm_first is None else self.warm_first
        ours = members(self.server_pid) | members(os.getpid())
        if self.warm_pid:
            ours |= members(self.warm_pid)
        kernel = members(2)  # kthreadd and the kernel's threads
        first = not self.series
        for pid, info in infos.items():
            if pid in ours or info.get("cpu_times") is None:
                continue
            at_first, last = self.others["kernel_threads" if pid in kernel
                                        else "other_processes"]
            key, value = (pid, info.get("create_time") or 0.0), \
                info["cpu_times"].user + info["cpu_times"].system
            last[key] = value
            if first:
                at_first[key] = value
        self.peak_forks = max(self.peak_forks, len(forks))
        self.peak_memory = max(self.peak_memory, psutil.virtual_memory().used)
        self.machine_last = psutil.cpu_times()
        self.machine_first = self.machine_first or self.machine_last
        self.series.append((time.time(), tree(self.server_pid), _machine_busy()[0], len(forks)))

    def other_cpu(self) -> dict[str, float]:
        """CPU seconds of the processes that are not ours, between the first sample and the
        last."""
        return {kind: sum(v - at_first.get(k, 0.0) for k, v in last.items())
                for kind, (at_first, last) in self.others.items()}

    def machine_kinds(self) -> dict[str, float]:
        """The machine's CPU seconds by kind (all cores), between the first sample and the
        last."""
        a, b = self.machine_first, self.machine_last
        return {field: getattr(b, field) - getattr(a, field) for field in a._fields}

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()

    def _loop(self) -> None:
        cpu0 = time.thread_time()
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()
        self.thread_cpu = time.thread_time() - cpu0

    def rates(self, column: int, seconds: float = WINDOW_SECONDS) -> list[tuple[float, float]]:
        """(end, CPU-seconds per second) of ``column`` (1 server, 2 machine) over each stretch
        of at least ``seconds`` between two samples, the shortest ending at each sample."""
        out, j = [], 0
        for i, (t, *_) in enumerate(self.series):
            while j < i and t - self.series[j + 1][0] >= seconds:
                j += 1
            if t - self.series[j][0] >= seconds:
                out.append((t, (self.series[i][column] - self.series[j][column])
                            / (t - self.series[j][0])))
        return out

    def busiest(self, column: int) -> float | None:
        return max((rate for _, rate in self.rates(column)), default=None)

    def first_over(self, column: int, level: float, t0: float) -> float | None:
        """Seconds after ``t0`` at which a stretch's rate of ``column`` first reached
        ``level``."""
        return next((t - WINDOW_SECONDS - t0 for t, rate in self.rates(column)
                     if rate >= level), None)


def settle(sampler_or_pid: Sampler | int | None, timeout: float = SETTLE_SECONDS) -> float:
    """Wait (at most ``timeout``) until the warm runner has no forked runner left; seconds
    waited."""
    import psutil

    pid = sampler_or_pid.warm_pid if isinstance(sampler_or_pid, Sampler) else sampler_or_pid
    t0 = time.monotonic()
    while pid and time.monotonic() - t0 < timeout:
        try:
            if not psutil.Process(pid).children():
                break
        except psutil.Error:
            break
        time.sleep(0.2)
    return time.monotonic() - t0


def machine_baseline(seconds: float = BASELINE_SECONDS) -> float:
    """The machine's busy share (of all its cores) over ``seconds`` of doing nothing here."""
    b0, t0 = _machine_busy()
    time.sleep(seconds)
    b1, t1 = _machine_busy()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def reap_exited_children() -> None:
    """Wait for this process's children that have exited (the cold runner of the first
    submit, whose Popen nobody waits for): their CPU would otherwise land in the next
    variant's submitter CPU, when ``subprocess`` reaps them at its next start."""
    import psutil

    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, 0)
        except (psutil.Error, ChildProcessError):
            pass


REFUSAL = "Encountered retryable exception in request"  # the server's 503, when it logs them


def server_log() -> Path:
    """The embedded server's log (``server.py`` keeps it in ``$MLTRAIN_HOME/prefect``)."""
    return Path(os.environ["MLTRAIN_HOME"]) / "prefect" / "server.log"


def server_logging_refusals(tries: int = 3) -> tuple[float, int]:
    """Restart the embedded server so that it logs each request it refuses with a 503 (the
    SQLite database locked; Prefect's clients retry after 2, 4, 8, ... s): its start time
    and pid. Only the server gets the setting.

    The server must be the one listening on its port: ``server.py`` picks port 4200 when it
    is free and binds it later, and another server started meanwhile (a test's, another
    benchmark's) may take it; then ours dies, the other answers at our URL, and every run
    would go to it. Such a start is undone (its state file removed) and tried again."""
    for attempt in range(1, tries + 1):
        stop_server()
        os.environ["PREFECT_SERVER_LOG_RETRYABLE_ERRORS"] = "true"
        try:
            seconds = start_server()
        finally:
            os.environ.pop("PREFECT_SERVER_LOG_RETRYABLE_ERRORS", None)
        info = ensure_server()
        port = int(info["api_url"].rsplit(":", 1)[1].split("/", 1)[0])
        if listens(int(info["pid"]), port):
            return seconds, int(info["pid"])
        log(f"the embedded server (pid {info['pid']}) does not listen on {port}: another "
            f"process took the port; starting again ({attempt}/{tries})")
        (server_log().parent / "server.json").unlink(missing_ok=True)  # server.py's state
    raise RuntimeError(f"the embedded server did not get a port of its own in {tries} tries")


def listens(pid: int, port: int) -> bool:
    """Whether the process ``pid`` or one of its descendants listens on TCP ``port``."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for proc in procs:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in proc.net_connections(kind="tcp")):
                return True
        except psutil.Error:
            continue
    return False


def refusals_since(offset: int) -> dict[str, Any]:
    """The server's 503s logged after ``offset`` bytes of its log: how many, and how many
    per SQL statement that found the database locked (its first words)."""
    try:
        with open(server_log(), "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return {"count": None, "by_statement": {}}
    by_statement: dict[str, int] = defaultdict(int)
    first = None
    for line in text.splitlines():
        if REFUSAL in line:  # "HH:MM:SS.mmm | ERROR   | prefect.server - Encountered ..."
            first = line.split(" ", 1)[0]
            break
    for chunk in text.split(REFUSAL)[1:]:
        sql = chunk.split("[SQL: ", 1)[1].split("(", 1)[0].split("\n", 1)[0] \
            if "[SQL: " in chunk else "?"
        by_statement[" ".join(sql.split()[:4])] += 1
    return {"count": text.count(REFUSAL), "by_statement": dict(by_statement),
            "first_at": first}


def clock_to_epoch(clock: str | None, near: float) -> float | None:
    """A log line's local ``HH:MM:SS.mmm`` as a ``time.time()``, on the day of ``near``."""
    if not clock:
        return None
    try:
        t = dt.datetime.strptime(clock, "%H:%M:%S.%f").time()
    except ValueError:
        return None
    at = dt.datetime.combine(dt.datetime.fromtimestamp(near).date(), t).timestamp()
    return at + 86400 if at < near - 3600 else at


def log_size() -> int:
    try:
        return server_log().stat().st_size
    except OSError:
        return 0


def warm_runner_pid() -> int | None:
    path = warm_runner_socket()
    try:
        return int(path.with_suffix(".pid").read_text()) if path else None
    except (OSError, ValueError):
        return None


# -- one variant ----------------------------------------------------------------------------


def measure(go: Any, experiment: str, ws: Any, server_pid: int) -> dict[str, Any]:
    """One variant: ``go(deadline)`` submits and waits, returning its batches; around it, the
    CPU of everyone, then the run records."""
    import psutil

    from prefect_mltrain import Experiment, Run

    warm_pid = warm_runner_pid()
    settled_before = settle(warm_pid)
    reap_exited_children()
    baseline = machine_baseline()
    sampler = Sampler(server_pid, warm_pid)
    load_start = os.getloadavg()
    me = psutil.Process()
    own0 = me.cpu_times()
    log_offset = log_size()
    sampler.start()
    t0, submitters0 = time.time(), _submitter_cpu()
    batches = go(t0 + DEADLINE_SECONDS)
    t_noticed, submitters = time.time(), _submitter_cpu() - submitters0
    settle(sampler)  # the runners' last CPU (their exit) falls into the window
    sampler.stop()
    t_window = time.time() - t0
    own1 = me.cpu_times()
    load_end = os.getloadavg()

    server_now = int(ensure_server()["pid"])  # a runner may replace a server that is silent
    exp = Experiment(ws, experiment)
    ids = [run_id for b in batches for run_id in b.get("run_ids", [])]
    records = [Run(exp, run_id).get_details() for run_id in ids]
    statuses = [r["status"] for r in records]
    ended = [r["ended_at"] for r in records if r.get("ended_at")]
    wall = (max(ended) - t0) if ended else None
    runs = []  # per run: created, Running, ended, seconds after t0
    per_run_phases = []
    for r in records:
        ph = phases_of(r)
        times = {h["status"]: h["time"] for h in r.get("status_history") or []}
        if "Running" in times and r.get("ended_at"):
            ph[RUNNING_TO_ENDED] = r["ended_at"] - times["Running"]
        per_run_phases.append(ph)
        runs.append([round(x - t0, 3) if x else None
                     for x in (r.get("created_at"), times.get("Running"), r.get("ended_at"))])
    labels = [label for label, _, _ in PHASES] + [SUBMIT_TO_RUNNING, RUNNING_TO_ENDED]
    phases = {label: spread([p[label] for p in per_run_phases if label in p])
              for label in labels}

    first = min(b["t_first"] for b in batches if "t_first" in b) if batches else t0
    last_submit = max((b["t_last"] for b in batches if "t_last" in b), default=t0)
    per_process = [(b["t_last"] - b["t_first"]) / len(b["run_ids"])
                   for b in batches if b.get("run_ids")]
    submit_cpu = sum(b.get("submit_cpu", 0.0) for b in batches)
    server = sampler.series[-1][1] - sampler.series[0][1]
    machine = sampler.series[-1][2] - sampler.series[0][2]
    forks = sum(sampler.forks.values())
    warm = sampler.warm_last - (sampler.warm_first or sampler.warm_last)
    this_process = (own1.user + own1.system) - (own0.user + own0.system)
    cpu = {"server": server, "warm_runner": warm, "runners_and_scripts": forks,
           "submitters": submitters, "sampler": sampler.thread_cpu,
           "benchmark_process": this_process, "machine": machine}
    cpu.update(sampler.other_cpu())
    kinds = sampler.machine_kinds()
    cpu["irq_softirq_steal"] = sum(kinds.get(k, 0.0) for k in ("irq", "softirq", "steal"))
    cpu["unaccounted"] = machine - sum(cpu[k] for k in (
        "server", "warm_runner", "runners_and_scripts", "submitters", "sampler",
        "other_processes", "kernel_threads", "irq_softirq_steal"))
    ncpu = psutil.cpu_count() or os.cpu_count() or 1
    refused = refusals_since(log_offset)
    return {
        "runs": len(ids), "completed": statuses.count("Completed"),
        "failed": statuses.count("Failed"), "canceled": statuses.count("Canceled"),
        "not_ended": sum(len(b.get("not_ended", [])) for b in batches),
        "errors": [b["error"] for b in batches if b.get("error")],
        "wall": wall, "runs_per_minute": len(ended) / wall * 60 if wall else None,
        "start_to_first_submit": first - t0,
        "submit_phase": last_submit - t0,
        "submit_seconds_per_run": statistics.mean(per_process) if per_process else None,
        "submit_cpu_per_run": submit_cpu / len(ids) if ids else None,
        "last_ended_to_noticed": t_noticed - t0 - wall if wall else None,
        "cpu_window": t_window, "cpu": cpu, "ncpu": ncpu, "machine_cpu_kinds": kinds,
        "cpu_share": {key: value / t_window for key, value in cpu.items()},  # of one core
        "machine_share": machine / t_window / ncpu,
        "server_busiest_5s": sampler.busiest(1), "machine_busiest_5s": (
            (sampler.busiest(2) or 0.0) / ncpu),
        "baseline_machine_share": baseline, "settled_before": settled_before,
        "peak_live_runners": sampler.peak_forks, "forked_runners_seen": len(sampler.forks),
        "peak_memory_used_mb": sampler.peak_memory / 2**20,
        "peak_in_flight": peak_in_flight(runs),
        "loadavg_start": load_start, "loadavg_end": load_end,
        "server_replaced": server_now != server_pid,
        "server_503": refused,
        "onsets": {  # seconds after the start: the stretch that first reached SATURATED
            "machine_cpu": sampler.first_over(2, SATURATED * ncpu, t0),
            "server_core": sampler.first_over(1, SATURATED, t0),
            "server_503": (lambda at: at - t0 if at else None)(
                clock_to_epoch(refused.get("first_at"), t0))},
        "phases": phases, "batches": [{k: v for k, v in b.items() if k != "run_ids"}
                                      for b in batches],
        "per_run": runs,
    }


def spread(values: list[float]) -> dict[str, Any]:
    """Median, 90th percentile and max of ``values``."""
    if not values:
        return {"n": 0, "median": None, "p90": None, "max": None}
    p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
    return {"n": len(values), "median": statistics.median(values), "p90": p90,
            "max": max(values)}


def peak_in_flight(runs: list[list[float | None]]) -> int:
    """The most runs between their record's creation and their end at any moment."""
    events = sorted([(c, 1) for c, _, e in runs if c is not None and e is not None]
                    + [(e, -1) for c, _, e in runs if c is not None and e is not None])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


# -- the benchmark -------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    fresh_server_if_alone(args)
    from prefect_mltrain import Experiment, ScriptRunConfig, Workspace

    n = N_QUICK if args.quick else N_FULL
    root = scratch("throughput")
    proj = make_noop_project(root)
    ws_dir = root / "ws"
    ws = Workspace(str(ws_dir))
    server_start, server_pid = server_logging_refusals()
    config = ScriptRunConfig(source_directory=str(proj), script="noop.py",
                             compute_target="local")
    stamp = root / "stamp.txt"

    def one_warmup() -> dict[str, Any]:
        return submit_and_wait(Experiment(ws, "warmup"), config, stamp)

    # Untimed: the first submit runs in a cold runner, which starts the warm runner; then
    # one run through the warm runner.
    warmup = [first_submit(one_warmup)]
    warmup.append(try_rep(one_warmup))
    log_rep("warm-up", warmup[-1], f", warm runner listening: {wait_for_warm_runner(0)}")

    def in_process(deadline: float) -> list[dict[str, Any]]:
        return [submit_batch(str(ws_dir), str(proj), n, "tp1", deadline)]

    def processes(deadline: float) -> list[dict[str, Any]]:
        env = base_env()
        shares = [n // PROCESSES + (i < n % PROCESSES) for i in range(PROCESSES)]

        def one(k: int) -> dict[str, Any]:
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(ws_dir),
                    str(proj), str(k), "tp4", repr(deadline)]
            try:
                out = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True,
                                     timeout=deadline - time.time() + CHILD_GRACE_SECONDS)
            except subprocess.TimeoutExpired as exc:
                return {"run_ids": [], "error": f"timed out\n{tail(exc.stderr)}"}
            if out.returncode != 0:
                return {"run_ids": [], "error": f"exit {out.returncode}\n{tail(out.stderr)}"}
            return json.loads(out.stdout.splitlines()[-1])

        with ThreadPoolExecutor(PROCESSES) as pool:
            return list(pool.map(one, shares))

    numbers: dict[str, Any] = {"n": n, "processes": PROCESSES,
                               "server_start_seconds": server_start, "warmup": warmup}
    try:
        variants(numbers, n, ws, server_pid, in_process, processes)
    finally:
        stop_server()  # the next benchmark gets a server that does not log its refusals
    return numbers


def variants(numbers: dict[str, Any], n: int, ws: Any, server_pid: int, in_process: Any,
             processes: Any) -> None:
    for key, go, experiment in (("one_process", in_process, "tp1"),
                                ("four_processes", processes, "tp4")):
        log(f"throughput, {VARIANTS[key]}: {n} runs")
        rec = try_rep(lambda go=go, experiment=experiment: measure(go, experiment, ws,
                                                                   server_pid))
        rec.setdefault("ok", rec.get("completed") == rec.get("runs") == n)
        numbers[key] = rec
        if "wall" in rec:
            log(f"throughput, {VARIANTS[key]}: {rec['completed']}/{rec['runs']} Completed, "
                f"wall {fmt(rec['wall'])} s, {fmt(rec['runs_per_minute'], 1)} runs/min, "
                f"server {rec['cpu_share']['server']:.0%} of a core, machine "
                f"{rec['machine_share']:.0%}; {saturation(rec)}")
        else:
            log(f"throughput, {VARIANTS[key]} failed:\n{rec.get('error')}")


OURS = ("server", "warm_runner", "runners_and_scripts", "submitters", "sampler")


def saturation(v: dict[str, Any]) -> str:
    """What ran out first, from one variant's numbers: the machine's CPU, the server's one
    core, or the server's SQLite database (requests refused with 503 while it was locked,
    which Prefect's clients retry after 2, 4, 8, ... s)."""
    share, machine, ncpu = v["cpu_share"], v["machine_share"], v["ncpu"]
    server_peak = v.get("server_busiest_5s") or 0.0
    refused = (v.get("server_503") or {}).get("count") or 0
    ours = sum(share[k] for k in OURS) / ncpu
    consumers = {"the server": share["server"],
                 "the runners and their scripts": share["runners_and_scripts"]
                 + share["warm_runner"],
                 "the submitter" + ("s" if len(v["batches"]) > 1 else ""): share["submitters"]}
    top = max(consumers, key=lambda k: consumers[k])
    of_ours = consumers[top] / (sum(consumers.values()) or 1.0)
    found: list[tuple[float, str]] = []  # (onset, what)
    onsets = v.get("onsets") or {}

    def at(key: str) -> float:
        return onsets.get(key) if onsets.get(key) is not None else float("inf")

    if machine >= SATURATED or onsets.get("machine_cpu") is not None:
        found.append((at("machine_cpu"), f"the machine's {ncpu} cores: {machine:.0%} busy ({ours:.0%} ours, "
                     f"{machine - ours:.0%} other work and the kernel), the most of ours "
                     f"{top} ({of_ours:.0%})"))
    if server_peak >= SATURATED:
        found.append((at("server_core"), f"the server's one core ({share['server']:.0%} "
                      f"on average, {server_peak:.0%} at its busiest 5 s)"))
    if refused:
        found.append((at("server_503"), f"the server's SQLite database: {refused} requests "
                      "refused with 503 (database is locked; a runner retries a refused "
                      "write after 50 ms, doubling to 1 s)"))
    if not found:
        return (f"nothing (machine {machine:.0%} busy, {ours:.0%} ours; the server at most "
                f"{server_peak:.0%} of a core; no 503)")
    found.sort(key=lambda f: f[0])
    return "; then ".join(what + (f" (from {onset:.0f} s)" if onset != float("inf") else "")
                          for onset, what in found)


def checks(numbers: dict[str, Any]) -> list[dict[str, Any]]:
    n, out = numbers["n"], []
    for key, label in VARIANTS.items():
        v = numbers.get(key) or {}
        detail = (f"{v.get('completed')} Completed of {v.get('runs')} submitted (N={n}); "
                  f"{v.get('failed')} failed, {v.get('not_ended')} not ended"
                  + "".join(f"; {e.splitlines()[-1]}" for e in v.get("errors", []))
                  if "runs" in v else (v.get("error") or "no numbers").strip().splitlines()[-1])
        out.append(check(f"throughput {label}: every one of the {n} runs Completed",
                         v.get("completed") == v.get("runs") == n, detail))
        if "server_replaced" in v:
            out.append(check(f"throughput {label}: one server throughout",
                             not v["server_replaced"], "replaced during the variant"
                             if v["server_replaced"] else "the same server process"))
    return out


# -- the report ------------------------------------------------------------------------------


def _refusals(r: dict[str, Any]) -> str:
    if r.get("count") is None:
        return "the server's 503s not counted (no log)"
    by = ", ".join(f"{n} × `{sql}`" for sql, n in sorted(r["by_statement"].items(),
                                                         key=lambda kv: -kv[1]))
    return f"{r['count']} requests refused by the server with 503" + (f" ({by})" if by else "")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def render(numbers: dict[str, Any]) -> list[str]:
    n = numbers["n"]
    done = {key: numbers[key] for key in VARIANTS if "wall" in (numbers.get(key) or {})}
    lines = [f"### l. Throughput: {n} no-op runs against one server, submitted back to back "
             f"(one rep of each variant)", "",
             "| submitters | Completed | wall (s) | runs/min | submit (s/run, per process) | "
             "submitter CPU (ms/run) | submit→Running median / p90 (s) | Running→ended median "
             "(s) | server CPU (s) | server, % of a core: mean / busiest 5 s | machine CPU "
             "%: mean / busiest 5 s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, v in done.items():
        ph = v["phases"]
        lines.append(
            f"| {VARIANTS[key]} | {v['completed']}/{v['runs']} | {fmt(v['wall'], 1)} | "
            f"{fmt(v['runs_per_minute'], 1)} | {fmt(v['submit_seconds_per_run'], 3)} | "
            f"{fmt(v['submit_cpu_per_run'] * 1000, 0)} | "
            f"{fmt(ph[SUBMIT_TO_RUNNING]['median'], 1)} / {fmt(ph[SUBMIT_TO_RUNNING]['p90'], 1)}"
            f" | {fmt(ph[RUNNING_TO_ENDED]['median'], 1)} | {fmt(v['cpu']['server'], 1)} | "
            f"{_pct(v['cpu_share']['server'])} / {_pct(v['server_busiest_5s'])} | "
            f"{_pct(v['machine_share'])} / {_pct(v['machine_busiest_5s'])} |")
    for key in VARIANTS:
        if key not in done:
            err = (numbers.get(key) or {}).get("error") or "no numbers"
            lines.append(f"| {VARIANTS[key]} | failed: {err.strip().splitlines()[-1]} |"
                         + " |" * 10)
    if not done:
        return [*lines, ""]
    ncpu = next(iter(done.values()))["ncpu"]
    lines += ["", "Who used the CPU: CPU-seconds from the first submit until the last runner "
              "process exited (% of one core over that window; the machine's: of all its "
              f"{ncpu} cores). Processes are sampled every {SAMPLE_SECONDS:g} s: a forked "
              "runner's CPU after its last sample, and a process of others that lived between "
              "two samples, are missed (they fall into \"unaccounted\"):", "",
              "| submitters | window (s) | server | warm runner (accept + fork) | forked runners "
              "+ scripts | submitter(s) | sampler | other processes | kernel threads | irq + "
              "softirq + steal | unaccounted | machine | machine before (5 s idle here) |",
              "|---|" + "---:|" * 12]
    for key, v in done.items():
        c, s = v["cpu"], v["cpu_share"]
        cells = [f"{fmt(c[k], 1)} ({_pct(s[k])})" for k in
                 (*OURS, "other_processes", "kernel_threads", "irq_softirq_steal",
                  "unaccounted")]
        lines.append(f"| {VARIANTS[key]} | {fmt(v['cpu_window'], 1)} | {' | '.join(cells)} | "
                     f"{fmt(c['machine'], 1)} ({_pct(v['machine_share'])}) | "
                     f"{_pct(v['baseline_machine_share'])} |")
    lines += ["", "Where each run's time went (run record's status_history; median / p90, "
              "seconds):", "", "| phase | " + " | ".join(VARIANTS[k] for k in done) + " |",
              "|---|" + "---:|" * len(done)]
    for label in next(iter(done.values()))["phases"]:
        lines.append(f"| {label} | " + " | ".join(
            f"{fmt(v['phases'][label]['median'])} / {fmt(v['phases'][label]['p90'])}"
            for v in done.values()) + " |")
    lines.append("")
    for key, v in done.items():
        load = "/".join(f"{x:.1f}" for x in v["loadavg_end"])
        lines.append(f"- {VARIANTS[key]}: at most {v['peak_in_flight']} runs in flight and "
                     f"{v['peak_live_runners']} forked runners alive at once "
                     f"({v['forked_runners_seen']} seen), {v['peak_memory_used_mb']:.0f} MB "
                     f"memory used at the peak, load average {load} at the end; all submitted "
                     f"{fmt(v['submit_phase'], 1)} s after the start; "
                     f"{_refusals(v.get('server_503') or {})}. **Saturates first:** "
                     f"{saturation(v)}.")
    return [*lines, ""]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(sys.argv[2:])
    else:
        sys.exit("usage: bench_throughput.py --child WS PROJ N EXPERIMENT DEADLINE "
                 "(the benchmark runs from run.py --only throughput)")
