"""Building environments on this machine: resolve once, build once per lock, reuse.

1. *Resolve*: the pinned set of the spec's requirements (the lock) is kept per spec hash, so
   an unpinned spec is frozen once and every later run gets the same versions. The lock is
   recorded with each run.
2. *Build*: one virtualenv per ``build_key`` (the lock on this interpreter) under
   ``$MLTRAIN_HOME/cache/envs``, made by ``uv venv`` + ``uv pip install`` under a file lock,
   so concurrent runs needing the same environment build it once. A finished build carries
   a marker; a cache hit is one stat.

The first build of a pip spec does both in one step, at the cost of a plain ``uv venv`` +
``uv pip install``: it installs the requirements as given into a relocatable virtualenv,
takes ``uv pip freeze`` as the lock and moves the folder to its ``build_key``. A lock wanted
before any build (a conda spec, an image, the ranks of a Dask job) comes from
``uv pip compile``.

uv ignores pip's configuration, so the host's is carried over (``pip_settings``). Without
uv, ``venv`` + ``pip`` do the same more slowly.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from .compute.process import GuardedProcess
from .errors import EnvironmentBuildError, RunCanceledError
from .files import atomic_write
from .home import cache_dir
from .pip_settings import index_args, index_env

COMPLETE_MARKER = ".mltrain-complete"
RESOLVE_TIMEOUT_SECONDS = 600
INSTALL_TIMEOUT_SECONDS = 3600


class BuildSpec(BaseModel):
    """What a build of an environment depends on, normalized and in a canonical order.

    ``Environment.build_spec()`` makes it; every builder (a virtualenv here, an image, the
    virtualenv a Dask worker makes for itself) takes it, so that equal declarations are
    one build wherever they are built.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("default", description="The environment's name, for messages only.")
    user_managed: bool = False
    interpreter: str | None = None  # of a user-managed environment
    python: str | None = None  # the version of a built one, e.g. "3.11"
    channels: tuple[str, ...] = ()
    conda: tuple[str, ...] = ()  # sorted, normalized
    pip: tuple[str, ...] = ()  # sorted, normalized
    pip_options: tuple[str, ...] = ()
    base_image: str | None = None
    base_dockerfile: str | None = None
    build_args: dict[str, str] = Field(default_factory=dict)

    @property
    def hash(self) -> str:
        """The declaration's identity: name and the order of packages left out."""
        content = self.model_dump(mode="json", exclude={"name"})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def needs_build(self) -> bool:
        return not self.user_managed


def build_key(lock: str, base: str) -> str:
    """The identity of one build: the pinned packages (``lock``) on a ``base`` (the
    interpreter and conda packages of a virtualenv, or an image's Dockerfile). It names the
    virtualenv folder and the image tag, so equal locks on equal bases share one build."""
    return hashlib.sha256(f"{base}\n{lock}".encode()).hexdigest()


@dataclass
class BuiltEnvironment:
    """A ready environment: its interpreter, and how it came to be."""

    interpreter: str
    spec_hash: str | None = None
    build_key: str | None = None
    lock: str = ""
    cached: bool = True
    build_seconds: float = 0.0
    miss_reason: str | None = None
    log: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"interpreter": self.interpreter, "spec_hash": self.spec_hash,
                "build_key": self.build_key, "cached": self.cached,
                "build_seconds": round(self.build_seconds, 3), "miss_reason": self.miss_reason,
                "lock": self.lock}


