"""The Docker target: the script runs in a container built from its environment."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from ..distributed import free_port, job_env, plan_ranks
from ..errors import ComputeTargetUnavailableError
from .base import ComputeTarget, Job, LaunchSpec
from .gang import GangJob, mpiexec_with_proxies
from .local import LOOPBACK

SRC, STAGE, LIB = "/mltrain/src", "/mltrain/stage", "/opt/mltrain/lib"
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

    @property
    def runs_in_containers(self) -> bool:
        return True

    def default_image(self) -> str:
        return self.image

    def client(self):
        import docker

        tls = None
        if self.tls_verify or self.tls_client_cert:
            tls = docker.tls.TLSConfig(
                client_cert=(self.tls_client_cert, self.tls_client_key)
                if self.tls_client_cert else None,
                ca_cert=self.tls_ca_cert, verify=self.tls_ca_cert or self.tls_verify)
        where = self.base_url or "the default engine (DOCKER_HOST or /var/run/docker.sock)"
        try:
            client = docker.DockerClient(base_url=self.base_url, tls=tls, timeout=60) \
                if self.base_url else docker.from_env(timeout=60)
            client.ping()
        except Exception as exc:
            raise ComputeTargetUnavailableError(
                f"cannot reach the Docker engine at {where}: {exc}. Start the engine, or fix "
                "base_url (and the TLS settings) of this compute target") from exc
        if self.registry_url and self.registry_username and self.registry_password:
            client.login(self.registry_username, self.registry_password.get_secret_value(),
                         registry=self.registry_url)
        return client

    def check(self) -> None:
        self.client()

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

    def launch(self, spec: LaunchSpec) -> Job:
        client = self.client()
        image = spec.image or self.image
        self.ensure_image(client, image)
        plan = plan_ranks(spec.distributed)
        if plan is None:
            return self._start(client, image, spec, spec.argv, {}, "")
        if self.network_mode != "host":
            raise ComputeTargetUnavailableError(
                "distributed jobs on Docker need network_mode='host' on this compute target "
                "(the nodes' containers meet on the engine host's addresses)")
        nodes = range(plan.node_count)
        if plan.kind == "mpi":  # proxies of an mpiexec on the runner, one container per node
            hosts = [f"127.0.0.{n + 2}" for n in nodes]
            mpiexec, commands = mpiexec_with_proxies(plan, spec.argv, hosts, spec.cwd, spec.env)
            # The nodes share the host's name but not its shared memory: MPI must use TCP.
            env = {**job_env(plan, LOOPBACK, free_port(), spec.run_id),
                   "MLTRAIN_RANK_ARGV": json.dumps(spec.argv), "MLTRAIN_RANK_CWD": SRC,
                   "MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}
            members: dict[str, Job] = {"mpiexec": mpiexec}
            for n, cmd in zip(nodes, commands, strict=True):
                members[f"node {n}"] = self._start(
                    client, image, spec, ["hydra_pmi_proxy", *cmd[1:]], env, f"-node{n}")
            return GangJob(lambda port: members, essential={"mpiexec"},
                           self_prefixed=frozenset({"mpiexec"}), retry_port=False)

        def start(port: int) -> dict[str, Job]:  # a node launcher per container
            tf = [f"{LOOPBACK}:{free_port()}" for _ in plan.slots] \
                if plan.kind == "tensorflow" else None
            node_argv = [spec.argv[0], "-m", "prefect_mltrain.node", "--", *spec.argv]
            return {f"node {n}": self._start(client, image, spec, node_argv, {"MLTRAIN_NODE": (
                json.dumps({"config": spec.distributed, "node": n, "master_addr": LOOPBACK,
                            "master_port": port, "run_id": spec.run_id, "tf": tf}))},
                f"-node{n}-{port}") for n in nodes}

        first_of_node = {s.node_rank for s in plan.slots if s.rank in plan.essential}
        return GangJob(start, essential={f"node {n}" for n in first_of_node},
                       self_prefixed=frozenset(f"node {n}" for n in nodes))

    def _start(self, client, image: str, spec: LaunchSpec, argv: list[str],
               extra_env: dict[str, str], suffix: str) -> DockerJob:
        """One container of the run, with its folders mounted and its run label."""
        import docker

        env = {**spec.portable_env, **extra_env, "MLTRAIN_CONTEXT_DIR": STAGE,
               "PYTHONPATH": LIB}
        volumes = {spec.cwd: {"bind": SRC, "mode": "rw"},
                   spec.stage_dir: {"bind": STAGE, "mode": "rw"},
                   str(Path(__file__).resolve().parents[1]): {
                       "bind": f"{LIB}/prefect_mltrain", "mode": "ro"}}
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


class DockerJob:
    """A running container: its log stream, its exit code, and a reaper for its lifetime."""

    def __init__(self, container, base_url: str | None, grace: int):
        self.container, self.grace = container, grace
        read_fd, self._lifeline = os.pipe()
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "prefect_mltrain.compute.reaper", str(read_fd),
             base_url or "", container.id],
            pass_fds=(read_fd,), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(read_fd)
        os.set_inheritable(self._lifeline, False)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._exit: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._wait, daemon=True).start()

    def _read(self) -> None:
        partial = b""
        try:
            for chunk in self.container.logs(stream=True, follow=True):
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    self._lines.put(line.decode(errors="replace").rstrip("\r"))
        except Exception:  # the container went away under us
            pass
        if partial:
            self._lines.put(partial.decode(errors="replace"))
        self._lines.put(None)

    def _wait(self) -> None:
        try:
            self._exit = int(self.container.wait()["StatusCode"])
        except Exception:
            self._exit = 137  # removed while we waited: killed

    def read_lines(self, timeout: float) -> list[str]:
        out: list[str] = []
        try:
            line = self._lines.get(timeout=timeout)
            while True:
                if line is not None:
                    out.append(line)
                line = self._lines.get_nowait()
        except queue.Empty:
            return out

    def poll(self) -> int | None:
        return self._exit

    def finish_output(self, timeout: float = 5.0) -> list[str]:
        self._reader.join(timeout)
        return self.read_lines(0)

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
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1


def container_exists_for(run_id: str, client=None) -> list[Any]:
    """Containers labelled with ``run_id`` (for checks and clean-up)."""
    import docker

    client = client or docker.from_env()
    return client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
