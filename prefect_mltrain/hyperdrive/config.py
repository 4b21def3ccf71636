"""``HyperDriveConfig``: what a sweep runs and how, with Azure ML v1's names and limits.

The sweep itself is kept as a ``SweepSpec`` in the sweep run's record (beside the trials'
``ScriptRunConfig``), so a sweep read back anywhere, or resumed, is the same sweep.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import ScriptRunConfig
from ..errors import ConfigurationError
from .policies import NoTerminationPolicy, Policy, PrimaryMetricGoal
from .sampling import BayesianParameterSampling, Sampling

MAX_TOTAL_RUNS = 1000  # Azure's limits
MAX_DURATION_MINUTES = 10080


class SweepSpec(BaseModel):
    """A sweep: its sampling, policy, primary metric and limits."""

    model_config = ConfigDict(extra="forbid")
    sampling: Annotated[Sampling, Field(discriminator="kind")] = Field(
        description="How trials' hyperparameters are picked (random, grid or bayesian).")
    policy: Annotated[Policy, Field(discriminator="kind")] = Field(
        default_factory=NoTerminationPolicy, description="Early termination of poor trials.")
    primary_metric_name: str = Field(description="The metric the script logs, e.g. 'accuracy'.")
    primary_metric_goal: PrimaryMetricGoal = Field(description="MAXIMIZE or MINIMIZE it.")
    max_total_runs: int = Field(ge=1, le=MAX_TOTAL_RUNS, description="Trials at most (1-1000).")
    max_concurrent_runs: int | None = Field(
        None, ge=1, description="Trials at once; empty: all at once.")
    max_duration_minutes: float = Field(
        MAX_DURATION_MINUTES, gt=0, le=MAX_DURATION_MINUTES,
        description="The sweep's time limit; running trials are canceled when it passes.")
    seed: int = Field(default_factory=lambda: secrets.randbelow(2**31),
                      description="Fixes random choices when the sampling gives no seed.")
    resume_from: list[str] = Field(
        default_factory=list, description="Earlier sweeps (run ids) whose trials seed the sampler.")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if isinstance(self.sampling, BayesianParameterSampling) and not isinstance(
                self.policy, NoTerminationPolicy):
            raise ValueError("Bayesian sampling takes no early-termination policy (as in "
                             "Azure): leave policy out, or use RandomParameterSampling")
        return self

    @property
    def maximize(self) -> bool:
        return self.primary_metric_goal == PrimaryMetricGoal.MAXIMIZE

    @property
    def concurrency(self) -> int:
        return self.max_concurrent_runs or self.max_total_runs


class HyperDriveConfig:
    """A hyperparameter sweep of one training script, as in Azure ML v1.

    Each trial is an ordinary run of ``run_config`` (a ``ScriptRunConfig``, or an
    ``estimator``) on its compute target, with the trial's hyperparameters appended to the
    script's arguments (``--lr 0.01``); the sweep is their parent run.

    Example:
        ```python
        hd = HyperDriveConfig(run_config=src, hyperparameter_sampling=ps,
                              policy=BanditPolicy(slack_factor=0.1),
                              primary_metric_name="accuracy",
                              primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                              max_total_runs=20, max_concurrent_runs=4)
        hd_run = Experiment(ws, "sweep").submit(hd)
        ```
    """

    def __init__(self, hyperparameter_sampling: Any, primary_metric_name: str,
                 primary_metric_goal: PrimaryMetricGoal | str, max_total_runs: int,
                 max_concurrent_runs: int | None = None,
                 max_duration_minutes: float = MAX_DURATION_MINUTES, policy: Any = None,
                 estimator: Any = None, run_config: Any = None, resume_from: Any = None):
        if (estimator is None) == (run_config is None):
            raise ConfigurationError("HyperDriveConfig needs run_config= (a ScriptRunConfig) "
                                     "or estimator=, one of the two")
        config = run_config if estimator is None else estimator
        if hasattr(config, "to_script_run_config"):
            config = config.to_script_run_config()
        if not isinstance(config, ScriptRunConfig):
            raise ConfigurationError(f"run_config must be a ScriptRunConfig, not "
                                     f"{type(config).__name__}")
        earlier = resume_from if isinstance(resume_from, list | tuple) else \
            [resume_from] if resume_from is not None else []
        try:
            self.spec = SweepSpec(
                sampling=hyperparameter_sampling, policy=policy or NoTerminationPolicy(),
                primary_metric_name=primary_metric_name,
                primary_metric_goal=str(primary_metric_goal).upper().removeprefix(
                    "PRIMARYMETRICGOAL."),
                max_total_runs=max_total_runs, max_concurrent_runs=max_concurrent_runs,
                max_duration_minutes=max_duration_minutes,
                resume_from=[getattr(r, "id", r) for r in earlier])
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise ConfigurationError(f"HyperDriveConfig: {where}: {problem['msg']}") from None
        self.run_config = config
        clash = {str(a) for a in config.arguments} & {
            name if name.startswith("-") else f"--{name}"
            for name in self.spec.sampling.parameter_space}
        if clash:
            raise ConfigurationError(
                f"the script's arguments already set {', '.join(sorted(clash))}, which the "
                "sweep sets for each trial: remove them from the run config's arguments")

    def __repr__(self) -> str:
        return (f"HyperDriveConfig({self.run_config.script or self.run_config.command!r}, "
                f"{self.spec.sampling.kind}, {self.spec.primary_metric_name} "
                f"{self.spec.primary_metric_goal.value.lower()}, max_total_runs="
                f"{self.spec.max_total_runs})")
