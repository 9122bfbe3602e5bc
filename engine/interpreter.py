"""The interpreter: run a Program's equations over an environment, and infer its types.

Like `eval_jaxpr`, it reads each equation's arguments from the environment, applies the
primitive and writes the results; it never looks at op names. Running it under a JAX trace
(`jit`, `grad`, `eval_shape`) turns a Program into a pure JAX function.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from engine.errors import EngineError, InvalidGraph
from engine.program import Eqn, Program

Aval = jax.ShapeDtypeStruct


def run_eqns(eqns: Iterable[Eqn], env: dict[str, Any], literals: tuple[Any, ...],
             perturb: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply each equation in order. `perturb` adds a (zero) value to named results: the
    gradient with respect to that addend is the gradient with respect to the intermediate."""
    for eqn in eqns:
        args = [env[a] if isinstance(a, str) else literals[a] for a in eqn.args]
        out = eqn.prim.bind(*args, **dict(eqn.attrs))
        results = out if eqn.prim.multi_output else (out,)
        for name, value in zip(eqn.outs, results, strict=True):
            env[name] = value if perturb is None or name not in perturb else value + perturb[name]
    return env


def infer_eqn(eqn: Eqn, args: list[Any]) -> tuple[Aval, ...]:
    """Result types of one equation on abstract arguments, or InvalidGraph naming its node."""
    def apply(*values: Any) -> Any:
        return eqn.prim.bind(*values, **dict(eqn.attrs))

    try:
        out = jax.eval_shape(apply, *args)
    except EngineError as exc:  # raised inside a function this equation takes: name both
        if exc.path:
            raise exc.within(("node", eqn.node)) from None
        if exc.node is None:
            exc.node = eqn.node
        raise
    except Exception as exc:  # JAX reports shape and dtype errors as several types
        raise InvalidGraph(describe_failure(eqn, args, exc), node=eqn.node) from None
    results = tuple(out) if eqn.prim.multi_output else (out,)
    if len(results) != len(eqn.outs):
        raise InvalidGraph(f"op {eqn.prim.name!r} gives {len(results)} results here, but "
                           f"the id names {len(eqn.outs)}; list one id per result",
                           node=eqn.node)
    return results


def _signature(value: Any) -> Any:
    if isinstance(value, bool | int | float):
        return ("weak", type(value))
    return (value.shape, value.dtype, getattr(value, "weak_type", False))


def _abstract(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | Aval) else Aval(value.shape,
                                                                           value.dtype)


def describe_failure(eqn: Eqn, args: Sequence[Any], exc: Exception) -> str:
    """Why `eqn` cannot take `args` (values or abstract values), from JAX's error."""
    types = ", ".join(type_text(a) for a in args)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(reason) > 400:
        reason = reason[:400] + "..."
    return f"op {eqn.prim.name!r} cannot take arguments ({types}): {reason}"


def type_text(value: Any) -> str:
    """`float32[2, 3]`, or `float constant` for a Python scalar."""
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} constant"
    return f"{np.dtype(value.dtype).name}{list(value.shape)}"


class TypeCache:
    """Bounded memo of inferred types: of whole programs, keyed by structure and input
    types, and of single equations, keyed by op, attributes and argument types. A new graph
    made of ops already seen on the same shapes is typed without tracing anything.
    Thread-safe: requests run in worker threads."""

    def __init__(self, capacity: int = 1024, eqn_capacity: int = 16384):
        self.capacity = capacity
        self.eqn_capacity = eqn_capacity
        self._entries: OrderedDict[Any, Typed] = OrderedDict()
        self._eqns: OrderedDict[Any, tuple[Aval, ...]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(program: Program, input_avals: Mapping[str, Aval]) -> Any:
        return (program.structure_key,
                tuple((n, a.shape, a.dtype) for n, a in input_avals.items()))

    def known(self, program: Program, input_avals: Mapping[str, Aval]) -> bool:
        return self._key(program, input_avals) in self._entries

    def infer(self, program: Program, input_avals: Mapping[str, Aval]) -> Typed:
        """Shapes and dtypes of every name in `program` (and its biggest value), or
        InvalidGraph naming the node."""
        key = self._key(program, input_avals)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        avals = self._infer(program, input_avals)
        largest = max(((math.prod(a.shape), n) for n, a in avals.items()), default=(0, ""))
        typed = Typed(avals, largest)
        with self._lock:
            self._entries[key] = typed
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return typed

    def _infer(self, program: Program, input_avals: Mapping[str, Aval]) -> dict[str, Aval]:
        env: dict[str, Any] = dict(input_avals)
        literals = [_abstract(v) for v in program.literals]
        for eqn in program.eqns:
            args = [env[a] if isinstance(a, str) else literals[a] for a in eqn.args]
            key = (eqn.prim_key(), tuple(_signature(a) for a in args))
            with self._lock:
                results = self._eqns.get(key)
            if results is None:
                results = infer_eqn(eqn, args)
                with self._lock:
                    self._eqns[key] = results
                    if len(self._eqns) > self.eqn_capacity:
                        self._eqns.popitem(last=False)
            env.update(zip(eqn.outs, results, strict=True))
        return env


@dataclass(frozen=True)
class Typed:
    """The inferred type of every name, and (elements, name) of the biggest value."""

    types: dict[str, Aval]
    largest: tuple[int, str]
