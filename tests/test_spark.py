"""framework="pyspark": a training script runs as a Spark application through spark-submit,
on local[*] and on a real standalone cluster (a master on 127.0.0.1 and a worker on
127.0.0.2, started here from the pyspark distribution), with everything else a run has.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import write_script

from prefect_mltrain import Experiment, ScriptRunConfig
from prefect_mltrain.distributed import free_port
from prefect_mltrain.errors import ComputeTargetUnavailableError, ConfigurationError

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.timeout(240)]

RUN_TIMEOUT = 150  # seconds to wait for a run's end: only so that a broken run cannot hang
CLUSTER_TIMEOUT = 90  # seconds for the master and its worker to come up
GONE_TIMEOUT = 30  # seconds for a stopped run's application to leave the cluster

HELPER = """
    def square(x):
        return x * x
"""

# Imports a helper module of its project in the driver and in the executors (from the
# --py-files zip), aggregates a generated DataFrame, logs a metric and writes outputs/.
TRAIN = """
    import json
    from prefect_mltrain import Run
    from pyspark.sql import SparkSession, functions as F
    import helper

    run = Run.get_context()
    spark = SparkSession.builder.getOrCreate()
    print("driver up", spark.sparkContext.appName, flush=True)
    df = spark.range(0, 1000).withColumn("group", F.col("id") % 4)
    squares = df.rdd.map(lambda row: helper.square(row.id)).sum()
    sums = df.groupBy("group").agg(F.sum("id").alias("total")).orderBy("group").collect()
    run.log("sum_of_squares", squares)
    with open("outputs/sums.txt", "w") as f:
        f.write(",".join(str(row.total) for row in sums))
    conf = spark.sparkContext.getConf()
    with open("outputs/conf.json", "w") as f:
        json.dump({key: conf.get(key, None) for key in (
            "spark.app.name", "spark.sql.shuffle.partitions", "spark.executor.memory")}, f)
    spark.stop()
"""

SLEEPS = """
    import time
    from pyspark.sql import SparkSession
    spark = SparkSession.builder.getOrCreate()
    print("sleeping in the executors", flush=True)
    spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(600)).count()
