"""Speed benchmarks of prefect-mltrain, each against a peer measured in the same run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/run.py            # full: ~7 reps per no-op variant
    .venv/bin/python benchmarks/run.py --quick    # 3 reps, for a smoke check
    .venv/bin/python benchmarks/run.py --only env # one benchmark (noop, snapshot, env, docker,
                                                  # dist, pool, cancel, sweep, spark, data, listing,
                                                  # throughput)

Prints a markdown table and writes the raw numbers to ``benchmarks/results.json``.
Scratch files (the MLflow peer's venv, workspaces, generated trees) live in
``benchmarks/.work/`` (gitignored). See ``benchmarks/README.md`` for what is measured.

Benchmarks, one module each (``bench_NAME.py``; ``harness.py`` holds what they share and
``report.py`` the markdown):
  noop      a no-op script run end to end on local compute: ``mltrain submit`` (a fresh CLI
            process) and ``Experiment.submit() + wait_for_completion()`` (in process) vs.
            ``mlflow run --env-manager local`` with sqlite tracking, interleaved.
  snapshot  re-snapshot of an unchanged 10,000-file tree vs. ``os.walk + os.stat`` of
            every file (the floor) and ``shutil.copytree`` of the same tree.
  env       ``build_environment()`` of an unpinned ``scikit-learn`` requirement, cold (fresh
            MLTRAIN_HOME) and as a cache hit, vs. ``python3 -m venv`` + ``pip install``,
            interleaved, with warm download caches (plus one cold-cache rep of each).
  docker    a no-op run on the Docker target (``DockerCompute``, image cached) vs. ``docker run``
            of the same image and script, interleaved. In the full run only when a Docker
            engine answers and the image exists; otherwise recorded as skipped, with why.
  dist      4 ranks of a no-op ``torch.distributed`` (gloo) script: ``PyTorchConfiguration`` on
            local compute and on ``DaskCompute`` (a loopback cluster of 2 hosts × 2 workers)
            vs. ``torchrun --standalone --nproc-per-node 4`` and the ranks started by hand (the
            floor); mpi4py under ``MpiConfiguration`` vs. ``mpiexec -n 4``; interleaved.
  pool      a no-op run through a work pool and a real ``prefect worker``: ``Experiment.submit()``
            to a pooled ``LocalCompute`` target vs. ``run_deployment()`` of a no-op ``@flow``
            deployed to the same pool (Prefect's floor), and the same submit on local compute;
            interleaved.
  cancel    ``run.cancel()`` → ``Canceled`` of a script that exits on SIGTERM, on local
            compute, a loopback Dask cluster and (with an engine) the Docker target, vs. a
            SIGTERM to the same script started by hand; interleaved.
  sweep     a HyperDrive sweep of 40 trials of a 1 s script, 4 at once, vs. an Optuna study
            running the same script as a subprocess per trial (``n_jobs=4``); and the
            trial-seconds a ``BanditPolicy`` saves on a synthetic learning curve vs. the same
            sweep (same seed) with no policy; interleaved.

  spark     a ~20 s pyspark job as a ``framework="pyspark"`` run on local compute
            (``local[*]``) vs. a bare ``spark-submit`` of the same script; interleaved. In
            the full run only when pyspark and a Java it runs on are here.
  data      data inputs from a datastore on S3 (moto_server on loopback): ``as_download`` of
            1,000 files (200 MB), cold (empty content cache) vs. s3fs ``fs.get``, ``aws s3 cp
            --recursive`` and ``s5cmd cp``; warm (same cache) vs. listing the prefix; the first
            byte of a 1 GB file through an ``as_mount`` FUSE mount (where FUSE works);
            interleaved.
  listing   finding runs among 10,000 generated records in one experiment, on a local
            folder and on S3 (moto_server): ``mltrain runs list`` (first page),
            ``get_runs(tags=...)``, ``get_children()`` of a parent with 1,000 children, vs.
            reading every record; interleaved.
  throughput  200 no-op runs (40 with ``--quick``) submitted back to back against one
            server, from one process and from 4 processes at once: runs/minute, each run's
            submit → Running, and the CPU of the server, the runners, the submitters and the
            machine, to say what saturates first; one rep of each.

``--only NAME`` runs one benchmark and merges its numbers into the existing results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import traceback
from typing import Any

import bench_data
import bench_listing
import bench_throughput
from harness import (
    HERE,
    RESULTS,
    WORK,
    base_env,
    checkout_info,
    library_fingerprint,
    log,
    machine_info,
    merge_results,
    stop_server,
    write_results,
)
from report import BENCHMARKS, checks, markdown

# Registered here, after the benchmarks of report.py (the same dict: its checks and markdown
# see it too).
BENCHMARKS.setdefault("data", bench_data)
BENCHMARKS.setdefault("listing", bench_listing)
BENCHMARKS.setdefault("throughput", bench_throughput)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=tuple(BENCHMARKS),
                        help="run one benchmark (its numbers are merged into results.json)")
    parser.add_argument("--no-cold-cache", action="store_true",
                        help="env: skip the cold-download-cache rep of each side")
    parser.add_argument("--files", type=int, default=10_000, help="files in the snapshot tree")
    parser.add_argument("--data-reps", type=int, default=None,
                        help="data: reps of each side (default 3, 2 with --quick)")
    parser.add_argument("--keep-server", action="store_true",
                        help="leave the benchmark's embedded Prefect server running")
    return parser.parse_args(argv)


def run_benchmarks(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The chosen benchmarks in order, each one's numbers (or its error, or why it was
    skipped) into ``results``; a failing benchmark does not stop the others."""
    chosen = {name: module for name, module in BENCHMARKS.items()
              if args.only in (None, name)}
    unavailable: dict[str, str] = {}  # asked before anything runs
    for name, module in chosen.items():
        reason = module.unavailable() if hasattr(module, "unavailable") else None
        if reason and args.only is None:  # the full run goes on without it
            results[f"{name}_skipped"] = reason
            log(f"{module.TITLE} benchmark skipped: {reason}")
        elif reason:
            unavailable[name] = reason
    for name, module in chosen.items():
        if f"{name}_skipped" in results:
            continue
        try:
            if name in unavailable:
                raise RuntimeError(unavailable[name])
            if hasattr(module, "install_peer"):
                results["versions"].update(module.install_peer())
            results[name] = module.run(args)
        except Exception as exc:  # recorded; the other benchmarks go on
            results[f"{name}_error"] = "".join(traceback.format_exception(exc))
            log(f"{module.TITLE} benchmark failed:\n{results[f'{name}_error']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    env = base_env()  # this process too (the in-process submits, take_snapshot)
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, str(HERE.parent))  # the checkout's prefect_mltrain, installed or not

    import prefect

    results: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "versions": {"prefect": prefect.__version__, **checkout_info()},
    }
    started = time.perf_counter()
    library = library_fingerprint()
    try:
        run_benchmarks(args, results)
    finally:
        if not args.keep_server:
            stop_server()
    results["elapsed_seconds"] = time.perf_counter() - started
    results["versions"]["library_changed_during_run"] = library_fingerprint() != library
    if results["versions"]["library_changed_during_run"]:
        log("WARNING: prefect_mltrain/ changed during the run; its numbers are suspect")
    try:
        results["machine"]["loadavg_at_end"] = os.getloadavg()
    except OSError:
        pass
    results["checks"] = checks(results)
    ran = [name for name in BENCHMARKS if args.only in (None, name)]
    merged = merge_results(results, ran, list(BENCHMARKS))
    merged["checks"] = checks(merged)
    write_results(merged)
    print(markdown(results))
    print(f"\nraw numbers: {RESULTS.relative_to(HERE.parent)}")
    return 0 if all(c["ok"] for c in results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
