"""What the service says about itself: its instance and its op catalogue."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    """An answer that may gain fields; clients keep the ones they do not know."""

    model_config = ConfigDict(extra="allow")


class Device(Open):
    id: int
    platform: str
    kind: str


class Info(Open):
    version: str
    jax_version: str
    backend: str = Field(description="'cpu' or 'gpu'")
    devices: list[Device]
    session_store: str
    sessions: int = Field(description="sessions held now")
    limits: dict[str, Any] = Field(description="the configured limits (GRADTAPE_*)")
    compile_cache: dict[str, Any]
    registered_graphs: int
    api_keys_required: bool


class AttrInfo(Open):
    type: str
    required: bool
    default: Any = None
    doc: str | None = None


class OpInfo(Open):
    name: str
    aliases: list[str] = Field(description="other accepted names (TensorFlow's, ...)")
    arity: int | str = Field(description="the number of arguments, or a range such as '1+'")
    min_args: int
    max_args: int | None = Field(description="null: any number")
    attrs: dict[str, AttrInfo] = Field(description="keyword parameters")
    differentiable: bool
    multi_output: bool = Field(description="the node's id is a list of names")
    category: str
    doc: str = Field(description="a one-line formula")
