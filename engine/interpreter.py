"""The interpreter: run a Program's equations over an environment, and infer its types.

Like `eval_jaxpr`, it reads each equation's arguments from the environment, applies the
primitive and writes the results; it never looks at op names. Running it under a JAX trace
(`jit`, `grad`, `eval_shape`) turns a Program into a pure JAX function.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from engine.errors import EngineError, InvalidGraph
from engine.program import Eqn, Program, literal_type

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


def _checked_eqns(eqns: Iterable[Eqn], env: dict[str, Any],
                  literals: tuple[Any, ...]) -> dict[str, Any]:
    """`run_eqns` for type inference: each failure is reported against its node."""
    for eqn in eqns:
        args = [env[a] if isinstance(a, str) else literals[a] for a in eqn.args]
        try:
            out = eqn.prim.bind(*args, **dict(eqn.attrs))
        except EngineError:
            raise
        except Exception as exc:  # JAX reports shape and dtype errors as several types
            raise InvalidGraph(_describe_failure(eqn, args, exc), node=eqn.node) from None
        results = out if eqn.prim.multi_output else (out,)
        if len(results) != len(eqn.outs):
            raise InvalidGraph(f"op {eqn.prim.name!r} gives {len(results)} results here, but "
                               f"the id names {len(eqn.outs)}; list one id per result",
                               node=eqn.node)
        for name, value in zip(eqn.outs, results, strict=True):
            env[name] = value
    return env


def _describe_failure(eqn: Eqn, args: list[Any], exc: Exception) -> str:
    types = ", ".join(_type_text(a) for a in args)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(reason) > 400:
        reason = reason[:400] + "..."
    return f"op {eqn.prim.name!r} cannot take arguments ({types}): {reason}"


def _type_text(value: Any) -> str:
    if isinstance(value, bool | int | float):
        return f"{type(value).__name__} constant"
    return f"{np.dtype(value.dtype).name}{list(value.shape)}"


class TypeCache:
    """Bounded memo of inferred types, keyed by structure and argument types."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._entries: OrderedDict[Any, dict[str, Aval]] = OrderedDict()
        self._largest: dict[Any, tuple[int, str]] = {}

    @staticmethod
    def _key(program: Program, input_avals: Mapping[str, Aval]) -> Any:
        return (program.structure_key,
                tuple((n, a.shape, a.dtype) for n, a in input_avals.items()))

    def known(self, program: Program, input_avals: Mapping[str, Aval]) -> bool:
        return self._key(program, input_avals) in self._entries

    def infer(self, program: Program, input_avals: Mapping[str, Aval]) -> dict[str, Aval]:
        """Shapes and dtypes of every name in `program`, or InvalidGraph naming the node."""
        key = self._key(program, input_avals)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        avals = infer(program, input_avals)
        self._entries[key] = avals
        self._largest[key] = max(((math.prod(a.shape), n) for n, a in avals.items()),
                                 default=(0, ""))
        if len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            self._largest.pop(old, None)
        return avals

    def largest(self, program: Program, input_avals: Mapping[str, Aval]) -> tuple[int, str]:
        """(elements, name) of the biggest value the program makes; after `infer`."""
        return self._largest[self._key(program, input_avals)]


def infer(program: Program, input_avals: Mapping[str, Aval]) -> dict[str, Aval]:
    def all_values(inputs: dict[str, Any], literals: tuple[Any, ...]) -> dict[str, Any]:
        return _checked_eqns(program.eqns, dict(inputs), literals)

    literal_avals = tuple(v if literal_type(v)[0] == "weak" else Aval(np.shape(v), v.dtype)
                          for v in program.literals)
    return jax.eval_shape(all_values, dict(input_avals), literal_avals)
