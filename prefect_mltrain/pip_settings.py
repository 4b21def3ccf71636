"""The host's pip settings, carried over to uv (which ignores pip's configuration): index
URLs, find-links, constraints, the CA bundle — users behind private indexes and proxies need
exactly that.

pip reports them (``pip config list``), which takes ~0.25 s, so the answer is kept in
``$MLTRAIN_HOME`` and pip is asked again only when what they are read from changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from .files import atomic_write
from .home import cache_dir


def pip_settings_sources(env: Mapping[str, str] | None = None) -> list[Any]:
    """What pip's settings are read from: its ``PIP_*`` variables and the stat of every file
    pip reads (the places of pip's ``get_configuration_files``, and ``PIP_CONFIG_FILE``), so
    that a change to any of them is noticed without asking pip."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    xdg_dirs = (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
    files = [*(os.path.join(d, "pip", "pip.conf") for d in xdg_dirs), "/etc/pip.conf",
             os.path.join(sys.prefix, "pip.conf"), os.path.join(home, ".pip", "pip.conf"),
             os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                          "pip", "pip.conf"),
             os.path.join(home, "Library", "Application Support", "pip", "pip.conf")]
    if env.get("PIP_CONFIG_FILE"):
        files.append(env["PIP_CONFIG_FILE"])
    sources: list[Any] = [sys.executable, sorted((k, v) for k, v in env.items()
                                                 if k.startswith("PIP_"))]
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            continue
        sources.append([name, st.st_mtime_ns, st.st_size, st.st_ino])
    return sources


@lru_cache(maxsize=1)
def pip_config() -> dict[str, str]:
    """The host's effective pip settings (files and PIP_* variables) as pip reports them,
    from ``$MLTRAIN_HOME`` while what they are read from is unchanged."""
    sources, kept = pip_settings_sources(), cache_dir("pip") / "config.json"
    try:
        saved = json.loads(kept.read_text())
        if saved["sources"] == json.loads(json.dumps(sources)):
            return saved["config"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    config = _parse_pip_config(out.stdout)
    if out.returncode == 0:
        atomic_write(kept, json.dumps({"sources": sources, "config": config}))
    return config


def _parse_pip_config(out: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        config.setdefault(name, value.strip().strip("'\""))  # environment wins: listed first
    return config


def index_args() -> list[str]:
    """pip's index settings as uv options."""
    config, args = pip_config(), []
    if config.get("index-url"):
        args += ["--index-url", config["index-url"]]
    for url in config.get("extra-index-url", "").split():
        if not url.startswith("file://") or Path(url[7:]).exists():
            args += ["--extra-index-url", url]
    for link in config.get("find-links", "").split():
        args += ["--find-links", link]
    for constraint in config.get("constraint", "").split():
        if Path(constraint).exists():
            args += ["--constraint", constraint]
    if config.get("no-index", "").lower() in ("1", "true", "yes"):
        args.append("--no-index")
    if "--extra-index-url" in args:
        args += ["--index-strategy", "unsafe-best-match"]  # pip's rule: best version anywhere
    return args


def index_env() -> dict[str, str]:
    cert = pip_config().get("cert")
    return {"SSL_CERT_FILE": cert} if cert and Path(cert).exists() else {}
