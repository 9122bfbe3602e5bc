"""Serialized computation graphs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.tensors import Tensor

TUTORIAL_GRAPH: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [2, 2]}},
    "nodes": [
        {"id": "y", "op": "reduce_sum", "args": ["x"]},
        {"id": "z", "op": "multiply", "args": ["y", "y"]},
    ],
    "outputs": ["z"],
}
TUTORIAL_INPUTS: dict[str, Any] = {"x": [[1, 1], [1, 1]]}


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float32", "float64", "int32", "int64", "bool"] | None = None
    shape: list[int] | None = Field(None, description="taken from the value when left out")


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | list[str] = Field(description="the result's name, or a list of names for an op "
                                "with several results")
    op: str = Field(description="an op name or alias from GET /v1/ops")
    args: list[Tensor | str] = Field(default_factory=list, description="names of inputs or "
                                     "earlier nodes, or constants")
    attrs: dict[str, Any] = Field(default_factory=dict, description="static parameters "
                                  "(axis, keepdims, shape, ...)")


class Graph(BaseModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [TUTORIAL_GRAPH]})

    inputs: dict[str, InputSpec | None] | None = Field(
        None, description="placeholders; when left out, every used but undefined name is one")
    nodes: list[Node] = Field(min_length=1)
    outputs: list[str] | str | None = Field(None, description="defaults to the last node")

    def plain(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class GraphCreated(BaseModel):
    graph_id: str
    inputs: list[str]
    outputs: list[str]
    num_nodes: int


class GraphOut(GraphCreated):
    graph: dict[str, Any]
