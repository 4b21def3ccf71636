"""The Docker target: the script runs in a container of an image built from its environment."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from ..data.staging import SCRATCH_IN, SCRATCH_OUT, data_env
from ..distributed import free_port, job_env, plan_ranks
from ..environment import Environment
from ..errors import ComputeTargetUnavailableError
from ..image_build import build_image, docker_client
from .base import ComputeTarget, LaunchSpec, OnLine, Prepared, Stop, never
from .gang import GangJob, mpi_gang
from .jobs import Job, Lifeline, LineQueue
from .local import LOOPBACK

SRC, STAGE, LIB = "/mltrain/src", "/mltrain/stage", "/opt/mltrain/lib"
DATA, DATA_OUT = "/mltrain/data", "/mltrain/data-out"  # a run's inputs and data outputs
RUN_LABEL = "mltrain.run_id"


class DockerCompute(ComputeTarget):
    """A Docker engine, reached through the Docker SDK.

    Example:
        ```python
        target = DockerCompute(base_url="unix:///var/run/docker.sock", gpus="all",
                               shm_size="2g", mem_limit="8g")
        target.save("gpu-box")
        ScriptRunConfig(..., compute_target=DockerCompute.load("gpu-box"))  # or "gpu-box"
        ```
    """

    _block_type_name = "Docker Compute"
    _block_type_slug = "mltrain-docker-compute"
    _description = "Runs prefect-mltrain training scripts in containers on a Docker engine."

    base_url: str | None = Field(
        None, description="Engine address, e.g. unix:///var/run/docker.sock or tcp://host:2376 "
        "(default: DOCKER_HOST or the local socket).")
    tls_verify: bool = Field(False, description="Verify the engine's TLS certificate.")
    tls_ca_cert: str | None = Field(None, description="CA certificate file for TLS.")
    tls_client_cert: str | None = Field(None, description="Client certificate file for TLS.")
    tls_client_key: str | None = Field(None, description="Client key file for TLS.")
    registry_url: str | None = Field(None, description="Registry to log in to for pulls.")
    registry_username: str | None = Field(None, description="Registry user name.")
    registry_password: SecretStr | None = Field(None, description="Registry password or token.")
    image: str = Field("python:3.11-slim", description="Image of runs whose environment "
                       "names none (the base of built environments too).")
    gpus: str | int | None = Field(None, description="'all', a count, or device ids "
                                   "('0,1'), requested as device requests.")
    shm_size: str | None = Field(None, description="Size of /dev/shm, e.g. '2g'.")
    mem_limit: str | None = Field(None, description="Memory limit, e.g. '8g'.")
    cpus: float | None = Field(None, description="CPU limit in cores.")
    network_mode: str | None = Field(None, description="Network mode, e.g. 'host'.")
    volumes: dict[str, str] = Field(default_factory=dict, description="Extra bind mounts, "
                                    "host path -> container path (':ro' for read-only).")
    user: str | None = Field(None, description="User in the container (default: the "
                             "runner's uid:gid, so outputs belong to you).")
    init: bool = Field(True, description="Run an init process that reaps orphans.")
    stop_grace_seconds: int = Field(10, description="Seconds between stop and kill.")

    def client(self):
        """A connected client of the target's engine (logged in to its registry)."""
        import docker

        tls = None
        if self.tls_verify or self.tls_client_cert:
            tls = docker.tls.TLSConfig(
                client_cert=(self.tls_client_cert, self.tls_client_key)
                if self.tls_client_cert else None,
                ca_cert=self.tls_ca_cert, verify=self.tls_ca_cert or self.tls_verify)
        client = docker_client(self.base_url, timeout=60, tls=tls)
        if self.registry_url and self.registry_username and self.registry_password:
            client.login(self.registry_username, self.registry_password.get_secret_value(),
                         registry=self.registry_url)
        return client

    def check(self, stop: Stop = never, distributed: Any = None) -> None:
        self.client()  # a container per node: any job fits

    def ensure_image(self, client, image: str) -> None:
        """The image is here, or pulled; else a clear error naming it."""
        import docker

        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            try:
                client.images.pull(image)
            except docker.errors.APIError as exc:
                raise ComputeTargetUnavailableError(
                    f"image {image!r} is not on the engine and cannot be pulled ({exc}): "
                    "build or load it there, or name a reachable registry") from exc

    def prepare(self, environment: Environment | None, on_line: OnLine,
                stop: Stop = never) -> Prepared:
        """The environment as an image on this engine: the environment's own
        ``docker.base_image`` (else this target's ``image``) plus its packages."""
        env = environment.model_copy(deep=True) if environment else Environment("default")
        if not (env.docker.base_image or env.docker.base_dockerfile):
            env.docker.base_image = self.image
        record = {"name": env.name}
        if not env.needs_build:  # user-managed: the image as it is
            on_line(f"image {env.docker.base_image}: used as it is (user-managed environment)")
            return Prepared("python3", image=env.docker.base_image,
                            record={**record, "image": env.docker.base_image, "cached": True})
        built = build_image(env.build_spec(), client=self.client(), on_line=on_line, stop=stop)
        return Prepared("python", image=built.tag,
                        record={**record, **built.record(), "interpreter": "python"})

    def launch(self, spec: LaunchSpec) -> Job:
        client = self.client()
        image = spec.prepared.image or self.image
        self.ensure_image(client, image)
        spec, binds = data_in_container(spec)
        plan = plan_ranks(spec.distributed)
        if plan is None:
            return self._start(client, image, spec, spec.argv, {}, "", binds)
        if self.network_mode != "host":
            raise ComputeTargetUnavailableError(
                "distributed jobs on Docker need network_mode='host' on this compute target "
                "(the nodes' containers meet on the engine host's addresses)")
        nodes = range(plan.node_count)
        if plan.kind == "mpi":  # proxies of an mpiexec on the runner, one container per node
            # A container has no SYS_PTRACE, so the ranks it holds cannot use cross-memory
            # attach; containers share the host's name but not its shared memory, so ranks
            # of several containers must use TCP.
            env = {**job_env(plan, LOOPBACK, free_port(), spec.run_id),
                   "MLTRAIN_RANK_ARGV": json.dumps(spec.argv), "MLTRAIN_RANK_CWD": SRC,
                   "MPIR_CVAR_CH4_CMA_ENABLE": "0"}
            if plan.node_count > 1:
                env.update({"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"})
            return mpi_gang(plan, spec.argv, [f"127.0.0.{n + 2}" for n in nodes], spec.cwd,
                            spec.env, lambda n, proxy: self._start(
                                client, image, spec, ["hydra_pmi_proxy", *proxy[1:]], env,
                                f"-node{n}", binds))

        def start(port: int) -> dict[str, Job]:  # a node launcher per container
            tf = [f"{LOOPBACK}:{free_port()}" for _ in plan.slots] \
                if plan.kind == "tensorflow" else None
            node_argv = [spec.argv[0], "-m", "prefect_mltrain.compute.node", "--", *spec.argv]
            return {f"node {n}": self._start(client, image, spec, node_argv, {"MLTRAIN_NODE": (
                json.dumps({"config": spec.distributed.model_dump(mode="json"), "node": n,
                            "master_addr": LOOPBACK,
                            "master_port": port, "run_id": spec.run_id, "tf": tf}))},
                f"-node{n}-{port}", binds) for n in nodes}

        first_of_node = {s.node_rank for s in plan.slots if s.rank in plan.essential}
        return GangJob(start, essential={f"node {n}" for n in first_of_node},
                       self_prefixed=frozenset(f"node {n}" for n in nodes))

    def _start(self, client, image: str, spec: LaunchSpec, argv: list[str],
               extra_env: dict[str, str], suffix: str,
               binds: dict[str, dict[str, str]] | None = None) -> DockerJob:
        """One container of the run, with its folders mounted and its run label."""
        import docker

        env = {**spec.run_env, **extra_env, "MLTRAIN_CONTEXT_DIR": STAGE,  # see jobs.script_env
               "PYTHONPATH": f"{LIB}/prefect_mltrain/bootstrap:{LIB}"}
        volumes = {spec.cwd: {"bind": SRC, "mode": "rw"},
                   spec.stage_dir: {"bind": STAGE, "mode": "rw"},
                   str(Path(__file__).resolve().parents[1]): {
                       "bind": f"{LIB}/prefect_mltrain", "mode": "ro"}}
        volumes.update(binds or {})
        for host, target in self.volumes.items():
            path, _, mode = target.partition(":")
            volumes[host] = {"bind": path, "mode": mode or "rw"}
        gpus = None
        if self.gpus not in (None, "", 0):
            ids = str(self.gpus).split(",") if str(self.gpus) not in ("all",) and \
                not str(self.gpus).isdigit() else None
            gpus = [docker.types.DeviceRequest(
                count=-1 if self.gpus == "all" else (None if ids else int(self.gpus)),
                device_ids=ids, capabilities=[["gpu"]])]
        container = client.containers.run(
            image, argv, detach=True, working_dir=SRC, environment=env, volumes=volumes,
            labels={RUN_LABEL: spec.run_id, "mltrain.experiment": spec.experiment},
            name=f"mltrain-{spec.run_id}{suffix}"[:120].replace("_", "-"),
            init=self.init, shm_size=self.shm_size, mem_limit=self.mem_limit,
            nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
            network_mode=self.network_mode, device_requests=gpus,
            user=self.user or f"{os.getuid()}:{os.getgid()}",
        )
        return DockerJob(container, self.base_url, self.stop_grace_seconds)


