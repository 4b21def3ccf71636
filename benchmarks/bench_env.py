"""c. ``build_environment()`` of an unpinned ``scikit-learn`` requirement, cold (fresh
MLTRAIN_HOME) and as a cache hit, vs. ``python3 -m venv`` + ``pip install``, interleaved, with
warm download caches (plus one cold-cache rep of each)."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import (
    ENV_TIMEOUT,
    WORK,
    check,
    clear_build_memos,
    environment_builder,
    fmt,
    fmt_ratio,
    log,
    log_rep,
    pip_config_reader,
    ratio,
    restored_env,
    scratch,
    summarize,
    tail,
    try_rep,
    uv_binary,
)

TITLE = "environment"
ENV_REQUIREMENT = "scikit-learn"  # unpinned: the resolve happens too
ENV_HIT_CALLS = 20
ENV_PACKAGES = ("scikit-learn", "numpy", "scipy", "joblib", "threadpoolctl")
VERSIONS_PY = ("import importlib.metadata as m, json; print(json.dumps("
               "{d.metadata['Name'].lower().replace('_', '-'): d.version "
               "for d in m.distributions()}))")
SIDES = ("ours_cold", "pip")


def real_python3() -> str:
    """The interpreter ``python3`` on PATH runs (past a pyenv shim: the shim's own start is
    not pip's cost, so the peer is not charged for it)."""
    out = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def first_import(python: str) -> float:
    """Wall time of the first ``import sklearn, numpy, scipy`` in a new environment: uv does
    not byte-compile what it installs (pip does), so the first import writes the .pyc files."""
    p0 = time.perf_counter()
    subprocess.run([python, "-c", "import sklearn, numpy, scipy"], check=True,
                   capture_output=True, timeout=ENV_TIMEOUT, cwd=WORK)
    return time.perf_counter() - p0


def installed_versions(python: str) -> dict[str, str]:
    """Untimed check that an environment works: list its distributions."""
    # cwd: not the checkout, whose egg-info `python -c` would list as installed
    out = subprocess.run([python, "-c", VERSIONS_PY], check=True, capture_output=True,
                         text=True, timeout=ENV_TIMEOUT, cwd=WORK)
    return json.loads(out.stdout)


@contextlib.contextmanager
def default_caches() -> Iterator[None]:
    """The user's default download caches (~/.cache/uv, ~/.cache/pip); MLTRAIN_HOME and the
    caches' variables restored afterwards."""
    with restored_env("MLTRAIN_HOME", "UV_CACHE_DIR", "PIP_CACHE_DIR"):
        for key in ("UV_CACHE_DIR", "PIP_CACHE_DIR"):
            os.environ.pop(key, None)
        yield


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prefect_mltrain import Environment

    reps, hit_calls = 2 if args.quick else 5, ENV_HIT_CALLS
    root = scratch("env")  # untimed; the warm-ups absorb the deletion's after-effects
    req = root / "requirements.txt"
    req.write_text(ENV_REQUIREMENT + "\n")
    build_environment = environment_builder(ENV_TIMEOUT)
    pip_config = pip_config_reader()
    python3 = real_python3()
    counter = itertools.count()

    def fresh(prefix: str) -> Path:
        return root / f"{prefix}-{next(counter):02d}"

    def ours(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        home = fresh("home")
        os.environ["MLTRAIN_HOME"] = str(home)  # read by the library at each call
        os.environ.update(extra_env or {})
        # A run's runner calls this once per process: it pays `pip config list` and the
        # other per-process look-ups each time, so clear the library's memoized ones.
        clear_build_memos()
        marks: dict[str, float] = {}

        def on_line(line: str) -> None:
            if ": building " in line:  # said once the lock is resolved, before the venv
                marks.setdefault("resolved", time.perf_counter())

        try:
            os.sync()  # no dirty pages from the step before
            p0 = time.perf_counter()
            built = build_environment(Environment.from_pip_requirements("sk", req),
                                      on_line=on_line)
            wall = time.perf_counter() - p0
        finally:
            for key in extra_env or {}:
                os.environ.pop(key, None)
        resolve = marks["resolved"] - p0 if "resolved" in marks else None
        return {"wall": wall, "ok": not built.cached, "cached": built.cached,
                "build_seconds": built.build_seconds, "resolve": resolve,
                "venv_install": wall - resolve if resolve is not None else None,
                "home": str(home), "interpreter": built.interpreter,
                "lock": built.lock, "miss_reason": built.miss_reason}

    def hits(home: str) -> dict[str, Any]:
        os.environ["MLTRAIN_HOME"] = home
        walls, cached = [], []
        for _ in range(hit_calls):
            p0 = time.perf_counter()
            built = build_environment(Environment.from_pip_requirements("sk", req))
            walls.append(time.perf_counter() - p0)
            cached.append(built.cached)
        return {"walls": walls, "cached": cached, "ok": all(cached)}

    def peer(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        venv = fresh("pip-venv")
        env = {**os.environ, **(extra_env or {})}
        os.sync()
        p0 = time.perf_counter()
        out = subprocess.run([python3, "-m", "venv", str(venv)], env=env, capture_output=True,
                             text=True, timeout=ENV_TIMEOUT)
        venv_s = time.perf_counter() - p0
        if out.returncode == 0:
            out = subprocess.run([str(venv / "bin" / "pip"), "install", ENV_REQUIREMENT],
                                 env=env, capture_output=True, text=True, timeout=ENV_TIMEOUT)
        wall = time.perf_counter() - p0
        rec: dict[str, Any] = {"wall": wall, "ok": out.returncode == 0, "venv": venv_s,
                               "pip_install": wall - venv_s,
                               "interpreter": str(venv / "bin" / "python")}
        if not rec["ok"]:
            rec["error"] = f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"
        return rec

    variants: dict[str, Callable[..., dict[str, Any]]] = {"ours_cold": ours, "pip": peer}

    def attempt(name: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        return try_rep(lambda: variants[name](extra_env))

    with default_caches():
        warmup = {}
        for name in variants:  # fills ~/.cache/uv and ~/.cache/pip with the wheels
            warmup[name] = attempt(name)
            log_rep(f"warm-up {name} (untimed)", warmup[name])
        pip_cache = Path.home() / ".cache" / "pip"  # pip's default; PIP_CACHE_DIR is unset
        pip_cache_files = sum(1 for f in pip_cache.rglob("*") if f.is_file())
        log(f"{pip_cache}: {pip_cache_files} files after the warm-up")
        raw: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        hit: dict[str, Any] = {}
        pip_config_walls: list[float] = []
        for i in range(reps):
            for name in SIDES if i % 2 == 0 else SIDES[::-1]:
                rec = attempt(name)
                raw[name].append(rec)
                log_rep(f"rep {i + 1}/{reps} {name}", rec)
                if name == "ours_cold":  # diagnostic, untimed: the resolve's `pip config list`
                    pip_config.cache_clear()  # right after the build, so in like state
                    p0 = time.perf_counter()
                    pip_config()
                    pip_config_walls.append(time.perf_counter() - p0)
                if name == "ours_cold" and rec["ok"] and not hit:
                    hit = hits(rec["home"])  # the same call again, same MLTRAIN_HOME
                    log(f"cache hit: median {statistics.median(hit['walls']) * 1000:.1f} ms "
                        f"of {hit_calls} calls, all cached={hit['ok']}")
        cold: dict[str, dict[str, Any]] = {}
        if not args.no_cold_cache:  # one labelled rep each with empty download caches
            cold["ours_cold"] = attempt("ours_cold", {"UV_CACHE_DIR": str(fresh("uv-cache"))})
            log_rep("cold download cache: ours (empty UV_CACHE_DIR)", cold["ours_cold"])
            cold["pip"] = attempt("pip", {"PIP_CACHE_DIR": str(fresh("pip-cache"))})
            log_rep("cold download cache: pip (empty PIP_CACHE_DIR)", cold["pip"])
        first = first_imports(raw)
        versions = installed(raw)
    shutil.rmtree(root, ignore_errors=True)  # nothing is timed after this
    summary = summarize_env(raw, hit, cold, pip_config_walls, first)
    return {"requirement": ENV_REQUIREMENT, "reps": reps, "hit_calls": hit_calls,
            "peer_python": python3, "uv": uv_binary(), "warmup": warmup, "raw": raw,
            "hits": hit, "cold_cache": cold, "installed": versions,
            "pip_cache_files_after_warmup": pip_cache_files, "summary": summary}


def first_imports(raw: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Untimed, after the reps: the first import in every good environment of both sides,
    interleaved; each rep gets its ``first_import`` (or ``first_import_error``)."""
    first: dict[str, list[float]] = {name: [] for name in SIDES}
    for pair in zip(*(raw[name] for name in SIDES), strict=True):
        for name, rec in zip(SIDES, pair, strict=True):
            if rec["ok"]:
                try:
                    rec["first_import"] = first_import(rec["interpreter"])
                    first[name].append(rec["first_import"])
                except (subprocess.SubprocessError, OSError) as exc:
                    rec["first_import_error"] = str(exc)
    log("first import: " + ", ".join(f"{name} {statistics.median(v):.2f} s"
                                     for name, v in first.items() if v))
    return first


def installed(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Untimed: the distributions of each side's last good environment (it imports)."""
    versions: dict[str, Any] = {}
    for name in SIDES:
        good = [r for r in raw[name] if r["ok"]]
        try:
            versions[name] = installed_versions(good[-1]["interpreter"]) if good else None
        except (subprocess.SubprocessError, ValueError) as exc:
            versions[name] = {"error": str(exc)}
    log("installed: " + "; ".join(
        f"{name} " + ", ".join(f"{p} {(v or {}).get(p)}" for p in ENV_PACKAGES)
        for name, v in versions.items()))
    return versions


def summarize_env(raw: dict[str, list[dict[str, Any]]], hit: dict[str, Any],
                  cold: dict[str, dict[str, Any]], pip_config_walls: list[float],
                  first: dict[str, list[float]]) -> dict[str, Any]:
    def field_(name: str, key: str) -> dict[str, Any]:
        return summarize([r[key] for r in raw[name] if r["ok"] and r.get(key) is not None])

    summary: dict[str, Any] = {
        "ours_cold": {"wall": field_("ours_cold", "wall"),
                      "resolve": field_("ours_cold", "resolve"),
                      "venv_install": field_("ours_cold", "venv_install"),
                      "failures": sum(not r["ok"] for r in raw["ours_cold"])},
        "ours_hit": {"wall": summarize(hit.get("walls", [])),
                     "failures": sum(not c for c in hit.get("cached", []))},
        "pip": {"wall": field_("pip", "wall"), "venv": field_("pip", "venv"),
                "pip_install": field_("pip", "pip_install"),
                "failures": sum(not r["ok"] for r in raw["pip"])},
        "cold_cache": {name: {"wall": r.get("wall"), "ok": r["ok"]}
                       for name, r in cold.items()},
        "pip_config": summarize(pip_config_walls),
        "first_import": {name: summarize(v) for name, v in first.items()},
    }
    peer_median = summary["pip"]["wall"]["median"]
    summary["ratios"] = {
        "ours_cold_vs_pip": ratio(summary["ours_cold"]["wall"]["median"], peer_median),
        "ours_hit_vs_pip": ratio(summary["ours_hit"]["wall"]["median"], peer_median),
        "ours_min_vs_pip_min": ratio(summary["ours_cold"]["wall"]["min"],
                                     summary["pip"]["wall"]["min"]),
    }
    if cold.get("ours_cold", {}).get("ok") and cold.get("pip", {}).get("ok"):
        summary["ratios"]["cold_cache_ours_vs_pip"] = ratio(cold["ours_cold"]["wall"],
                                                            cold["pip"]["wall"])
    return summary


def checks(envb: dict[str, Any]) -> list[dict[str, Any]]:
    s, raw, inst = envb["summary"], envb["raw"], envb["installed"]
    out = [
        check("env ours cold: every rep built (cached False)",
              s["ours_cold"]["failures"] == 0 and bool(raw["ours_cold"]),
              str([r.get("cached", r.get("error", "?")[-200:]) for r in raw["ours_cold"]])),
        check(f"env ours cache hit: all {envb['hit_calls']} calls cached",
              len(envb["hits"].get("cached", [])) == envb["hit_calls"]
              and s["ours_hit"]["failures"] == 0, str(envb["hits"].get("cached"))),
        check("env pip: every rep succeeded", s["pip"]["failures"] == 0 and bool(raw["pip"]),
              f"{s['pip']['failures']} failed of {len(raw['pip'])}"),
    ]
    ok = all(isinstance(inst.get(n), dict) and "error" not in inst[n] for n in SIDES)
    first_ok = all(r.get("first_import") is not None for n in SIDES for r in raw[n] if r["ok"])
    out.append(check("env: `import sklearn` works in both environments", ok and first_ok,
                     str(inst)[:300]))
    if ok:
        tools = {"pip", "setuptools", "wheel"}  # what `python3 -m venv` seeds
        ours_set = {(k, v) for k, v in inst["ours_cold"].items() if k not in tools}
        pip_set = {(k, v) for k, v in inst["pip"].items() if k not in tools}
        out.append(check("env: both sides installed the same distributions and versions",
                         ours_set == pip_set
                         and ("scikit-learn", inst["pip"].get("scikit-learn")) in ours_set,
                         f"only ours: {sorted(ours_set - pip_set)}, "
                         f"only pip: {sorted(pip_set - ours_set)}"))
    for name, rec in envb["cold_cache"].items():
        out.append(check(f"env cold download cache {name}: succeeded", rec["ok"],
                         rec.get("error", "")[-300:] or "ok"))
    return out


def render(envb: dict[str, Any]) -> list[str]:
    s, cold = envb["summary"], envb["cold_cache"]
    r = s["ratios"]
    n_ours, n_pip = s["ours_cold"]["wall"]["n"], s["pip"]["wall"]["n"]
    lines = [f"### c. Environment build: unpinned `{envb['requirement']}` "
             f"({envb['reps']} interleaved reps each, warm download caches, seconds)", "",
             "| measurement | reps | median | min | max | ours / pip (medians) |",
             "|---|---:|---:|---:|---:|---:|"]

    def add(label: str, st: dict[str, Any], rt: str = "", digits: int = 2,
            scale: float = 1.0) -> None:
        vals = [None if st[k] is None else st[k] * scale for k in ("median", "min", "max")]
        lines.append(f"| {label} | {st['n']} | " + " | ".join(fmt(v, digits) for v in vals)
                     + f" | {rt} |")

    add("**ours, cold**: `build_environment()`, fresh `MLTRAIN_HOME` (resolve + build)",
        s["ours_cold"]["wall"], f"**{fmt_ratio(r['ours_cold_vs_pip'])}**")
    add("↳ of which resolve (`pip config list` + `uv pip compile`)", s["ours_cold"]["resolve"])
    add("↳ of which `uv venv` + `uv pip install` of the lock", s["ours_cold"]["venv_install"])
    add("(diagnostic: the resolve's `pip config list` alone, timed after each build)",
        s["pip_config"])
    add("**ours, cache hit**: the same call again, same `MLTRAIN_HOME` (**ms**)",
        s["ours_hit"]["wall"], fmt_ratio(r["ours_hit_vs_pip"]), 1, 1000.0)
    add(f"peer: `python3 -m venv DIR` + `DIR/bin/pip install {envb['requirement']}`",
        s["pip"]["wall"], "1.00×")
    add("↳ of which `python3 -m venv`", s["pip"]["venv"])
    add("↳ of which `pip install`", s["pip"]["pip_install"])
    if cold:
        lines += ["", "Cold download caches (1 rep each, empty `UV_CACHE_DIR` / "
                  "`PIP_CACHE_DIR`; indicative only):", "",
                  "| measurement | seconds | ours / pip |", "|---|---:|---:|"]
        for name, label in (("ours_cold", "ours, cold, empty uv cache"),
                            ("pip", "peer: venv + pip install, empty pip cache")):
            rec = cold.get(name, {})
            rt = fmt_ratio(r.get("cold_cache_ours_vs_pip")) if name == "ours_cold" else "1.00×"
            lines.append(f"| {label} | {fmt(rec.get('wall')) if rec.get('ok') else 'failed'}"
                         f" | {rt} |")
    fi = s.get("first_import")
    if fi:
        lines += ["", "After the build (not timed above): the first `import sklearn, numpy, "
                  "scipy` in each new environment (uv does not byte-compile, pip does):", "",
                  "| environment | n | median | min | max |", "|---|---:|---:|---:|---:|"]
        for name, label in (("ours_cold", "ours (uv)"), ("pip", "peer (pip)")):
            st = fi[name]
            lines.append(f"| {label} | {st['n']} | {fmt(st['median'])} | {fmt(st['min'])} | "
                         f"{fmt(st['max'])} |")
    inst = envb["installed"]
    if all(isinstance(inst.get(n), dict) for n in SIDES):
        lines += ["", "Installed (both sides): " + ", ".join(
            f"{p} {inst['ours_cold'].get(p)}"
            + ("" if inst["ours_cold"].get(p) == inst["pip"].get(p)
               else f" (pip: {inst['pip'].get(p)})") for p in ENV_PACKAGES)
            + f"; {n_ours} + {n_pip} good reps. Files in pip's download cache after "
            f"the warm-up: {envb['pip_cache_files_after_warmup']}."]
    return [*lines, ""]
