"""The Dask target: the ranks of a run on the workers of a Dask cluster, one rank per worker.

A node is a group of ``per_node`` workers on one host (``placement``), found before any
rank starts; a cluster made for the run that cannot hold the job fails in Preparing. The
snapshot travels to the workers with the tasks. The runner resolves the environment's
pinned packages once; each worker finds or builds that environment itself. MPI jobs keep a
real ``mpiexec`` on the runner and start its per-node proxies as tasks on the workers, so
the ranks form their own MPI world (also on a cluster started with ``dask-mpi``, whose
world they never join).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from ..data.staging import SCRATCH_OUT
from ..distributed import RankPlan, Slot, job_env, plan_ranks, rank_env
from ..environment import Environment
from ..environment_build import Steps, resolve_lock
from ..errors import ComputeTargetUnavailableError, RunCanceledError
from .base import ComputeTarget, LaunchSpec, OnLine, Prepared, Stop, never
from .dask_worker import WORKER_PYTHON, RankTask, free_port_here, run_rank
from .gang import GangJob, mpi_gang
from .jobs import Job, unzip, zip_files
from .placement import Placement, capacity, fit, place, survey

BEAT_SECONDS = 5.0
# A cluster made for a run and found big enough in Preparing, with its client: the run's
# launch (in the same runner process) takes it, so the cluster starts once. One the run
# never launches on is closed when the runner exits (by distributed).
_CHECKED: dict[str, tuple[contextlib.ExitStack, Any]] = {}


class DaskCompute(ComputeTarget):
    """A Dask cluster: an existing scheduler, or a cluster created for the run.

    Example:
        ```python
        DaskCompute(address="tcp://10.0.0.5:8786")
        DaskCompute(cluster_class="distributed.LocalCluster", cluster_kwargs={"n_workers": 4})
        ```
    Workers need ``prefect-mltrain`` installed (they run its rank task).
    """

    _block_type_name = "Dask Compute"
    _block_type_slug = "mltrain-dask-compute"
    _description = "Runs prefect-mltrain training ranks on the workers of a Dask cluster."
    _stages_data_on_runner: ClassVar[bool] = False  # each worker makes the inputs local

    address: str | None = Field(None, description="Scheduler address, e.g. tcp://host:8786.")
    scheduler_file: str | None = Field(None, description="Scheduler file (dask-mpi, jobqueue).")
    cluster_class: str | None = Field(
        None, description="Cluster created for each run and closed after it, e.g. "
        "'distributed.LocalCluster' or 'dask_jobqueue.SLURMCluster'.")
    cluster_kwargs: dict[str, Any] = Field(default_factory=dict,
                                           description="Arguments of cluster_class.")
    connect_timeout_seconds: float = Field(30.0, description="How long to try the scheduler.")
    worker_wait_seconds: float = Field(
        30.0, description="How long to wait for enough workers before failing the run (for "
        "a cluster made for the run: for the workers it asked for).")
    one_node_per_host: bool = Field(
        False, description="Give every node of a job a host of its own, and fail when the "
        "cluster has fewer hosts than nodes. By default nodes share a host when they must.")
    outputs_of_every_rank: bool = Field(
        False, description="Collect every rank's ./outputs under outputs/rank_N/ (rank 0's "
        "are always collected into outputs/).")
    runner_silence_seconds: float = Field(
        60.0, gt=0, description="Ranks stop themselves when the run's runner has not been "
        "heard from for this long (one that hangs while connected; a runner that dies is "
        "noticed within a second, when the scheduler drops its tasks).")

    def describe(self) -> str:
        return self.address or self.scheduler_file or self.cluster_class or "Dask"

    def connect(self, resources: contextlib.ExitStack, stop: Stop = never):
        """A client (and the cluster made for it, if any), closed with ``resources``."""
        from distributed import Client

        if not (self.cluster_class or self.scheduler_file or self.address):
            raise ComputeTargetUnavailableError(
                "DaskCompute needs address=, scheduler_file= or cluster_class=")
        timeout = self.connect_timeout_seconds
        if not self.cluster_class:
            self._answers(stop)
        try:
            if self.cluster_class:
                module, _, name = self.cluster_class.rpartition(".")
                cluster = resources.enter_context(
                    getattr(importlib.import_module(module), name)(**self.cluster_kwargs))
                return resources.enter_context(Client(cluster, timeout=timeout))
            if self.scheduler_file:
                return resources.enter_context(
                    Client(scheduler_file=self.scheduler_file, timeout=timeout))
            return resources.enter_context(Client(self.address, timeout=timeout))
        except Exception as exc:
            raise ComputeTargetUnavailableError(
                f"cannot reach the Dask cluster {self.describe()}: {exc}. Start the scheduler "
                "or fix address/scheduler_file/cluster_class of this compute target") from exc

    def _answers(self, stop: Stop) -> None:
        """The scheduler completes Dask's handshake within ``connect_timeout_seconds``.
        (A ``Client`` bounds the TCP connect by its timeout, not the handshake: an address
        that accepts and never answers would hold it until the OS gives up, an hour.)"""
        import asyncio

        from distributed.comm import connect

        if self.address:
            address = self.address
        elif Path(self.scheduler_file).exists():
            address = json.loads(Path(self.scheduler_file).read_text())["address"]
        else:
            return  # no scheduler file yet: the client waits for it, within its timeout

        async def handshake() -> None:
            task = asyncio.ensure_future(connect(address, timeout=self.connect_timeout_seconds))
            deadline = time.monotonic() + self.connect_timeout_seconds
            try:
                while not task.done():
                    if stop():
                        raise RunCanceledError(f"connecting to {self.describe()}: the run "
                                               "was canceled")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no answer within {self.connect_timeout_seconds} s")
                    await asyncio.wait({task}, timeout=0.25)
                await task.result().close()
            finally:
                task.cancel()

        try:
            asyncio.run(handshake())
        except RunCanceledError:
            raise
        except Exception as exc:
            raise ComputeTargetUnavailableError(
                f"cannot reach the Dask cluster {self.describe()}: {exc}. Start the scheduler "
                "or fix address/scheduler_file/cluster_class of this compute target") from exc

    def check(self, stop: Stop = never, distributed: Any = None) -> None:
        """The scheduler answers; a cluster made for the run is importable and, for a
        distributed job, started to see that it can hold it, then kept for the launch (an
        existing cluster may still gain workers: that is judged at launch)."""
        if self.cluster_class:
            module = self.cluster_class.rpartition(".")[0]
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ComputeTargetUnavailableError(
                    f"cluster_class {self.cluster_class!r} cannot be imported ({exc}): "
                    f"install {module.split('.')[0]} where runs start") from exc
            if distributed is None:
                return
        resources = contextlib.ExitStack()
        with resources:
            client = self.connect(resources, stop)
            if self.cluster_class:
                self._holds(client, plan_ranks(distributed), stop)
                stale = _CHECKED.pop(self._made_key(), None)
                _CHECKED[self._made_key()] = (resources.pop_all(), client)
                if stale:
                    stale[0].close()

    def _made_key(self) -> str:
        return json.dumps([self.cluster_class, self.cluster_kwargs], sort_keys=True,
                          default=str)

    def _holds(self, client, plan: RankPlan, stop: Stop) -> None:
        """The cluster made for the run can hold the job, once its workers have started."""
        self._started(client, stop)
        hosts = survey(client)
        if not fit(hosts, plan, self.one_node_per_host):
            raise ComputeTargetUnavailableError(
                f"the cluster made for the run ({self.cluster_class}) is too small: "
                f"{capacity(hosts, plan, self.one_node_per_host)}. Give it more "
                "workers (cluster_kwargs), or lower node_count / process counts")

    def _started(self, client, stop: Stop) -> None:
        """A cluster made for the run has the workers it asked for, or as many as joined
        within ``worker_wait_seconds``: it will get no others."""
        want = len(getattr(client.cluster, "requested", ()) or ())
        deadline = time.monotonic() + self.worker_wait_seconds
        while (len(client.scheduler_info(n_workers=-1)["workers"]) < want
               and time.monotonic() < deadline):
            if stop():
                raise RunCanceledError(f"waiting for the workers of {self.describe()}: the "
                                       "run was canceled")
            time.sleep(0.25)

    def prepare(self, environment: Environment | None, on_line: OnLine,
                stop: Stop = never) -> Prepared:
        """Nothing is built here: the packages are pinned once, and each worker finds or
        builds that environment for itself."""
        if environment and environment.docker.enabled:
            on_line("docker.enabled is ignored on Dask compute: each worker runs the script "
                    "in a virtualenv it builds; submit to a DockerCompute target to run it "
                    "in a container")
        spec = environment.build_spec() if environment and environment.needs_build else None
        lock = resolve_lock(spec, Steps(on_line, stop)) if spec else None
        return Prepared(WORKER_PYTHON, lock=lock, record={
            "name": environment.name if environment else "default", "where": "each worker",
            "spec_hash": spec.hash if spec else None, "lock": lock or ""})

    def launch(self, spec: LaunchSpec) -> Job:
        resources, client = _CHECKED.pop(self._made_key(), None) or (contextlib.ExitStack(),
                                                                      None)
        try:
            client = client or self.connect(resources, spec.stop)
            plan = plan_ranks(spec.distributed) or RankPlan("single", 1, 1, [Slot(0, 0, 0)])
            if self.cluster_class:
                self._started(client, spec.stop)
            placement = place(client, plan, where=self.describe(),
                              wait=0 if self.cluster_class else self.worker_wait_seconds,
                              one_node_per_host=self.one_node_per_host, stop=spec.stop)
            return DaskJob(client, resources, plan, placement, spec, self)
        except BaseException:
            resources.close()
            raise


class DaskMember:
    """One task on a worker, as a ``Job`` member of the gang."""

    def __init__(self, job: DaskJob, task: RankTask, worker: str):
        self.job, self.task = job, task
        self.lines: queue.Queue[str] = queue.Queue()
        self.received = 0
        job.members[task.label] = self
        self.future = job.client.submit(run_rank, task, job.snapshot, workers=[worker],
                                         allow_other_workers=False, pure=False,
                                         key=f"mltrain-{task.run_id}-{task.label}-{job.attempt}"
                                         .replace(" ", "-"))

    def read_lines(self, timeout: float) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def poll(self) -> int | None:
        if not self.future.done():
            return None
        try:
            return self.future.result()["exit_code"]
        except Exception as exc:
            self.lines.put(f"prefect-mltrain: the rank task failed on its worker: {exc}")
            return 1

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        try:
            expected = self.future.result(timeout=timeout)["lines"]
        except Exception:
            expected = 0
        while self.received < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.read_lines(0)

    def terminate(self, grace: float = 10.0) -> None:
        self.job.stop()
        try:
            self.future.result(timeout=grace + 20)
        except Exception:
            self.future.cancel()

    def close(self) -> None:
        pass


class DaskJob:
    """The run's ranks on the cluster: a gang of rank tasks (or mpiexec + node proxies)."""

    def __init__(self, client, resources: contextlib.ExitStack, plan: RankPlan,
                 placement: Placement, spec: LaunchSpec, target: DaskCompute):
        from distributed import Event, Variable

        self.client, self.resources, self.plan, self.spec = client, resources, plan, spec
        self.target, self.attempt = target, 0
        self.members: dict[str, DaskMember] = {}
        workers = placement.workers
        self._notes = [f"[prefect-mltrain] {plan.describe()} on {client.scheduler.address}: "
                       + ", ".join(f"rank {s.rank} on {w}" for s, w in zip(plan.slots, workers,
                                                                         strict=True))]
        self._notes += [f"[prefect-mltrain] nodes {', '.join(map(str, nodes))} share host "
                        f"{host}: the cluster has fewer hosts than the job has nodes (each "
                        "node's LOCAL_RANK still starts at 0)"
                        for host, nodes in placement.shared().items()]
        self._stop_event = Event(f"mltrain-stop-{spec.run_id}", client=client)
        self._stop_event.clear()
        self._alive = Variable(f"mltrain-alive-{spec.run_id}", client=client)
        self._alive.set(time.time())
        self._beating = threading.Event()
        threading.Thread(target=self._beat, daemon=True).start()
        client.subscribe_topic(f"mltrain-{spec.run_id}", self._on_event)
        tree = Path(spec.cwd)  # the restored snapshot: its links stay inside it
        source = zip_files((p, p.relative_to(tree).as_posix())
                           for p in sorted(tree.rglob("*")) if p.is_file())
        self.snapshot = client.scatter(source, broadcast=True, workers=sorted(set(workers)))
        self.master = placement.hosts[0]  # rank 0's host
        self.workers, self.hosts = workers, placement.hosts
        env = dict(spec.run_env)
        if plan.kind == "mpi":
            self.gang = self._start_mpi(env)
        else:  # one process needs no rendezvous port, and retries none
            single = plan.kind == "single"
            self.gang = GangJob(lambda port: self._start_ranks(env, port),
                                essential={f"rank {r}" for r in plan.essential},
                                port=1 if single else self._port_on(workers[0]),
                                retry_port=not single,
                                new_port=lambda: self._port_on(workers[0]))
        self.pgid = None

    # -- starting ----------------------------------------------------------------------------

    def _port_on(self, worker: str) -> int:
        return self.client.submit(free_port_here, workers=[worker], pure=False).result(60)[1]

    def _task(self, label: str, argv: list[str], env: dict[str, str]) -> RankTask:
        first = label.endswith(" 0")  # rank 0, or the node holding it
        collect = ["outputs", "logs"] if first or self.target.outputs_of_every_rank else []
        environment = self.spec.config.environment
        build = environment.build_spec() if environment else None
        return RankTask(self.spec.run_id, label, argv, env, build, self.spec.prepared.lock,
                        collect=collect, silence=self.target.runner_silence_seconds,
                        data=self.spec.data)

    def _start_ranks(self, env: dict[str, str], port: int) -> dict[str, Job]:
        self.attempt += 1
        self.members = {}
        self._stop_event.clear()
        tf = None
        for _ in range(3 if self.plan.kind == "tensorflow" else 0):  # tasks may share a host:
            tf = [f"{h}:{p}" for h, p in self.client.gather(  # their ports must differ
                [self.client.submit(free_port_here, workers=[w], pure=False)
                 for w in self.workers])]
            if len(set(tf)) == len(tf):
                break
        for slot, worker in zip(self.plan.slots, self.workers, strict=True):
            rank_vars = {} if self.plan.kind == "single" else rank_env(
                self.plan, slot, master_addr=self.master, master_port=port,
                run_id=self.spec.run_id, tf_addresses=tf)
            DaskMember(self, self._task(f"rank {slot.rank}", self.spec.argv,
                                        {**env, **rank_vars}), worker)
        return dict(self.members)

    def _start_mpi(self, env: dict[str, str]) -> GangJob:
        """mpiexec here with the manual launcher; its proxies as worker tasks, one per host
        (nodes sharing a host are one MPI host: their ranks are one proxy's)."""
        firsts = [n for n, h in enumerate(self.hosts) if n == 0 or h != self.hosts[n - 1]]
        proxies = [self.workers[n * self.plan.per_node] for n in firsts]
        node_env = {**env, **job_env(self.plan, self.master, self._port_on(proxies[0]),
                                     self.spec.run_id),
                    "MLTRAIN_RANK_ARGV": json.dumps(self.spec.argv)}
        self.attempt += 1
        return mpi_gang(self.plan, self.spec.argv, self.hosts, self.spec.cwd, self.spec.env,
                        lambda n, proxy: DaskMember(self, self._task(f"node {firsts[n]}",
                                                                     proxy, node_env),
                                                    proxies[n]))

    # -- running ------------------------------------------------------------------------------

    def _on_event(self, event) -> None:
        msg = event[1]
        member = self.members.get(msg["label"])
        if member is None:
            return
        for line in msg["lines"]:
            member.lines.put(line)
        member.received += len(msg["lines"])
        if "files" in msg:  # what the rank changed lately: mirrored while it runs
            self._unpack(msg["label"], msg["files"])

    def _beat(self) -> None:
        while not self._beating.wait(BEAT_SECONDS):
            try:
                self._alive.set(time.time())
            except Exception:
                return

    def stop(self) -> None:
        try:
            self._stop_event.set()
        except Exception:
            pass

    def read_lines(self, timeout: float) -> list[str]:
        notes, self._notes = self._notes, []
        return notes + self.gang.read_lines(0 if notes else timeout)

    def poll(self) -> int | None:
        return self.gang.poll()

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        return self.gang.finish_output(timeout)

    def terminate(self, grace: float = 10.0) -> None:
        if self.client is None:
            return
        self.stop()
        self.gang.terminate(grace)
        self.close()

    def close(self) -> None:
        """Bring the ranks' files home, then let go of the cluster (closing one we made)."""
        if self.client is None:
            return
        self.stop()
        self._beating.set()
        for member in self.members.values():
            try:
                result = member.future.result(timeout=30)
            except Exception:
                continue
            self._unpack(member.task.label, result["files"])
        self.gang.close()
        self.client.unsubscribe_topic(f"mltrain-{self.spec.run_id}")
        self.resources.close()
        self.client = None

    def _unpack(self, label: str, files: bytes) -> None:
        """Rank 0's outputs and logs (its node's, for MPI) into the run's folders, other
        ranks' under ``rank_N/`` (``node_N/``); every rank's stage into the run's stage.
        Every rank's data outputs merge into one folder per output, which the runner
        uploads, as if the ranks had written to one mounted destination; where two ranks
        wrote the same file, rank 0's copy is kept, else the first that arrived."""
        cwd, stage = Path(self.spec.cwd), Path(self.spec.stage_dir)
        first = label.endswith(" 0")

        def destination(name: str) -> Path | None:
            top, _, rest = name.partition("/")
            if top == "stage":
                return stage / rest
            if top == SCRATCH_OUT:
                path = cwd.parent / SCRATCH_OUT / rest
                return path if first or not path.exists() else None
            if first:
                return cwd / top / rest
            return cwd / top / label.replace(" ", "_") / rest

        unzip(files, destination)
