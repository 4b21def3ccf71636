"""i. A ~20 s pyspark job as a ``framework="pyspark"`` run on local compute (``local[*]``)
vs. a bare ``spark-submit --master local[*]`` of the same script, interleaved."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from harness import (
    check,
    first_submit,
    fmt_ratio,
    fresh_server_if_alone,
    interleaved,
    ratio,
    ratio_head,
    row,
    run_peer,
    run_phases,
    scratch,
    start_server,
    stats_table,
    submit_and_wait,
    summarize_runs,
)

TITLE = "Spark"
GOAL = 1.2  # ours / bare spark-submit, wall, for a 20 s job
JOB_SECONDS = 15  # the executors' part; the session's start and stop make up the rest
SPARK_PHASES = run_phases(
    "record + snapshot + git", "runner process + Prefect flow run",
    "Java check + environment resolve", "restore snapshot + py-files zip + spark-submit",
    "the Spark application", "final sync + artifacts")
# The driver's first line stamps the time (outside the project, named by BENCH_STAMP_FILE)
# before anything of Spark starts: "submit -> first driver line" for both sides.
SPARK_JOB_PY = f"""\
import os, time
with open(os.environ["BENCH_STAMP_FILE"], "w") as f:
    f.write(repr(time.time()))
print("spark job: driver started", flush=True)
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
sc = spark.sparkContext
print("spark job:", sc.parallelize(range(2), 2).map(lambda x: time.sleep({JOB_SECONDS}) or x)
      .sum(), flush=True)
spark.stop()
print("spark job: done", flush=True)
"""


def unavailable() -> str | None:
    """Why this benchmark cannot run here (no pyspark or no Java), else None."""
    from prefect_mltrain.compute.spark_submit import find_java, spark_home
    from prefect_mltrain.errors import ComputeTargetUnavailableError

    try:
        spark_home()
        find_java()
    except ComputeTargetUnavailableError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from prefect_mltrain import Environment, Experiment, ScriptRunConfig, Workspace
    from prefect_mltrain.compute.spark_submit import spark_home

    fresh_server_if_alone(args)
    reps = 3 if args.quick else 5
    root = scratch("spark")
    proj = root / "proj"
    proj.mkdir()
    (proj / "spark_job.py").write_text(SPARK_JOB_PY)
    stamp = root / "stamp.txt"
    ws = Workspace(str(root / "ws"))
    env = Environment("this-python")  # the peer's interpreter: no build on either side
    env.python.user_managed_dependencies = True
    env.python.interpreter_path = sys.executable
    config = ScriptRunConfig(source_directory=str(proj), script="spark_job.py",
                             environment=env)
    config.run_config.framework = "pyspark"
    # The same spark-submit, master and interpreter as the run's, with the stamp's file
    # named for the script.
    bare = [str(spark_home() / "bin" / "spark-submit"), "--master", "local[*]",
            "spark_job.py"]
    bare_env = {**os.environ, "SPARK_HOME": str(spark_home()), "BENCH_STAMP_FILE": str(stamp),
                "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}

    server_start = start_server()

    def ours() -> dict[str, Any]:
        return submit_and_wait(Experiment(ws, "spark"), config, stamp, SPARK_PHASES)

    def peer() -> dict[str, Any]:
        return run_peer(bare, stamp, "spark job: done", env=bare_env, cwd=str(proj))

    first = first_submit(ours)
    warmup, raw = interleaved({"ours": ours, "spark_submit": peer}, reps)
    summary: dict[str, Any] = {"ours": summarize_runs(raw["ours"], SPARK_PHASES),
                               "spark_submit": summarize_runs(raw["spark_submit"])}
    summary["ratios"] = {key: ratio(summary["ours"][key]["median"],
                                    summary["spark_submit"][key]["median"])
                         for key in ("wall", "to_script_start")}
    shutil.rmtree(root, ignore_errors=True)
    return {"reps": reps, "job_seconds": JOB_SECONDS, "server_start_seconds": server_start,
            "first_submit": first,
            "warmup": warmup, "raw": raw, "summary": summary}


def checks(spark: dict[str, Any]) -> list[dict[str, Any]]:
    s = spark["summary"]
    return [check(f"spark {name}: every rep succeeded", s[name]["failures"] == 0,
                  f"{s[name]['failures']} failed of {spark['reps']}")
            for name in ("ours", "spark_submit")]


def render_skipped(reason: str) -> list[str]:
    return ["### i. Spark: skipped", "", reason, ""]


def render(spark: dict[str, Any]) -> list[str]:
    s = spark["summary"]
    wall = s["ratios"]["wall"]
    lines = [f"### i. Spark: a ~20 s pyspark job, run vs bare `spark-submit` ({spark['reps']} "
             "interleaved reps each, `local[*]`, seconds)", "",
             *ratio_head("ours / bare `spark-submit` (medians)")]
    rows = [("`framework=\"pyspark\"` run on local compute: submit + wait, wall", "ours",
             "wall"),
            ("peer: bare `spark-submit --master local[*]` of the same script, wall",
             "spark_submit", "wall"),
            ("submit → first driver line: ours", "ours", "to_script_start"),
            ("spawn → first driver line: `spark-submit`", "spark_submit", "to_script_start")]
    for label, name, key in rows:
        r = 1.0 if name == "spark_submit" else s["ratios"][key]
        lines.append(row(label, s[name][key], fmt_ratio(r)))
    lines += ["", f"Goal ≤ {GOAL}× wall: "
              + ("met" if wall is not None and wall <= GOAL else "NOT met") + ".", "",
              "Where our time goes (seconds, from the run record's status_history):", "",
              *stats_table("phase", s["ours"]["phases"]), ""]
    return lines
