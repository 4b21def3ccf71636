"""Git provenance of a source directory: where the code of a run came from.

A run records the repository URL (credentials stripped), branch, commit, whether the work
tree was dirty, and the uncommitted diff, so that a result can be traced back to the exact
code even when it was never committed. Everything goes through the ``git`` command line:
it is what the user has, it honours their config, and it needs no Python dependency.

Provenance is a nice-to-have on the submit path, so nothing here ever raises: without git,
outside a work tree, or when a call hangs, the answer is ``None`` or a partial record.

Example:
    ```python
    from prefect_mltrain.git import git_provenance

    info = git_provenance("./proj")   # None outside a git work tree
    ```
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MAX_DIFF_BYTES = 1024 * 1024
MAX_UNTRACKED = 1000
GIT_TIMEOUT_SECONDS = 10.0
DIFF_TIMEOUT_SECONDS = 30.0

# Variables that would point git at another repository than the one around `directory`
# (they are set, for example, while a git hook runs).
_REPO_LOCATING_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
)
# scp-like remote syntax, `[user@]host:path` (no scheme, and the colon comes before any slash).
_SCP_LIKE = re.compile(r"^(?P<user>[^@/]+@)?(?P<host>[^:/]+):(?P<path>.*)$")
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}


def git_provenance(directory: str | os.PathLike) -> dict[str, Any] | None:
    """Describe the git state of the work tree that contains ``directory``.

    Returns ``None`` when ``directory`` is not inside a git work tree (or git is not
    installed), otherwise::

        {"repository": url or None,   # credentials and query string removed
         "branch": name or None,      # None when HEAD is detached
         "commit": sha or None,       # None before the first commit
         "dirty": bool,               # tracked changes or untracked (not ignored) files
         "diff": str,                 # `git diff HEAD`, at most 1 MiB
         "diff_truncated": bool,
         "untracked": [path, ...]}    # relative to the repository root, at most 1000

    Example:
        ```python
        info = git_provenance(".")
        if info and info["dirty"]:
            print(f"uncommitted changes on top of {info['commit']}")
        ```
    """
    try:
        return _provenance(os.fspath(directory))
    except Exception:  # noqa: BLE001 - provenance must never break a submit
        return None


def git_properties(info: dict[str, Any] | None) -> dict[str, str]:
    """The provenance as the run properties Azure ML v1 wrote (``azureml.git.*``, and
    MLflow's ``mlflow.source.git.*`` beside them), so ``run.properties["azureml.git.commit"]``
    works unchanged; a value git did not know is left out."""
    if not info:
        return {}
    out = {}
    for azure, mlflow, key in (("repository_uri", "repoURL", "repository"),
                               ("branch", "branch", "branch"), ("commit", "commit", "commit")):
        if info.get(key):
            out[f"azureml.git.{azure}"] = out[f"mlflow.source.git.{mlflow}"] = str(info[key])
    if info.get("dirty") is not None:
        out["azureml.git.dirty"] = str(bool(info["dirty"]))
    return out


def strip_url_credentials(url: str) -> str:
    """Remove user names, passwords, tokens and query strings from a remote URL.

    Run records are shared and kept forever, and a CI checkout's remote often carries a
    token (``https://x-access-token:TOKEN@github.com/...``). The SSH login name is kept
    (``git@host:org/repo.git``, ``ssh://git@host/...``): it is no secret and it is part of
    how the repository is addressed.

    Example:
        ```python
        strip_url_credentials("https://user:tok@host/org/repo.git")  # "https://host/org/repo.git"
        ```
    """
    url = url.strip()
    if "://" not in url:
        match = _SCP_LIKE.match(url)
        if match and not _looks_like_windows_path(url):
            user = (match["user"] or "").split(":", 1)[0].rstrip("@")
            return f"{user + '@' if user else ''}{match['host']}:{match['path']}"
        return url  # a local path
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable remote URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        keep_user = parts.scheme.lower() in _SSH_SCHEMES and user
        netloc = f"{user}@{host}" if keep_user else host
    # A query string on a git remote is almost always a signed URL or an access token.
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _looks_like_windows_path(url: str) -> bool:
    return len(url) >= 2 and url[1] == ":" and url[0].isalpha()


def _provenance(directory: str) -> dict[str, Any] | None:
    if os.path.isfile(directory):
        directory = os.path.dirname(directory) or "."
    if not os.path.isdir(directory):
        return None
    top = _git_text(["rev-parse", "--show-toplevel"], directory)
    if not top:
        return None  # not a work tree, git missing, or a repository git refuses to use
    top = top.strip()
    commit = _git_text(["rev-parse", "--verify", "--quiet", "HEAD"], top)
    commit = commit.strip() if commit else None
    branch = _git_text(["symbolic-ref", "--quiet", "--short", "HEAD"], top)
    branch = branch.strip() if branch else None
    diff, diff_truncated = _diff(top, commit)
    untracked = _untracked(top)
    if diff is None:
        status = _git_text(["status", "--porcelain", "--untracked-files=no"], top)
        dirty = bool(status) or bool(untracked)
    else:
        dirty = bool(diff) or bool(untracked)
    return {
        "repository": _repository(top, branch),
        "branch": branch,
        "commit": commit,
        "dirty": dirty,
        "diff": diff or "",
        "diff_truncated": diff_truncated,
        "untracked": untracked,
    }


def _repository(top: str, branch: str | None) -> str | None:
    """The URL of the branch's upstream remote, else ``origin``, else the first remote."""
    out = _git(["config", "-z", "--get-regexp", r"^(remote\..*\.url|branch\..*\.remote)$"], top)
    if out is None:
        return None
    urls: dict[str, str] = {}
    upstream = None
    for entry in out[0].decode("utf-8", "replace").split("\0"):
        key, _, value = entry.partition("\n")
        if key.startswith("remote.") and key.endswith(".url"):
            urls.setdefault(key[len("remote.") : -len(".url")], value)
        elif branch and key == f"branch.{branch}.remote":
            upstream = value
    name = next((n for n in (upstream, "origin") if n in urls), next(iter(urls), None))
    return strip_url_credentials(urls[name]) if name else None


def _diff(top: str, commit: str | None) -> tuple[str | None, bool]:
    """``git diff HEAD`` capped at 1 MiB; before the first commit, the diff to an empty tree."""
    base = commit
    if base is None:
        empty = _git_text(["hash-object", "-t", "tree", os.devnull], top)
        if not empty:
            return None, False
        base = empty.strip()
    out = _git(
        ["diff", "--no-color", "--no-ext-diff", "--no-textconv", base, "--"],
        top,
        limit=MAX_DIFF_BYTES,
        timeout=DIFF_TIMEOUT_SECONDS,
    )
    if out is None:
        return None, False
    data, truncated = out
    if truncated:
        cut = data.rfind(b"\n")
        data = data[: cut + 1] if cut > 0 else data
    return data.decode("utf-8", "replace"), truncated


def _untracked(top: str) -> list[str]:
    out = _git(["ls-files", "--others", "--exclude-standard", "-z"], top, limit=MAX_DIFF_BYTES)
    if out is None:
        return []
    data, truncated = out
    names = data.decode("utf-8", "replace").split("\0")
    names = names[:-1]  # the piece after the last NUL is empty, or cut short by the limit
    return names[:MAX_UNTRACKED]


def _git_text(args: list[str], cwd: str) -> str | None:
    out = _git(args, cwd)
    return out[0].decode("utf-8", "replace") if out else None


def _git(
    args: list[str],
    cwd: str,
    *,
    limit: int = 64 * 1024,
    timeout: float | None = None,
) -> tuple[bytes, bool] | None:
    """Run git and return ``(stdout, truncated)``, or ``None`` when it failed or hung.

    Output is read only up to ``limit`` bytes, then git is stopped: a diff of a modified
    multi-GB data file must not end up in memory.
    """
    env = {k: v for k, v in os.environ.items() if k not in _REPO_LOCATING_VARS}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        proc = subprocess.Popen(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout or GIT_TIMEOUT_SECONDS, kill)
    timer.daemon = True
    timer.start()
    try:
        data = proc.stdout.read(limit + 1)
        truncated = len(data) > limit
        if truncated:
            proc.kill()
        returncode = proc.wait()
    finally:
        timer.cancel()
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if timed_out.is_set() or (returncode != 0 and not truncated):
        return None
    return data[:limit], truncated
