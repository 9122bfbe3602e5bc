"""Optimisers held in a session, and gradients applied with them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import examples
from service.schemas.base import Name, Strict
from service.schemas.graphs import Node
from service.schemas.tensors import Encoding, Tensor, TensorOut

Method = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]


class CreateOptimizer(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.CREATE_OPTIMIZER]})

    name: Name
    method: Method = Field(description="an optax optimiser")
    learning_rate: float = Field(gt=0)
    options: dict[str, bool | int | float | None] = Field(
        default_factory=dict, description="the method's other parameters, by optax's names "
        "(sgd: momentum, nesterov; adam: b1, b2, eps, ...); optax's defaults otherwise")
    variables: list[Name] | None = Field(
        None, min_length=1, description="the variables it updates; default: every trainable "
        "variable of the session")


class OptimizerInfo(BaseModel):
    name: str
    method: str
    learning_rate: float
    options: dict[str, Any]
    variables: list[str]
    step: int = Field(description="updates applied so far")


class ApplyGradients(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.APPLY]})

    gradients: dict[str, Name | Tensor] = Field(
        min_length=1, description="{variable: the name of a session tensor, or a tensor}; "
        "the optimiser's other variables keep their values and their state")


class StepRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.STEP]})

    nodes: list[Node] = Field(min_length=1, description="the forward pass, run as a session "
                              "run is; assign ops are not allowed")
    inputs: dict[str, Tensor] = Field(default_factory=dict, description="{name: tensor}: "
                                      "bound as session constants first (they stay bound)")
    target: Name = Field(description="the scalar loss: a node of this step")
    optimizer: Name = Field(description="an optimizer of the session: its variables are "
                            "updated")
    fetch: list[Name] | None = Field(None, description="nodes whose values (of the last "
                                     "forward pass, before its update) to answer")
    repeat: int = Field(1, ge=1, le=10_000, description="steps on the same inputs, in one "
                        "compiled loop")
    encoding: Encoding = "json"


class StepAnswer(BaseModel):
    values: dict[str, TensorOut]
    step: int
    losses: list[float] | None = Field(None, description="the loss of each step, when "
                                       "repeat > 1")


class Step(BaseModel):
    step: int
    gradients: dict[str, TensorOut | None] | None = Field(
        None, description="with fetch_gradients, the gradients that were applied")
