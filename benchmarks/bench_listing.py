"""k. Finding runs at 10,000 runs in one experiment, on a local folder and on an S3 API
(moto_server on loopback): ``mltrain runs list`` (its first page, 50 rows; in process and as
a fresh CLI process), ``get_runs(tags=...)``, and ``get_children()`` of a parent with 1,000
children; against reading every record (what each of them did before the index). The
records are generated (not runs), and the index is built from them by ``reindex``, timed
too. Interleaved reps, medians."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    check,
    fmt,
    fmt_ratio,
    interleaved,
    log,
    ratio,
    scratch,
    summarize,
)

TITLE = "Finding runs at 10,000 runs"
N_RUNS, N_CHILDREN, PAGE = 10_000, 1_000, 50
GOALS = {"local": 0.5, "s3": 2.0}  # seconds: the first page and the children
REPS, QUICK_REPS = 5, 3
CLI_TIMEOUT = 120.0
EXPERIMENT = "scale"


def _records(n: int, children: int, project: Path) -> tuple[str, list[Any]]:
    """``n`` records one second apart, the 101st a parent of the next ``children``; every
    tenth tagged ``kind=b``; each with a submitted configuration, as real runs have."""
    from prefect_mltrain import ScriptRunConfig
    from prefect_mltrain.records import RunRecord, RunStatus

    project.mkdir(parents=True, exist_ok=True)
    (project / "train.py").write_text("print('trained')\n")
    config = ScriptRunConfig(source_directory=str(project), script="train.py",
                             arguments=["--lr", "0.01", "--epochs", "10"])
    t0, out, parent = 1.7e9, [], ""
    for i in range(n):
        run_id = f"{EXPERIMENT}_{int((t0 + i) * 1000)}_{i:08x}"
        if i == 100:
            parent = run_id
        child = 100 < i <= 100 + children
        rec = RunRecord(run_id=run_id, experiment=EXPERIMENT, created_at=t0 + i, number=i + 1,
                        parent_run_id=parent if child else None,
                        config=None if child else config,
                        tags={"kind": "b" if i % 10 == 0 else "a"})
        for status in (RunStatus.NOT_STARTED, RunStatus.QUEUED, RunStatus.RUNNING,
                       RunStatus.COMPLETED):
            rec.move_to(status)
        out.append(rec)
    return parent, out


def _write(ws: Any, records: list[Any]) -> None:
    from prefect_mltrain.layout import RECORD, run_dir

    for start in range(0, len(records), 1000):
        ws.write_many({f"{run_dir(EXPERIMENT, r.run_id)}/{RECORD}": r.to_json()
                       for r in records[start:start + 1000]})


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from s3_server import moto_s3

    reps = QUICK_REPS if args.quick else REPS
    root = scratch("listing")
    t = time.perf_counter()
    parent, records = _records(N_RUNS, N_CHILDREN, root / "proj")
    log(f"{N_RUNS} records made in {time.perf_counter() - t:.1f} s")
    out: dict[str, Any] = {"n_runs": N_RUNS, "n_children": N_CHILDREN, "page": PAGE,
                           "reps": reps}
    out["local"] = _case({"url": str(root / "ws")}, root / "local", parent, records, reps)
    with moto_s3() as s3:
        out["s3"] = _case({"url": f"{s3['url']}-scale", "storage_options":
                           s3["storage_options"]}, root / "s3", parent, records, reps)
    return out


def _case(where: dict[str, Any], folder: Path, parent: str, records: list[Any],
          reps: int) -> dict[str, Any]:
    from prefect_mltrain import Experiment, Workspace
    from prefect_mltrain.cli import main as cli
    from prefect_mltrain.run import Run
    from prefect_mltrain.store import RunStore

    folder.mkdir(parents=True)
    (folder / "mltrain.json").write_text(json.dumps(where))  # the CLI's workspace
    ws = Workspace(where["url"], where.get("storage_options"))
    name = "s3" if "://" in where["url"] else "local"
    t = time.perf_counter()
    _write(ws, records)
    written = time.perf_counter() - t
    t = time.perf_counter()
    added, _ = RunStore(ws).reindex(EXPERIMENT)
    reindexed = time.perf_counter() - t
    log(f"{name}: {len(records)} records written in {written:.1f} s, indexed ({added} "
        f"entries) in {reindexed:.1f} s")
    top = len(records) - N_CHILDREN
    tagged = sum(1 for r in records if r.tags["kind"] == "b" and not r.parent_run_id)

    def fresh() -> tuple[Any, Any]:  # new objects; the fsspec filesystem stays (as in a session)
        w = Workspace(where["url"], where.get("storage_options"))
        return w, Experiment(w, EXPERIMENT)

    def runs_list() -> dict[str, Any]:
        buf = io.StringIO()
        argv = ["runs", "list", "-e", EXPERIMENT, "--limit", str(PAGE), "--json"]
        with contextlib.chdir(folder), contextlib.redirect_stdout(buf):
            t0 = time.perf_counter()
            code = cli(argv)
            wall = time.perf_counter() - t0
        rows = json.loads(buf.getvalue())
        ok = code == 0 and len(rows) == PAGE and rows[0]["run_id"] == records[-1].run_id
        return {"wall": wall, "ok": ok, "rows": len(rows)}

    def runs_list_cli() -> dict[str, Any]:
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "mltrain"), "runs", "list",
                               "-e", EXPERIMENT, "--limit", str(PAGE), "--json"],
                              cwd=folder, capture_output=True, text=True, timeout=CLI_TIMEOUT)
        wall = time.perf_counter() - t0
        rows = json.loads(proc.stdout) if proc.returncode == 0 else []
        return {"wall": wall, "ok": len(rows) == PAGE, "rows": len(rows),
                **({"error": proc.stderr[-2000:]} if proc.returncode else {})}

    def tags() -> dict[str, Any]:
        _, exp = fresh()
        t0 = time.perf_counter()
        found = exp.get_runs(tags={"kind": "b"})
        return {"wall": time.perf_counter() - t0, "ok": len(found) == tagged}

    def children() -> dict[str, Any]:
        _, exp = fresh()
        t0 = time.perf_counter()
        kids = Run(exp, parent).get_children()
        return {"wall": time.perf_counter() - t0, "ok": len(kids) == N_CHILDREN}

    def children_records() -> dict[str, Any]:
        w, _ = fresh()
        t0 = time.perf_counter()
        kids = RunStore(w).children(EXPERIMENT, parent)
        ok = len(kids) == N_CHILDREN and all(k.status == "Completed" for k in kids)
        return {"wall": time.perf_counter() - t0, "ok": ok}

    def every_record() -> dict[str, Any]:  # what runs list, get_runs and get_children did
        w, _ = fresh()
        t0 = time.perf_counter()
        found = RunStore(w).records(EXPERIMENT)
        return {"wall": time.perf_counter() - t0, "ok": len(found) == len(records)}

    variants = {"runs_list": runs_list, "runs_list_cli": runs_list_cli,
                "children": children, "children_records": children_records}
    whole = {"tags": tags, "every_record": every_record}  # every record: minutes on moto
    log(f"{name}: {', '.join(variants)}, {reps} reps")
    warmup, raw = interleaved(variants, reps)
    once = 1 if name == "s3" else reps  # moto answers ~180 reads/s: one rep, no warm-up
    log(f"{name}: {', '.join(whole)}, {once} rep(s)")
    if once == reps:
        more_warmup, more = interleaved(whole, reps)
        warmup.update(more_warmup)
    else:
        more = {k: [v()] for k, v in whole.items()}
    raw.update(more)
    variants.update(whole)
    summary = {k: summarize([r["wall"] for r in recs if r.get("ok")]) for k, recs in raw.items()}
    summary["ratios"] = {f"{k}_vs_every_record": ratio(summary[k]["median"],
                                                       summary["every_record"]["median"])
                         for k in variants if k != "every_record"}
    return {"write_seconds": written, "reindex_seconds": reindexed, "top_level": top,
            "tagged": tagged, "warmup": warmup, "raw": raw, "summary": summary}


def checks(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for case in ("local", "s3"):
        for name, recs in data[case]["raw"].items():
            bad = [r for r in recs if not r.get("ok")]
            out.append(check(f"listing {case} {name}: every rep found what was generated",
                             recs and not bad, f"{len(bad)} failed of {len(recs)}"))
    return out


def render(data: dict[str, Any]) -> list[str]:
    labels = {
        "runs_list": f"**`mltrain runs list`, first page ({data['page']} rows), in process**",
        "runs_list_cli": "`mltrain runs list` as a fresh CLI process (interpreter, imports)",
        "tags": "`get_runs(tags={'kind': 'b'})` (reads every top-level record and its events)",
        "children": f"**`get_children()` of a parent with {data['n_children']:,} children**",
        "children_records": "its children's records (`RunStore.children`, read at once)",
        "every_record": "before the index: every record read (what each of these did)",
    }
    lines = [f"### k. Finding runs at {data['n_runs']:,} runs in one experiment "
             f"({data['reps']} interleaved reps, medians, seconds)", "",
             "| measurement | local median | local min | S3 (moto) median | S3 min | local / every "
             "record | S3 / every record |", "|---|---:|---:|---:|---:|---:|---:|"]
    loc, s3 = data["local"]["summary"], data["s3"]["summary"]
    for key, label in labels.items():
        r = ("", "") if key == "every_record" else (
            fmt_ratio(loc["ratios"][f"{key}_vs_every_record"]),
            fmt_ratio(s3["ratios"][f"{key}_vs_every_record"]))
        lines.append(f"| {label} | {fmt(loc[key]['median'], 3)} | {fmt(loc[key]['min'], 3)} "
                     f"| {fmt(s3[key]['median'], 3)} | {fmt(s3[key]['min'], 3)} | {r[0]} | {r[1]} |")
    lines += ["", f"Building the index from the records (`reindex`, once): local "
              f"{fmt(data['local']['reindex_seconds'])} s, S3 {fmt(data['s3']['reindex_seconds'])} s.",
              ""]
    for case in ("local", "s3"):
        goal, st = GOALS[case], data[case]["summary"]
        worst = max(st["runs_list"]["median"] or 1e9, st["children"]["median"] or 1e9)
        lines.append(f"Goal {case}: first page and children ≤ {goal} s: "
                     f"{'met' if worst <= goal else 'NOT met'} (slower of the two "
                     f"{fmt(worst, 3)} s).")
    return [*lines, ""]
