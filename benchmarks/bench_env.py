"""c. ``build_environment()`` of an unpinned ``scikit-learn`` requirement — a new spec in a
home used before, the same in a new MLTRAIN_HOME, ``mltrain env build`` as a fresh process,
and as a cache hit — vs. plain uv (``uv venv`` + ``uv pip install -r``, the same index
options) and ``python3 -m venv`` + ``pip install``, interleaved, with warm download caches
(plus one cold-cache rep of ours, uv and pip)."""

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
    VENV_BIN,
    WORK,
    check,
    clear_build_memos,
    environment_builder,
    fmt,
    fmt_ratio,
    interleaved,
    log,
    log_rep,
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
SIDES = ("ours", "uv", "pip")  # each installs its own environment: all compared
GOAL_VS_UV = 1.15  # ours / plain uv, medians


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
    from prefect_mltrain.pip_settings import index_args

    reps, hit_calls = 2 if args.quick else 5, ENV_HIT_CALLS
    root = scratch("env")  # untimed; the warm-ups absorb the deletion's after-effects
    req = root / "requirements.txt"
    req.write_text(ENV_REQUIREMENT + "\n")
    build_environment = environment_builder(ENV_TIMEOUT)
    python3, uv = real_python3(), uv_binary()
    # The peer gets the index settings ours carries over from pip's (find-links, extra
    # indexes, constraints): the same wheels on both sides.
    uv_index = index_args()
    used_home = root / "home-used"  # a home that has been used: pip's settings are known
    counter = itertools.count()

    def fresh(prefix: str) -> Path:
        return root / f"{prefix}-{next(counter):02d}"

    def empty_env_cache(home: Path) -> None:
        """Untimed: no environment (and no lock) cached in ``home`` any more."""
        shutil.rmtree(home / "cache" / "envs", ignore_errors=True)
        os.sync()  # no dirty pages from the step before

    def ours(new_home: bool = False, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        home = fresh("home") if new_home else used_home
        empty_env_cache(home)
        os.environ["MLTRAIN_HOME"] = str(home)  # read by the library at each call
        os.environ.update(extra_env or {})
        clear_build_memos()  # as a run's runner process, which reads them once, would
        try:
            p0 = time.perf_counter()
            built = build_environment(Environment.from_pip_requirements("sk", req))
            wall = time.perf_counter() - p0
        finally:
            for key in extra_env or {}:
                os.environ.pop(key, None)
        return {"wall": wall, "ok": not built.cached, "cached": built.cached,
                "home": str(home), "interpreter": built.interpreter, "lock": built.lock,
                "miss_reason": built.miss_reason}

    def ours_cli() -> dict[str, Any]:
        home = root / "home-cli"
        empty_env_cache(home)
        p0 = time.perf_counter()
        out = subprocess.run([str(VENV_BIN / "mltrain"), "env", "build", str(req), "--json",
                              "--workspace", str(root / "ws")],
                             env={**os.environ, "MLTRAIN_HOME": str(home)}, cwd=root,
                             capture_output=True, text=True, timeout=ENV_TIMEOUT)
        wall = time.perf_counter() - p0
        if out.returncode != 0:
            return {"wall": wall, "ok": False,
                    "error": f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"}
        info = json.loads(out.stdout)
        return {"wall": wall, "ok": not info["cached"], "cached": info["cached"],
                "interpreter": info["interpreter"]}

    def plain_uv(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        venv = fresh("uv-venv")
        env = {**os.environ, **(extra_env or {})}
        os.sync()
        p0 = time.perf_counter()
        out = subprocess.run([uv, "venv", str(venv), "--quiet"], env=env, capture_output=True,
                             text=True, timeout=ENV_TIMEOUT)
        if out.returncode == 0:
            out = subprocess.run([uv, "pip", "install", "--quiet", "--python",
                                  str(venv / "bin" / "python"), "-r", str(req), *uv_index],
                                 env=env, capture_output=True, text=True, timeout=ENV_TIMEOUT)
        rec = {"wall": time.perf_counter() - p0, "ok": out.returncode == 0,
               "interpreter": str(venv / "bin" / "python")}
        if not rec["ok"]:
            rec["error"] = f"exit {out.returncode}\n{tail(out.stdout)}\n{tail(out.stderr)}"
        return rec

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

    def hits(home: str) -> dict[str, Any]:
        os.environ["MLTRAIN_HOME"] = home
        walls, cached = [], []
        for _ in range(hit_calls):
            p0 = time.perf_counter()
            built = build_environment(Environment.from_pip_requirements("sk", req))
            walls.append(time.perf_counter() - p0)
            cached.append(built.cached)
        return {"walls": walls, "cached": cached, "ok": all(cached)}

    def pip_config_list() -> float:
        """What a first use on a machine asks pip once (diagnostic, untimed above)."""
        p0 = time.perf_counter()
        subprocess.run([str(VENV_BIN / "python"), "-m", "pip", "config", "list"],
                       capture_output=True, timeout=60, check=True)
        return time.perf_counter() - p0

    variants: dict[str, Callable[[], dict[str, Any]]] = {
        "ours": ours, "uv": plain_uv, "ours_new_home": lambda: ours(new_home=True),
        "ours_cli": ours_cli, "pip": peer}
    with default_caches():  # the warm-ups fill ~/.cache/uv and ~/.cache/pip with the wheels
        warmup, raw = interleaved(variants, reps)
        pip_cache = Path.home() / ".cache" / "pip"  # pip's default; PIP_CACHE_DIR is unset
        pip_cache_files = sum(1 for f in pip_cache.rglob("*") if f.is_file())
        good = [r for r in raw["ours"] if r["ok"]]
        hit = hits(good[-1]["home"]) if good else {}  # the same call again, same home
        if hit:
            log(f"cache hit: median {statistics.median(hit['walls']) * 1000:.1f} ms "
                f"of {hit_calls} calls, all cached={hit['ok']}")
        pip_config_walls = [pip_config_list() for _ in range(reps)]
        cold: dict[str, dict[str, Any]] = {}
        if not args.no_cold_cache:  # one labelled rep each with empty download caches
            for name, variant, key in (("ours", ours, "UV_CACHE_DIR"),
                                       ("uv", plain_uv, "UV_CACHE_DIR"),
                                       ("pip", peer, "PIP_CACHE_DIR")):
                cold[name] = try_rep(lambda v=variant, k=key: v(
                    extra_env={k: str(fresh("download-cache"))}))
                log_rep(f"cold download cache: {name} (empty {key})", cold[name])
        first = first_imports(raw)
        versions = installed(raw)
    shutil.rmtree(root, ignore_errors=True)  # nothing is timed after this
    summary = summarize_env(raw, hit, cold, pip_config_walls, first)
    return {"requirement": ENV_REQUIREMENT, "reps": reps, "hit_calls": hit_calls,
            "peer_python": python3, "uv": uv, "uv_index_args": uv_index, "warmup": warmup,
            "raw": raw, "hits": hit, "cold_cache": cold, "installed": versions,
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
    def field_(name: str, key: str = "wall") -> dict[str, Any]:
        return summarize([r[key] for r in raw[name] if r["ok"] and r.get(key) is not None])

    summary: dict[str, Any] = {
        **{name: {"wall": field_(name), "failures": sum(not r["ok"] for r in raw[name])}
           for name in raw},
        "ours_hit": {"wall": summarize(hit.get("walls", [])),
                     "failures": sum(not c for c in hit.get("cached", []))},
        "cold_cache": {name: {"wall": r.get("wall"), "ok": r["ok"]}
                       for name, r in cold.items()},
        "pip_config": summarize(pip_config_walls),
        "first_import": {name: summarize(v) for name, v in first.items()},
    }
    summary["pip"].update(venv=field_("pip", "venv"), pip_install=field_("pip", "pip_install"))
    median = {name: summary[name]["wall"]["median"] for name in (*raw, "ours_hit")}
    summary["ratios"] = {
        **{f"{name}_vs_uv": ratio(median[name], median["uv"])
           for name in ("ours", "ours_new_home", "ours_cli", "pip")},
        **{f"{name}_vs_pip": ratio(median[name], median["pip"])
           for name in ("ours", "ours_hit", "uv")},
    }
    walls = {name: rec["wall"] for name, rec in cold.items() if rec["ok"]}
    if "ours" in walls and "uv" in walls:
        summary["ratios"]["cold_cache_ours_vs_uv"] = ratio(walls["ours"], walls["uv"])
    if "ours" in walls and "pip" in walls:
        summary["ratios"]["cold_cache_ours_vs_pip"] = ratio(walls["ours"], walls["pip"])
    return summary


def checks(envb: dict[str, Any]) -> list[dict[str, Any]]:
    s, raw, inst = envb["summary"], envb["raw"], envb["installed"]
    out = [check(f"env {name}: every rep built (cached False)",
                 s[name]["failures"] == 0 and bool(raw[name]),
                 str([r.get("cached", r.get("error", "?")[-200:]) for r in raw[name]]))
           for name in ("ours", "ours_new_home", "ours_cli")]
    out += [
        check(f"env ours cache hit: all {envb['hit_calls']} calls cached",
              len(envb["hits"].get("cached", [])) == envb["hit_calls"]
              and s["ours_hit"]["failures"] == 0, str(envb["hits"].get("cached"))),
        *(check(f"env {name}: every rep succeeded", s[name]["failures"] == 0 and bool(raw[name]),
                f"{s[name]['failures']} failed of {len(raw[name])}") for name in ("uv", "pip")),
    ]
    ok = all(isinstance(inst.get(n), dict) and "error" not in inst[n] for n in SIDES)
    first_ok = all(r.get("first_import") is not None for n in SIDES for r in raw[n] if r["ok"])
    out.append(check("env: `import sklearn` works in every environment", ok and first_ok,
                     str(inst)[:300]))
    if ok:
        tools = {"pip", "setuptools", "wheel"}  # what `python3 -m venv` seeds
        sets = {n: {(k, v) for k, v in inst[n].items() if k not in tools} for n in SIDES}
        out.append(check("env: ours, uv and pip installed the same distributions and versions",
                         sets["ours"] == sets["uv"] == sets["pip"]
                         and ("scikit-learn", inst["pip"].get("scikit-learn")) in sets["ours"],
                         f"only ours vs pip: {sorted(sets['ours'] - sets['pip'])}, only pip: "
                         f"{sorted(sets['pip'] - sets['ours'])}, only uv: "
                         f"{sorted(sets['uv'] - sets['ours'])}"))
    for name, rec in envb["cold_cache"].items():
        out.append(check(f"env cold download cache {name}: succeeded", rec["ok"],
                         rec.get("error", "")[-300:] or "ok"))
    return out


def render(envb: dict[str, Any]) -> list[str]:
    s, cold, r = envb["summary"], envb["cold_cache"], envb["summary"]["ratios"]
    req = envb["requirement"]
    lines = [f"### c. Environment build: unpinned `{req}` ({envb['reps']} interleaved reps "
             "each, warm download caches, seconds)", "",
             "| measurement | reps | median | min | max | / plain uv | / venv + pip |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def add(label: str, st: dict[str, Any], vs_uv: str = "", vs_pip: str = "",
            digits: int = 2, scale: float = 1.0) -> None:
        vals = [None if st[k] is None else st[k] * scale for k in ("median", "min", "max")]
        lines.append(f"| {label} | {st['n']} | " + " | ".join(fmt(v, digits) for v in vals)
                     + f" | {vs_uv} | {vs_pip} |")

    goal = r["ours_vs_uv"] is not None and r["ours_vs_uv"] <= GOAL_VS_UV
    add("**ours**: `build_environment()` of a new spec (resolve + build), in a home used "
        "before (no environment or lock cached)", s["ours"]["wall"],
        f"**{fmt_ratio(r['ours_vs_uv'])}** (goal ≤ {GOAL_VS_UV}×: "
        f"{'met' if goal else 'not met'})", fmt_ratio(r["ours_vs_pip"]))
    add("ours, the same in a new `MLTRAIN_HOME` (first use on a machine: asks pip for its "
        "settings)", s["ours_new_home"]["wall"], fmt_ratio(r["ours_new_home_vs_uv"]))
    add("ours, `mltrain env build requirements.txt --json`, a fresh process, home used before",
        s["ours_cli"]["wall"], fmt_ratio(r["ours_cli_vs_uv"]))
    add("**ours, cache hit**: the same call again (**ms**)", s["ours_hit"]["wall"],
        "", fmt_ratio(r["ours_hit_vs_pip"]), 1, 1000.0)
    add("peer: `uv venv DIR` + `uv pip install --python DIR/bin/python -r requirements.txt` "
        "(with the same index options)", s["uv"]["wall"], "1.00×", fmt_ratio(r["uv_vs_pip"]))
    add(f"peer: `python3 -m venv DIR` + `DIR/bin/pip install {req}`", s["pip"]["wall"],
        fmt_ratio(r["pip_vs_uv"]), "1.00×")
    add("↳ of which `python3 -m venv`", s["pip"]["venv"])
    add("↳ of which `pip install`", s["pip"]["pip_install"])
    add("(diagnostic: `python -m pip config list`, what a first use asks pip once)",
        s["pip_config"])
    if cold:
        lines += ["", "Cold download caches (1 rep each, empty `UV_CACHE_DIR` / "
                  "`PIP_CACHE_DIR`; indicative only):", "",
                  "| measurement | seconds | / plain uv | / venv + pip |", "|---|---:|---:|---:|"]
        for name, label in (("ours", "ours, empty uv cache"),
                            ("uv", "peer: plain uv, empty uv cache"),
                            ("pip", "peer: venv + pip install, empty pip cache")):
            rec = cold.get(name, {})
            vs = ((fmt_ratio(r.get("cold_cache_ours_vs_uv")), fmt_ratio(r.get(
                "cold_cache_ours_vs_pip"))) if name == "ours" else
                  ("1.00×", "") if name == "uv" else ("", "1.00×"))
            lines.append(f"| {label} | {fmt(rec.get('wall')) if rec.get('ok') else 'failed'}"
                         f" | {vs[0]} | {vs[1]} |")
    fi = s.get("first_import")
    if fi:
        lines += ["", "After the build (not timed above): the first `import sklearn, numpy, "
                  "scipy` in each new environment (uv does not byte-compile, pip does):", "",
                  "| environment | n | median | min | max |", "|---|---:|---:|---:|---:|"]
        for name, label in (("ours", "ours (uv)"), ("uv", "plain uv"), ("pip", "peer (pip)")):
            st = fi[name]
            lines.append(f"| {label} | {st['n']} | {fmt(st['median'])} | {fmt(st['min'])} | "
                         f"{fmt(st['max'])} |")
    inst = envb["installed"]
    if all(isinstance(inst.get(n), dict) for n in SIDES):
        lines += ["", "Installed (every side): " + ", ".join(
            f"{p} {inst['ours'].get(p)}"
            + ("" if inst["ours"].get(p) == inst["pip"].get(p) == inst["uv"].get(p)
               else f" (pip: {inst['pip'].get(p)}, uv: {inst['uv'].get(p)})")
            for p in ENV_PACKAGES)
            + f". Files in pip's download cache after the warm-up: "
            f"{envb['pip_cache_files_after_warmup']}. Index options of both uv sides: "
            f"`{' '.join(envb.get('uv_index_args') or []) or 'none'}`."]
    return [*lines, ""]
