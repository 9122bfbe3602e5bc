"""Sessions and tapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.schemas import examples
from service.schemas.base import Name, Strict
from service.schemas.differentiation import HvpPart, all_hvp_parts
from service.schemas.graphs import FUNCTIONS, Function, Node
from service.schemas.tensors import Encoding, Tensor, TensorOut

Unconnected = Literal["none", "zero"]
CHECK_NUMERICS = ("check every value computed, forward and backward, for NaN and infinity: "
                  "the first one found is a 422 problem of type non-finite naming the node, "
                  "the phase and the counts (a run then binds none of its nodes' results)")
Targets = Name | Annotated[list[Name], Field(min_length=1)]


class CreateSession(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.SESSION]})

    ttl_seconds: float | None = Field(None, ge=1, allow_inf_nan=False, description=(
        "seconds of idle time before expiry, at least 1; default and maximum are configured "
        "(GET /v1/info)"))


class SessionCreated(BaseModel):
    session_id: str
    expires_at: str = Field(description="UTC, ISO 8601; each request on the session "
                            "pushes it back by ttl_seconds")
    ttl_seconds: float


class PutTensor(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.PUT_X]})

    value: Tensor
    variable: StrictBool = Field(False, description="a variable can be assigned in place; "
                                 "trainable ones are watched by tapes automatically")
    trainable: StrictBool = True


# What the runtime checks, said in JSON Schema: something to do (nodes, inputs or a watch).
SOMETHING_TO_RUN: list[Any] = [
    {"required": ["nodes"], "properties": {"nodes": {"minItems": 1}}},
    {"required": ["inputs"], "properties": {"inputs": {"minProperties": 1}}},
    {"required": ["watch"], "properties": {"watch": {"minProperties": 1}}},
]


class RunRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.RUN],
                                                 "anyOf": SOMETHING_TO_RUN})

    nodes: list[Node] = Field(default_factory=list, description="run in order; an id may "
                              "rebind a name; assign, assign_add and assign_sub update a "
                              "variable")
    inputs: dict[str, Tensor] = Field(default_factory=dict, description="{name: tensor}: "
                                      "bound as session constants before the nodes run, as "
                                      "PUT .../tensors/{name} would bind them")
    watch: dict[str, list[Name]] = Field(default_factory=dict, description="{tape_id: "
                                         "[names]}: watched by those tapes after inputs are "
                                         "bound and before the nodes run")
    fetch: list[str] | None = Field(None, description="names to return; default: every "
                                    "node's result; [] returns nothing")
    encoding: Encoding = "json"
    check_numerics: StrictBool = Field(False, description=CHECK_NUMERICS)
    functions: dict[Name, Function] = Field(default_factory=dict, description=FUNCTIONS)


class OpenTape(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.OPEN_TAPE]})

    persistent: StrictBool = Field(False, description="a tape that is not persistent answers "
                                   "one gradient, Jacobian, HVP or Hessian")
    watch_accessed_variables: StrictBool = True


class TapeCreated(BaseModel):
    tape_id: str


class Watch(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.WATCH_X]})

    tensors: list[str] = Field(min_length=1)


class TapeInfo(BaseModel):
    tape_id: str
    persistent: bool
    recording: bool
    stopped: bool
    paused: bool
    watch_accessed_variables: bool
    watched: list[str]
    ops_recorded: int
    used: bool


class TensorInfo(BaseModel):
    name: str
    dtype: str
    shape: list[int]
    variable: bool
    trainable: bool


class SessionInfo(BaseModel):
    session_id: str
    tensors: list[TensorInfo]
    tapes: list[TapeInfo]
    bytes: int = Field(description="everything the session holds, counted against its cap: "
                       "tensor data and the objects around it, names, tapes and records")
    tensor_bytes: int = Field(description="tensor data alone")
    ttl_seconds: float
    expires_at: str


class TapeQuery(Strict):
    """The jacobian, batch_jacobian and hessian of a tape (each route has its example)."""

    target: str
    sources: list[str] = Field(min_length=1)
    unconnected_gradients: Unconnected = "none"
    encoding: Encoding = "json"
    check_numerics: StrictBool = Field(False, description=CHECK_NUMERICS)


class TapeGradient(TapeQuery):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.GRADIENT]})

    target: Targets = Field(  # type: ignore[assignment]
        description="a name, or a list of names whose total is differentiated")
    sources: list[Name] | None = Field(  # type: ignore[assignment]
        None, min_length=1, description="names to differentiate with respect to; may be left "
        "out with apply (the optimizer's variables)")
    output_gradients: Tensor | dict[str, Tensor] | None = None
    save_as: dict[str, str] | None = Field(None, description="{source: name}: bind results "
                                           "as session tensors (recorded on tapes that are "
                                           "recording, for higher-order gradients)")
    apply: Name | None = Field(None, description="an optimizer of the session: the gradients "
                               "are applied as one update, and the answer is its step")
    fetch_gradients: StrictBool = Field(False, description="with apply, answer the gradients "
                                        "too")


class TapeHvp(TapeQuery):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.HVP]})

    vectors: dict[str, Tensor] = Field(description="{source: tensor shaped like the source}")
    include: list[HvpPart] = Field(
        default_factory=all_hvp_parts, min_length=1,
        description="the parts to compute and answer; the others are left out")


class Values(BaseModel):
    values: dict[str, TensorOut]


class Gradients(BaseModel):
    """The gradients; with apply, the optimizer's step (and the gradients when fetched)."""

    gradients: dict[str, TensorOut | None] | None = None
    step: int | None = None


