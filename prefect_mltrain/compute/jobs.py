"""What every ``Job`` is: the protocol, and its parts — output lines, a lifeline, folders
in transit.

Standard library only: the node launcher imports this inside containers, where nothing
but the package's own files is installed.
"""

from __future__ import annotations

import io
import os
import queue
import sys
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol

from ..home import cache_dir


class Job(Protocol):
    """A started script, whatever runs it (a process group, a container, a gang of ranks):
    poll it, read its output lines, stop it."""

    def read_lines(self, timeout: float) -> list[str]: ...
    def poll(self) -> int | None: ...
    def finish_output(self, timeout: float = 5.0) -> list[str]: ...
    def terminate(self, grace: float = 10.0) -> None: ...
    def close(self) -> None: ...


class LineQueue:
    """Lines produced by a reader thread, taken without blocking on a quiet source."""

    def __init__(self):
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.ended = threading.Event()  # the source is at its end: no line will come

    def put(self, line: str) -> None:
        self._lines.put(line)

    def follow(self, chunks: Iterable[bytes]) -> None:
        """Read ``chunks`` (any split of a byte stream) in a thread, one line at a time."""

        def read() -> None:
            partial = b""
            try:
                for chunk in chunks:
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    for line in lines:
                        self.put(line.decode(errors="replace").rstrip("\r"))
            except Exception:  # the source went away under us (a removed container)
                pass
            if partial:
                self.put(partial.decode(errors="replace").rstrip("\r"))
            self.ended.set()
            self._lines.put(None)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def take(self, timeout: float = 0.0) -> list[str]:
        """Lines since the last call; waits up to ``timeout`` for the first one."""
        out: list[str] = []
        try:
            line = self._lines.get(timeout=timeout) if timeout > 0 else self._lines.get_nowait()
            while True:
                if line is not None:
                    out.append(line)
                line = self._lines.get_nowait()
        except queue.Empty:
            return out

    def finish(self, timeout: float = 5.0) -> list[str]:
        """After the source ended: the remaining lines (a grandchild may hold a pipe open,
        so this waits at most ``timeout``)."""
        if self._reader is not None:
            self._reader.join(timeout)
        return self.take()


class Lifeline:
    """A pipe whose write end only this process holds. A helper started with the read end
    (``fd``, in ``pass_fds``) sees it close when we let go or die, even by SIGKILL, and
    then cleans up after us (kills a process group, removes a container)."""

    def __init__(self):
        self.fd, self._write = os.pipe()

    def handed_over(self) -> None:
        """Call once the helper holds the read end."""
        os.close(self.fd)
        os.set_inheritable(self._write, False)

    def cut(self) -> None:
        if self._write >= 0:
            os.close(self._write)
            self._write = -1


def wait_for_cut(fd: int) -> None:
    """In the helper: block until the lifeline's holder lets go or dies."""
    while os.read(fd, 4096):
        pass


def zip_files(files: Iterable[tuple[str | Path, str]]) -> bytes:
    """``(path, name)`` pairs as one zip, for a trip to another host."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, name in files:
            try:
                zf.write(path, name)
            except FileNotFoundError:  # deleted since it was listed
                continue
    return buffer.getvalue()


def unzip(data: bytes, destination: Callable[[str], Path | None]) -> None:
    """Write each member of ``data`` to ``destination(name)``: a path inside a folder the
    caller chose, or None to skip it. A name that would leave that folder is skipped."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            dest = destination(name)
            if dest is None or ".." in Path(name).parts or Path(name).is_absolute():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(name))


def run_context_path() -> str:
    """A folder holding only ``prefect_mltrain``, for the PYTHONPATH of another interpreter.

    ``Run.get_context()`` needs the standard library only, so any Python 3 (a built
    environment, a user-managed one) imports it from here without seeing the rest of this
    interpreter's site-packages.
    """
    folder = cache_dir("pythonpath")
    link = folder / "prefect_mltrain"
    package = Path(__file__).resolve().parents[1]
    if not link.is_symlink() or link.resolve() != package:
        tmp = folder / f".link-{os.getpid()}-{threading.get_ident()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(package)
        tmp.replace(link)
    return str(folder)


def script_env(env: Mapping[str, str], interpreter: str) -> dict[str, str]:
    """The environment of a run's script processes, with its PYTHONPATH set.

    First the bootstrap folder: its ``sitecustomize`` lets ``from azureml.core import Run``
    find prefect-mltrain (see ``compat_finder``), in every process the script starts too.
    Then, for an interpreter other than this one, the folder holding ``prefect_mltrain``.
    """
    lib = run_context_path()
    parts = [os.path.join(lib, "prefect_mltrain", "bootstrap")]
    if interpreter != sys.executable:  # it finds Run.get_context() here
        parts.append(lib)
    return {**env, "PYTHONPATH": os.pathsep.join([*parts, *filter(None, [env.get("PYTHONPATH")])])}
