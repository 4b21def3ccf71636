"""Parameter expressions: the distributions a sweep samples hyperparameters from.

Each follows Azure ML v1's documented definition (``azureml.train.hyperdrive``):

=====================================  =================================================
``choice(*options)``                   one of ``options`` (also ``choice([...])``, ``choice(range(...))``)
``randint(upper)``                     an integer in ``[0, upper)``
``uniform(a, b)``                      a float uniformly in ``[a, b]``
``quniform(a, b, q)``                  ``round(uniform(a, b) / q) * q``
``loguniform(a, b)``                   ``exp(uniform(a, b))``: in ``[exp(a), exp(b)]``
``qloguniform(a, b, q)``               ``round(exp(uniform(a, b)) / q) * q``
``normal(mu, sigma)``                  a float, normally distributed
``qnormal(mu, sigma, q)``              ``round(normal(mu, sigma) / q) * q``
``lognormal(mu, sigma)``               ``exp(normal(mu, sigma))``
``qlognormal(mu, sigma, q)``           ``round(exp(normal(mu, sigma)) / q) * q``
=====================================  =================================================

A quantized value with an integer ``q`` is an ``int`` (``--batch 32``, not ``32.0``), so an
``argparse`` ``type=int`` reads it. Expressions are pydantic models: a sweep's record and
the Prefect form of the sweep flow hold them as ``{"kind": "uniform", "args": [0, 1]}``.
"""

from __future__ import annotations

import ast
import math
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

Kind = Literal["choice", "randint", "uniform", "quniform", "loguniform", "qloguniform",
               "normal", "qnormal", "lognormal", "qlognormal"]
_ARITY = {"randint": 1, "uniform": 2, "quniform": 3, "loguniform": 2, "qloguniform": 3,
          "normal": 2, "qnormal": 3, "lognormal": 2, "qlognormal": 3}


class Expression(BaseModel):
    """One hyperparameter's distribution."""

    model_config = ConfigDict(frozen=True)
    kind: Kind
    args: list[Any]

    @model_validator(mode="after")
    def _check(self) -> Expression:
        if self.kind == "choice":
            if not self.args:
                raise ValueError("choice() needs at least one option")
            return self
        if len(self.args) != _ARITY[self.kind] or not all(
                isinstance(a, int | float) and not isinstance(a, bool) for a in self.args):
            names = {1: "upper", 2: "min_value, max_value" if "uniform" in self.kind else
                     "mu, sigma", 3: "..., q"}[_ARITY[self.kind]]
            raise ValueError(f"{self.kind}() takes {_ARITY[self.kind]} numbers ({names}), "
                             f"not {self.args!r}")
        if self.kind == "randint" and (not isinstance(self.args[0], int) or self.args[0] < 1):
            raise ValueError(f"randint(upper) needs an integer upper >= 1, not {self.args[0]!r}")
        if "uniform" in self.kind and self.args[0] > self.args[1]:
            raise ValueError(f"{self.kind}(min_value, max_value): {self.args[0]} > {self.args[1]}")
        if self.kind.startswith("q") and self.args[2] <= 0:
            raise ValueError(f"{self.kind}(): q must be > 0, not {self.args[2]}")
        if self.kind in ("normal", "qnormal", "lognormal", "qlognormal") and self.args[1] < 0:
            raise ValueError(f"{self.kind}(): sigma must be >= 0, not {self.args[1]}")
        return self

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(repr(a) for a in self.args)})"

    def sample(self, rng: random.Random) -> Any:
        """A value drawn by the rule in the module's table."""
        kind, a = self.kind, self.args
        if kind == "choice":
            return rng.choice(a)
        if kind == "randint":
            return rng.randrange(a[0])
        base = kind.removeprefix("q")
        if base in ("uniform", "loguniform"):
            x = rng.uniform(a[0], a[1])
        else:
            x = rng.gauss(a[0], a[1])
        if base.startswith("log"):
            x = math.exp(x)
        return self.quantize(x)

    def quantize(self, x: float) -> Any:
        """``round(x / q) * q`` for a q-expression (an int for an integer q); else ``x``."""
        if not self.kind.startswith("q"):
            return x
        q = self.args[2]
        value = round(x / q) * q
        return int(value) if isinstance(q, int) else value

    @property
    def options(self) -> list[Any]:
        if self.kind != "choice":
            raise ValueError(f"{self} is not a choice")
        return list(self.args)


def choice(*options: Any) -> Expression:
    """One of ``options``: ``choice(16, 32, 64)``, ``choice([16, 32, 64])`` or ``choice(range(3))``."""
    if len(options) == 1 and isinstance(options[0], list | tuple | range):
        options = tuple(options[0])
    return Expression(kind="choice", args=list(options))


def randint(upper: int) -> Expression:
    return Expression(kind="randint", args=[upper])


def uniform(min_value: float, max_value: float) -> Expression:
    return Expression(kind="uniform", args=[min_value, max_value])


def quniform(min_value: float, max_value: float, q: float) -> Expression:
    return Expression(kind="quniform", args=[min_value, max_value, q])


def loguniform(min_value: float, max_value: float) -> Expression:
    return Expression(kind="loguniform", args=[min_value, max_value])


def qloguniform(min_value: float, max_value: float, q: float) -> Expression:
    return Expression(kind="qloguniform", args=[min_value, max_value, q])


def normal(mu: float, sigma: float) -> Expression:
    return Expression(kind="normal", args=[mu, sigma])


def qnormal(mu: float, sigma: float, q: float) -> Expression:
    return Expression(kind="qnormal", args=[mu, sigma, q])


def lognormal(mu: float, sigma: float) -> Expression:
    return Expression(kind="lognormal", args=[mu, sigma])


def qlognormal(mu: float, sigma: float, q: float) -> Expression:
    return Expression(kind="qlognormal", args=[mu, sigma, q])


def parse_expression(text: str) -> Expression:
    """``"loguniform(-6, -1)"`` or ``"choice(16, 32, 'adam')"`` (the CLI's and YAML's form)
    as an expression; the arguments are literals, nothing is evaluated."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise ValueError
        kind = node.func.id
        args = [ast.literal_eval(arg) for arg in node.args]
    except (SyntaxError, ValueError):
        raise ValueError(f"{text!r} is not a parameter expression: write e.g. "
                         "'loguniform(-6, -1)' or 'choice(16, 32, 64)'") from None
    if kind not in _ARITY and kind != "choice":
        raise ValueError(f"{kind!r} is no parameter expression; use one of: choice, "
                         f"{', '.join(_ARITY)}")
    return choice(*args) if kind == "choice" else Expression(kind=kind, args=args)


def argument_name(name: str) -> str:
    """The script argument a parameter is passed as: ``--lr`` stays, ``lr`` becomes ``--lr``."""
    return name if name.startswith("-") else f"--{name}"


def format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
