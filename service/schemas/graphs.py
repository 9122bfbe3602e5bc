"""Serialized computation graphs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.base import Name, Strict
from service.schemas.examples import TUTORIAL_GRAPH
from service.schemas.tensors import DType, Shape, Tensor


class InputSpec(Strict):
    dtype: DType | None = None
    shape: Shape | None = Field(None, description="taken from the value when left out")
    default: Tensor | None = Field(None, description="the value used when a request does not "
                                   "send this input (a model's weights); such inputs are "
                                   "differentiated only when named in sources")


class Node(Strict):
    id: Name | Annotated[list[Name], Field(min_length=1)] = Field(
        description="the result's name, or a list of names for an op with several results")
    op: str = Field(min_length=1, description="an op name or alias from GET /v1/ops")
    args: list[Tensor | str] = Field(default_factory=list, description="names of inputs or "
                                     "earlier nodes, or constants")
    attrs: dict[str, Any] = Field(default_factory=dict, description="static parameters "
                                  "(axis, keepdims, shape, ...)")


class Function(Strict):
    params: list[Name] = Field(description="the function's arguments, in order; its nodes "
                               "see only these (no names from outside)")
    nodes: list[Node] = Field(min_length=1)
    outputs: list[Name] | Name = Field(description="its results, in order")


FUNCTIONS = ("{name: function}: functions that nodes' function attributes (call's function; "
             "cond's true and false; the loops' body and cond) may name; an attribute may also "
             "hold a function object inline")


class Graph(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [TUTORIAL_GRAPH]})

    inputs: dict[str, InputSpec | None] | None = Field(
        None, description="placeholders; when left out, every used but undefined name is one")
    nodes: list[Node] = Field(min_length=1)
    outputs: list[str] | str | None = Field(None, description="defaults to the last node")
    functions: dict[Name, Function] | None = Field(None, description=FUNCTIONS)

    def plain(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class GraphCreated(BaseModel):
    graph_id: str
    inputs: list[str]
    outputs: list[str]
    num_nodes: int


class GraphOut(GraphCreated):
    graph: dict[str, Any]
