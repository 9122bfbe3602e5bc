"""Sessions and tapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from service.schemas.graphs import Node
from service.schemas.tensors import Encoding, Tensor, TensorOut

Unconnected = Literal["none", "zero"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSession(Strict):
    ttl_seconds: float | None = Field(None, gt=0, description="idle time before expiry; "
                                      "default and maximum are configured")


class SessionCreated(BaseModel):
    session_id: str
    expires_at: str = Field(description="UTC, ISO 8601; each request on the session "
                            "pushes it back by ttl_seconds")
    ttl_seconds: float


class PutTensor(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"value": [[1, 1], [1, 1]], "variable": False, "trainable": True}]})

    value: Tensor
    variable: StrictBool = Field(False, description="a variable can be assigned in place; "
                                 "trainable ones are watched by tapes automatically")
    trainable: StrictBool = True


class RunRequest(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"]},
                  {"id": "z", "op": "multiply", "args": ["y", "y"]}]}]})

    nodes: list[Node] = Field(description="run in order; an id may rebind a name; assign, "
                              "assign_add and assign_sub update a variable")
    fetch: list[str] | None = Field(None, description="names to return; default: every "
                                    "node's result; [] returns nothing")
    encoding: Encoding = "json"


class OpenTape(Strict):
    persistent: StrictBool = False
    watch_accessed_variables: StrictBool = True


class TapeCreated(BaseModel):
    tape_id: str


class Watch(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"tensors": ["x"]}]})

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
    bytes: int
    ttl_seconds: float
    expires_at: str


class TapeQuery(Strict):
    target: str
    sources: list[str] = Field(min_length=1)
    unconnected_gradients: Unconnected = "none"
    encoding: Encoding = "json"


class TapeGradient(TapeQuery):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"target": "z", "sources": ["x"]},
                     {"target": "y", "sources": ["x"], "save_as": {"x": "dy_dx"}}]})

    output_gradients: Tensor | dict[str, Tensor] | None = None
    save_as: dict[str, str] | None = Field(None, description="{source: name}: bind results "
                                           "as session tensors (recorded on tapes that are "
                                           "recording, for higher-order gradients)")


class TapeHvp(TapeQuery):
    vectors: dict[str, Tensor]


class Values(BaseModel):
    values: dict[str, TensorOut]


class Gradients(BaseModel):
    gradients: dict[str, TensorOut | None]