@dataclass
class Steps:
    """How a build runs its steps: each a guarded process group (it dies with us), its
    output lines to ``on_line``, stopped within a second once ``stop()`` says so."""

    on_line: Callable[[str], None] | None = None
    stop: Callable[[], bool] | None = None
    log: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.log.append(line)
        if self.on_line:
            self.on_line(line)

    def run(self, argv: list[str], *, timeout: float, what: str) -> None:
        env = {**os.environ, **index_env(), "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": ""}
        proc = GuardedProcess(argv, cwd=os.getcwd(), env=env)
        deadline, tail = time.monotonic() + timeout, []
        try:
            while proc.poll() is None:
                for line in proc.read_lines(0.25):
                    tail.append(line)
                    self.say(line)
                if self.stop and self.stop():
                    raise RunCanceledError(f"{what}: stopped, the run was canceled")
                if time.monotonic() > deadline:
                    raise EnvironmentBuildError(f"{what} took longer than {timeout:.0f} s")
            for line in proc.finish_output():
                tail.append(line)
                self.say(line)
        finally:
            proc.terminate(grace=2) if proc.poll() is None else proc.close()
        if proc.poll() != 0:
            detail = "\n".join(line for line in tail[-15:] if line.strip())
            raise EnvironmentBuildError(f"{what} failed:\n{detail}")


def build_environment(spec: BuildSpec | None, on_line: Callable[[str], None] | None = None,
                      lock: str | None = None,
                      stop: Callable[[], bool] | None = None) -> BuiltEnvironment:
    """Resolve and build ``spec`` (or find it built); ``on_line`` receives build output.

    ``lock`` (the pinned set resolved elsewhere, e.g. by the runner of a Dask job) skips
    the resolve, so every machine installs exactly the same versions. Once ``stop()`` is
    true (the run was canceled) the build stops within a second: ``RunCanceledError``.
    """
    if spec is None or not spec.needs_build:
        return BuiltEnvironment(interpreter=resolve_interpreter(spec))
    conda = _conda_binary(list(spec.conda)) if spec.conda else None
    steps = Steps(on_line, stop)
    say, log = steps.say, steps.log
    started = time.monotonic()
    base_python = _base_python(spec.python)
    base = f"venv {_python_identity(base_python)} "
    if lock is None and not conda and spec.pip and _uv_binary() and not _frozen(spec).exists():
        return _build_unresolved(spec, base_python, base, steps, started)
    lock = resolve_lock(spec, steps) if lock is None else lock
    key = build_key(lock, base + (" ".join([*spec.channels, *spec.conda]) if conda else ""))
    venv = cache_dir("envs") / key[:24]

    def result(cached: bool, reason: str | None = None) -> BuiltEnvironment:
        return BuiltEnvironment(str(venv / "bin" / "python"), spec.hash, key, lock, cached,
                                time.monotonic() - started, reason, log)

    if (venv / COMPLETE_MARKER).exists():
        say(f"environment {spec.name}: cache hit ({key[:12]})")
        return result(True)
    with FileLock(f"{venv}.lock"):  # another run may be building it right now
        if (venv / COMPLETE_MARKER).exists():
            say(f"environment {spec.name}: built meanwhile by another run ({key[:12]})")
            return result(True)
        reason = _miss_reason(lock)
        say(f"environment {spec.name}: building {key[:12]} ({reason})")
        shutil.rmtree(venv, ignore_errors=True)
        try:
            if conda:
                _create_conda_prefix(conda, venv, spec, steps)
            _install(venv, base_python, lock, list(spec.pip_options), steps, exists=bool(conda))
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        _finish(venv, lock, spec)
    built = result(False, reason)
    say(f"environment {spec.name}: built in {built.build_seconds:.1f} s")
    return built


