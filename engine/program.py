"""The engine's intermediate form: a straight-line program of op applications.

Both a serialized graph (stateless routes) and a tape's recording (sessions) become a
`Program`. Names are strings; an argument that is an int refers to `literals[i]`. The
structure key (ops, attrs, wiring, literal types, not literal values) keys the compile cache,
so a graph that differs only in its constants' values reuses compiled code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np


class Primitive(Protocol):
    """What the interpreter needs of an op: apply it, and know if gradients pass through."""

    @property
    def name(self) -> str: ...

    @property
    def differentiable(self) -> bool: ...

    @property
    def multi_output(self) -> bool: ...

    def bind(self, *args: Any, **attrs: Any) -> Any: ...


Arg = str | int  # a name, or an index into Program.literals


@dataclass(frozen=True)
class Eqn:
    """One op application: `outs = prim(*args, **attrs)`. `node` names it in errors."""

    prim: Primitive
    attrs: tuple[tuple[str, Any], ...]
    args: tuple[Arg, ...]
    outs: tuple[str, ...]
    node: str

    def prim_key(self) -> Any:
        """The primitive and its attributes: what its result types depend on, besides the
        argument types."""
        key = getattr(self.prim, "key", None)
        return (key() if callable(key) else self.prim.name), self.attrs

    def key(self) -> tuple[Any, ...]:
        return (self.prim_key(), self.args, self.outs)


def literal_type(value: Any) -> tuple[Any, ...]:
    """A literal's abstract type: Python scalars stay weakly typed, arrays by shape and dtype."""
    if isinstance(value, bool | int | float):
        return ("weak", type(value).__name__)
    return (tuple(np.shape(value)), np.asarray(value).dtype.name)


@dataclass(frozen=True)
class Program:
    inputs: tuple[str, ...]
    eqns: tuple[Eqn, ...]
    outputs: tuple[str, ...]
    literals: tuple[Any, ...] = ()
    input_dtypes: Mapping[str, str | None] = field(default_factory=dict)
    input_shapes: Mapping[str, tuple[int, ...] | None] = field(default_factory=dict)
    input_defaults: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Values of the inputs that a request may leave out (a model's weights)."""

    @cached_property
    def structure_key(self) -> str:
        """A digest of everything that shapes the compiled code, literal values excluded."""
        parts = (self.inputs, tuple(e.key() for e in self.eqns), self.outputs,
                 self.literal_types)
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    @cached_property
    def literal_types(self) -> tuple[tuple[Any, ...], ...]:
        return tuple(literal_type(v) for v in self.literals)

    @cached_property
    def indexing(self) -> tuple[Eqn, ...]:
        """Equations whose op reads integer indices (checked against their axis on binding)."""
        return tuple(e for e in self.eqns if getattr(e.prim, "indices", None) is not None)

    @cached_property
    def producer(self) -> dict[str, Eqn]:
        """Name -> the equation that defines it."""
        return {out: eqn for eqn in self.eqns for out in eqn.outs}

    def defines(self, name: str) -> bool:
        return name in self.producer or name in self.inputs

    def needed(self, names: Iterable[str]) -> tuple[Eqn, ...]:
        """The equations that `names` depend on, in program order (dead code removed)."""
        wanted = set(names)
        keep: list[Eqn] = []
        for eqn in reversed(self.eqns):
            if wanted.intersection(eqn.outs):
                keep.append(eqn)
                wanted.update(a for a in eqn.args if isinstance(a, str))
        return tuple(reversed(keep))

    def connected(self, targets: Iterable[str], sources: Iterable[str],
                  is_float: Callable[[str], bool]) -> set[str]:
        """The sources that a gradient of `targets` reaches through differentiable ops and
        floating-point values.

        This is TensorFlow's notion of 'connected': with no such path the gradient is None
        (or zeros on request), not a computed zero.
        """
        reach = {t for t in targets if is_float(t)}
        for eqn in reversed(self.eqns):
            if eqn.prim.differentiable and reach.intersection(eqn.outs):
                reach.update(a for a in eqn.args if isinstance(a, str) and is_float(a))
        return reach.intersection(sources)