"""


def java_or_skip() -> None:
    from prefect_mltrain.compute.spark_submit import find_java, spark_home

    try:
        spark_home()
        find_java()
    except ComputeTargetUnavailableError as exc:
        pytest.skip(f"no Spark here ({exc}); CI installs Java (.ci/run) and pyspark (the "
                    "test extra)")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def kill_tree(proc: subprocess.Popen) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(proc.pid)
        for p in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    proc.wait(timeout=30)


class Cluster:
    def __init__(self, master: str, ui: str, worker: subprocess.Popen):
        self.master, self.ui, self.worker = master, ui, worker

    def apps(self, state: str = "activeapps") -> list[dict]:
        return get_json(f"{self.ui}/json/")[state]

    def executors(self) -> list[psutil.Process]:
        """Executor JVMs (and their Python workers) the worker runs now."""
        alive = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.worker.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.status() != psutil.STATUS_ZOMBIE:  # spark-class's exited shell
                        alive.append(child)
        return alive

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what} within {timeout} s"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """A real standalone cluster on loopback: a master (127.0.0.1) and a worker
    (127.0.0.2, 2 cores, 1 GB), stopped with their process trees at the end."""
    java_or_skip()
    from prefect_mltrain.compute.spark_submit import spark_home

    home, folder = spark_home(), tmp_path_factory.mktemp("spark")
    port, ui_port = free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOG_DIR": str(folder)}
    started = []
    try:
        with open(folder / "master.log", "w") as log:
            started.append(subprocess.Popen(
                [str(home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
                 "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        master, ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
        with open(folder / "worker.log", "w") as log:
            started.append(subprocess.Popen(
                [str(home / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                 "--host", "127.0.0.2", "--webui-port", str(free_port()), "--cores", "2",
                 "--memory", "1g", "--work-dir", str(folder / "work"), master],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        cluster = Cluster(master, ui, started[1])

        def worker_alive() -> bool:
            with contextlib.suppress(Exception):
                return any(w["state"] == "ALIVE" for w in get_json(f"{ui}/json/")["workers"])
            return False

        cluster.wait_until(worker_alive, CLUSTER_TIMEOUT, "the master and its worker up")
        yield cluster
    finally:
        for proc in reversed(started):
            kill_tree(proc)


@pytest.fixture
def proj(tmp_path):
    folder = tmp_path / "proj"
    write_script(folder, "helper.py", HELPER)
    write_script(folder, "train_spark.py", TRAIN)
    write_script(folder, "sleeps.py", SLEEPS)
    return folder


def pyspark_config(proj: Path, target, script: str = "train_spark.py", **fields):
    src = ScriptRunConfig(source_directory=proj, script=script, compute_target=target,
                          **fields)
    src.run_config.framework = "pyspark"
    return src


def summary_artifact(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return next(a.data for a in artifacts if a.type == "markdown")


# -- a run, on local[*] and on the cluster ----------------------------------------------------


def test_a_pyspark_script_on_local_compute_runs_in_local_mode(ws, proj, tmp_path):
    java_or_skip()
    src = pyspark_config(proj, "local")
    src.run_config.spark.configuration = {"spark.sql.shuffle.partitions": 3}

    details = Experiment(ws, "spark").submit(src).wait_for_completion(timeout=RUN_TIMEOUT)

    run = Experiment(ws, "spark").get_runs()[0]
    assert details["status"] == "Completed" and details["exit_code"] == 0, details
    assert run.get_metrics() == {"sum_of_squares": sum(i * i for i in range(1000))}
    sums = run.download_file("outputs/sums.txt", tmp_path / "sums.txt").read_text()
    assert sums == ",".join(str(sum(range(g, 1000, 4))) for g in range(4))
    log = run.download_file("logs/std_log.txt", tmp_path / "log.txt").read_text()
    assert f"driver up {run.id}" in log
    assert json.loads(run.download_file("outputs/conf.json", tmp_path / "c.json").read_text()) \
        == {"spark.app.name": run.id, "spark.sql.shuffle.partitions": "3",
            "spark.executor.memory": None}
    app = run.get_properties()["spark_application_id"]
    assert app.startswith("local-") and f"Spark application {app}" in log
    assert app in summary_artifact(details["flow_run_id"])


def test_a_pyspark_script_runs_on_a_standalone_cluster_saved_as_a_block(
        ws, proj, tmp_path, spark_cluster):
    from prefect_mltrain.compute import SparkCompute

    SparkCompute(master=spark_cluster.master, master_ui=spark_cluster.ui,
                 conf={"spark.executor.memory": "512m", "spark.sql.shuffle.partitions": "9"}
                 ).save("hdi-test", overwrite=True)
    src = pyspark_config(proj, "hdi-test")
    src.run_config.spark.configuration = {"spark.sql.shuffle.partitions": "2"}  # wins

    run = Experiment(ws, "spark").submit(src)
    details = run.wait_for_completion(timeout=RUN_TIMEOUT)

    assert details["status"] == "Completed", details
    assert run.get_metrics() == {"sum_of_squares": sum(i * i for i in range(1000))}
    assert "outputs/sums.txt" in run.get_file_names()
    conf = json.loads(run.download_file("outputs/conf.json", tmp_path / "c.json").read_text())
    assert conf == {"spark.app.name": run.id, "spark.sql.shuffle.partitions": "2",
                    "spark.executor.memory": "512m"}  # the run's value won over the target's
    properties = run.get_properties()
    app = properties["spark_application_id"]
    assert properties["spark_ui_url"].startswith("http://")
    finished = {a["id"]: a for a in spark_cluster.apps("completedapps")}
    assert finished[app]["name"] == run.id and finished[app]["state"] == "FINISHED"
    summary = summary_artifact(details["flow_run_id"])
    assert app in summary and properties["spark_ui_url"] in summary


def test_a_pooled_spark_target_runs_on_its_work_pools_worker(ws, proj, spark_cluster):
    from test_deployments import finish, mltrain, start_worker

    created = mltrain("compute", "create", "spark-box", "--type", "spark", "--master",
                      spark_cluster.master, "--master-ui", spark_cluster.ui, "--spark-conf",
                      '{"spark.executor.memory": "512m"}', "--json")
    assert created.returncode == 0, created.stderr
    try:
        run = Experiment(ws, "spark").submit(pyspark_config(proj, "spark-box"))
        assert run.get_details()["deployment"]["name"] == "submit-run/spark-box"
        out = finish(start_worker("spark-box"))
        details = run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)
    finally:
        mltrain("compute", "delete", "spark-box")

    assert details["status"] == "Completed", (details, out[-3000:])
    assert run.get_metrics() == {"sum_of_squares": sum(i * i for i in range(1000))}
    app = run.get_properties()["spark_application_id"]
    assert {a["id"]: a["name"] for a in spark_cluster.apps("completedapps")}[app] == run.id


# -- stopping a run stops its application ----------------------------------------------------


def assert_application_gone(cluster: Cluster, run) -> None:
    cluster.wait_until(lambda: not [a for a in cluster.apps() if a["name"] == run.id],
                       GONE_TIMEOUT, "the run's application left the master")
    cluster.wait_until(lambda: not cluster.executors(), GONE_TIMEOUT,
                       "the worker's executors stopped")


def test_a_timeout_stops_the_driver_and_the_application(ws, proj, spark_cluster):
    from prefect_mltrain.compute import SparkCompute

    target = SparkCompute(master=spark_cluster.master, master_ui=spark_cluster.ui,
                          conf={"spark.executor.memory": "512m"})
    run = Experiment(ws, "spark").submit(pyspark_config(
        proj, target, "sleeps.py", max_run_duration_seconds=20))

    details = run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    assert details["status"] == "Canceled", details
    assert "max_run_duration_seconds=20" in details["error"] and details["exit_code"] == 143
    assert_application_gone(spark_cluster, run)


def test_a_cancel_stops_the_driver_and_the_application(ws, proj, spark_cluster):
    from prefect_mltrain.compute import SparkCompute

    target = SparkCompute(master=spark_cluster.master, master_ui=spark_cluster.ui,
                          conf={"spark.executor.memory": "512m"})
    run = Experiment(ws, "spark").submit(pyspark_config(proj, target, "sleeps.py"))
    spark_cluster.wait_until(lambda: [a for a in spark_cluster.apps() if a["name"] == run.id]
                             and spark_cluster.executors(), RUN_TIMEOUT,
                             "the run's application running on the cluster")

    run.cancel()
    details = run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    assert details["status"] == "Canceled", details
    assert_application_gone(spark_cluster, run)


def test_a_killed_runner_leaves_no_application_on_the_cluster(ws, proj, spark_cluster):
    from prefect_mltrain.compute import SparkCompute

    target = SparkCompute(master=spark_cluster.master, master_ui=spark_cluster.ui,
                          conf={"spark.executor.memory": "512m"})
    run = Experiment(ws, "spark").submit(pyspark_config(proj, target, "sleeps.py"))
    spark_cluster.wait_until(lambda: [a for a in spark_cluster.apps() if a["name"] == run.id]
                             and spark_cluster.executors(), RUN_TIMEOUT,
                             "the run's application running on the cluster")

    runner = ws.read_json(f"{run._dir}/heartbeat.json")["pid"]
    os.kill(runner, signal.SIGKILL)  # the guard sees its lifeline cut and stops the driver
    details = run.wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    assert details["status"] == "Failed", details
    assert_application_gone(spark_cluster, run)


# -- bad input: one clear error, before anything starts --------------------------------------


def test_framework_and_target_must_agree(ws, proj):
    from prefect_mltrain.compute import DaskCompute, SparkCompute

    python_on_spark = ScriptRunConfig(proj, "train_spark.py", compute_target=SparkCompute())
    with pytest.raises(ConfigurationError, match="framework = 'pyspark'"):
        Experiment(ws, "spark").submit(python_on_spark)
    with pytest.raises(ConfigurationError, match="runs on a SparkCompute target"):
        Experiment(ws, "spark").submit(pyspark_config(
            proj, DaskCompute(address="tcp://127.0.0.1:1")))
    command = ScriptRunConfig(proj, command="python train_spark.py", compute_target="local")
    command.run_config.framework = "pyspark"
    with pytest.raises(ConfigurationError, match="give script="):
        Experiment(ws, "spark").submit(command)
    with pytest.raises(ValueError, match="YARN and Kubernetes masters are not supported"):
        SparkCompute(master="yarn")
    with pytest.raises(ValueError, match="client mode only"):
        SparkCompute(deploy_mode="cluster")
    assert Experiment(ws, "spark").get_runs() == []  # nothing recorded


def test_no_java_is_a_clear_error_naming_the_fix(ws, proj, tmp_path, monkeypatch):
    from prefect_mltrain.compute import SparkCompute

    bin_without_java = tmp_path / "bin"
    bin_without_java.mkdir()
    monkeypatch.setenv("PATH", str(bin_without_java))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(ComputeTargetUnavailableError,
                       match="no java on PATH; install one .*openjdk-17-jre-headless"):
        Experiment(ws, "spark").submit(pyspark_config(proj, SparkCompute()))
    assert Experiment(ws, "spark").get_runs() == []


def test_an_old_java_is_a_clear_error(ws, proj, tmp_path):
    from prefect_mltrain.compute import SparkCompute

    old = tmp_path / "jdk-11"  # a real program answering as Java 11 does
    write_script(old / "bin", "java", """\
        #!/bin/sh
        echo 'openjdk version "11.0.22" 2024-01-16' >&2
    """).chmod(0o755)
    with pytest.raises(ComputeTargetUnavailableError, match=r"is Java 11; install one"):
        Experiment(ws, "spark").submit(pyspark_config(proj, SparkCompute(java_home=str(old))))


def test_a_saved_target_without_java_fails_the_run_before_it_starts(ws, proj, tmp_path):
    from prefect_mltrain.compute import SparkCompute

    SparkCompute(java_home=str(tmp_path / "no-jdk")).save("no-java", overwrite=True)

    details = Experiment(ws, "spark").submit(pyspark_config(proj, "no-java")) \
        .wait_for_completion(raise_on_error=False, timeout=RUN_TIMEOUT)

    assert details["status"] == "Failed", details
    assert details["error"].startswith("Preparing: Spark needs Java")
    assert "no-jdk/bin/java does not exist" in details["error"]


def test_a_cluster_without_master_or_with_remote_workers_is_a_clear_error():
    from prefect_mltrain.compute import SparkCompute
    from prefect_mltrain.compute.spark_submit import check_workers

    java_or_skip()
    target = SparkCompute(master=f"spark://127.0.0.1:{free_port()}",
                          master_ui=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ComputeTargetUnavailableError, match="no alive Spark master answers"):
        target.check()
    # the master's /json/ as it lists a worker on another host (a documentation address)
    state = {"url": "spark://10.0.0.7:7077",
             "workers": [{"host": "203.0.113.9", "state": "ALIVE"}]}
    with pytest.raises(ComputeTargetUnavailableError, match="set executor_python="):
        check_workers(state, executor_python=None)
    check_workers(state, executor_python="/shared/venv/bin/python")
    with pytest.raises(ComputeTargetUnavailableError, match="has no alive worker"):
        check_workers({**state, "workers": []}, executor_python=None)
