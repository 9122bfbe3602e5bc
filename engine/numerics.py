"""Checking numerics: where the first NaN or infinity of a query appears.

Off by default, and then nothing here runs. On, before the query itself runs, one pure function
(compiled and cached like the queries) counts the NaNs and infinities of every value the
query's forward pass computes, the inputs first and then each node in program order, and, for
the queries that differentiate, of the cotangents each node's derivative gives its arguments,
from the last node to the first. The first count that is not zero names the node at fault:
what is computed from a value that is not finite is not finite either, so the first one in the
order of computation is where it began.

For example, `log` of a zero input raises NonFinite(node="y", phase="forward", nan_count=0,
inf_count=1); `sqrt` of a zero input, differentiated, raises it with phase="backward".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from engine.errors import NonFinite
from engine.interpreter import run_eqns
from engine.program import Eqn, Program
from engine.transforms import PureFn, Query, pull_back

BACKWARD = frozenset({"gradient", "jacobian", "hvp", "hessian"})
"""The query kinds with a backward pass to check (a Jacobian's and a Hessian's rows have
non-finite values exactly when the gradient of their total does, cancellations aside)."""


def _count(values: Any) -> Any:
    """[NaNs, infinities] among the floating-point `values`."""
    total = jnp.zeros(2, jnp.int64)
    for value in values:
        if jnp.issubdtype(jnp.result_type(value), jnp.inexact):
            total = total + jnp.stack([jnp.sum(jnp.isnan(value)),
                                       jnp.sum(jnp.isinf(value))]).astype(jnp.int64)
    return total


def counts(program: Program, query: Query) -> PureFn:
    """fn(inputs, literals, sources, extra) -> (forward [inputs + eqns, 2], backward [eqns,
    2]): the NaN and infinity counts of each input and node result, and of what each node's
    derivative gives its arguments (zeros for nodes the backward pass does not reach)."""
    eqns = program.needed(query.targets)
    position = {id(e): i for i, e in enumerate(eqns)}

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], sources: tuple[Any, ...],
           extra: Any) -> Any:
        env = {n: inputs[n] for n in program.inputs}
        forward = [_count([env[n]]) for n in program.inputs]
        run_eqns(eqns, env, literals)
        forward += [_count([env[o] for o in e.outs]) for e in eqns]
        backward = [jnp.zeros(2, jnp.int64)] * len(eqns)
        if query.kind in BACKWARD:
            values = [env[t] for t in query.targets]
            seeds = extra if query.with_cotangents else [jnp.ones_like(v) for v in values]

            def seen(eqn: Eqn, cotangents: tuple[Any, ...]) -> None:
                backward[position[id(eqn)]] = _count(cotangents)

            pull_back(eqns, env, literals, zip(query.targets, seeds, strict=True), seen)
        stacked = jnp.stack(backward) if backward else jnp.zeros((0, 2), jnp.int64)
        return jnp.stack(forward), stacked

    return fn


def raise_first(program: Program, query: Query, found: Any, label: Callable[[str], str],
                batched: bool = False) -> None:
    """NonFinite for the first non-zero count of `found` (what `counts` gave; with a
    leading batch axis when `batched`), forward in program order, then backward in reverse;
    nothing when every value was finite."""
    forward, backward = (np.asarray(a) for a in found)
    if batched:
        forward, backward = forward.sum(axis=0), backward.sum(axis=0)
    eqns = program.needed(query.targets)
    for i, name in enumerate(program.inputs):
        nan, inf = (int(c) for c in forward[i])
        if nan or inf:
            raise NonFinite(f"the input has {nan} NaN and {inf} infinite values; send finite "
                            "values", node=label(name), phase="forward", nan_count=nan,
                            inf_count=inf)
    offset = len(program.inputs)
    for i, eqn in enumerate(eqns):
        nan, inf = (int(c) for c in forward[offset + i])
        if nan or inf:
            raise NonFinite(f"op {eqn.prim.name!r} gives {nan} NaN and {inf} infinite values "
                            "in the forward pass, from finite arguments: an argument is outside "
                            "the op's domain or the result overflows (log or division by zero, "
                            "exp of a large value); check or clip its arguments",
                            node=eqn.node, phase="forward", nan_count=nan, inf_count=inf)
    for i in reversed(range(len(eqns))):
        nan, inf = (int(c) for c in backward[i])
        if nan or inf:
            eqn = eqns[i]
            raise NonFinite(f"the derivative of op {eqn.prim.name!r} gives {nan} NaN and {inf} "
                            "infinite values to its arguments in the backward pass, from finite "
                            "cotangents: the op is not differentiable at these values (sqrt or "
                            "log at 0, say); move the arguments away from that point",
                            node=eqn.node, phase="backward", nan_count=nan, inf_count=inf)