def data_in_container(spec: LaunchSpec) -> tuple[LaunchSpec, dict[str, dict[str, str]]]:
    """The run's data paths as its container sees them, and the binds that put them there:
    the inputs' folder read-only at ``DATA``, the outputs' at ``DATA_OUT``, a path_on_compute
    outside the run at its own path."""
    if not spec.data_paths:
        return spec, {}
    scratch, outputs = Path(spec.cwd).parent, {o.key for o in spec.data.outputs}
    roots = [(Path(spec.cwd), SRC, None), (scratch / SCRATCH_IN, DATA, "ro"),
             (scratch / SCRATCH_OUT, DATA_OUT, "rw")]
    binds, paths = {}, {}
    for key, host in spec.data_paths.items():
        for root, inside, mode in roots:
            if Path(host).is_relative_to(root):
                rel = Path(host).relative_to(root).as_posix()
                paths[key] = inside if rel == "." else f"{inside}/{rel}"
                if mode:
                    binds[str(root)] = {"bind": inside, "mode": mode}
                break
        else:
            paths[key] = host
            binds[host] = {"bind": host, "mode": "rw" if key in outputs else "ro"}
    env = {**spec.run_env, **data_env(spec.data, paths)}
    return dataclasses.replace(spec, data_paths=paths, run_env=env), binds


