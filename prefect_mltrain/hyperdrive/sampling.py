"""How a sweep picks each trial's hyperparameters: random, grid or Bayesian sampling.

Each sampler answers one question, ``suggest(index, history)``: the parameters of trial
``index`` given the trials so far, or None when the space is used up. The answer depends
only on the sweep's seed, the index and the history, so a sweep resumed after its
controller died picks exactly what it would have picked.

- **Random** (``RandomParameterSampling``): every expression kind. Trial ``i`` draws from
  a generator seeded by ``(seed, i)``: the same ``properties={"seed": N}`` gives the same
  trials, in any order of completion.
- **Grid** (``GridParameterSampling``): ``choice`` only, as in Azure. Trials walk the
  cartesian product in the order the parameters and options are written; a grid smaller
  than ``max_total_runs`` ends the sweep when it is used up.
- **Bayesian** (``BayesianParameterSampling``): ``choice``, ``uniform`` and ``quniform``
  only, as in Azure, and no early-termination policy (Azure's rule too). It is Optuna's
  TPE sampler (ask/tell) told every finished trial's best primary metric, with running
  trials as "liars" so concurrent trials spread out.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .parameters import Expression


class Trial(BaseModel):
    """What a sampler knows of an earlier trial."""

    index: int
    parameters: dict[str, Any]
    value: float | None = None  # its best primary metric; None: none logged
    finished: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameter_space: dict[str, Expression] = Field(
        description="Argument name -> parameter expression, e.g. {'--lr': loguniform(-6, -1)}.")
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Sampler settings; {'seed': N} fixes the trials.")

    ALLOWED: ClassVar[frozenset[str] | None] = None

    def __init__(self, parameter_space: dict[str, Any] | None = None,
                 properties: dict[str, Any] | None = None, **data: Any):
        if parameter_space is not None:
            data["parameter_space"] = parameter_space
        if properties is not None:
            data["properties"] = properties
        super().__init__(**data)

    @model_validator(mode="after")
    def _check(self) -> _Sampling:
        if not self.parameter_space:
            raise ValueError(f"{type(self).__name__} needs at least one parameter")
        for name, expr in self.parameter_space.items():
            if self.ALLOWED is not None and expr.kind not in self.ALLOWED:
                raise ValueError(
                    f"{type(self).__name__} takes only {', '.join(sorted(self.ALLOWED))}; "
                    f"{name!r} is {expr}: use RandomParameterSampling for it")
        return self

    def seed(self, default: int) -> int:
        return int(self.properties.get("seed", default))

    def suggest(self, index: int, history: list[Trial], seed: int,
                maximize: bool) -> dict[str, Any] | None:
        raise NotImplementedError


class RandomParameterSampling(_Sampling):
    """Random sampling over any expressions.

    Example:
        ```python
        RandomParameterSampling({"--lr": loguniform(-6, -1), "--batch": choice(16, 32, 64)},
                                properties={"seed": 7})
        ```
    """

    kind: Literal["random"] = "random"

    def suggest(self, index: int, history: list[Trial], seed: int,
                maximize: bool) -> dict[str, Any] | None:
        rng = random.Random(f"{self.seed(seed)}:{index}")
        return {name: expr.sample(rng) for name, expr in self.parameter_space.items()}


class GridParameterSampling(_Sampling):
    """Every combination of ``choice`` values, in order."""

    kind: Literal["grid"] = "grid"
    ALLOWED: ClassVar[frozenset[str] | None] = frozenset({"choice"})

    def size(self) -> int:
        n = 1
        for expr in self.parameter_space.values():
            n *= len(expr.options)
        return n

    def suggest(self, index: int, history: list[Trial], seed: int,
                maximize: bool) -> dict[str, Any] | None:
        if index >= self.size():
            return None
        combo = next(itertools.islice(itertools.product(
            *(e.options for e in self.parameter_space.values())), index, None))
        return dict(zip(self.parameter_space, combo, strict=True))


class BayesianParameterSampling(_Sampling):
    """Bayesian optimization (Optuna's TPE) over ``choice``, ``uniform`` and ``quniform``."""

    kind: Literal["bayesian"] = "bayesian"
    ALLOWED: ClassVar[frozenset[str] | None] = frozenset({"choice", "uniform", "quniform"})

    def suggest(self, index: int, history: list[Trial], seed: int,
                maximize: bool) -> dict[str, Any] | None:
        import optuna
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space = {name: _distribution(expr) for name, expr in self.parameter_space.items()}
        study = optuna.create_study(
            direction="maximize" if maximize else "minimize",
            sampler=optuna.samplers.TPESampler(seed=self.seed(seed) + index,
                                               constant_liar=True))
        for trial in history:
            params = {name: _internal(self.parameter_space[name], value)
                      for name, value in trial.parameters.items() if name in space}
            if len(params) != len(space):
                continue  # a trial of another space (an earlier sweep resumed from)
            if trial.finished:
                state = TrialState.COMPLETE if trial.value is not None else TrialState.FAIL
                study.add_trial(create_trial(params=params, distributions=space, state=state,
                                             value=trial.value))
            else:
                study.add_trial(create_trial(params=params, distributions=space,
                                             state=TrialState.RUNNING))
        asked = study.ask(space)
        return {name: self.parameter_space[name].quantize(value)
                for name, value in asked.params.items()}


def _distribution(expr: Expression) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if expr.kind == "choice":
        return CategoricalDistribution(expr.options)
    return FloatDistribution(float(expr.args[0]), float(expr.args[1]))


def _internal(expr: Expression, value: Any) -> Any:
    """A trial's value as Optuna's distribution holds it (a quantized value can round just
    outside ``[a, b]``)."""
    if expr.kind == "choice":
        return value
    return min(max(float(value), float(expr.args[0])), float(expr.args[1]))


Sampling = RandomParameterSampling | GridParameterSampling | BayesianParameterSampling


SAMPLINGS = {"random": RandomParameterSampling, "grid": GridParameterSampling,
             "bayesian": BayesianParameterSampling}


def make_sampling(kind: str, parameters: dict[str, Any], seed: int | None = None) -> Sampling:
    """A sampling from the command line's or a YAML file's form: ``kind`` and
    ``{"--lr": "loguniform(-6, -1)"}`` (expressions as text, or already made)."""
    from .parameters import parse_expression

    if kind not in SAMPLINGS:
        raise ValueError(f"unknown sampling {kind!r}: use one of {', '.join(SAMPLINGS)}")
    space = {name: parse_expression(e) if isinstance(e, str) else e
             for name, e in parameters.items()}
    return SAMPLINGS[kind](space, properties={"seed": seed} if seed is not None else None)
