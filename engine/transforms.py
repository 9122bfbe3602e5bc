"""Pure JAX functions for each differentiation query, built from a Program.

A query differentiates the program's `targets` with respect to `sources`. A source that is a
program input is fed in directly; a source that is an intermediate value gets a zero addend
(`perturb`), whose gradient is the gradient with respect to that value. Every builder returns
`fn(inputs, literals, sources, extra)`, a pure function that `jax.jit` compiles as is.

Transforms are compositions, as in JAX: the HVP is forward-over-reverse (`jvp` of `grad`), the
Hessian `jacfwd` of `grad`; neither builds more than it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from engine.interpreter import run_eqns
from engine.program import Program

PureFn = Callable[..., Any]


@dataclass(frozen=True)
class Query:
    """What to compute. `sources` are the names differentiated with respect to (already
    filtered to floating-point, connected ones); `intermediates` are those of them that are
    not program inputs. `mode` picks forward or reverse mode for Jacobians."""

    kind: str
    targets: tuple[str, ...]
    sources: tuple[str, ...] = ()
    intermediates: frozenset[str] = frozenset()
    with_cotangents: bool = False
    mode: str = "rev"
    parts: tuple[str, ...] = ()  # the results to return, for kinds that have several; (): all


def targets_of(program: Program, query: Query) -> Callable[..., tuple[Any, ...]]:
    """f(sources, inputs, literals) -> the targets' values, as a function of the sources."""
    eqns = program.needed(query.targets)
    names = query.sources

    def f(sources: tuple[Any, ...], inputs: dict[str, Any],
          literals: tuple[Any, ...]) -> tuple[Any, ...]:
        env = dict(inputs)
        perturb = {}
        for name, value in zip(names, sources, strict=True):
            if name in query.intermediates:
                perturb[name] = value
            else:
                env[name] = value
        run_eqns(eqns, env, literals, perturb)
        return tuple(env[t] for t in query.targets)

    return f


def _evaluate(program: Program, query: Query) -> PureFn:
    f = targets_of(program, query)

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           extra: Any) -> Any:
        return f(sources, inputs, literals)

    return fn


def _gradient(program: Program, query: Query) -> PureFn:
    f = targets_of(program, query)

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           cotangents: Any) -> Any:
        values, pullback = jax.vjp(lambda s: f(s, inputs, literals), sources)
        if cotangents is None:  # TensorFlow's rule: the gradient of the sum of every target
            cotangents = tuple(jnp.ones_like(v) for v in values)
        (grads,) = pullback(tuple(cotangents))
        return values, grads

    return fn


def _jacobian(program: Program, query: Query) -> PureFn:
    f = targets_of(program, query)
    jac = jax.jacfwd if query.mode == "fwd" else jax.jacrev

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           extra: Any) -> Any:
        def with_value(s: tuple[Any, ...]) -> tuple[Any, Any]:
            y = f(s, inputs, literals)[0]
            return y, y

        jacobian, value = jac(with_value, has_aux=True)(sources)
        return value, jacobian

    return fn


def _scalar(program: Program, query: Query) -> Callable[..., Any]:
    f = targets_of(program, query)
    return lambda s, inputs, literals: f(s, inputs, literals)[0]


def _hvp(program: Program, query: Query) -> PureFn:
    f = _scalar(program, query)

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           vectors: tuple[Any, ...]) -> Any:
        value_and_grad = jax.value_and_grad(lambda s: f(s, inputs, literals))
        (value, grads), (_, hvp) = jax.jvp(value_and_grad, (sources,), (tuple(vectors),))
        found = {"value": value, "gradients": grads, "hvp": hvp}
        return tuple(found[p] for p in query.parts or HVP_PARTS)  # XLA drops the rest

    return fn


HVP_PARTS = ("value", "gradients", "hvp")


def _hessian(program: Program, query: Query) -> PureFn:
    f = _scalar(program, query)

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           extra: Any) -> Any:
        def grad_with_aux(s: tuple[Any, ...]) -> tuple[Any, Any]:
            value, grads = jax.value_and_grad(lambda t: f(t, inputs, literals))(s)
            return grads, (value, grads)

        hessian, (value, grads) = jax.jacfwd(grad_with_aux, has_aux=True)(sources)
        return value, grads, hessian

    return fn


def _jvp(program: Program, query: Query) -> PureFn:
    f = targets_of(program, query)

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           tangents: tuple[Any, ...]) -> Any:
        return jax.jvp(lambda s: f(s, inputs, literals), (sources,), (tuple(tangents),))

    return fn


BUILDERS: dict[str, Callable[[Program, Query], PureFn]] = {
    "evaluate": _evaluate,
    "gradient": _gradient,
    "jacobian": _jacobian,
    "hvp": _hvp,
    "hessian": _hessian,
    "jvp": _jvp,
}
"""Query kind -> builder of its pure function."""
