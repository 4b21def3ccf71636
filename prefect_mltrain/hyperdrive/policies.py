"""Early-termination policies: which running trials a sweep cancels, and why.

A trial's *intervals* are the values it logged of the primary metric, in order: each
``run.log(primary_metric, value)`` is one interval (Azure's definition). A policy is
applied at every interval ``k`` that is a multiple of ``evaluation_interval`` and at least
``delay_evaluation`` (Azure's rule), to each running trial at the latest such interval it
has reached.

Where Azure compares only against runs that have *finished* the interval set, this
compares a trial at interval ``k`` against every trial that has reached ``k`` so far,
running ones included, using what each logged up to ``k`` and no further. So a policy
works from the first batch of concurrent trials, and a young trial is never judged against
an older trial's later, better values. The best trial at ``k`` is never canceled by any
policy.

- ``BanditPolicy``: with the best value so far at ``k`` being ``B`` and the trial's best
  up to ``k`` being ``Y``, cancel when (maximize) ``Y * (1 + slack_factor) < B`` or
  ``Y + slack_amount < B``; (minimize) ``Y > B * (1 + slack_factor)`` or
  ``Y > B + slack_amount``. Give one of the two slacks.
- ``MedianStoppingPolicy``: cancel when the trial's best up to ``k`` is worse than the
  median of the running averages (the mean of each trial's values up to ``k``) of every
  trial that reached ``k``.
- ``TruncationSelectionPolicy``: rank the trials that reached ``k`` by their best up to
  ``k``; cancel the trial if it is among the lowest ``floor(n * truncation_percentage /
  100)`` (ties broken toward the later trial). ``exclude_finished_jobs`` leaves finished
  trials out of the ranking.
- ``NoTerminationPolicy``: never cancels.
"""

from __future__ import annotations

import statistics
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PrimaryMetricGoal(StrEnum):
    MAXIMIZE = "MAXIMIZE"
    MINIMIZE = "MINIMIZE"


class Curve(BaseModel):
    """A trial's primary metric, one value per interval."""

    trial: str
    values: list[float]
    running: bool


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    evaluation_interval: int = Field(1, ge=1, description="Apply the policy every N intervals.")
    delay_evaluation: int = Field(0, ge=0, description="Apply it from interval N on.")

    def _applies(self, k: int) -> bool:
        return k >= 1 and k % self.evaluation_interval == 0 and k >= self.delay_evaluation

    def terminate(self, curves: list[Curve], goal: PrimaryMetricGoal) -> dict[str, str]:
        """The running trials to cancel now, each with the reason."""
        maximize = goal == PrimaryMetricGoal.MAXIMIZE
        out = {}
        for curve in curves:
            if not curve.running:
                continue
            k = next((k for k in range(len(curve.values), 0, -1) if self._applies(k)), None)
            if k is None:
                continue
            peers = [c for c in curves if len(c.values) >= k]
            reason = self._judge(curve, peers, k, maximize)
            if reason:
                out[curve.trial] = f"early termination: {self.name} at interval {k}: {reason}"
        return out

    name: ClassVar[str] = "policy"

    def _judge(self, curve: Curve, peers: list[Curve], k: int, maximize: bool) -> str | None:
        raise NotImplementedError


def _best(values: list[float], maximize: bool) -> float:
    return max(values) if maximize else min(values)


def _worse(a: float, b: float, maximize: bool) -> bool:
    return a < b if maximize else a > b


class BanditPolicy(_Policy):
    """Cancel trials outside a slack of the best so far at the same interval.

    Example:
        ```python
        BanditPolicy(evaluation_interval=1, slack_factor=0.1, delay_evaluation=2)
        ```
    """

    kind: Literal["bandit"] = "bandit"
    slack_factor: float | None = Field(None, ge=0, description="Allowed slack, as a ratio.")
    slack_amount: float | None = Field(None, ge=0, description="Allowed slack, absolute.")
    name: ClassVar[str] = "bandit policy"

    @model_validator(mode="after")
    def _one_slack(self) -> BanditPolicy:
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise ValueError("BanditPolicy needs one of slack_factor or slack_amount "
                             "(e.g. slack_factor=0.1)")
        return self

    def _judge(self, curve: Curve, peers: list[Curve], k: int, maximize: bool) -> str | None:
        best = _best([_best(p.values[:k], maximize) for p in peers], maximize)
        mine = _best(curve.values[:k], maximize)
        if self.slack_factor is not None:
            f = self.slack_factor
            out = mine * (1 + f) < best if maximize else mine > best * (1 + f)
            slack = f"slack factor {f}"
        else:
            a = self.slack_amount
            out = mine + a < best if maximize else mine > best + a
            slack = f"slack amount {a}"
        return (f"its best {mine:g} is outside the {slack} of the best so far, {best:g}"
                if out else None)