def _build_unresolved(spec: BuildSpec, base_python: str, base: str, steps: Steps,
                      started: float) -> BuiltEnvironment:
    """The first build of a spec: install its requirements as given (uv resolves them as it
    installs), freeze what was installed as the lock, and move the folder to its build key.
    Under the spec's lock, so concurrent runs of a new spec resolve it once."""
    with FileLock(f"{_frozen(spec)}.lock"):
        if _frozen(spec).exists():  # resolved meanwhile by another run
            return build_environment(spec, steps.on_line, stop=steps.stop)
        steps.say(f"environment {spec.name}: resolving {len(spec.pip)} requirement(s) "
                  "and building (not resolved on this machine yet)")
        new = cache_dir("envs") / f".new-{spec.hash[:24]}"  # a crashed build's is replaced
        shutil.rmtree(new, ignore_errors=True)
        try:
            # the requirements as given take the lock's place: uv resolves them as it installs
            _install(new, base_python, "\n".join([*spec.pip_options, *spec.pip]) + "\n",
                     list(spec.pip_options), steps)
            lock = _freeze(new)
            key = build_key(lock, base)
            venv = cache_dir("envs") / key[:24]
            with FileLock(f"{venv}.lock"):
                cached = (venv / COMPLETE_MARKER).exists()  # another spec, the same lock
                reason = None if cached else _miss_reason(lock)
                if not cached:
                    shutil.rmtree(venv, ignore_errors=True)
                    new.rename(venv)
                    _finish(venv, lock, spec)
            atomic_write(_frozen(spec), lock)
        finally:
            shutil.rmtree(new, ignore_errors=True)
    built = BuiltEnvironment(str(venv / "bin" / "python"), spec.hash, key, lock, cached,
                             time.monotonic() - started, reason, steps.log)
    steps.say(f"environment {spec.name}: " + (f"same lock as {key[:12]}, built before" if cached
                                              else f"built {key[:12]} in "
                                                   f"{built.build_seconds:.1f} s ({reason})"))
    return built


