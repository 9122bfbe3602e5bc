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


@dataclass(frozen=True, eq=False)
class Function:
    """A sub-program that `call` and the control-flow ops take as an attribute: its
    `program.inputs` are the params and `program.outputs` the results, and it sees nothing
    else (no capture). `source` is its canonical form (constants included) and `key` that
    form's digest: functions are equal, and share compiled code, when their keys are, whatever
    their names. `ref` is the graph-level name a graph calls it by (None: written inline).

    JAX's `cond` and `scan` primitives carry their jaxprs as params in the same way.
    """

    name: str
    program: Program
    source: Mapping[str, Any]
    key: str
    ref: str | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Function) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:  # part of structure keys: the digest, not the name
        return f"Function({self.key})"

    @property
    def params(self) -> tuple[str, ...]:
        return self.program.inputs


def functions_of(eqn: Eqn) -> tuple[Function, ...]:
    """The functions an equation takes as attributes, in attribute order."""
    return tuple(v for _, v in eqn.attrs if isinstance(v, Function))


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
    functions: Mapping[str, Function] = field(default_factory=dict)
    """The graph-level functions the graph declares, by name (its equations hold those they
    use)."""

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
    def nested(self) -> tuple[Eqn, ...]:
        """Every equation, those of the functions its equations take included (depth
        first), for checks that look inside control flow."""
        out: list[Eqn] = []
        for eqn in self.eqns:
            out.append(eqn)
            for fn in functions_of(eqn):
                out.extend(fn.program.nested)
        return tuple(out)

    @cached_property
    def functions_used(self) -> bool:
        """Whether an equation takes a function (`call`, control flow)."""
        return any(functions_of(e) for e in self.eqns)

    @cached_property
    def eager(self) -> bool:
        """Whether it can run op by op, uncompiled: not when it holds control flow (whose
        ops trace their functions; XLA runs the loop)."""
        return all(getattr(e.prim, "eager", True) for e in self.nested)

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
