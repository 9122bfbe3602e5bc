"""Minimization requests and answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.minimize import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_TOLERANCE,
    MAX_ITERATIONS,
    OPTIONS,
)
from service.schemas.base import Name
from service.schemas.differentiation import ONE_GRAPH, GraphRequest
from service.schemas.tensors import TensorOut

Method = Literal["lbfgs", "sgd", "adam", "adamw", "rmsprop", "adagrad"]
Reason = Literal["converged", "max_iterations", "non_finite"]

QUADRATIC: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [2]}},
    "nodes": [
        {"id": "d", "op": "subtract", "args": ["x", [1.0, 2.0]]},
        {"id": "s", "op": "square", "args": ["d"]},
        {"id": "f", "op": "sum", "args": ["s"]},
    ],
    "outputs": ["f"],
}
"""f(x) = sum((x - [1, 2])^2), least at x = [1, 2]."""

EXAMPLE_REQUEST: dict[str, Any] = {"graph": QUADRATIC, "inputs": {"x": [0.0, 0.0]},
                                   "target": "f", "variables": ["x"]}
EXAMPLE_RESPONSE: dict[str, Any] = {
    "value": {"dtype": "float32", "shape": [], "data": 0.0},
    "variables": {"x": {"dtype": "float32", "shape": [2], "data": [1.0, 2.0]}},
    "iterations": 2, "converged": True, "reason": "converged", "gradient_norm": 0.0}
"""What the example request gets (L-BFGS: two iterations to the exact minimum)."""


def _options_doc() -> str:
    methods = "; ".join(f"{m}: {', '.join(names)}" for m, names in OPTIONS.items())
    return f"the method's hyper-parameters, by optax's names ({methods})"


def _learning_rate_doc() -> str:
    defaults = ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LEARNING_RATE.items())
    return (f"the first-order methods' step size (default: {defaults}); with lbfgs it scales "
            "the line search's step (default: none)")


Number = Annotated[float, Field(allow_inf_nan=False)]


class MinimizeRequest(GraphRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_REQUEST],
                                                 "oneOf": ONE_GRAPH})

    target: Name = Field(description="a scalar floating-point name of the graph: the objective")
    variables: list[Name] = Field(min_length=1, description="floating-point inputs to minimize "
                                  "over, starting from their values in inputs")
    method: Method = Field("lbfgs", description="lbfgs (with a zoom line search), or a "
                           "first-order optax method")
    learning_rate: Number | None = Field(None, gt=0, description=_learning_rate_doc())
    options: dict[str, bool | int | Number] = Field(default_factory=dict,
                                                    description=_options_doc())
    max_iterations: int = Field(DEFAULT_MAX_ITERATIONS, ge=0, le=MAX_ITERATIONS,
                                description="the most iterations the loop runs")
    tolerance: Number = Field(DEFAULT_TOLERANCE, ge=0, description="the loop has converged "
                              "when the gradient's norm (over all variables) is at most this")
    history: bool = Field(False, description="answer the objective after each iteration")


class MinimizeResponse(BaseModel):
    value: TensorOut = Field(description="the objective at the answer's variables")
    variables: dict[str, TensorOut]
    iterations: int
    converged: bool
    reason: Reason = Field(description="why the loop stopped: the gradient's norm reached "
                           "the tolerance, the iterations ran out, or a step's objective or "
                           "gradient was not finite (that step is not taken)")
    gradient_norm: float | Literal["NaN", "Infinity"]
    history: list[float] | None = Field(None, description="with history: the objective after "
                                        "each iteration")
