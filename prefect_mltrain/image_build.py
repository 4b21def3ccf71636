"""Building environments as Docker images (through the Docker SDK).

The image is the base image (or the user's Dockerfile) plus a virtualenv at
``/opt/mltrain/venv`` holding the environment's *lock* — the same pinned set a local
build uses — tagged ``mltrain-env:<build key>`` and skipped when that tag exists. The host's
CA bundle and package-index settings go into the build, because inside a container pip
reaches an index only with them (here, and behind corporate proxies).
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .environment_build import (
    BuildSpec,
    Steps,
    build_key,
    pip_options_args,
    resolve_lock,
)
from .errors import ComputeTargetUnavailableError, EnvironmentBuildError, RunCanceledError
from .pip_settings import pip_config

IMAGE_REPOSITORY = "mltrain-env"
VENV = "/opt/mltrain/venv"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass
class BuiltImage:
    tag: str
    cached: bool
    build_seconds: float
    lock: str

    def record(self) -> dict[str, Any]:
        return {"image": self.tag, "cached": self.cached,
                "build_seconds": round(self.build_seconds, 3), "lock": self.lock}


def docker_client(base_url: str | None = None, timeout: int = 60, tls: Any = None):
    """A connected Docker client, or ``ComputeTargetUnavailableError`` naming the engine."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, tls=tls, timeout=timeout) \
            if base_url else docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:
        where = base_url or "the default engine (DOCKER_HOST or /var/run/docker.sock)"
        raise ComputeTargetUnavailableError(
            f"cannot reach the Docker engine at {where}: {exc}. Start the engine (dockerd), "
            "or fix base_url (and the TLS settings) of the compute target, or DOCKER_HOST"
        ) from exc


def dockerfile(spec: BuildSpec, index_args: list[str]) -> str:
    """The Dockerfile of ``spec``: its base, then a venv holding its lock."""
    base = spec.base_dockerfile or f"FROM {spec.base_image}"
    pip = " ".join([*index_args, *pip_options_args(list(spec.pip_options))])
    return "\n".join([
        base.rstrip(),
        "COPY ca-certificates.crt /etc/ssl/certs/mltrain-ca.crt",
        "ENV PIP_CERT=/etc/ssl/certs/mltrain-ca.crt SSL_CERT_FILE=/etc/ssl/certs/mltrain-ca.crt"
        " REQUESTS_CA_BUNDLE=/etc/ssl/certs/mltrain-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"RUN python3 -m venv {VENV}",
        "COPY requirements.lock /opt/mltrain/requirements.lock",
        f"RUN if [ -s /opt/mltrain/requirements.lock ]; then {VENV}/bin/pip install "
        f"--no-cache-dir {pip} -r /opt/mltrain/requirements.lock; fi".replace("  ", " "),
        f"ENV PATH={VENV}/bin:$PATH VIRTUAL_ENV={VENV}",
        "",
    ])


def _image_index_args() -> list[str]:
    """The host's index URLs that mean something inside a container (not local paths)."""
    config, args = pip_config(), []
    if config.get("index-url", "").startswith("http"):
        args += ["--index-url", config["index-url"]]
    args += [part for url in config.get("extra-index-url", "").split() if url.startswith("http")
             for part in ("--extra-index-url", url)]
    return args


def build_image(spec: BuildSpec, client=None, on_line: Callable[[str], None] | None = None,
                stop: Callable[[], bool] | None = None) -> BuiltImage:
    """Build ``spec`` into an image (or find it built); build output goes to ``on_line``.
    Once ``stop()`` is true the build is abandoned (``RunCanceledError``): closing its
    stream makes the engine stop it."""
    if not (spec.base_image or spec.base_dockerfile):
        raise EnvironmentBuildError(
            f"environment {spec.name!r} has no docker.base_image or docker.base_dockerfile: "
            "set one to build an image"
        )
    say = on_line or (lambda line: None)
    started = time.monotonic()
    lock = resolve_lock(spec, Steps(on_line, stop))
    text = dockerfile(spec, _image_index_args())
    key = build_key(lock, f"image {text} {sorted(spec.build_args.items())}")
    tag = f"{IMAGE_REPOSITORY}:{key[:20]}"
    client = client or docker_client()
    import docker.errors

    try:
        client.images.get(tag)
        say(f"image {tag}: cache hit")
        return BuiltImage(tag, True, time.monotonic() - started, lock)
    except docker.errors.ImageNotFound:
        pass
    say(f"image {tag}: building from {spec.base_image or 'the given Dockerfile'}")
    context = _context(text, lock)
    tail: list[str] = []
    try:
        for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                      forcerm=True, decode=True, network_mode="host",
                                      buildargs=spec.build_args or None,
                                      labels={"mltrain.spec_hash": spec.hash}):
            if "error" in chunk:
                raise EnvironmentBuildError(
                    f"image build of environment {spec.name!r} failed: {chunk['error'].strip()}"
                    + ("\n" + "\n".join(tail[-15:]) if tail else ""))
            for line in (chunk.get("stream") or "").splitlines():
                if line.strip():
                    tail.append(line)
                    say(line)
            if stop and stop():
                raise RunCanceledError(f"image build of {spec.name!r}: stopped, the run was "
                                       "canceled")
    except docker.errors.APIError as exc:
        raise EnvironmentBuildError(f"image build of {spec.name!r} failed: {exc}") from exc
    elapsed = time.monotonic() - started
    say(f"image {tag}: built in {elapsed:.1f} s")
    return BuiltImage(tag, False, elapsed, lock)


def _context(dockerfile_text: str, lock: str) -> io.BytesIO:
    """An in-memory build context: Dockerfile, the lock, and the host's CA bundle."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ca = Path(CA_BUNDLE).read_bytes() if Path(CA_BUNDLE).exists() else b""
        for name, data in (("Dockerfile", dockerfile_text.encode()),
                           ("requirements.lock", lock.encode()),
                           ("ca-certificates.crt", ca)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer

