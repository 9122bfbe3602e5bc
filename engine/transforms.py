"""Pure JAX functions for each differentiation query, built from a Program.

A query differentiates the program's `targets` with respect to `sources`. A source that is a
program input is fed in directly; a source that is an intermediate value gets a zero addend
(`perturb`), whose gradient is the gradient with respect to that value. Every builder returns
`fn(inputs, literals, sources, extra)`, a pure function that `jax.jit` compiles as is.

Transforms are compositions, as in JAX: the HVP is forward-over-reverse (`jvp` of `grad`), the
Hessian `jacfwd` of `grad`; neither builds more than it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp

from engine import optim
from engine.interpreter import run_eqns
from engine.program import Eqn, Program

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
    stored: tuple[str, ...] = ()  # intermediates whose values come with the inputs
    stack: int = 0  # jvp: how many tangents are stacked on axis 0 (0: one, unstacked)
    # gradient: an optimiser's update of some sources in the same call, as (method,
    # learning rate, options, the sources it updates, whether the gradients are answered too)
    apply: tuple[Any, ...] = ()


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
    if query.apply:
        return _then_apply(_gradient(program, replace(query, apply=())), query)
    if query.stored:
        return _backward(program, query)
    f = targets_of(program, query)

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           cotangents: Any) -> Any:
        values, pullback = jax.vjp(lambda s: f(s, inputs, literals), sources)
        if cotangents is None:  # TensorFlow's rule: the gradient of the sum of every target
            cotangents = tuple(jnp.ones_like(v) for v in values)
        (grads,) = pullback(tuple(cotangents))
        return values, grads

    return fn


def _backward(program: Program, query: Query) -> PureFn:
    """The gradient when the forward pass was run before and its intermediates kept (a
    session's `run` keeps every result; they come in `inputs`): only the backward pass runs.

    Each equation is pulled back with `jax.vjp` of its primitive at its kept arguments, from
    the last to the first, accumulating cotangents by name. The primal results that a pullback
    does not read (a matmul's, say) are dead code that XLA removes, so the forward pass is not
    computed again; an equation whose result was not kept (the `version + eps` adds of
    variable sources, or anything else) is evaluated first."""
    eqns = program.needed(query.targets)

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           cotangents: Any) -> Any:
        env = dict(inputs)
        run_eqns([e for e in eqns if any(o not in env for o in e.outs)], env, literals)
        values = tuple(env[t] for t in query.targets)
        seeds = cotangents if cotangents is not None else tuple(jnp.ones_like(v)
                                                                   for v in values)
        cts = pull_back(eqns, env, literals, zip(query.targets, seeds, strict=True))
        grads = tuple(cts[s] if s in cts else jnp.zeros_like(env[s]) for s in query.sources)
        return values, grads

    return fn


def _then_apply(gradient: PureFn, query: Query) -> PureFn:
    """The gradient, then an optimiser's update of the variables behind some of the sources,
    in one function: `extra` is (cotangents, the variables' values, their optimiser state's
    leaves); it returns (values, gradients or (), new values, new leaves). Each variable's
    update is optax's, as `optim.rule` gives it, so the result is that of a separate update
    of the same gradients."""
    method, learning_rate, options, names, answer_gradients = query.apply
    at = [query.sources.index(n) for n in names]

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           extra: Any) -> Any:
        cotangents, values, leaves = extra
        out, grads = gradient(inputs, literals, sources, cotangents)
        stepped = [optim.rule(method, learning_rate, options, tuple(v.shape),
                              v.dtype.name)[2](v, grads[i], *ls)
                   for i, v, ls in zip(at, values, leaves, strict=True)]
        return (out, grads if answer_gradients else (), tuple(v for v, _ in stepped),
                tuple(tuple(ls) for _, ls in stepped))

    return fn


def pull_back(eqns: Sequence[Eqn], env: Mapping[str, Any], literals: tuple[Any, ...],
              seeds: Iterable[tuple[str, Any]],
              on_eqn: Callable[[Eqn, tuple[Any, ...]], None] | None = None) -> dict[str, Any]:
    """Cotangents by name: from the `seeds` (name, cotangent), each equation is pulled back
    with `jax.vjp` of its primitive at its values in `env`, from the last to the first,
    accumulating by name. `on_eqn(eqn, cotangents)` sees what each equation gives its
    floating-point arguments (the numerics check reads them)."""
    cts: dict[str, Any] = {}

    def add(name: str, ct: Any) -> None:
        cts[name] = cts[name] + ct if name in cts else ct

    for name, seed in seeds:
        add(name, seed)
    for eqn in reversed(eqns):
        if not eqn.prim.differentiable or not any(o in cts for o in eqn.outs):
            continue
        args = [env[a] if isinstance(a, str) else literals[a] for a in eqn.args]
        at = [i for i, a in enumerate(eqn.args)
              if isinstance(a, str) and jnp.issubdtype(args[i].dtype, jnp.inexact)]
        if not at:
            continue
        pullback = _pullback(eqn, args, at)
        outs = [env[o] for o in eqn.outs]
        arg_cts = pullback(tuple(cts.get(o, jnp.zeros_like(v))
                                 for o, v in zip(eqn.outs, outs, strict=True)))
        if on_eqn is not None:
            on_eqn(eqn, tuple(arg_cts))
        for i, ct in zip(at, arg_cts, strict=True):
            add(eqn.args[i], ct)  # type: ignore[arg-type]
    return cts


def _pullback(eqn: Any, args: list[Any], at: list[int]) -> Callable[[tuple[Any, ...]],
                                                                    tuple[Any, ...]]:
    """The VJP of one equation with respect to its arguments at positions `at`."""
    attrs = dict(eqn.attrs)

    def f(*floats: Any) -> tuple[Any, ...]:
        full = list(args)
        for i, value in zip(at, floats, strict=True):
            full[i] = value
        out = eqn.prim.bind(*full, **attrs)
        return tuple(out) if eqn.prim.multi_output else (out,)

    _, vjp = jax.vjp(f, *(args[i] for i in at))
    return vjp  # type: ignore[no-any-return]


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

    if not query.stack:
        return fn

    def stacked(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
                tangents: tuple[Any, ...]) -> Any:
        """Several directions at once (axis 0 of every tangent): the values once, the
        tangents stacked, as `jax.jacfwd` pushes its basis."""
        def push(t: tuple[Any, ...]) -> Any:
            return fn(inputs, literals, sources, t)[1]

        return f(sources, inputs, literals), jax.vmap(push)(tuple(tangents))

    return stacked


def batched(fn: PureFn, batch: Sequence[str], sources: Sequence[str]) -> PureFn:
    """`fn` mapped with `jax.vmap` over axis 0 of the inputs named in `batch` (and of the
    `sources`, the query's, that are those inputs); everything else is shared by the examples, and every
    result gains a leading batch axis.

    Each example runs the whole query on its own: a per-example gradient with respect to a
    shared weight is that example's gradient, as `vmap(grad(f), in_axes=(None, 0))` gives it.
    """
    mapped = frozenset(batch)
    source_axes = tuple(0 if s in mapped else None for s in sources)

    def fn_batched(inputs: dict[str, Any], literals: tuple[Any, ...], values: tuple[Any, ...],
                   extra: Any) -> Any:
        axes = ({n: 0 if n in mapped else None for n in inputs}, None, source_axes, None)
        return jax.vmap(fn, in_axes=axes)(inputs, literals, values, extra)

    return fn_batched


BUILDERS: dict[str, Callable[[Program, Query], PureFn]] = {
    "evaluate": _evaluate,
    "gradient": _gradient,
    "jacobian": _jacobian,
    "hvp": _hvp,
    "hessian": _hessian,
    "jvp": _jvp,
}
"""Query kind -> builder of its pure function."""
