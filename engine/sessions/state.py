"""Session state as plain data: arrays, ids, names and records. No closures and no JAX
objects, so that a session can be serialized and served by any replica."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TensorId = int
Handle = int


@dataclass(frozen=True)
class Const:
    """A scalar constant argument, kept as a Python number (weakly typed, as in JAX)."""

    value: bool | int | float


Arg = TensorId | Const


@dataclass(frozen=True)
class Record:
    """One op a tape recorded: `outs = op(*args, **attrs)`.

    `op` is an op-table name, or `"gradient"` for a gradient computed while the tape was
    recording; its attrs then hold the inner tape's records and query (`GradientSpec`)."""

    op: str
    attrs: tuple[tuple[str, Any], ...]
    args: tuple[Arg, ...]
    outs: tuple[TensorId, ...]
    node: str


@dataclass(frozen=True)
class SourceSpec:
    """What a source name meant when a gradient was asked: a tensor, or a variable whose
    versions (values before and after assignments) all receive its gradient."""

    label: str
    shape: tuple[int, ...]
    dtype: str
    tensor: TensorId | None = None
    variable: Handle | None = None
    versions: tuple[TensorId, ...] = ()


@dataclass(frozen=True)
class GradientSpec:
    """A recorded gradient: d target / d sources over `records`, as plain data."""

    records: tuple[Record, ...]
    target: TensorId
    sources: tuple[SourceSpec, ...]
    with_cotangent: bool = False  # the record's last argument is output_gradients


@dataclass
class Variable:
    handle: Handle
    current: TensorId
    trainable: bool


@dataclass
class Tape:
    tape_id: str
    persistent: bool
    watch_accessed_variables: bool
    stopped: bool = False
    paused: bool = False
    used: bool = False
    records: list[Record] = field(default_factory=list)
    tracked: set[TensorId] = field(default_factory=set)  # watched, or made by recorded ops
    watched_tensors: set[TensorId] = field(default_factory=set)
    watched_variables: set[Handle] = field(default_factory=set)

    @property
    def recording(self) -> bool:
        return not self.stopped and not self.paused

    def tracks(self, tid: TensorId, handle: Handle | None) -> bool:
        return tid in self.tracked or (handle is not None and handle in self.watched_variables)


@dataclass
class Binding:
    """What a name means: a tensor, or a variable (whose value changes on assignment)."""

    tensor: TensorId | None = None
    variable: Handle | None = None


@dataclass
class Session:
    session_id: str
    ttl_seconds: float
    created_at: float
    last_used: float
    values: dict[TensorId, np.ndarray] = field(default_factory=dict)
    version_of: dict[TensorId, Handle] = field(default_factory=dict)
    names: dict[str, Binding] = field(default_factory=dict)
    variables: dict[Handle, Variable] = field(default_factory=dict)
    tapes: dict[str, Tape] = field(default_factory=dict)
    next_id: int = 1

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl_seconds

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values.values())

    def new_id(self) -> TensorId:
        tid = self.next_id
        self.next_id += 1
        return tid
