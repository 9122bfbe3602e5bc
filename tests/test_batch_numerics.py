"""Per-example batching (`batch`) and numerics checks (`check_numerics`) on the stateless routes,
session runs and tape queries (docs/API.md, "Graph language additions (v1)"), and
batch_jacobian on tapes without the full Jacobian.

Batched answers are checked against `jax.vmap` of the same transform of the same function,
and against the unbatched route looped over the examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(_env_file=None))) as c:
        yield c


def make(**overrides: Any) -> TestClient:
    return TestClient(create_app(Settings(_env_file=None, **overrides)))


def t64(x: Any) -> dict[str, Any]:
    a = np.asarray(x, np.float64)
    return {"dtype": "float64", "shape": list(a.shape), "data": a.tolist()}


def arr(t: dict[str, Any]) -> np.ndarray:
    return np.asarray(t["data"], t["dtype"]).reshape(t["shape"])


def node(ident: str, op: str, *args: Any, **attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ident, "op": op, "args": list(args)}
    if attrs:
        out["attrs"] = attrs
    return out


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:1000]
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    return body


# f(x, w) = sum(tanh(x * w) * x) + sum(w^2) per example, x: [3] per example, w: [3] shared
MODEL = {
    "inputs": {"x": {"dtype": "float64", "shape": [3]}, "w": {"dtype": "float64", "shape": [3]},
               "c": {"dtype": "float64", "shape": []}},
    "nodes": [node("h", "multiply", "x", "w"), node("a", "tanh", "h"),
              node("ax", "multiply", "a", "x"), node("s", "reduce_sum", "ax"),
              node("w2", "square", "w"), node("r", "reduce_sum", "w2"),
              node("z", "add", "s", "r"), node("zc", "multiply", "c", 2.0)],
    "outputs": ["z"],
}


def f(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(jnp.tanh(x * w) * x) + jnp.sum(w ** 2)


RNG = np.random.default_rng(7)
XS = RNG.normal(size=(4, 3))  # 4 examples
W = RNG.normal(size=3)
V = RNG.normal(size=3)


def batched(**extra: Any) -> dict[str, Any]:
    """The model with x batched along axis 1 (the examples are columns)."""
    return {"graph": MODEL, "inputs": {"x": t64(XS.T), "w": t64(W), "c": t64(1.0)},
            "batch": {"x": 1}, **extra}


def one(i: int, **extra: Any) -> dict[str, Any]:
    return {"graph": MODEL, "inputs": {"x": t64(XS[i]), "w": t64(W), "c": t64(1.0)}, **extra}


PER_EXAMPLE = {
    "value": jax.vmap(f, (0, None))(XS, W),
    "grad_x": jax.vmap(jax.grad(f, 0), (0, None))(XS, W),
    "grad_w": jax.vmap(jax.grad(f, 1), (0, None))(XS, W),
    "hess": jax.vmap(jax.hessian(f, (0, 1)), (0, None))(XS, W),
    "hvp_w": jax.vmap(lambda x: jax.jvp(jax.grad(f, 1), (x, W), (jnp.zeros(3), V))[1])(XS),
}


# --------------------------------------------------------------------------- batch


def test_batched_gradient_matches_vmap_of_grad_and_the_loop(client: TestClient) -> None:
    r = client.post("/v1/gradient", json=batched(target="z", sources=["x", "w"]))
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_allclose(arr(body["value"]), PER_EXAMPLE["value"], rtol=1e-12)
    np.testing.assert_allclose(arr(body["gradients"]["x"]), PER_EXAMPLE["grad_x"], rtol=1e-12)
    np.testing.assert_allclose(arr(body["gradients"]["w"]), PER_EXAMPLE["grad_w"], rtol=1e-12)
    for i in range(len(XS)):
        single = client.post("/v1/gradient", json=one(i, target="z", sources=["x", "w"])).json()
        for name in ("x", "w"):
            np.testing.assert_allclose(arr(body["gradients"][name])[i],
                                       arr(single["gradients"][name]), rtol=1e-12)


def test_batched_hessian_hvp_jacobian_jvp_evaluate_match_vmap(client: TestClient) -> None:
    r = client.post("/v1/hessian", json=batched(target="z", sources=["x", "w"]))
    assert r.status_code == 200, r.text
    hess = r.json()["hessian"]
    for i, a in enumerate("xw"):
        for j, b in enumerate("xw"):
            np.testing.assert_allclose(arr(hess[a][b]), PER_EXAMPLE["hess"][i][j], rtol=1e-10)
    r = client.post("/v1/hvp", json=batched(target="z", sources=["w"], vectors={"w": t64(V)}))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(arr(r.json()["hvp"]["w"]), PER_EXAMPLE["hvp_w"], rtol=1e-10)
    r = client.post("/v1/jacobian", json=batched(target="a", sources=["x"]))
    assert r.status_code == 200, r.text
    expected = jax.vmap(jax.jacfwd(lambda x: jnp.tanh(x * W)))(XS)
    np.testing.assert_allclose(arr(r.json()["jacobian"]["x"]), expected, rtol=1e-10)
    r = client.post("/v1/jvp", json=batched(tangents={"w": t64(V)}, outputs=["z"]))
    assert r.status_code == 200, r.text
    _, tangents = jax.vmap(lambda x: jax.jvp(lambda w: f(x, w), (W,), (V,)))(XS)
    np.testing.assert_allclose(arr(r.json()["tangents"]["z"]), tangents, rtol=1e-10)
    r = client.post("/v1/evaluate", json=batched(outputs=["z", "w2"]))
    assert r.status_code == 200, r.text
    values = r.json()["values"]
    np.testing.assert_allclose(arr(values["z"]), PER_EXAMPLE["value"], rtol=1e-12)
    # an answer that does not depend on the examples still has the batch axis
    np.testing.assert_allclose(arr(values["w2"]), np.broadcast_to(W ** 2, (4, 3)), rtol=1e-12)


def test_batched_unconnected_zero_sources_are_batched_zeros(client: TestClient) -> None:
    r = client.post("/v1/gradient", json=batched(target="z", sources=["c", "x"],
                                                 unconnected_gradients="zero"))
    assert r.status_code == 200, r.text
    assert r.json()["gradients"]["c"] == {"dtype": "float64", "shape": [4], "data": [0.0] * 4}
    r = client.post("/v1/jacobian", json=batched(target="a", sources=["c"],
                                                 unconnected_gradients="zero"))
    assert r.status_code == 200, r.text
    assert arr(r.json()["jacobian"]["c"]).shape == (4, 3)
    assert arr(r.json()["value"]).shape == (4, 3)


@pytest.mark.parametrize(("batch", "inputs", "loc", "says"), [
    ({"nope": 0}, {}, ["body", "batch", "nope"], "not an input"),
    ({"x": 2}, {}, ["body", "batch", "x"], "out of range"),
    ({"x": 1, "c": 0}, {}, ["body", "batch", "c"], "scalar"),
    ({"x": 1, "w": 0}, {"w": np.ones((5, 3))}, ["body", "inputs", "w"], "same batch size"),
    ({"x": 0}, {}, ["body", "inputs", "x"], "one example"),
])
def test_bad_batches_are_422_naming_the_input(client: TestClient, batch: dict[str, int],
                                              inputs: dict[str, Any], loc: list[Any],
                                              says: str) -> None:
    body = batched(target="z", batch=batch)
    body["inputs"].update({k: t64(v) for k, v in inputs.items()})
    found = problem(client.post("/v1/gradient", json=body), 422)
    assert loc in [e["loc"] for e in found["errors"]], found
    assert says in found["detail"], found


def test_batch_multiplies_the_cost_admission() -> None:
    xs = RNG.normal(size=(3, 1000))
    with make(max_request_flops=60_000) as c:
        body = {"graph": MODEL, "inputs": {"x": t64(xs[0]), "w": t64(xs[1]), "c": t64(1.0)},
                "target": "z"}
        body["graph"] = {**MODEL, "inputs": {**MODEL["inputs"],
                                             "x": {"dtype": "float64", "shape": [1000]},
                                             "w": {"dtype": "float64", "shape": [1000]}}}
        assert c.post("/v1/gradient", json=body).status_code == 200
        body["inputs"]["x"] = t64(xs)
        found = problem(c.post("/v1/gradient", json={**body, "batch": {"x": 0}}), 413)
        assert "floating-point operations" in found["detail"], found


# --------------------------------------------------------------------------- check_numerics


def numerics(client: TestClient, route: str, nodes: list[dict[str, Any]], x: Any,
             **extra: Any) -> Any:
    return client.post(route, json={"graph": {"inputs": {"x": {"dtype": "float64"}},
                                              "nodes": nodes},
                                    "inputs": {"x": t64(x)}, "check_numerics": True, **extra})


@pytest.mark.parametrize(("route", "nodes", "x", "expected"), [
    ("/v1/evaluate", [node("e", "exp", "x"), node("l", "log", "x"), node("y", "add", "e", "l")],
     [0.0, 1.0, 0.0], ("l", "forward", 0, 2)),
    ("/v1/gradient", [node("d", "divide", "x", "x"), node("y", "reduce_sum", "d")],
     [0.0, 2.0], ("d", "forward", 1, 0)),
    ("/v1/jacobian", [node("e", "exp", "x"), node("y", "multiply", "e", 2.0)],
     [1.0, 800.0, 900.0], ("e", "forward", 0, 2)),
    ("/v1/gradient", [node("r", "sqrt", "x"), node("y", "reduce_sum", "r")],
     [0.0, 4.0, 0.0], ("r", "backward", 0, 2)),
    ("/v1/hessian", [node("r", "sqrt", "x"), node("y", "reduce_sum", "r")],
     [0.0, 4.0], ("r", "backward", 0, 1)),
    ("/v1/hvp", [node("r", "sqrt", "x"), node("y", "reduce_sum", "r")],
     [0.0, 4.0], ("r", "backward", 0, 1)),
    ("/v1/jvp", [node("l", "log", "x")], [0.0, 1.0], ("l", "forward", 0, 1)),
])
def test_the_first_non_finite_value_is_a_422_naming_it(
        client: TestClient, route: str, nodes: list[dict[str, Any]], x: Any,
        expected: tuple[str, str, int, int]) -> None:
    extra: dict[str, Any] = {"target": "y"} if route not in ("/v1/evaluate", "/v1/jvp") else {}
    if route == "/v1/hvp":
        extra["vectors"] = {"x": t64(np.ones(len(x)))}
    if route == "/v1/jvp":
        extra["tangents"] = {"x": t64(np.ones(len(x)))}
    if route == "/v1/evaluate":
        extra["outputs"] = ["y"]
    body = problem(numerics(client, route, nodes, x, **extra), 422)
    node_id, phase, nans, infs = expected
    assert body["type"] == "urn:gradtape:problem:non-finite", body
    assert (body["node"], body["phase"], body["nan_count"], body["inf_count"]) == \
        (node_id, phase, nans, infs), body
    assert body["detail"].startswith(f"node {node_id!r}: "), body
    # without the check the same request answers (with the non-finite values)
    extra.pop("check_numerics", None)
    r = client.post(route, json={"graph": {"inputs": {"x": {"dtype": "float64"}},
                                           "nodes": nodes},
                                 "inputs": {"x": t64(x)}, **extra})
    assert r.status_code == 200, r.text


def test_batched_checks_count_every_example(client: TestClient) -> None:
    nodes = [node("r", "sqrt", "x"), node("y", "reduce_sum", "r")]
    r = numerics(client, "/v1/gradient", nodes, [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]],
                 target="y", batch={"x": 0})
    body = problem(r, 422)
    assert (body["node"], body["phase"], body["inf_count"]) == ("r", "backward", 3), body


def test_clean_inputs_are_unaffected(client: TestClient) -> None:
    nodes = [node("r", "sqrt", "x"), node("l", "log", "x"), node("y", "reduce_sum", "r"),
             node("z", "add", "y", 1.0)]
    for _ in range(3):  # eager, then compiled
        r = numerics(client, "/v1/gradient", nodes, [1.0, 4.0], target="z")
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(arr(r.json()["gradients"]["x"]), [0.5, 0.25])
    r = numerics(client, "/v1/hessian", nodes, [1.0, 4.0], target="z")
    assert r.status_code == 200, r.text


def test_session_run_and_tape_queries_check_numerics(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={}).json()["session_id"]
    base = f"/v1/sessions/{sid}"
    assert client.put(f"{base}/tensors/x", json={"value": t64([0.0, 4.0])}).status_code == 200
    r = client.post(f"{base}/run", json={"nodes": [node("l", "log", "x")],
                                         "check_numerics": True})
    body = problem(r, 422)
    assert (body["node"], body["phase"], body["inf_count"]) == ("l", "forward", 1), body
    assert client.get(f"{base}/tensors/l").status_code == 404  # nothing bound
    tid = client.post(f"{base}/tapes", json={"persistent": True}).json()["tape_id"]
    assert client.post(f"{base}/tapes/{tid}/watch", json={"tensors": ["x"]}).status_code == 200
    r = client.post(f"{base}/run", json={"nodes": [node("r", "sqrt", "x"),
                                                   node("y", "reduce_sum", "r")]})
    assert r.status_code == 200, r.text
    for route, extra in (("gradient", {}), ("jacobian", {}), ("hessian", {}),
                         ("hvp", {"vectors": {"x": t64([1.0, 1.0])}})):
        r = client.post(f"{base}/tapes/{tid}/{route}", json={
            "target": "y", "sources": ["x"], "check_numerics": True, **extra})
        body = problem(r, 422)
        assert (body["node"], body["phase"], body["inf_count"]) == ("r", "backward", 1), body
        r = client.post(f"{base}/tapes/{tid}/{route}", json={
            "target": "y", "sources": ["x"], **extra})
        assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- batch_jacobian


def tape_of(c: TestClient, x: np.ndarray, w: np.ndarray, nodes: list[dict[str, Any]]) -> str:
    sid = c.post("/v1/sessions", json={}).json()["session_id"]
    base = f"/v1/sessions/{sid}"
    assert c.put(f"{base}/tensors/x", json={"value": t64(x)}).status_code == 200
    assert c.put(f"{base}/tensors/w", json={"value": t64(w), "variable": True}).status_code == 200
    tid = c.post(f"{base}/tapes", json={"persistent": True}).json()["tape_id"]
    assert c.post(f"{base}/tapes/{tid}/watch", json={"tensors": ["x"]}).status_code == 200
    assert c.post(f"{base}/run", json={"nodes": nodes, "fetch": []}).status_code == 200
    return f"{base}/tapes/{tid}"


ROWWISE = [node("h", "matmul", "x", "w"), node("a", "tanh", "h"),
           node("s", "reduce_sum", "x", axis=1, keepdims=True), node("y", "multiply", "a", "s")]


def test_batch_jacobian_of_a_big_batch_needs_no_full_jacobian() -> None:
    batch = 400
    x = RNG.normal(size=(batch, 3))
    w = RNG.normal(size=(3, 2))
    # the full Jacobian has 400*2*400*3 = 960000 elements, the per-example one 2400
    with make(max_elements=100_000) as c:
        tape = tape_of(c, x, w, ROWWISE)
        found = problem(c.post(f"{tape}/jacobian", json={"target": "y", "sources": ["x"]}), 413)
        assert "960000" in found["detail"], found
        r = c.post(f"{tape}/batch_jacobian", json={"target": "y", "sources": ["x"]})
        assert r.status_code == 200, r.text

    def per_example(row: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.tanh(row @ w) * jnp.sum(row)

    np.testing.assert_allclose(arr(r.json()["jacobian"]["x"]),
                               jax.vmap(jax.jacfwd(per_example), (0, None))(x, w), rtol=1e-10)


def test_batch_jacobian_of_interacting_rows_is_still_the_diagonal(client: TestClient) -> None:
    x = RNG.normal(size=(3, 2))
    nodes = [node("t", "reduce_sum", "x"), node("y", "multiply", "x", "t")]  # mixes the rows
    tape = tape_of(client, x, np.ones(2), nodes)
    r = client.post(f"{tape}/batch_jacobian", json={"target": "y", "sources": ["x"]})
    assert r.status_code == 200, r.text
    full = jax.jacfwd(lambda v: v * jnp.sum(v))(x)  # [3, 2, 3, 2]
    np.testing.assert_allclose(arr(r.json()["jacobian"]["x"]),
                               np.stack([full[i, :, i] for i in range(3)]), rtol=1e-12)


def test_batch_jacobian_of_a_big_batch_of_interacting_rows_goes_by_blocks() -> None:
    # rows that interact (each row scaled by the batch's total): no per-example replay, and the
    # full Jacobian (300*2 x 300*2 = 360000 elements) is over the limit: blocks of examples
    batch = 300
    x = RNG.normal(size=(batch, 2))
    nodes = [node("t", "reduce_sum", "x"), node("y", "multiply", "x", "t")]
    with make(max_elements=100_000) as c:
        tape = tape_of(c, x, np.ones(2), nodes)
        found = problem(c.post(f"{tape}/jacobian", json={"target": "y", "sources": ["x"]}), 413)
        assert "360000" in found["detail"], found
        r = c.post(f"{tape}/batch_jacobian", json={"target": "y", "sources": ["x"]})
        assert r.status_code == 200, r.text
    full = jax.jacfwd(lambda v: v * jnp.sum(v))(x)  # [300, 2, 300, 2], here in the test only
    want = np.stack([full[i, :, i] for i in range(batch)])
    np.testing.assert_allclose(arr(r.json()["jacobian"]["x"]), want, rtol=1e-12)
    np.testing.assert_allclose(arr(r.json()["value"]), x * x.sum(), rtol=1e-12)
