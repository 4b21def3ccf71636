"""A read-only FUSE mount of any fsspec filesystem path, for ``as_mount()`` data inputs.

A training script sees the dataset as ordinary files under a local folder, and only the
blocks it reads are fetched: each open file is an fsspec file object with a block cache, so
reading the first byte of a 1 GB object fetches one block, not the object. Listings and
file attributes are read once and kept for the mount's life (the data is read-only).
Given ``files`` (a dataset version's manifest), the mount shows exactly those files, under
their names in the dataset, and lists nothing from the store: files added to the store
later, or beside a glob's matches, are not there.
When FUSE cannot be used here, ``fuse_unusable()`` says why in one sentence and the caller
downloads the data instead.

Why a daemon thread and not a child process: the filesystem object is used as it is, with
its credentials, its connection pool and its event loop. fsspec's async filesystems (s3fs,
gcsfs, adlfs) refuse to run in a forked child, ``memory://`` exists only in this process,
and not every filesystem can be pickled for a spawned one. The cost is that a crash of the
FUSE loop is a crash of this process, and that libfuse takes over SIGHUP, SIGINT and SIGTERM
when they are at their default (a SIGTERM would end the mount instead of the process):
``Mount`` puts back the default of every signal libfuse took, so a canceled run still stops.

Docker: a container reaches the mount through a bind mount of the mountpoint (made before
the container starts). FUSE lets only the mounting user into a mount unless it has the
``allow_other`` option, which ``Mount`` sets when it runs as root or when /etc/fuse.conf
has ``user_allow_other``, so a container's processes, whatever their uid, can read it.

Example:
    ```python
    with Mount(fsspec.filesystem("s3"), "bucket/datasets/mnist", "/tmp/mnist") as path:
        train(path / "train.csv")
    ```
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import errno
import itertools
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)

FUSE_DEVICE = "/dev/fuse"
FUSE_CONF = "/etc/fuse.conf"
CONNECTIONS = "/sys/fs/fuse/connections"
MAX_BLOCKS = 16  # blocks cached per open file: 64 MB at the default 4 MB block size
ATTR_TIMEOUT = 60  # seconds the kernel may keep attributes and names: the data is read-only
PROBE_TIMEOUT = 5.0
MAX_THREADS = 10  # idle FUSE worker threads kept (libfuse's usual number)
_CAP_SYS_ADMIN = 21
_SIGNALS = ("SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE")  # what libfuse takes when at default
_INSTALL = "install the `mount` extra (pip install 'prefect-mltrain[mount]')"
_PACKAGES = "install the FUSE library (Debian: apt-get install fuse3 libfuse3-3)"


class MountError(DataError):
    """A FUSE mount could not be made or removed; the message names the cause."""


def fuse_unusable() -> str | None:
    """Say why a FUSE mount cannot be made here now, or None when it can.

    Checks, in order, what a mount needs: Linux, the device, the library, the binding and
    the right to mount; then makes a real probe mount of an empty folder, because a
    container's security profile can refuse a mount that every static check allows.

    Returns:
        None, or one sentence naming what is missing and the fix.
    """
    if not sys.platform.startswith("linux"):
        return f"FUSE mounts are made on Linux only (this is {sys.platform}); download instead"
    if not os.path.exists(FUSE_DEVICE):
        return (f"no {FUSE_DEVICE}: load the fuse kernel module (modprobe fuse), or run the "
                "container with --device /dev/fuse")
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR))
    except OSError as exc:
        return (f"{FUSE_DEVICE} cannot be opened ({exc.strerror}): run the container with "
                "--device /dev/fuse, or give this user read-write access to it")
    if not _libfuse_path():
        return f"no libfuse library found: {_PACKAGES}"
    try:
        _fuse()
    except ImportError:
        return f"no Python FUSE binding (mfusepy): {_INSTALL}"
    except (OSError, AttributeError) as exc:  # mfusepy rejects a library it cannot use
        return f"mfusepy cannot use the libfuse library ({exc}): {_PACKAGES}"
    denied = _mount_denied()
    if denied:
        return denied
    return _probe()


class Mount:
    """Mount the fsspec path ``root`` read-only at ``mountpoint`` for the life of a ``with``.

    Files appear with mode 0o444 and folders with 0o555, owned by this process's user;
    every write fails with EROFS. The mount is ready (``os.path.ismount``) when
    ``__enter__`` returns, and gone after ``__exit__``, whatever the ending.

    Args:
        fs: The filesystem to read from.
        root: The folder of ``fs`` to mount (with or without the protocol).
        mountpoint: A local folder, made if missing; an empty one is best.
        block_size: Bytes fetched per read from the store and kept in each file's cache.
        start_timeout: Seconds to wait for the mount to be ready before giving up.
        files: Instead of the folder ``root``: ``{name in the mount: (path in fs, size)}``.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, mountpoint: str | os.PathLike,
                 block_size: int = 4 * 2**20, start_timeout: float = 10.0,
                 files: dict[str, tuple[str, int]] | None = None):
        self.fs = fs
        self.root = fs._strip_protocol(root).rstrip("/")
        self.files = files
        self.mountpoint = Path(mountpoint).absolute()
        self.block_size = block_size
        self.start_timeout = start_timeout
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._connection: str | None = None

    def __enter__(self) -> Path:
        self.mount()
        return self.mountpoint

    def __exit__(self, *exc_info) -> None:
        self.unmount()

    def mount(self) -> None:
        """Mount and wait until the kernel serves the mountpoint (``__enter__`` calls it).

        Raises:
            MountError: the root is no folder, the mountpoint is taken, or the mount did not
                come up within ``start_timeout`` (the message names libfuse's result).
        """
        if self._thread is not None:
            raise MountError(f"{self.mountpoint} is mounted already by this Mount")
        fuse = _fuse()
        try:
            if self.files is None and \
                    self.fs.info(self.root or self.fs.root_marker)["type"] != "directory":
                raise MountError(f"cannot mount {self._url()}: it is a file, not a folder")
        except FileNotFoundError:
            raise MountError(f"cannot mount {self._url()}: no such folder") from None
        _clear_stale(self.mountpoint)
        if os.path.ismount(self.mountpoint):
            raise MountError(f"{self.mountpoint} is already a mount; choose another mountpoint")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        caught = _caught_signals()
        ops = _Operations(fuse, self.fs, self.root, self.block_size, self.files)
        options = {"foreground": True, "nothreads": False, "ro": True,
                   "fsname": re.sub(r"[^\w:/.@+-]", "_", self._url())[:200],
                   "default_permissions": True, "kernel_cache": True,
                   "attr_timeout": ATTR_TIMEOUT, "entry_timeout": ATTR_TIMEOUT,
                   "negative_timeout": ATTR_TIMEOUT}
        if _allow_other():
            options["allow_other"] = True
        if fuse.fuse_version_major == 3:  # libfuse 3.14.0 warns of its own unset default
            options["max_idle_threads"] = MAX_THREADS
        self._thread = threading.Thread(target=self._serve, args=(fuse, ops, options),
                                        name=f"fuse {self.mountpoint}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not os.path.ismount(self.mountpoint):
            if not self._thread.is_alive():
                self._thread = None
                cause = self._error
                if isinstance(cause, RuntimeError) and isinstance((*cause.args, "")[0], int):
                    cause = f"libfuse returned {cause.args[0]}"
                raise MountError(f"FUSE mount of {self._url()} at {self.mountpoint} failed "
                                 f"({cause}; libfuse's own message is on stderr)")
            if time.monotonic() > deadline:
                with contextlib.suppress(MountError):
                    self.unmount(timeout=2.0)
                raise MountError(f"FUSE mount of {self._url()} at {self.mountpoint} was not "
                                 f"ready within {self.start_timeout:g} s")
            time.sleep(0.01)
        _restore_signals(caught)
        with contextlib.suppress(OSError):
            st_dev = os.stat(self.mountpoint).st_dev
            self._connection = str(os.major(st_dev) << 20 | os.minor(st_dev))
        _active.add(self)

    def unmount(self, timeout: float = 10.0) -> None:
        """Unmount and wait for the FUSE loop to end, all within ``timeout`` seconds.

        Tries ``fusermount3 -u``, ``fusermount -u`` and ``umount`` (whichever exist); if the
        mount is busy, detaches it lazily (``-z``), and as a last resort aborts the FUSE
        connection (where /sys/fs/fuse/connections is mounted), so a process stuck reading
        the mount gets an error instead of a hang. It looks in /proc/self/mountinfo, never
        at the mount itself, which a stuck FUSE loop would not answer.

        Raises:
            MountError: the mountpoint is still a mount after every attempt.
        """
        _active.discard(self)
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        attempts = [[tool, "-u"] for tool in ("fusermount3", "fusermount")] + [["umount"]]
        lazy = [[tool, "-uz"] for tool in ("fusermount3", "fusermount")] + [["umount", "-l"]]
        for cmd in attempts + lazy:
            if not _is_mounted(self.mountpoint) or time.monotonic() > deadline:
                break
            if shutil.which(cmd[0]):
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run([*cmd, str(self.mountpoint)], capture_output=True,
                                   timeout=max(0.1, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic() - 0.5))
        if self._thread.is_alive() and self._connection:  # a lazily detached, busy mount
            with contextlib.suppress(OSError):
                Path(CONNECTIONS, self._connection, "abort").write_text("1")
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if _is_mounted(self.mountpoint):
            raise MountError(f"cannot unmount {self.mountpoint}: run `fusermount3 -uz "
                             f"{self.mountpoint}` (or `umount -l`) as root")
        if self._thread.is_alive():
            log.warning("the FUSE loop of %s did not end within %g s; it ends with the process",
                        self.mountpoint, timeout)
        self._thread = None

    def _serve(self, fuse: Any, ops: _Operations, options: dict) -> None:
        try:
            fuse.FUSE(ops, str(self.mountpoint), **options)
        except BaseException as exc:  # reported by mount(); the thread must end quietly
            self._error = exc
        finally:
            ops.close_all()

    def _url(self) -> str:
        try:
            return self.fs.unstrip_protocol(self.root or self.fs.root_marker)
        except Exception:
            return self.root


_active: weakref.WeakSet[Mount] = weakref.WeakSet()


@atexit.register
def _unmount_all() -> None:
    """A mount left at exit would outlive its server as a dead mountpoint: remove it."""
    for mount in list(_active):
        with contextlib.suppress(Exception):
            mount.unmount(timeout=5.0)


class _Operations:
    """The FUSE callbacks: attributes and listings from ``fs``, reads through file caches.

    mfusepy gives libfuse only the callbacks an object has, so this needs no base class
    (and the module imports without mfusepy); what it lacks, libfuse answers itself.
    """

    use_ns = True  # times in nanoseconds (mfusepy's float seconds are deprecated)

    def __init__(self, fuse: Any, fs: fsspec.AbstractFileSystem, root: str, block_size: int,
                 files: dict[str, tuple[str, int]] | None = None):
        self._fuse = fuse
        self.fs = fs
        self.root = root
        self.block_size = block_size
        self._now = time.time_ns()
        self._attrs: dict[str, dict] = {}
        self._names: dict[str, set[str]] = {}
        self._files: dict[int, tuple[Any, threading.Lock]] = {}
        self._handles = itertools.count(1)
        self._where: dict[str, str] | None = None
        if files is not None:
            self._tree(files)

    def _tree(self, files: dict[str, tuple[str, int]]) -> None:
        """Every folder's names and every entry's attributes, from the file list alone."""
        self._where = {}
        folder = self._stat({"type": "directory"})
        self._attrs["/"], self._names["/"] = folder, set()
        for name, (where, size) in files.items():
            parts = name.split("/")
            if any(part in ("", ".", "..") for part in parts):
                raise MountError(f"cannot show {name!r} in a mount: not a relative file name")
            for depth in range(len(parts)):
                parent = "/" + "/".join(parts[:depth])
                path = "/" + "/".join(parts[:depth + 1])
                self._names.setdefault(parent, set()).add(parts[depth])
                if depth < len(parts) - 1:
                    self._attrs.setdefault(path, folder)
                    self._names.setdefault(path, set())
            self._attrs[path] = self._stat({"type": "file", "size": size})
            self._where[path] = where

    def _path(self, path: str) -> str:
        if self._where is not None:  # only the listed files are there
            if path not in self._where:
                raise FileNotFoundError(path)
            return self._where[path]
        return self.root + path if path != "/" else (self.root or self.fs.root_marker)

    def _fail(self, exc: Exception, what: str, path: str):
        if isinstance(exc, self._fuse.FuseOSError):
            return exc
        for kind, code in ((FileNotFoundError, errno.ENOENT), (NotADirectoryError, errno.ENOTDIR),
                           (IsADirectoryError, errno.EISDIR), (PermissionError, errno.EACCES)):
            if isinstance(exc, kind):
                return self._fuse.FuseOSError(code)
        where = self._where.get(path, path) if self._where is not None else self._path(path)
        log.warning("FUSE %s of %s failed: %r", what, where, exc)
        return self._fuse.FuseOSError(errno.EIO)

    def _stat(self, info: dict) -> dict:
        ns = _mtime_ns(info) or self._now
        common = {"st_uid": os.getuid(), "st_gid": os.getgid(),
                  "st_atime": ns, "st_mtime": ns, "st_ctime": ns}
        if info.get("type") == "directory":
            return {**common, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_size": 0}
        size = int(info.get("size") or 0)
        return {**common, "st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size,
                "st_blocks": (size + 511) // 512, "st_blksize": self.block_size}

    def getattr(self, path: str, fh: int | None = None) -> dict:
        attrs = self._attrs.get(path)
        if attrs is not None:
            return attrs
        parent, _, name = path.rpartition("/")
        names = self._names.get(parent or "/")
        if names is not None and name not in names:  # a listed folder has no such entry
            raise self._fuse.FuseOSError(errno.ENOENT)
        try:
            attrs = self._stat(self.fs.info(self._path(path)))
        except Exception as exc:
            raise self._fail(exc, "stat", path) from None
        self._attrs[path] = attrs
        return attrs

    def readdir(self, path: str, fh: int) -> list:
        if path not in self._names:
            try:
                entries = self.fs.ls(self._path(path), detail=True)
            except Exception as exc:
                raise self._fail(exc, "listing", path) from None
            own = self._path(path).rstrip("/")
            names: set[str] = set()
            for info in entries:
                full = info["name"].rstrip("/")
                name = full.rsplit("/", 1)[-1]
                if not name or full == own:
                    continue
                child = path.rstrip("/") + "/" + name
                if name not in names or info.get("type") == "directory":
                    self._attrs[child] = self._stat(info)
                names.add(name)
            self._names[path] = names
        return [".", ".."] + [(name, self._attrs[path.rstrip("/") + "/" + name]["st_mode"], 0)
                              for name in sorted(self._names[path])]

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise self._fuse.FuseOSError(errno.EROFS)
        try:
            try:
                file = self.fs.open(self._path(path), "rb", block_size=self.block_size,
                                    cache_type="blockcache",
                                    cache_options={"maxblocks": MAX_BLOCKS})
            except TypeError:  # a filesystem whose open takes no cache arguments
                file = self.fs.open(self._path(path), "rb")
        except Exception as exc:
            raise self._fail(exc, "open", path) from None
        handle = next(self._handles)
        self._files[handle] = (file, threading.Lock())
        return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        try:
            file, lock = self._files[fh]
        except KeyError:
            raise self._fuse.FuseOSError(errno.EBADF) from None
        try:
            with lock:  # the kernel may read one handle from several threads at once
                file.seek(offset)
                return file.read(size)
        except Exception as exc:
            raise self._fail(exc, "read", path) from None

    def release(self, path: str, fh: int) -> int:
        entry = self._files.pop(fh, None)
        if entry is not None:
            with contextlib.suppress(Exception):
                entry[0].close()
        return 0

    def statfs(self, path: str) -> dict:
        return {"f_bsize": self.block_size, "f_frsize": self.block_size, "f_namemax": 255}

    def close_all(self) -> None:
        for fh in list(self._files):
            self.release("", fh)

    def _read_only(self, *args) -> int:
        raise self._fuse.FuseOSError(errno.EROFS)

    create = mkdir = mknod = unlink = rmdir = rename = symlink = link = _read_only
    chmod = chown = truncate = write = utimens = setxattr = removexattr = _read_only


def _fuse():
    """Import mfusepy (it loads libfuse on import, so only when a mount is wanted)."""
    import mfusepy

    return mfusepy


def _libfuse_path() -> str | None:
    """The libfuse mfusepy would load: FUSE_LIBRARY_PATH, else libfuse 2, else libfuse 3."""
    if os.environ.get("FUSE_LIBRARY_PATH"):
        return os.environ["FUSE_LIBRARY_PATH"]
    name = os.environ.get("FUSE_LIBRARY_NAME")
    if name:
        return ctypes.util.find_library(name)
    return ctypes.util.find_library("fuse") or ctypes.util.find_library("fuse3")


def _mount_denied() -> str | None:
    """Why this process may not mount: root needs CAP_SYS_ADMIN, others a setuid fusermount."""
    effective, bounding = _capability(_CAP_SYS_ADMIN)
    if os.geteuid() == 0 and effective:
        return None
    helper = shutil.which("fusermount3") or shutil.which("fusermount")
    if helper is None:
        return ("mount not permitted: not root with CAP_SYS_ADMIN and no fusermount3 helper; "
                f"{_PACKAGES}")
    st = os.stat(helper)
    if not (st.st_mode & stat.S_ISUID and st.st_uid == 0) or not bounding:
        return ("mount not permitted: this process lacks CAP_SYS_ADMIN and fusermount3 cannot "
                "gain it; run the container with --cap-add SYS_ADMIN --device /dev/fuse")
    return None


def _capability(bit: int) -> tuple[bool, bool]:
    """Whether this process has capability ``bit`` (effective, in its bounding set)."""
    found = {"CapEff": True, "CapBnd": True}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in found:
                found[key] = bool(int(value, 16) >> bit & 1)
    return found["CapEff"], found["CapBnd"]


def _probe() -> str | None:
    """Mount an empty folder for a moment; a refusal names the cause found in the error."""
    import fsspec

    with tempfile.TemporaryDirectory(prefix="mltrain-fuse-probe-") as tmp:
        src, mnt = Path(tmp, "src"), Path(tmp, "mnt")
        src.mkdir()
        try:
            with Mount(fsspec.filesystem("file"), str(src), mnt, start_timeout=PROBE_TIMEOUT):
                return None
        except MountError as exc:
            return (f"mount not permitted: a probe mount failed ({exc}); a container needs "
                    "--cap-add SYS_ADMIN --device /dev/fuse and, under AppArmor, "
                    "--security-opt apparmor:unconfined")


def _allow_other() -> bool:
    """Whether to let other users (a container's processes) in: root may, others if allowed."""
    if os.geteuid() == 0:
        return True
    with contextlib.suppress(OSError):
        return any(line.strip() == "user_allow_other"
                   for line in Path(FUSE_CONF).read_text().splitlines())
    return False


def _is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mountpoint, from the mount table (no call into the mount)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    target = os.path.join(os.path.realpath(path.parent), path.name)  # no stat of path itself
    unescape = re.compile(r"\\([0-7]{3})")
    return any(unescape.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4]) == target
               for line in lines if len(line.split()) > 4)


def _clear_stale(mountpoint: Path) -> None:
    """Detach a mount left by a process that died ("Transport endpoint is not connected").

    ``os.statvfs`` asks the FUSE server; a stat may be answered from the kernel's cache.
    """
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return
        for cmd in (["fusermount3", "-uz"], ["fusermount", "-uz"], ["umount", "-l"]):
            if shutil.which(cmd[0]):
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    if not subprocess.run([*cmd, str(mountpoint)], capture_output=True,
                                          timeout=5).returncode:
                        return


def _caught_signals() -> int:
    """This process's caught-signal mask (SigCgt in /proc/self/status), 0 if unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    return 0


def _restore_signals(before: int) -> None:
    """Put back the default of each signal libfuse started to catch (it takes those at
    default): a SIGTERM must stop the process, not just end the mount."""
    import signal

    taken = _caught_signals() & ~before
    if not taken:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    for name in _SIGNALS:
        number = getattr(signal, name)
        if taken >> (number - 1) & 1 and signal.getsignal(number) == signal.SIG_DFL:
            libc.signal(number, None)  # SIG_DFL; works from any thread, unlike signal.signal


def _mtime_ns(info: dict) -> int | None:
    """Modification time in ns from an fsspec info dict (each filesystem names it its way)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            if isinstance(value, dt.datetime):
                return int(value.timestamp() * 1e9)
            if isinstance(value, int | float):
                return int(value * 1e9)
            if isinstance(value, str):
                return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                           * 1e9)
    return None
