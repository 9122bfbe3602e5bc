"""A gradient query's checks run once per program signature and request shape (engine/
compute.py: `Plan`); later queries of the same shape only run the compiled function.

Each case asks the same engine, whose plans are kept, and a fresh engine for every query,
whose are not, and checks both against JAX on the same function; errors must be the ones a
first query raises, every time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.compute import Engine, Key
from engine.errors import InvalidGraph
from engine.registry import GraphRegistry

# f(x, w) = sum(tanh(x @ w)^2) + 0.5 * sum(w^2); h = tanh(x @ w) is an intermediate
GRAPH: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [3, 2]},
               "w": {"dtype": "float32", "shape": [2]}},
    "nodes": [{"id": "m", "op": "matmul", "args": ["x", "w"]},
              {"id": "h", "op": "tanh", "args": ["m"]},
              {"id": "hh", "op": "multiply", "args": ["h", "h"]},
              {"id": "a", "op": "reduce_sum", "args": ["hh"]},
              {"id": "ww", "op": "multiply", "args": ["w", "w"]},
              {"id": "b", "op": "reduce_sum", "args": ["ww"]},
              {"id": "half", "op": "multiply", "args": ["b", 0.5]},
              {"id": "f", "op": "add", "args": ["a", "half"]}],
    "outputs": ["f"],
}


def f(x: Any, w: Any) -> Any:
    return jnp.sum(jnp.tanh(x @ w) ** 2) + 0.5 * jnp.sum(w ** 2)


def program(graph: dict[str, Any] = GRAPH) -> Any:
    return GraphRegistry(16).parse(graph)


def values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(3, 2)).astype(np.float32),
            "w": rng.normal(size=2).astype(np.float32)}


def ask(engine: Engine, inputs: dict[str, Any], *args: Any, **kw: Any) -> dict[str, Any]:
    return engine.gradient(engine.bind(program(), inputs), *args, **kw)


def test_a_kept_plan_answers_as_a_fresh_engine_and_as_jax() -> None:
    kept = Engine()
    for seed in range(4):
        inputs = values(seed)
        got = ask(kept, inputs, "f", ["x", "w"])
        fresh = ask(Engine(), inputs, "f", ["x", "w"])
        gx, gw = jax.grad(f, argnums=(0, 1))(inputs["x"], inputs["w"])
        for answer in (got, fresh):
            np.testing.assert_allclose(answer["value"], f(inputs["x"], inputs["w"]), rtol=1e-5)
            np.testing.assert_allclose(answer["gradients"]["x"], gx, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(answer["gradients"]["w"], gw, rtol=1e-5, atol=1e-6)
    assert len(kept._plans) == 1  # one shape of request, planned once


def test_each_request_shape_has_its_own_plan() -> None:
    """Target as a name or a list, sources in another order, a subset, an intermediate,
    output gradients: each answers as a fresh engine does (which runs its first query
    uncompiled: float32 rounding may differ in the last place)."""
    kept = Engine()
    inputs = values(7)
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("f", ["x", "w"]), {}), ((["f"], ["x", "w"]), {}), (("f", ["w", "x"]), {}),
        (("f", ["w"]), {}), (("f", ["h", "w"]), {}), (("f", None), {}),
        (("a", ["h"]), {}), ((["a", "b"], ["w"]), {}),
        (("h", ["w"]), {"output_gradients": np.arange(3, dtype=np.float32)}),
        (("f", ["x", "w"]), {}),  # again, after the others
    ]
    for _ in range(2):
        for args, kw in cases:
            got, want = ask(kept, inputs, *args, **kw), ask(Engine(), inputs, *args, **kw)
            assert type(got["value"]) is type(want["value"])
            assert list(got["gradients"]) == list(want["gradients"]), args
            for name, g in want["gradients"].items():
                np.testing.assert_allclose(got["gradients"][name], g, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(
                np.asarray(list(got["value"].values()) if isinstance(got["value"], dict)
                           else got["value"]),
                np.asarray(list(want["value"].values()) if isinstance(want["value"], dict)
                           else want["value"]), rtol=1e-6)
    # the intermediate h's gradient is 2h, by the chain rule on sum(h^2)
    h = np.tanh(inputs["x"] @ inputs["w"])
    np.testing.assert_allclose(ask(kept, inputs, "a", ["h"])["gradients"]["h"], 2 * h,
                               rtol=1e-5)


def test_other_shapes_are_planned_again() -> None:
    kept = Engine()
    graph = {**GRAPH, "inputs": {"x": {"dtype": "float32"}, "w": {"dtype": "float32"}}}
    p = program(graph)
    for rows in (3, 5, 3):
        x = np.ones((rows, 2), np.float32)
        w = np.array([0.5, -1.0], np.float32)
        got = kept.gradient(kept.bind(p, {"x": x, "w": w}), "f", ["x"])
        np.testing.assert_allclose(got["gradients"]["x"], jax.grad(f)(x, w), rtol=1e-5)
    assert len(kept._plans) == 2


def test_errors_are_raised_every_time_and_never_planned() -> None:
    kept = Engine()
    inputs = values(1)
    bad = [(("nope", ["x"]), "target"), (("f", ["x", "x"]), "listed twice"),
           (("f", ["nope"]), "sources")]
    for _ in range(2):
        for args, says in bad:
            with pytest.raises(InvalidGraph, match=r"nope|twice") as info:
                ask(kept, inputs, *args)
            assert info.value.loc[0] == says.split()[0] or says in str(info.value)
    assert len(kept._plans) == 0
    ask(kept, inputs, "f", ["x"])  # a valid request of the same program still answers
    assert len(kept._plans) == 1


def test_defaults_are_part_of_the_signature() -> None:
    """Two programs of the same structure, one with a default for w: asked for the default
    sources, the first differentiates x and w, the second only x."""
    kept = Engine()
    w = np.array([0.25, 2.0], np.float32)
    plain = program()
    with_default = program({**GRAPH, "inputs": {**GRAPH["inputs"], "w": {
        **GRAPH["inputs"]["w"], "default": w.tolist()}}})
    assert plain.structure_key == with_default.structure_key
    x = values(3)["x"]
    first = kept.gradient(kept.bind(plain, {"x": x, "w": w}), "f")
    second = kept.gradient(kept.bind(with_default, {"x": x}), "f")
    assert sorted(first["gradients"]) == ["w", "x"]
    assert sorted(second["gradients"]) == ["x"]
    np.testing.assert_allclose(second["gradients"]["x"], jax.grad(f)(x, w), rtol=1e-5)


def test_a_key_hashes_and_compares_as_its_tuple() -> None:
    items = ("s", ("q", 1), ((2, 3), np.dtype("float32")))
    key = Key(items)
    assert hash(key) == hash(items) and key == items
    assert {items: 1}[key] == 1 and {key: 2}[items] == 2