def _freeze(venv: Path) -> str:
    """What is installed in ``venv``, pinned: the lock of a build that resolved as it went."""
    try:
        out = subprocess.run(_uv("pip", "freeze", "--python", str(venv / "bin" / "python")),
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentBuildError(f"listing what was installed in {venv} failed: {exc}") from exc
    if out.returncode != 0:
        raise EnvironmentBuildError(f"listing what was installed in {venv} failed:\n"
                                    f"{out.stderr.strip()[-2000:]}")
    return out.stdout


def _finish(venv: Path, lock: str, spec: BuildSpec) -> None:
    (venv / "mltrain-lock.txt").write_text(lock)
    (venv / COMPLETE_MARKER).write_text(spec.hash)


def _frozen(spec: BuildSpec) -> Path:
    """Where the lock of ``spec`` is kept once resolved."""
    return cache_dir("envs", "locks") / f"{spec.hash}.txt"


def resolve_interpreter(spec: BuildSpec | None) -> str:
    """The interpreter of a user-managed environment, or of the default environment.

    The default environment (no ``environment`` given) is the interpreter that runs
    prefect-mltrain, so a script sees exactly the packages installed next to it.
    """
    python = (spec.interpreter if spec else None) or sys.executable
    if not Path(python).exists():
        raise EnvironmentBuildError(
            f"interpreter {python!r} of environment {spec.name!r} does not exist: fix "
            "python.interpreter_path or leave it empty to use this Python"
        )
    return python


def _conda_binary(packages: list[str]) -> str:
    for name in ("micromamba", "mamba", "conda"):
        if found := shutil.which(name):
            return found
    raise EnvironmentBuildError(
        f"conda packages {packages} need conda, mamba or micromamba on PATH, and none is "
        "installed: install one, or move them to pip packages (most are on PyPI under the "
        "same name)"
    )


def _create_conda_prefix(conda: str, prefix: Path, spec: BuildSpec, steps: Steps) -> None:
    """A conda prefix with python and the conda packages; pip packages go in after."""
    python = f"python={spec.python or platform.python_version()}"
    channels = [part for channel in spec.channels for part in ("-c", channel)]
    steps.run([conda, "create", "-y", "-p", str(prefix), python, *spec.conda, *channels],
              timeout=INSTALL_TIMEOUT_SECONDS, what=f"creating the conda environment {prefix}")


def _base_python(version: str | None) -> str:
    """This interpreter, or one of the requested version: ``python3.X`` on PATH, else one
    uv finds (``uv python install 3.X`` puts one there). Each is asked for its version, so
    a stale shim or a wrong link is never used in its place."""
    if not version or _same_version(version, platform.python_version()):
        return sys.executable
    for candidate in (shutil.which(f"python{version}"), _uv_python(version)):
        if candidate and _same_version(version, _version_of(candidate)):
            return candidate
    raise EnvironmentBuildError(
        f"Python {version} is not installed on this machine: install it (`uv python install "
        f"{version}`, or your system's package), or drop the Python pin (python_version, or "
        f"python={version} in the conda file) to use Python {platform.python_version()}"
    )


def _same_version(wanted: str, actual: str | None) -> bool:
    """``3.1`` is not ``3.11.2``; ``3.11`` is."""
    return bool(actual) and actual.split(".")[:len(wanted.split("."))] == wanted.split(".")


def _uv_python(version: str) -> str | None:
    if not _uv_binary():
        return None
    try:
        out = subprocess.run(_uv("python", "find", "--no-python-downloads", version),
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@lru_cache(maxsize=8)
def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=8)
def _python_identity(python: str) -> str:
    if python == sys.executable:
        return f"{sys.version} {platform.machine()} {sys.implementation.name}"
    out = subprocess.run([python, "-c", "import sys, platform; print(sys.version, "
                          "platform.machine(), sys.implementation.name)"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def resolve_lock(spec: BuildSpec, steps: Steps | None = None) -> str:
    """The pinned requirement set of ``spec``: frozen once per spec hash, then reused."""
    steps = steps or Steps()
    frozen = _frozen(spec)
    if frozen.exists():
        return frozen.read_text()
    lock = ""
    if spec.pip:
        steps.say(f"resolving {len(spec.pip)} requirement(s) with uv")
        with tempfile.TemporaryDirectory(prefix="mltrain-resolve-") as tmp:
            requirements, out = Path(tmp, "requirements.in"), Path(tmp, "requirements.txt")
            requirements.write_text("\n".join([*spec.pip_options, *spec.pip]) + "\n")
            steps.run(_uv("pip", "compile", str(requirements), "-o", str(out), "--quiet",
                          "--no-header", "--no-annotate", "--python", _base_python(spec.python),
                          *index_args()),
                      timeout=RESOLVE_TIMEOUT_SECONDS, what=f"resolving {list(spec.pip)}")
            lock = out.read_text()
    atomic_write(frozen, lock)
    return lock


def _install(venv: Path, python: str, lock: str, pip_options: list[str], steps: Steps,
             exists: bool = False) -> None:
    """Create the virtualenv (unless ``exists``, a conda prefix) and install the lock."""
    if not exists:
        steps.run(_uv("venv", str(venv), "--python", python, "--quiet", "--relocatable")
                  if _uv_binary()
                  else [python, "-m", "venv", str(venv)],
                  timeout=INSTALL_TIMEOUT_SECONDS, what="creating the virtualenv")
    if not lock.strip():
        return
    reqs = venv / "mltrain-requirements.txt"
    reqs.write_text(lock)
    installer = [*_uv("pip", "install", "--python", str(venv / "bin" / "python")),
                 *index_args()] if _uv_binary() else [  # pip reads its own settings
        str(venv / "bin" / "python"), "-m", "pip", "install"]
    steps.run([*installer, "-r", str(reqs), *pip_options_args(pip_options)],
              timeout=INSTALL_TIMEOUT_SECONDS, what="installing packages")


def pip_options_args(options: list[str]) -> list[str]:
    return [part for option in options for part in option.split()]


@lru_cache(maxsize=1)
def _uv_binary() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


def _uv(*args: str) -> list[str]:
    return [_uv_binary() or "uv", *args]


def _miss_reason(lock: str) -> str:
    """Why nothing cached fits: what differs from the nearest cached build."""
    wanted = set(lock.split())
    best: tuple[int, set[str], set[str]] | None = None
    for marker in cache_dir("envs").glob(f"*/{COMPLETE_MARKER}"):
        try:
            have = set((marker.parent / "mltrain-lock.txt").read_text().split())
        except OSError:
            continue
        score = len(wanted ^ have)
        if best is None or score < best[0]:
            best = (score, wanted - have, have - wanted)
    if best is None:
        return "no environment cached on this machine yet"
    _, added, removed = best
    parts = [f"+{p}" for p in sorted(added)[:5]] + [f"-{p}" for p in sorted(removed)[:5]]
    return "nearest cached build differs by " + ", ".join(parts)