class MedianStoppingPolicy(_Policy):
    """Cancel trials worse than the median of the running averages at the same interval."""

    kind: Literal["median"] = "median"
    name: ClassVar[str] = "median stopping policy"

    def _judge(self, curve: Curve, peers: list[Curve], k: int, maximize: bool) -> str | None:
        median = statistics.median(statistics.fmean(p.values[:k]) for p in peers)
        mine = _best(curve.values[:k], maximize)
        return (f"its best {mine:g} is worse than the median of running averages, {median:g}"
                if _worse(mine, median, maximize) else None)


class TruncationSelectionPolicy(_Policy):
    """Cancel the lowest ``truncation_percentage`` percent of trials at each interval."""

    kind: Literal["truncation"] = "truncation"
    truncation_percentage: int = Field(..., ge=1, le=99,
                                       description="Percent of the trials to cancel (1-99).")
    exclude_finished_jobs: bool = Field(False, description="Rank only running trials.")
    name: ClassVar[str] = "truncation selection policy"

    def __init__(self, truncation_percentage: int | None = None, **data):
        if truncation_percentage is not None:
            data["truncation_percentage"] = truncation_percentage
        super().__init__(**data)

    def _judge(self, curve: Curve, peers: list[Curve], k: int, maximize: bool) -> str | None:
        if self.exclude_finished_jobs:
            peers = [p for p in peers if p.running]
        cut = len(peers) * self.truncation_percentage // 100
        if cut == 0:
            return None
        best_first = sorted((_best(p.values[:k], maximize) for p in peers), reverse=maximize)
        kept_worst = best_first[len(peers) - cut - 1]  # the worst value of the trials kept
        mine = _best(curve.values[:k], maximize)
        return (f"its best {mine:g} is among the lowest {self.truncation_percentage}% of "
                f"{len(peers)} trials" if _worse(mine, kept_worst, maximize) else None)


class NoTerminationPolicy(_Policy):
    """Every trial runs to its end."""

    kind: Literal["none"] = "none"
    name: ClassVar[str] = "no termination"

    def terminate(self, curves: list[Curve], goal: PrimaryMetricGoal) -> dict[str, str]:
        return {}


Policy = BanditPolicy | MedianStoppingPolicy | TruncationSelectionPolicy | NoTerminationPolicy


_POLICY_KEYS = {"slack": "slack_factor", "slack_factor": "slack_factor",
                "slack_amount": "slack_amount", "interval": "evaluation_interval",
                "evaluation_interval": "evaluation_interval", "delay": "delay_evaluation",
                "delay_evaluation": "delay_evaluation", "percent": "truncation_percentage",
                "truncation_percentage": "truncation_percentage",
                "exclude_finished": "exclude_finished_jobs",
                "exclude_finished_jobs": "exclude_finished_jobs"}
_POLICY_KINDS = {"bandit": BanditPolicy, "median": MedianStoppingPolicy,
                 "truncation": TruncationSelectionPolicy, "none": NoTerminationPolicy}


def parse_policy(text: str | dict[str, Any]) -> Policy:
    """The command line's form of a policy: ``bandit:slack=0.1,interval=1,delay=2``,
    ``median:delay=5``, ``truncation:percent=20``, ``none`` — or a YAML file's mapping,
    ``{kind: bandit, slack: 0.1, delay: 2}``."""
    if isinstance(text, dict):
        text = f"{text.get('kind', '')}:" + ",".join(
            f"{k}={v}" for k, v in text.items() if k != "kind")
    kind, _, rest = text.strip().partition(":")
    if kind not in _POLICY_KINDS:
        raise ValueError(f"unknown policy {kind!r}: use one of {', '.join(_POLICY_KINDS)}, "
                         "e.g. bandit:slack=0.1,interval=1,delay=2")
    settings = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in _POLICY_KEYS:
            raise ValueError(f"{item!r} in policy {text!r}: write key=value with a key of "
                             f"{', '.join(sorted(set(_POLICY_KEYS)))}")
        settings[_POLICY_KEYS[key]] = value
    return _POLICY_KINDS[kind].model_validate(settings)
