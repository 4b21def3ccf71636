"""A Spark target: ``framework="pyspark"`` scripts run as Spark applications through
``spark-submit``, on a standalone cluster (``spark://HOST:7077``) or in ``local[*]``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from ..config import spark_properties
from ..environment import Environment
from ..errors import ConfigurationError
from .base import ComputeTarget, LaunchSpec, OnLine, Prepared, Stop, never
from .jobs import Job
from .local import LocalCompute
from .spark_submit import (
    SparkJob,
    check_workers,
    find_java,
    master_state,
    master_ui_urls,
    spark_home,
)

MASTER = re.compile(r"local(\[(\*|\d+)(,\d+)?\])?|spark://[^/\s]+:\d+(,[^/\s]+:\d+)*")


class SparkCompute(ComputeTarget):
    """Run pyspark scripts with ``spark-submit`` against a Spark master, in client mode.

    The driver runs on the machine of the run's flow, in the run's environment (built
    there, as on local compute); executors on the cluster's workers run ``executor_python``
    (default: the same interpreter, which workers on this machine share). The run's
    ``run_config.spark.configuration`` is merged over ``conf``; ``spark.app.name`` is the
    run's id.

    Example:
        ```python
        SparkCompute(master="spark://10.0.0.7:7077",
                     conf={"spark.executor.memory": "2g"}).save("hdi")
        src = ScriptRunConfig("proj", "train_spark.py", compute_target="hdi")
        src.run_config.framework = "pyspark"
        ```
    """

    _block_type_name = "Spark Compute"
    _block_type_slug = "mltrain-spark-compute"
    _description = "Runs prefect-mltrain pyspark scripts as Spark applications (spark-submit)."

    master: str = Field(
        "local[*]", description="Spark master: 'local[*]' (this machine), 'local[N]', or a "
        "standalone cluster 'spark://HOST:7077' (with standbys: 'spark://H1:7077,H2:7077').")
    conf: dict[str, str] = Field(
        default_factory=dict, description="Spark properties of every run on this target, "
        "e.g. {'spark.executor.memory': '2g'}; a run's run_config.spark.configuration wins.")
    deploy_mode: str = Field(
        "client", description="'client': the driver runs where the run's flow runs (Spark "
        "runs Python applications only so on standalone and local masters).")
    master_ui: str | None = Field(
        None, description="Web UI of the standalone master, checked before a run and used "
        "to kill a stopped run's application (default: http://MASTER_HOST:8080).")
    executor_python: str | None = Field(
        None, description="Interpreter of the executors (PYSPARK_PYTHON); it must exist at "
        "this path on every worker. Default: the run's environment, for workers on this "
        "machine only.")
    java_home: str | None = Field(
        None, description="Java installation for spark-submit (Java 17+ for Spark 4); "
        "default: JAVA_HOME, else java on PATH.")

    @field_validator("master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        if not MASTER.fullmatch(value.strip()):
            raise ValueError(
                f"master {value!r} is not supported: use 'local[*]', 'local[N]' or a "
                "standalone master 'spark://HOST:PORT' (YARN and Kubernetes masters are not "
                "supported yet)")
        return value.strip()

    @field_validator("deploy_mode")
    @classmethod
    def _client_mode(cls, value: str) -> str:
        if value != "client":
            raise ValueError(
                f"deploy_mode={value!r}: Spark runs Python applications in client mode only "
                "on standalone and local masters (the driver runs where the run's flow runs); "
                "use deploy_mode='client'")
        return value

    @field_validator("conf", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        return spark_properties(value)

    @property
    def standalone(self) -> bool:
        return self.master.startswith("spark://")

    def describe(self) -> str:
        return getattr(self, "_block_document_name", None) or self.master

    def check_framework(self, framework: str) -> None:
        if framework != "pyspark":
            raise ConfigurationError(
                f"framework={framework!r} on the Spark target {self.describe()!r}: a "
                "SparkCompute runs scripts as Spark applications; set "
                "src.run_config.framework = 'pyspark', or submit plain Python scripts to "
                "'local' or another target")
        spark_home()  # spark-submit and its Java, before anything is built
        find_java(self.java_home)

    def check(self, stop: Stop = never, distributed: Any = None) -> None:
        self.check_framework("pyspark")
        if self.standalone:
            _, state = master_state(master_ui_urls(self.master, self.master_ui))
            check_workers(state, self.executor_python)

    def prepare(self, environment: Environment | None, on_line: OnLine,
                stop: Stop = never) -> Prepared:
        """The run's environment, built on this machine for the driver (and the executors
        of workers here)."""
        return LocalCompute().prepare(environment, on_line, stop)

    def launch(self, spec: LaunchSpec) -> Job:
        ui = None
        if self.standalone:
            ui, _ = master_state(master_ui_urls(self.master, self.master_ui))
        return SparkJob(spec, self.master, {**self.conf, **spec.config.spark.configuration},
                        java_home=self.java_home, executor_python=self.executor_python,
                        master_ui=ui)
