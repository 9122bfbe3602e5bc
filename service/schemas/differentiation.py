"""Stateless differentiation requests and answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.schemas import examples
from service.schemas.base import Name, Strict
from service.schemas.graphs import Graph
from service.schemas.tensors import Encoding, Tensor, TensorOut

Unconnected = Literal["none", "zero"]
HvpPart = Literal["value", "gradients", "hvp"]


def all_hvp_parts() -> list[HvpPart]:
    return ["value", "gradients", "hvp"]
Targets = Name | Annotated[list[Name], Field(min_length=1)]

# What `_one_graph` checks, said in JSON Schema: exactly one of the two is there and not null.
ONE_GRAPH: list[Any] = [{"required": ["graph"], "properties": {"graph": {"type": "object"}}},
             {"required": ["graph_id"], "properties": {"graph_id": {"type": "string"}}}]


def _example(body: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [body], "oneOf": ONE_GRAPH})


class GraphRequest(Strict):
    """A graph inline (`graph`) or registered (`graph_id`), and values for its inputs."""

    model_config = ConfigDict(json_schema_extra={"oneOf": ONE_GRAPH})

    graph: Graph | None = None
    graph_id: str | None = Field(None, description="from POST /v1/graphs")
    inputs: dict[str, Tensor] = Field(default_factory=dict, description="{input: tensor}")
    encoding: Encoding = Field(
        "json", description="'base64' answers tensors as b64 bytes instead of nested data; "
        "'none' answers dtype and shape only")
    batch: dict[Name, int] | None = Field(
        None, examples=[{"x": 0}], description="{input: axis}: the query is mapped over that "
        "axis of those inputs (their declared shapes are those of one example; the batch "
        "sizes must agree), the other inputs, vectors, tangents and output_gradients are "
        "shared, and every answer gains a leading batch axis (per-example values, "
        "gradients, ...)")
    check_numerics: bool = Field(
        False, description="check every value of the forward pass, and every cotangent of the "
        "backward pass, for NaN and infinity: the first one found is a 422 problem of type "
        "non-finite naming the node, the phase and the counts")

    @model_validator(mode="after")
    def _one_graph(self) -> GraphRequest:
        if (self.graph is None) == (self.graph_id is None):
            raise ValueError("give exactly one of 'graph' (inline) and 'graph_id' (registered "
                             "with POST /v1/graphs)")
        return self


class EvaluateRequest(GraphRequest):
    model_config = _example(examples.EVALUATE)

    outputs: list[str] | None = Field(None, description="names to return; intermediates "
                                      "allowed; default: the graph's outputs")


class GradientRequest(GraphRequest):
    model_config = _example(examples.STATELESS_GRADIENT)

    target: Targets = Field(description="a name, or a list whose total is differentiated")
    sources: list[str] | None = Field(None, description="names (inputs or intermediates); "
                                      "default: every floating-point input")
    output_gradients: Tensor | dict[str, Tensor] | None = Field(
        None, description="the cotangent (a VJP): a tensor shaped like the target, or "
        "{target: tensor} for a list of targets; default: ones")
    unconnected_gradients: Unconnected = "none"


class JacobianRequest(GraphRequest):
    model_config = _example(examples.STATELESS_JACOBIAN)

    target: str
    sources: list[str] | None = None
    unconnected_gradients: Unconnected = "none"


class HvpRequest(GraphRequest):
    model_config = _example(examples.STATELESS_HVP)

    target: str = Field(description="a scalar")
    sources: list[str] | None = None
    vectors: dict[str, Tensor] = Field(description="{source: tensor shaped like the source}")
    unconnected_gradients: Unconnected = "none"
    include: list[HvpPart] = Field(
        default_factory=all_hvp_parts, min_length=1,
        description="the parts to compute and answer; the others are left out")


class HessianRequest(GraphRequest):
    model_config = _example(examples.STATELESS_HESSIAN)

    target: str = Field(description="a scalar")
    sources: list[str] | None = None
    unconnected_gradients: Unconnected = "none"


class JvpRequest(GraphRequest):
    model_config = _example(examples.JVP)

    tangents: dict[str, Tensor] = Field(min_length=1,
                                        description="{input or intermediate: tangent}")
    outputs: list[str] | None = None


MaybeTensor = TensorOut | None


class EvaluateResponse(BaseModel):
    values: dict[str, TensorOut]


class GradientResponse(BaseModel):
    value: TensorOut | dict[str, TensorOut]
    gradients: dict[str, MaybeTensor]


class JacobianResponse(BaseModel):
    value: TensorOut
    jacobian: dict[str, MaybeTensor]


class HvpResponse(BaseModel):
    """The parts asked for with `include` (by default all three)."""

    value: TensorOut | None = None
    gradients: dict[str, MaybeTensor] | None = None
    hvp: dict[str, MaybeTensor] | None = None


class HessianResponse(BaseModel):
    value: TensorOut
    gradients: dict[str, MaybeTensor]
    hessian: dict[str, dict[str, MaybeTensor]]


class JvpResponse(BaseModel):
    values: dict[str, TensorOut]
    tangents: dict[str, TensorOut]