class DockerJob:
    """A running container: its log stream, its exit code, and a reaper for its lifetime."""

    def __init__(self, container, base_url: str | None, grace: int):
        self.container, self.grace = container, grace
        self._lifeline = Lifeline()
        subprocess.Popen(
            [sys.executable, "-m", "prefect_mltrain.compute.reaper", str(self._lifeline.fd),
             base_url or "", container.id],
            pass_fds=(self._lifeline.fd,), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._lifeline.handed_over()
        self._lines = LineQueue()
        self._lines.follow(self._log_chunks())
        self._exit: int | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _log_chunks(self):
        yield from self.container.logs(stream=True, follow=True)  # in the reader thread

    def _wait(self) -> None:
        try:
            self._exit = int(self.container.wait()["StatusCode"])
        except Exception:
            self._exit = 137  # removed while we waited: killed

    def read_lines(self, timeout: float) -> list[str]:
        if self._lines.ended.is_set():  # the log stream is over: wait for the exit code
            self._waiter.join(timeout)
            return self._lines.take()
        return self._lines.take(timeout)

    def poll(self) -> int | None:
        return self._exit

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        return self._lines.finish(timeout)

    def terminate(self, grace: float = 10.0) -> None:
        try:
            self.container.stop(timeout=int(min(grace, self.grace)))
        except Exception:
            pass
        self.close()

    def close(self) -> None:
        """Remove the container (its output is already read) and let the reaper go."""
        try:
            self.container.remove(force=True)
        except Exception:
            pass
        self._lifeline.cut()


def container_exists_for(run_id: str, client=None) -> list[Any]:
    """Containers labelled with ``run_id`` (for checks and clean-up); one removed while
    they are listed is left out, not an error."""
    import docker

    client = client or docker.from_env()
    return client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"},
                                  ignore_removed=True)
