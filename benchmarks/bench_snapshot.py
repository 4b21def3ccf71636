"""b. Re-snapshot of an unchanged 10,000-file tree vs. ``os.walk + os.stat`` of every file (the
floor) and ``shutil.copytree`` of the same tree."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from harness import (
    SNAPSHOT_STAT_CACHE,
    check,
    fmt,
    fmt_ratio,
    log,
    ratio,
    scratch,
    snapshot_taker,
    summarize,
)

TITLE = "snapshot"


def make_tree(root: Path, n_files: int) -> None:
    """``n_files`` small files, each with distinct content, in nested folders."""
    per_leaf = 50
    for i in range(n_files):
        leaf = i // per_leaf
        folder = root / f"pkg{leaf // 10:02d}" / f"mod{leaf % 10}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        body = f"# generated file {i}\nVALUE = {i * 7919 % 100003}\n" + "x = 1\n" * (i % 40)
        (folder / f"f{i:05d}.py").write_text(body)


def stat_walk(root: Path) -> int:
    """The floor for "only stat calls": list every folder and stat every file."""
    count = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            os.stat(os.path.join(dirpath, name))
            count += 1
    return count


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prefect_mltrain import Workspace

    take_snapshot = snapshot_taker()
    n_files = args.files
    # reps of the unchanged re-snapshot, of the cold ones, of one file changed
    reps, cold_reps, change_reps = (3, 1, 2) if args.quick else (5, 3, 3)
    root = scratch("snapshot")
    tree = root / "tree"
    t = time.perf_counter()
    make_tree(tree, n_files)
    log(f"generated {n_files} files in {time.perf_counter() - t:.1f} s")
    budget = {"max_files": 2 * n_files}
    # Write-heavy steps get fresh folders and nothing is deleted until the end: on this VM's
    # disk (ext4 mounted with `discard`) a mass delete slows the writes of the next seconds.
    ws_dir = root / "ws-0"

    def snap(label: str) -> dict[str, Any]:
        ws = Workspace(str(ws_dir))
        p0 = time.perf_counter()
        res = take_snapshot(ws, tree, **budget)
        wall = time.perf_counter() - p0
        rec = {"wall": wall, "snapshot_id": res.snapshot_id, "file_count": res.file_count,
               "total_bytes": res.total_bytes, "hashed_files": res.hashed_files,
               "uploaded_files": res.uploaded_files, "uploaded_bytes": res.uploaded_bytes}
        log(f"{label}: {wall:.3f} s hashed={res.hashed_files} uploaded={res.uploaded_files}")
        return rec

    def copytree(dst: Path) -> float:
        os.sync()  # start with no dirty pages from the step before, like the cold snapshot
        p0 = time.perf_counter()
        shutil.copytree(tree, dst)
        return time.perf_counter() - p0

    def walk() -> float:
        p0 = time.perf_counter()
        count = stat_walk(tree)
        wall = time.perf_counter() - p0
        if count != n_files:
            raise RuntimeError(f"stat walk saw {count} files, expected {n_files}")
        return wall

    raw: dict[str, list[Any]] = {"cold": [], "copytree": [], "rehash_no_upload": [],
                                 "unchanged": [], "stat_walk": [], "one_changed": []}
    log(f"untimed warm-up copy: {copytree(root / 'copy-warmup'):.3f} s")
    # Cold: empty workspace and no stat cache, so every file is hashed and uploaded.
    for i in range(cold_reps):
        ws_dir = root / f"ws-{i}"
        shutil.rmtree(SNAPSHOT_STAT_CACHE, ignore_errors=True)
        os.sync()
        raw["cold"].append(snap(f"cold {i + 1}/{cold_reps}"))
        raw["copytree"].append(copytree(root / f"copy-{i}"))
        log(f"copytree {i + 1}/{cold_reps}: {raw['copytree'][-1]:.3f} s")
    # The stat cache lost (a new machine, same workspace): hash everything, upload nothing.
    for i in range(cold_reps):
        shutil.rmtree(SNAPSHOT_STAT_CACHE, ignore_errors=True)
        raw["rehash_no_upload"].append(snap(f"no stat cache {i + 1}/{cold_reps}"))
    time.sleep(0.05)  # the stat cache trusts only files older than itself (racy-clean rule)
    # Unchanged re-snapshot, interleaved with the stat-walk floor.
    for i in range(reps):
        for key in ("unchanged", "stat_walk") if i % 2 == 0 else ("stat_walk", "unchanged"):
            if key == "unchanged":
                raw[key].append(snap(f"unchanged {i + 1}/{reps}"))
            else:
                raw[key].append(walk())
        log(f"stat walk {i + 1}/{reps}: {raw['stat_walk'][-1]:.3f} s")
    # One file changed: it alone is hashed and uploaded.
    victim = next(iter(sorted(tree.rglob("f00007.py"))))
    for i in range(change_reps):
        with open(victim, "a") as f:
            f.write(f"# edit {i} {time.time()}\n")
        raw["one_changed"].append(snap(f"one file changed {i + 1}/{change_reps}"))
    shutil.rmtree(root, ignore_errors=True)  # ~100,000 files; nothing is timed after this
    return {"n_files": n_files, "reps": reps, "cold_reps": cold_reps,
            "change_reps": change_reps, "raw": raw, "summary": summarize_snapshot(raw)}


def summarize_snapshot(raw: dict[str, list[Any]]) -> dict[str, Any]:
    def walls(key: str) -> list[float]:
        return [r["wall"] if isinstance(r, dict) else r for r in raw[key]]

    summary = {key: summarize(walls(key)) for key in raw}
    med = {key: summary[key]["median"] for key in raw}
    summary["ratios"] = {
        "unchanged_vs_stat_walk": ratio(med["unchanged"], med["stat_walk"]),
        "unchanged_vs_cold": ratio(med["unchanged"], med["cold"]),
        "cold_vs_copytree": ratio(med["cold"], med["copytree"]),
        "one_changed_vs_stat_walk": ratio(med["one_changed"], med["stat_walk"]),
        "rehash_no_upload_vs_cold": ratio(med["rehash_no_upload"], med["cold"]),
    }
    return summary


def checks(snap: dict[str, Any]) -> list[dict[str, Any]]:
    n, raw = snap["n_files"], snap["raw"]

    def counts(key: str) -> str:
        return str([(r["hashed_files"], r["uploaded_files"]) for r in raw[key]])

    def all_counted(key: str, hashed: int, uploaded: int) -> bool:
        return all(r["hashed_files"] == hashed and r["uploaded_files"] == uploaded
                   for r in raw[key])

    return [
        check("snapshot cold: every file hashed and uploaded", all_counted("cold", n, n),
              counts("cold")),
        check("snapshot without stat cache: all hashed, none uploaded",
              all_counted("rehash_no_upload", n, 0), counts("rehash_no_upload")),
        check("snapshot unchanged: 0 hashed, 0 uploaded, same id",
              all_counted("unchanged", 0, 0)
              and all(r["snapshot_id"] == raw["cold"][-1]["snapshot_id"]
                      for r in raw["unchanged"]), counts("unchanged")),
        check("snapshot one file changed: 1 hashed, 1 uploaded",
              all_counted("one_changed", 1, 1), counts("one_changed")),
    ]


def render(snap: dict[str, Any]) -> list[str]:
    s, raw, ratios = snap["summary"], snap["raw"], snap["summary"]["ratios"]

    def counts(key: str) -> str:
        pairs = sorted({(r["hashed_files"], r["uploaded_files"]) for r in raw[key]})
        return ", ".join(f"{h} / {u}" for h, u in pairs)

    lines = [f"### b. Snapshot of a {snap['n_files']:,}-file tree (seconds)", "",
             "| measurement | reps | median | min | hashed / uploaded | ratio |",
             "|---|---:|---:|---:|---:|---|"]
    rows = [("first snapshot (cold: empty store, no stat cache)", "cold", counts("cold"),
             f"{fmt_ratio(ratios['cold_vs_copytree'])} copytree"),
            ("peer: `shutil.copytree` of the tree", "copytree", "–", ""),
            ("same store, stat cache lost (re-hash, no upload)", "rehash_no_upload",
             counts("rehash_no_upload"),
             f"{fmt_ratio(ratios['rehash_no_upload_vs_cold'])} cold"),
            ("**re-snapshot, unchanged tree**", "unchanged", counts("unchanged"),
             f"**{fmt_ratio(ratios['unchanged_vs_stat_walk'])} stat walk**, "
             f"{fmt_ratio(ratios['unchanged_vs_cold'])} cold"),
            ("floor: `os.walk` + `os.stat` of every file", "stat_walk", "–", ""),
            ("re-snapshot, one file changed", "one_changed", counts("one_changed"),
             f"{fmt_ratio(ratios['one_changed_vs_stat_walk'])} stat walk")]
    for label, key, hu, r in rows:
        st = s[key]
        lines.append(f"| {label} | {st['n']} | {fmt(st['median'], 3)} | {fmt(st['min'], 3)} "
                     f"| {hu} | {r} |")
    return [*lines, ""]
