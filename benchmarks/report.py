"""The markdown report and the checks of a run: a header saying what was measured where, then
each benchmark's section (its module renders it), then the checks."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import bench_cancel
import bench_dist
import bench_docker
import bench_env
import bench_noop
import bench_pool
import bench_snapshot
import bench_spark
import bench_sweep
from harness import check

# The benchmarks in the order they run and are reported (README's a–i), by their --only name.
# Each module has TITLE, run(args) -> its numbers, checks(numbers) and render(numbers); the
# Docker and Spark ones also unavailable() and render_skipped(reason), the no-op one install_peer().
BENCHMARKS: dict[str, ModuleType] = {
    "noop": bench_noop,
    "snapshot": bench_snapshot,
    "env": bench_env,
    "docker": bench_docker,
    "dist": bench_dist,
    "pool": bench_pool,
    "cancel": bench_cancel,
    "sweep": bench_sweep,
    "spark": bench_spark,
}


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every benchmark's checks over its numbers in ``results``, then one failed check per
    benchmark that raised; a run of a library with uncommitted edits fails, whatever it
    measured (its numbers belong to no commit)."""
    versions = results.get("versions") or {}
    edited = ("had uncommitted edits" if versions.get("library_dirty") else
              "changed during the run" if versions.get("library_changed_during_run") else None)
    out = [check("the library measured is a commit", not edited,
                 f"prefect_mltrain/ {edited or 'as committed'}"
                 + (": commit (or stash) the edits and run again" if edited else ""))]
    for name, module in BENCHMARKS.items():
        if results.get(name):
            try:
                out += module.checks(results[name])
            except (KeyError, TypeError) as exc:  # kept numbers of an older benchmark
                out.append(check(f"{name}: numbers in this benchmark's form", False,
                                 f"missing {exc}: run `--only {name}` again"))
    for name in BENCHMARKS:
        if results.get(f"{name}_error"):
            out.append(check(f"{name} benchmark ran", False,
                             results[f"{name}_error"].splitlines()[-1]))
    return out


def _load(load: list[float] | tuple[float, ...] | None) -> str:
    return "–" if not load else "/".join(f"{x:.1f}" for x in load)


def header(results: dict[str, Any]) -> str:
    """When, how, on what and which code: the report's first line."""
    versions, machine = results["versions"], results["machine"]
    return (f"prefect-mltrain benchmarks, {results['date']} ({results['mode']} mode); "
            f"{machine['nproc']} cores, Python {machine['python']}, "
            f"commit {(versions.get('commit') or '?')[:9]}"
            f"{' + local edits' if versions.get('library_dirty') else ''}"
            f"{' (CHANGED during the run)' if versions.get('library_changed_during_run') else ''}"
            f", prefect {versions.get('prefect')}"
            + (f", mlflow {versions['mlflow']}" if versions.get("mlflow") else "")
            + "; load average "
            f"{_load(machine.get('loadavg_at_start'))} at start, "
            f"{_load(machine.get('loadavg_at_end'))} at end")


def markdown(results: dict[str, Any]) -> str:
    lines = [header(results), ""]
    for name, module in BENCHMARKS.items():
        if results.get(f"{name}_skipped"):
            lines += module.render_skipped(results[f"{name}_skipped"])
        if results.get(name):
            lines += module.render(results[name])
    bad = [c for c in results["checks"] if not c["ok"]]
    lines.append("Checks: " + ("all passed" if not bad else
                               "FAILED: " + "; ".join(f"{c['check']} ({c['detail']})"
                                                      for c in bad)))
    return "\n".join(lines)
