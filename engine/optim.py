"""Optimisers held in a session: optax's update rules on plain-array state.

An optimiser updates a fixed set of variables. Its optax state is kept per variable, as the
arrays (leaves) of `opt.init(value)` in order, stored as session tensors, so it lives in any
store and counts toward the session's bytes; the tree around the leaves is rebuilt from the
method, its options and the variable's type whenever it is needed. Keeping each variable's
state apart gives TensorFlow's `apply_gradients` rule: a variable left out of an update keeps
its value and its optimiser state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine.errors import InvalidGraph, clip

METHODS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "adagrad": optax.adagrad,
}


def check(method: Any, learning_rate: Any, options: Mapping[str, Any]
          ) -> tuple[tuple[str, Any], ...]:
    """The options as a sorted tuple, after checking the method, the learning rate and each
    option against optax's own parameters (422 naming the field otherwise)."""
    if method not in METHODS:
        raise InvalidGraph(f"unknown method {clip(method)}; use one of "
                           f"{', '.join(METHODS)}", loc=("method",))
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) or \
            not 0 < learning_rate < float("inf"):
        raise InvalidGraph("learning_rate must be a positive number", loc=("learning_rate",))
    known = {name: p.default for name, p in
             inspect.signature(METHODS[method]).parameters.items()
             if name != "learning_rate"}
    out = []
    for key, value in options.items():
        if key not in known:
            raise InvalidGraph(f"{method} has no option {clip(key)}; its options: "
                               f"{', '.join(known)}", loc=("options", key))
        plain = isinstance(value, bool | int | float | str) or value is None
        if not plain:
            raise InvalidGraph(f"option {key!r} takes a number, a boolean or null",
                               loc=("options", key))
        out.append((key, value))
    return tuple(sorted(out))


@lru_cache(maxsize=256)
def rule(method: str, learning_rate: float, options: tuple[tuple[str, Any], ...],
         shape: tuple[int, ...], dtype: str) -> tuple[Callable[[], list[np.ndarray]],
                                                      Callable[..., Any], Callable[..., Any]]:
    """(init, update, pure update) for one variable's type: `init()` gives the state's
    leaves; `update(value, gradient, *leaves)` gives the new value and the new leaves,
    compiled (the third is the same function before `jax.jit`, to compose)."""
    opt = METHODS[method](learning_rate=learning_rate, **dict(options))
    zeros = jnp.zeros(shape, dtype)
    treedef = jax.tree_util.tree_structure(opt.init(zeros))

    def init() -> list[np.ndarray]:
        return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(opt.init(zeros))]

    def update(value: Any, gradient: Any, *leaves: Any) -> tuple[Any, list[Any]]:
        state = jax.tree_util.tree_unflatten(treedef, leaves)
        updates, new_state = opt.update(gradient.astype(value.dtype), state, value)
        return optax.apply_updates(value, updates), jax.tree_util.tree_leaves(new_state)

    return init, jax.jit(update), update


@lru_cache(maxsize=256)
def rule_many(method: str, learning_rate: float, options: tuple[tuple[str, Any], ...],
              types: tuple[tuple[tuple[int, ...], str], ...]) -> Callable[..., Any]:
    """One compiled update of several variables, each with its own state (as `rule`'s update
    applied to each in turn, so a variable's state never depends on the others'):
    `update(values, gradients, leaves)` -> (new values, new leaves), all tuples."""
    updates = [rule(method, learning_rate, options, shape, dtype)[2] for shape, dtype in types]

    @jax.jit
    def update(values: tuple[Any, ...], gradients: tuple[Any, ...],
               leaves: tuple[tuple[Any, ...], ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        out = [u(v, g, *ls) for u, v, g, ls in zip(updates, values, gradients, leaves,
                                                    strict=True)]
        return tuple(o[0] for o in out), tuple(tuple(o[1]) for o in out)

    return update
