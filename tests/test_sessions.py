"""Sessions and tapes over HTTP, held to API.md and to TensorFlow's GradientTape.

Every expected number is derived by hand or computed with `jax` on a plain `jax.numpy`
function that never touches the service; nothing is copied from a service answer. Every test
runs on each session store: this process's memory, and a real Redis server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    return store_settings

# ----- helpers -----


def node(ident: str | list[str], op: str, *args: Any, **attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ident, "op": op, "args": list(args)}
    if attrs:
        out["attrs"] = attrs
    return out


def f32(x: Any) -> dict[str, Any]:
    """A wire tensor holding x as float32 exactly."""
    a = np.asarray(x, dtype=np.float32)
    return {"dtype": "float32", "shape": list(a.shape), "data": a.tolist()}


def value(t: Any, dtype: str = "float32", shape: Sequence[int] | None = None) -> np.ndarray:
    """A response tensor as an array, after checking its dtype (and shape when given)."""
    assert isinstance(t, dict), f"expected a tensor object, got {t!r}"
    assert t["dtype"] == dtype, t
    if shape is not None:
        assert t["shape"] == list(shape), t
    return np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"])


def exact(t: Any, expected: Any, dtype: str = "float32") -> None:
    """The tutorial's numbers must hold exactly: same dtype, shape and values."""
    expected = np.asarray(expected, dtype=dtype)
    np.testing.assert_array_equal(value(t, dtype, expected.shape), expected)


def close(t: Any, expected: Any, dtype: str = "float32", rtol: float = 1e-5) -> None:
    expected = np.asarray(expected)
    got = value(t, dtype, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)


class Sess:
    """A session on the test client, with one method per route."""

    def __init__(self, client: TestClient, sid: str | None = None):
        self.c = client
        if sid is None:
            r = client.post("/v1/sessions", json={})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
        self.sid = sid
        self.base = f"/v1/sessions/{sid}"

    def put(self, name: str, val: Any, *, variable: bool = False, trainable: bool = True,
            status: int = 200) -> dict[str, Any]:
        r = self.c.put(f"{self.base}/tensors/{name}",
                       json={"value": val, "variable": variable, "trainable": trainable})
        assert r.status_code == status, r.text
        return r.json()

    def get(self, name: str, status: int = 200) -> dict[str, Any]:
        r = self.c.get(f"{self.base}/tensors/{name}")
        assert r.status_code == status, r.text
        return r.json()

    def run(self, *nodes: dict[str, Any], status: int = 200, **extra: Any) -> dict[str, Any]:
        r = self.c.post(f"{self.base}/run", json={"nodes": list(nodes), **extra})
        assert r.status_code == status, r.text
        return r.json()

    def info(self) -> dict[str, Any]:
        r = self.c.get(self.base)
        assert r.status_code == 200, r.text
        return r.json()

    def tape(self, status: int = 201, **body: Any) -> str:
        r = self.c.post(f"{self.base}/tapes", json=body)
        assert r.status_code == status, r.text
        return r.json()["tape_id"]

    def tape_post(self, tid: str, action: str, body: Any = None,
                  status: int = 200) -> dict[str, Any]:
        r = self.c.post(f"{self.base}/tapes/{tid}/{action}", json=body)
        assert r.status_code == status, r.text
        return r.json()

    def watch(self, tid: str, *names: str) -> dict[str, Any]:
        return self.tape_post(tid, "watch", {"tensors": list(names)})

    def stop(self, tid: str) -> dict[str, Any]:
        return self.tape_post(tid, "stop")

    def tape_info(self, tid: str) -> dict[str, Any]:
        r = self.c.get(f"{self.base}/tapes/{tid}")
        assert r.status_code == 200, r.text
        return r.json()

    def grad(self, tid: str, target: Any, sources: list[str], status: int = 200,
             **extra: Any) -> dict[str, Any]:
        body = self.tape_post(tid, "gradient", {"target": target, "sources": sources, **extra},
                              status=status)
        return body["gradients"] if status == 200 else body


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["detail"], body
    return body


def locs(body: dict[str, Any]) -> list[list[Any]]:
    return [e["loc"] for e in body.get("errors", [])]


# ----- 1. the tutorial, exactly as API.md's last section -----


def test_tutorial_1_gradient_wrt_x(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", [[1, 1], [1, 1]])
    t = s.tape()
    s.watch(t, "x")
    s.run(node("y", "reduce_sum", "x"), node("z", "multiply", "y", "y"))
    s.stop(t)
    g = s.grad(t, "z", ["x"])
    # d (sum x)^2 / dx = 2 * sum(x) = 8 everywhere
    exact(g["x"], [[8.0, 8.0], [8.0, 8.0]])


def test_tutorial_2_gradient_wrt_intermediate(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", [[1, 1], [1, 1]])
    t = s.tape()
    s.watch(t, "x")
    s.run(node("y", "reduce_sum", "x"), node("z", "multiply", "y", "y"))
    s.stop(t)
    g = s.grad(t, "z", ["y"])
    exact(g["y"], 8.0)  # dz/dy = 2y = 8
    assert g["y"]["shape"] == [] and isinstance(g["y"]["data"], float)


def test_tutorial_3_persistent_tape(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "x"), node("z", "multiply", "y", "y"))
    s.stop(t)
    exact(s.grad(t, "z", ["x"])["x"], 108.0)  # 4 x^3
    exact(s.grad(t, "y", ["x"])["x"], 6.0)  # 2 x
    assert client.delete(f"{s.base}/tapes/{t}").status_code == 204
    problem(client.post(f"{s.base}/tapes/{t}/gradient", json={"target": "y",
                                                              "sources": ["x"]}), 404)


@pytest.mark.parametrize(("n", "expected"), [(6, 12.0), (5, 12.0), (4, 4.0)])
def test_tutorial_4_client_control_flow(client: TestClient, n: int, expected: float) -> None:
    s = Sess(client)
    s.put("x", 2.0)
    t = s.tape()
    s.watch(t, "x")
    s.put("output", 1.0)
    for i in range(1, n + 1):
        if 2 < i <= 5:
            s.run(node("output", "multiply", "output", "x"))
    s.stop(t)
    exact(s.grad(t, "output", ["x"])["x"], expected)


def test_tutorial_5_higher_order(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 1.0, variable=True)
    t = s.tape()
    t2 = s.tape()
    s.run(node("xx", "multiply", "x", "x"), node("y", "multiply", "xx", "x"))
    s.stop(t2)
    g = s.grad(t2, "y", ["x"], save_as={"x": "dy_dx"})
    exact(g["x"], 3.0)  # 3 x^2
    exact(s.get("dy_dx"), 3.0)
    s.stop(t)
    exact(s.grad(t, "dy_dx", ["x"])["x"], 6.0)  # 6 x


# ----- 2. the rules, as TensorFlow has them -----


def test_explicit_watch_of_a_constant(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape()
    assert s.watch(t, "x")["watched"] == ["x"]
    s.run(node("y", "multiply", "x", "x"))
    g = s.grad(t, "y", ["x"])
    close(g["x"], 6.0)
    # the same on a persistent tape, and a watched tensor's gradient with respect to itself
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "x"))
    close(s.grad(t, "y", ["x"])["x"], 6.0)
    close(s.grad(t, "x", ["x"])["x"], 1.0)


def test_unwatched_constant_is_null_or_zero(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    s.put("c", [1.0, 2.0])
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "c"), node("z", "reduce_sum", "y"))
    g = s.grad(t, "z", ["x", "c"])
    close(g["x"], 3.0)  # d sum(x c)/dx = sum(c)
    assert g["c"] is None
    g = s.grad(t, "z", ["x", "c"], unconnected_gradients="zero")
    close(g["x"], 3.0)
    close(g["c"], [0.0, 0.0])


def test_trainable_variable_is_watched_when_used(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0, variable=True)
    t = s.tape()
    s.run(node("y", "multiply", "x", "x"))
    assert "x" in s.tape_info(t)["watched"]
    close(s.grad(t, "y", ["x"])["x"], 6.0)


def test_watch_accessed_variables_false(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0, variable=True)
    s.put("v", 2.0, variable=True)
    t = s.tape(watch_accessed_variables=False, persistent=True)
    s.watch(t, "v")
    s.run(node("y", "multiply", "x", "v"))
    assert s.tape_info(t)["watched"] == ["v"]
    g = s.grad(t, "y", ["x", "v"])
    assert g["x"] is None
    close(g["v"], 3.0)  # d(x v)/dv = x


def test_non_trainable_variable_is_not_auto_watched(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0, variable=True, trainable=False)
    s.put("w", 2.0, variable=True)
    info = {t["name"]: t for t in s.info()["tensors"]}
    assert info["x"]["variable"] and not info["x"]["trainable"]
    t = s.tape(persistent=True)
    s.run(node("y", "multiply", "x", "w"))
    g = s.grad(t, "y", ["x", "w"])
    assert g["x"] is None
    close(g["w"], 3.0)
    # watched explicitly, a non-trainable variable does get a gradient (tape.watch(v))
    t2 = s.tape()
    s.watch(t2, "x")
    s.run(node("y2", "multiply", "x", "x"))
    close(s.grad(t2, "y2", ["x"])["x"], 6.0)


def test_tensors_computed_before_the_tape_are_constants(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    s.run(node("a", "multiply", "x", "x"))  # before the tape: a constant to it
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("b", "multiply", "a", 2.0))
    assert s.grad(t, "b", ["x"])["x"] is None
    # the same with a variable: a value read before the tape opened is a constant
    s.put("v", 3.0, variable=True)
    s.run(node("p", "square", "v"))
    t2 = s.tape()
    s.run(node("q", "multiply", "p", 2.0))
    assert s.grad(t2, "q", ["v"])["v"] is None


def test_integer_and_bool_sources_get_null(client: TestClient) -> None:
    s = Sess(client)
    s.put("i", {"dtype": "int32", "shape": [], "data": 3})
    s.put("b", True)
    s.put("x", 2.0)
    t = s.tape(persistent=True)
    s.watch(t, "i", "b", "x")
    s.run(node("fi", "cast", "i", dtype="float32"),
          node("fb", "cast", "b", dtype="float32"),
          node("y", "multiply", "fi", "x"),
          node("z", "multiply", "y", "fb"))
    g = s.grad(t, "z", ["i", "b", "x"])
    assert g["i"] is None and g["b"] is None
    close(g["x"], 3.0)
    g = s.grad(t, "z", ["i", "b", "x"], unconnected_gradients="zero")
    assert g["i"] is None and g["b"] is None


def test_identity_of_a_variable(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0, variable=True)
    t = s.tape()
    s.run(node("y", "identity", "x"), node("z", "multiply", "y", "y"))
    close(s.grad(t, "z", ["x"])["x"], 6.0)  # d (x x)/dx


def test_pause_and_resume(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("z", "multiply", "x", "x"))
    info = s.tape_post(t, "pause")
    assert info["recording"] is False and info["ops_recorded"] == 1
    s.run(node("w", "multiply", "z", 3.0))
    assert s.tape_info(t)["ops_recorded"] == 1
    assert s.tape_post(t, "resume")["recording"] is True
    assert s.grad(t, "w", ["x"])["x"] is None
    s.run(node("v", "multiply", "z", 3.0))
    assert s.tape_info(t)["ops_recorded"] == 2
    close(s.grad(t, "v", ["x"])["x"], 18.0)  # 3 * 2x
    close(s.grad(t, "z", ["x"])["x"], 6.0)


def test_reset_forgets_the_recording(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "x"))
    info = s.tape_post(t, "reset")
    assert info["ops_recorded"] == 0 and info["watched"] == [] and info["recording"]
    assert s.grad(t, "y", ["x"])["x"] is None
    s.watch(t, "x")
    s.run(node("y3", "power", "x", 3.0))
    close(s.grad(t, "y3", ["x"])["x"], 27.0)  # 3 x^2
    assert s.grad(t, "y", ["x"])["x"] is None


def test_get_tape(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    s.put("v", 1.0, variable=True)
    t = s.tape(persistent=True)
    info = s.tape_info(t)
    assert info["tape_id"] == t
    assert info["persistent"] is True and info["recording"] is True
    assert info["watched"] == [] and info["ops_recorded"] == 0 and info["used"] is False
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "v"), node("z", "sin", "y"))
    info = s.tape_info(t)
    assert sorted(info["watched"]) == ["v", "x"] and info["ops_recorded"] == 2
    s.stop(t)
    s.grad(t, "z", ["x"])
    info = s.tape_info(t)
    assert info["recording"] is False and info["used"] is True
    t1 = s.tape()
    assert s.tape_info(t1)["persistent"] is False
    assert {tp["tape_id"] for tp in s.info()["tapes"]} == {t, t1}


def test_non_persistent_tape_answers_once(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape()
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "x"))
    close(s.grad(t, "y", ["x"])["x"], 6.0)
    for route, body in [("gradient", {"target": "y", "sources": ["x"]}),
                        ("jacobian", {"target": "y", "sources": ["x"]}),
                        ("hessian", {"target": "y", "sources": ["x"]})]:
        r = client.post(f"{s.base}/tapes/{t}/{route}", json=body)
        assert "persistent" in problem(r, 409)["detail"]


def test_persistent_tape_answers_many_times(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", [1.0, 2.0])
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "square", "x"), node("z", "reduce_sum", "y"))
    for _ in range(4):
        close(s.grad(t, "z", ["x"])["x"], [2.0, 4.0])
    r = client.post(f"{s.base}/tapes/{t}/jacobian", json={"target": "y", "sources": ["x"]})
    assert r.status_code == 200, r.text
    close(r.json()["jacobian"]["x"], [[2.0, 0.0], [0.0, 4.0]])


def test_deleted_tape_is_404(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "x"))
    assert client.delete(f"{s.base}/tapes/{t}").status_code == 204
    for method, url, body in [
            ("POST", f"{s.base}/tapes/{t}/gradient", {"target": "y", "sources": ["x"]}),
            ("GET", f"{s.base}/tapes/{t}", None),
            ("POST", f"{s.base}/tapes/{t}/watch", {"tensors": ["x"]}),
            ("POST", f"{s.base}/tapes/{t}/stop", None),
            ("DELETE", f"{s.base}/tapes/{t}", None)]:
        r = client.request(method, url, json=body)
        assert t in problem(r, 404)["detail"], (method, url)
    assert s.info()["tapes"] == []


def test_third_order_through_three_nested_tapes(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 2.0, variable=True)
    t1, t2, t3 = s.tape(), s.tape(), s.tape()
    s.run(node("xx", "multiply", "x", "x"), node("y", "multiply", "xx", "x"))
    s.stop(t3)
    close(s.grad(t3, "y", ["x"], save_as={"x": "g1"})["x"], 12.0)  # 3 x^2
    s.stop(t2)
    close(s.grad(t2, "g1", ["x"], save_as={"x": "g2"})["x"], 12.0)  # 6 x
    s.stop(t1)
    close(s.grad(t1, "g2", ["x"])["x"], 6.0)  # 6


def f_vec(x: jax.Array) -> jax.Array:
    """y = sin(x) * sum(x^2): the same function as the session nodes `vec_nodes`."""
    return jnp.sin(x) * jnp.sum(jnp.square(x))


vec_nodes = [node("s2", "square", "x"), node("ss", "reduce_sum", "s2"),
             node("sx", "sin", "x"), node("y", "multiply", "sx", "ss")]


def f_scalar(x: jax.Array) -> jax.Array:
    """z = sum(exp(x) * x^3): the same function as `scalar_nodes`."""
    return jnp.sum(jnp.exp(x) * x ** 3)


scalar_nodes = [node("ex", "exp", "x"), node("x3", "power", "x", 3.0),
                node("p", "multiply", "ex", "x3"), node("z", "reduce_sum", "p")]


def test_jacobian_hvp_hessian_match_jax(client: TestClient) -> None:
    x = np.array([0.3, -0.7, 1.1], np.float32)
    s = Sess(client)
    s.put("x", f32(x))
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(*vec_nodes, *scalar_nodes)
    s.stop(t)

    r = client.post(f"{s.base}/tapes/{t}/jacobian", json={"target": "y", "sources": ["x"]})
    assert r.status_code == 200, r.text
    close(r.json()["value"], f_vec(x))
    close(r.json()["jacobian"]["x"], jax.jacfwd(f_vec)(x))

    v = np.array([1.0, -2.0, 0.5], np.float32)
    r = client.post(f"{s.base}/tapes/{t}/hvp",
                    json={"target": "z", "sources": ["x"], "vectors": {"x": f32(v)}})
    assert r.status_code == 200, r.text
    body = r.json()
    _, hvp = jax.jvp(jax.grad(f_scalar), (x,), (v,))
    close(body["value"], f_scalar(x))
    close(body["gradients"]["x"], jax.grad(f_scalar)(x))
    close(body["hvp"]["x"], hvp)

    r = client.post(f"{s.base}/tapes/{t}/hessian", json={"target": "z", "sources": ["x"]})
    assert r.status_code == 200, r.text
    body = r.json()
    close(body["gradients"]["x"], jax.grad(f_scalar)(x))
    close(body["hessian"]["x"]["x"], jax.hessian(f_scalar)(x))


def test_two_source_hessian_and_hvp_match_jax(client: TestClient) -> None:
    x = np.array([0.4, -1.2], np.float32)
    v0 = np.float32(1.5)

    def f(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.sum(jnp.square(a)) * b ** 3 + jnp.sum(jnp.sin(a)) * b

    s = Sess(client)
    s.put("x", f32(x))
    s.put("v", 1.5, variable=True)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("x2", "square", "x"), node("sx2", "reduce_sum", "x2"),
          node("v3", "power", "v", 3.0), node("p", "multiply", "sx2", "v3"),
          node("sn", "sin", "x"), node("ssn", "reduce_sum", "sn"),
          node("q", "multiply", "ssn", "v"), node("f", "add", "p", "q"))
    s.stop(t)
    r = client.post(f"{s.base}/tapes/{t}/hessian", json={"target": "f", "sources": ["x", "v"]})
    assert r.status_code == 200, r.text
    body = r.json()
    hess = jax.hessian(f, argnums=(0, 1))(x, v0)
    grads = jax.grad(f, argnums=(0, 1))(x, v0)
    close(body["value"], f(x, v0), rtol=1e-4)
    close(body["gradients"]["x"], grads[0], rtol=1e-4)
    close(body["gradients"]["v"], grads[1], rtol=1e-4)
    for i, a in enumerate("xv"):
        for j, b in enumerate("xv"):
            close(body["hessian"][a][b], hess[i][j], rtol=1e-4)
    tx, tv = np.array([1.0, -0.5], np.float32), np.float32(2.0)
    r = client.post(f"{s.base}/tapes/{t}/hvp", json={
        "target": "f", "sources": ["x", "v"], "vectors": {"x": f32(tx), "v": 2.0}})
    assert r.status_code == 200, r.text
    _, hvp = jax.jvp(jax.grad(f, argnums=(0, 1)), (x, v0), (tx, tv))
    close(r.json()["hvp"]["x"], hvp[0], rtol=1e-4)
    close(r.json()["hvp"]["v"], hvp[1], rtol=1e-4)


def test_batch_jacobian_matches_jax(client: TestClient) -> None:
    x = np.array([[0.1, 0.2, 0.3], [-0.4, 0.5, 0.9]], np.float32)
    w = np.array([[1.0, -1.0], [0.5, 2.0], [-0.3, 0.7]], np.float32)

    def per_example(row: jax.Array) -> jax.Array:
        return jnp.tanh(row @ w) * jnp.sum(row)

    s = Sess(client)
    s.put("x", f32(x))
    s.put("w", f32(w))
    t = s.tape()
    s.watch(t, "x")
    s.run(node("h", "matmul", "x", "w"), node("a", "tanh", "h"),
          node("r", "reduce_sum", "x", axis=1, keepdims=True), node("y", "multiply", "a", "r"))
    s.stop(t)
    r = client.post(f"{s.base}/tapes/{t}/batch_jacobian",
                    json={"target": "y", "sources": ["x"]})
    assert r.status_code == 200, r.text
    expected = jax.vmap(jax.jacfwd(per_example))(x)  # [2, 2, 3]
    close(r.json()["jacobian"]["x"], expected)


def test_tape_target_list_is_their_total(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("a", "multiply", "x", "x"), node("b", "multiply", "x", 2.0),
          node("ab", "add", "a", "b"))
    # a list of targets gets the gradient of their total (TensorFlow's rule): 2x + 2
    r = client.post(f"{s.base}/tapes/{t}/gradient", json={"target": ["a", "b"],
                                                          "sources": ["x"]})
    assert r.status_code == 200, r.text
    close(r.json()["gradients"]["x"], 8.0)
    close(s.grad(t, "ab", ["x"])["x"], 8.0)
    r = client.post(f"{s.base}/tapes/{t}/gradient", json={"target": [], "sources": ["x"]})
    assert ["body", "target"] in [loc[:2] for loc in locs(problem(r, 422))]


def test_output_gradients_is_a_vjp(client: TestClient) -> None:
    x = np.array([1.0, 2.0, 3.0], np.float32)
    u = np.array([1.0, 10.0, 100.0], np.float32)
    s = Sess(client)
    s.put("x", f32(x))
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(*vec_nodes)
    _, vjp = jax.vjp(f_vec, x)
    close(s.grad(t, "y", ["x"], output_gradients=f32(u))["x"], vjp(u)[0])
    # without output_gradients: the gradient of the sum
    close(s.grad(t, "y", ["x"])["x"], jax.grad(lambda a: jnp.sum(f_vec(a)))(x))


def descend(s: Sess, steps: int) -> None:
    for _ in range(steps):
        t = s.tape()
        s.run(node("d", "subtract", "w", 3.0), node("loss", "square", "d"), fetch=[])
        s.stop(t)
        g = s.grad(t, "loss", ["w"], save_as={"w": "g"})
        assert g["w"] is not None
        s.run(node("step", "multiply", "g", 0.1), {"id": "w", "op": "assign_sub",
                                                    "args": ["w", "step"]}, fetch=[])
        assert client_delete(s, t) == 204


def client_delete(s: Sess, t: str) -> int:
    return s.c.delete(f"{s.base}/tapes/{t}").status_code


def test_gradient_descent_loop(client: TestClient) -> None:
    s = Sess(client)
    s.put("w", 0.0, variable=True)
    descend(s, 50)
    # w_{k+1} - 3 = 0.8 (w_k - 3): after 50 steps |w - 3| = 3 * 0.8^50 ~ 4e-5
    w = float(value(s.get("w"), "float32", []))
    assert abs(w - 3.0) < 1e-3 and abs(w - 3.0) > 0, w
    info = {t["name"]: t for t in s.info()["tensors"]}
    assert info["w"]["variable"] is True and info["w"]["trainable"] is True
    assert info["w"]["dtype"] == "float32" and info["w"]["shape"] == []
    # a new tape still watches w without being asked
    t = s.tape()
    s.run(node("q", "multiply", "w", "w"))
    assert s.tape_info(t)["watched"] == ["w"]
    close(s.grad(t, "q", ["w"])["w"], 2 * w)


def test_compile_cache_reused_by_a_loop(client: TestClient) -> None:
    s = Sess(client)
    s.put("w", 0.0, variable=True)
    descend(s, 5)
    cache = client.app.state.services.engine.cache  # type: ignore[attr-defined]
    cache.wait()  # compiles run in the background by default
    before = (cache.stats.compiles, cache.stats.eager_runs)
    assert before[0] > 0
    descend(s, 10)
    cache.wait()
    assert (cache.stats.compiles, cache.stats.eager_runs) == before


def test_assign_keeps_dtype_and_shape(client: TestClient) -> None:
    s = Sess(client)
    s.put("v", [1.0, 2.0], variable=True)
    out = s.run(node("v", "assign_add", "v", 1), node("u", "multiply", "v", 2.0))
    close(out["values"]["v"], [2.0, 3.0])
    close(out["values"]["u"], [4.0, 6.0])
    out = s.run(node("v", "assign", "v", [5.0, 7.0]))
    close(out["values"]["v"], [5.0, 7.0])
    close(s.get("v"), [5.0, 7.0])
    out = s.run(node("v", "assign_sub", "v", 0.5))
    close(out["values"]["v"], [4.5, 6.5])
    info = {t["name"]: t for t in s.info()["tensors"]}
    assert info["v"] == {"name": "v", "dtype": "float32", "shape": [2], "variable": True,
                         "trainable": True}
    s.put("k", 1.0)
    r = client.post(f"{s.base}/run", json={"nodes": [node("bad", "assign", "k", 2.0)]})
    body = problem(r, 422)
    assert body["node"] == "bad" and "'k'" in body["detail"]
    assert ["body", "nodes", 0, "args", 0] in locs(body)


def test_assign_is_not_recorded_and_reads_new_value(client: TestClient) -> None:
    s = Sess(client)
    s.put("v", 2.0, variable=True)
    t = s.tape(persistent=True)
    s.run(node("a", "multiply", "v", "v"), node("v", "assign", "v", 5.0),
          node("b", "multiply", "v", "v"))
    info = s.tape_info(t)
    assert info["ops_recorded"] == 2
    close(s.get("b"), 25.0)
    # each read of v gets its gradient, as TensorFlow sums over reads of the variable
    close(s.grad(t, "a", ["v"])["v"], 4.0)
    close(s.grad(t, "b", ["v"])["v"], 10.0)


def test_assign_on_the_tape(client: TestClient) -> None:
    s = Sess(client)
    s.put("v", 2.0, variable=True)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("a", "multiply", "v", "v"), node("v", "assign", "v", 5.0),
          node("b", "multiply", "v", "v"), node("c", "add", "a", "b"))
    # every read of v gets its gradient, summed: 2*2 + 2*5
    close(s.grad(t, "c", ["v"])["v"], 14.0)
    # an assignment is not differentiable: x reaches z only through the assign
    s.run(node("x2", "multiply", "x", 2.0), node("v", "assign", "v", "x2"),
          node("z", "multiply", "v", "v"))
    g = s.grad(t, "z", ["x", "v"])
    assert g["x"] is None
    close(g["v"], 12.0)  # v is now 6
    s.stop(t)
    # assigning after the tape stopped does not change what it recorded
    s.run(node("v", "assign", "v", 100.0))
    close(s.grad(t, "a", ["v"])["v"], 4.0)


def test_persistent_tape_records_its_own_saved_gradient(client: TestClient) -> None:
    """TensorFlow records a gradient taken inside a persistent tape's own context on it."""
    s = Sess(client)
    s.put("x", 1.0, variable=True)
    t = s.tape(persistent=True)
    s.run(node("x3", "power", "x", 3.0))
    close(s.grad(t, "x3", ["x"], save_as={"x": "g"})["x"], 3.0)
    s.stop(t)
    close(s.grad(t, "g", ["x"])["x"], 6.0)


def test_stopped_tape_records_nothing(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "x"))
    assert s.stop(t)["recording"] is False
    s.run(node("z", "multiply", "y", "x"))
    assert s.tape_info(t)["ops_recorded"] == 1
    assert s.grad(t, "z", ["x"])["x"] is None
    # resume does not reopen a stopped tape
    assert s.tape_post(t, "resume")["recording"] is False


def test_watch_after_use_is_too_late(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    t = s.tape(persistent=True)
    s.run(node("y", "multiply", "x", "x"))
    s.watch(t, "x")
    s.run(node("z", "multiply", "x", 4.0))
    assert s.grad(t, "y", ["x"])["x"] is None
    close(s.grad(t, "z", ["x"])["x"], 4.0)


def test_save_as_of_a_null_gradient_is_422(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    s.put("c", 1.0)
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "multiply", "x", "x"))
    body = s.grad(t, "y", ["c"], status=422, save_as={"c": "gc"})
    assert ["body", "save_as", "c"] in locs(body)
    s.get("gc", status=404)
    # with zeros asked for, the zeros are saved
    g = s.grad(t, "y", ["c"], save_as={"c": "gc"}, unconnected_gradients="zero")
    close(g["c"], 0.0)
    close(s.get("gc"), 0.0)


# ----- 3. errors -----


def test_unknown_and_deleted_session_404(client: TestClient) -> None:
    body = problem(client.get("/v1/sessions/s_nope"), 404)
    assert "unknown" in body["detail"] and "s_nope" in body["detail"]
    problem(client.post("/v1/sessions/s_nope/run", json={"nodes": [node("a", "add", 1, 2)]}),
            404)
    problem(client.post("/v1/sessions/s_nope/tapes", json={}), 404)
    s = Sess(client)
    s.put("x", 1.0)
    assert client.delete(s.base).status_code == 204
    for method, url in [("GET", s.base), ("GET", f"{s.base}/tensors/x"),
                        ("DELETE", s.base), ("POST", f"{s.base}/tapes")]:
        r = client.request(method, url, json={} if method == "POST" else None)
        assert s.sid in problem(r, 404)["detail"], (method, url)


def test_unknown_tape_and_tensor_404(client: TestClient) -> None:
    s = Sess(client)
    assert "t_missing" in problem(client.get(f"{s.base}/tapes/t_missing"), 404)["detail"]
    r = client.post(f"{s.base}/tapes/t_missing/gradient", json={"target": "y",
                                                                "sources": ["x"]})
    assert "t_missing" in problem(r, 404)["detail"]
    assert "ghost" in problem(client.get(f"{s.base}/tensors/ghost"), 404)["detail"]


def test_run_errors(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 1.0)
    r = client.post(f"{s.base}/run", json={"nodes": [node("a", "multiply", "x", 2.0),
                                                     node("b", "add", "a", "nowhere")]})
    body = problem(r, 422)
    assert body["node"] == "b" and "nowhere" in body["detail"]
    assert ["body", "nodes", 1, "args", 1] in locs(body)
    s.get("a", status=404)  # a failed run binds nothing
    r = client.post(f"{s.base}/run", json={"nodes": [node("a", "frobnicate", "x")]})
    body = problem(r, 422)
    assert "frobnicate" in body["detail"]


def test_tape_query_errors(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", [1.0, 2.0])
    s.put("i", {"dtype": "int32", "shape": [], "data": 2})
    t = s.tape(persistent=True)
    s.watch(t, "x")
    s.run(node("y", "square", "x"), node("k", "multiply", "i", 3))
    base = f"{s.base}/tapes/{t}"
    r = client.post(f"{base}/gradient", json={"target": "nope", "sources": ["x"]})
    body = problem(r, 422)
    assert "nope" in body["detail"] and ["body", "target"] in locs(body)
    r = client.post(f"{base}/gradient", json={"target": "y", "sources": ["x", "gone"]})
    body = problem(r, 422)
    assert "gone" in body["detail"] and ["body", "sources", 1] in locs(body)
    r = client.post(f"{base}/gradient", json={"target": "k", "sources": ["i"]})
    assert ["body", "target"] in locs(problem(r, 422))
    r = client.post(f"{base}/hessian", json={"target": "y", "sources": ["x"]})
    body = problem(r, 422)
    assert "scalar" in body["detail"] and ["body", "target"] in locs(body)
    r = client.post(f"{base}/hvp", json={"target": "y", "sources": ["x"],
                                         "vectors": {"x": [1.0, 1.0]}})
    problem(r, 422)
    # the failed queries did not use up anything: the tape still answers
    close(s.grad(t, "y", ["x"])["x"], [2.0, 4.0])


def test_bad_bodies_422(client: TestClient) -> None:
    s = Sess(client)
    body = problem(client.post(f"{s.base}/tapes", json={"persistent": "yes"}), 422)
    assert ["body", "persistent"] in locs(body)
    problem(client.post("/v1/sessions", json={"ttl_seconds": -5}), 422)
    problem(client.post("/v1/sessions", json={"ttl_seconds": "long"}), 422)
    problem(client.put(f"{s.base}/tensors/x", json={"value": [[1, 2], [3]]}), 422)
    problem(client.put(f"{s.base}/tensors/x", json={"value": 1.0, "variable": "no"}), 422)
    problem(client.post(f"{s.base}/run", json={"nodes": "y = x"}), 422)
    problem(client.post(f"{s.base}/run", json={"nodes": []}), 422)
    t = s.tape()
    problem(client.post(f"{s.base}/tapes/{t}/watch", json={"tensors": []}), 422)
    problem(client.post(f"{s.base}/tapes/{t}/watch", json={"tensors": ["x"]}), 422)
    problem(client.post(f"{s.base}/tapes/{t}/gradient", json={"target": "x"}), 422)
    problem(client.post(f"{s.base}/tapes/{t}/gradient",
                        json={"target": "x", "sources": ["x"], "unconnected_gradients": "0"}),
            422)


# ----- 4. concurrency -----


def test_concurrent_assign_add_on_one_variable(client: TestClient) -> None:
    app = client.app
    s = Sess(client)
    s.put("v", 0.0, variable=True)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            async def bump() -> int:
                r = await ac.post(f"{s.base}/run",
                                  json={"nodes": [node("v", "assign_add", "v", 1.0)]})
                return r.status_code

            return await asyncio.gather(*(bump() for _ in range(50)))

    codes = asyncio.run(main())
    assert codes == [200] * 50
    close(s.get("v"), 50.0)


def test_concurrent_assign_add_from_threads(client: TestClient) -> None:
    s = Sess(client)
    s.put("v", [0.0, 0.0], variable=True)

    def bump(_: int) -> int:
        return client.post(f"{s.base}/run", json={"nodes": [
            node("one", "ones_like", "v"), node("v", "assign_add", "v", "one")]}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(bump, range(50))) == [200] * 50
    close(s.get("v"), [50.0, 50.0])


def test_parallel_sessions_are_isolated(client: TestClient) -> None:
    """Two sessions, each driven by its own thread, bind the same names at the same time."""
    a, b = Sess(client), Sess(client)

    def loop(s: Sess, start: float) -> list[tuple[float, float]]:
        seen = []
        for i in range(15):
            x = start + i
            s.put("x", x)
            t = s.tape()
            s.watch(t, "x")
            out = s.run(node("y", "multiply", "x", "x"))
            y = float(value(out["values"]["y"], "float32", []))
            g = float(value(s.grad(t, "y", ["x"])["x"], "float32", []))
            seen.append((y - x * x, g - 2 * x))
            assert float(value(s.get("x"))) == x
        return seen

    with ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(loop, a, 1.0), pool.submit(loop, b, 100.0)
        assert fa.result() == [(0.0, 0.0)] * 15
        assert fb.result() == [(0.0, 0.0)] * 15
    close(a.get("x"), 15.0)
    close(b.get("x"), 114.0)


# ----- disagreements with TensorFlow / API.md (these fail until the service is fixed) -----


def test_two_names_of_one_variable_both_get_its_gradient(client: TestClient) -> None:
    """`w2 = w.assign(...)` binds w2 to the same variable (API.md: an assign "binds the
    node's id to that same variable"), as TensorFlow's assign returns the variable. Asking for
    the gradient with respect to both names must give both the variable's gradient: TensorFlow
    matches sources by variable handle. d(w * w)/dw = 2w = 2."""
    s = Sess(client)
    s.put("w", 1.0, variable=True)
    s.run(node("w2", "assign", "w", "w"))
    info = {t["name"]: t for t in s.info()["tensors"]}
    assert info["w2"]["variable"] is True
    t = s.tape(persistent=True)
    s.run(node("q", "multiply", "w2", "w"))
    close(s.grad(t, "q", ["w"])["w"], 2.0)
    close(s.grad(t, "q", ["w2"])["w2"], 2.0)
    g = s.grad(t, "q", ["w", "w2"])
    close(g["w"], 2.0)
    close(g["w2"], 2.0)


def test_saved_gradient_with_output_gradients_is_recorded_on_the_outer_tape(
        client: TestClient) -> None:
    """API.md: "A gradient computed while another tape is recording is recorded on that tape,
    so the saved result can be differentiated again." TensorFlow does this for a gradient
    with output_gradients too: g = 2 * 3x^2 = 6 at x = 1, and dg/dx = 2 * 6x = 12."""
    s = Sess(client)
    s.put("x", 1.0, variable=True)
    t = s.tape()
    t2 = s.tape()
    s.run(node("y", "power", "x", 3.0))
    s.stop(t2)
    g = s.grad(t2, "y", ["x"], output_gradients=2.0, save_as={"x": "g"})
    close(g["x"], 6.0)
    s.stop(t)
    close(s.grad(t, "g", ["x"])["x"], 12.0)


def test_saved_gradients_can_be_answered_without_data(client: TestClient) -> None:
    s = Sess(client)
    s.put("w", [1.0, 2.0], variable=True)
    t = s.tape()
    assert s.run(node("l", "sum", "w"), encoding="none") == {
        "values": {"l": {"dtype": "float32", "shape": []}}}
    s.stop(t)
    grads = s.grad(t, "l", ["w"], save_as={"w": "g"}, encoding="none")
    assert grads == {"w": {"dtype": "float32", "shape": [2]}}
    assert s.get("g")["data"] == [1.0, 1.0]


def test_tape_hvp_answers_only_the_parts_asked(client: TestClient) -> None:
    s = Sess(client)
    s.put("x", 3.0)
    tid = s.tape(persistent=True)
    s.watch(tid, "x")
    s.run(node("y", "multiply", "x", "x"), node("z", "multiply", "y", "x"))  # x^3
    r = client.post(f"{s.base}/tapes/{tid}/hvp", json={
        "target": "z", "sources": ["x"], "vectors": {"x": 2.0}, "include": ["hvp"]})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"hvp"}
    exact(r.json()["hvp"]["x"], 6 * 3.0 * 2.0)  # d2(x^3)/dx2 = 6x, times v
    r = client.post(f"{s.base}/tapes/{tid}/hvp", json={
        "target": "z", "sources": ["x"], "vectors": {"x": 2.0}, "include": ["value", "gradients"]})
    assert set(r.json()) == {"value", "gradients"}
    exact(r.json()["value"], 27.0)
    exact(r.json()["gradients"]["x"], 27.0)


def test_run_binds_inputs_and_watches_in_one_request(client: TestClient) -> None:
    # PUT x, watch x and run, as one request: the tutorial's first part in three calls
    s = Sess(client)
    t = s.tape()
    out = s.run(node("y", "reduce_sum", "x"), node("z", "multiply", "y", "y"),
                inputs={"x": f32([[1, 2], [3, 4]])}, watch={t: ["x"]}, fetch=["z"])
    exact(out["values"]["z"], 100.0)
    s.stop(t)
    # d (sum x)^2 / dx = 2 * sum(x) = 20 everywhere
    exact(s.grad(t, "z", ["x"])["x"], np.full((2, 2), 20.0))
    exact(s.get("x"), [[1, 2], [3, 4]])  # the input stays bound, as a PUT would bind it
    # nothing but inputs and a watch is a request too; fetch reads session tensors
    t2 = s.tape()
    out = s.run(inputs={"w": f32(3.0)}, watch={t2: ["w", "x"]}, fetch=["w"])
    exact(out["values"]["w"], 3.0)
    assert sorted(s.tape_info(t2)["watched"]) == ["w", "x"]


def test_run_inputs_and_watch_errors(client: TestClient) -> None:
    s = Sess(client)
    body = problem(client.post(f"{s.base}/run", json={}), 422)
    assert "nothing to do" in body["detail"] and ["body", "nodes"] in locs(body)
    body = problem(client.post(f"{s.base}/run", json={
        "inputs": {"x": f32(1.0)}, "watch": {"t_nope": ["x"]}}), 422)
    assert "t_nope" in body["detail"] and ["body", "watch", "t_nope"] in locs(body)
    s.get("x", status=404)  # a failed run binds nothing, not even its inputs
    t = s.tape()
    body = problem(client.post(f"{s.base}/run", json={"watch": {t: ["x", "ghost"]}}), 422)
    assert "ghost" in body["detail"] or "x" in body["detail"]
    assert locs(body)[0][:3] == ["body", "watch", t]
    body = problem(client.post(f"{s.base}/run", json={
        "inputs": {"x": {"dtype": "float32", "shape": [2], "data": [1.0]}},
        "nodes": [node("y", "negative", "x")]}), 422)
    assert locs(body)[0][:3] == ["body", "inputs", "x"], body
    body = problem(client.post(f"{s.base}/run", json={"fetch": ["ghost"],
                                                      "inputs": {"x": f32(1.0)}}), 422)
    assert ["body", "fetch", 0] in locs(body)


def test_tape_queries_run_off_the_event_loop_give_the_same_answers(
        store_settings: Settings) -> None:
    """With every compiled query sent to a worker thread (inline limit 0), a tape query is
    prepared on the event loop, found too heavy, and finished in the thread from what was
    prepared: the answers are JAX's, and a change between two requests is always seen."""
    from service.main import create_app

    settings = store_settings.model_copy(update={"inline_max_flops": 0,
                                                 "inline_idle_max_flops": 0})
    x0 = np.array([0.5, -1.5, 2.0], np.float32)

    def f(x: Any) -> Any:
        return jnp.sum(jnp.sin(x) * x)

    with TestClient(create_app(settings)) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        c.put(f"{base}/tensors/x", json={"value": f32(x0), "variable": True})
        tape = c.post(f"{base}/tapes", json={"persistent": True}).json()["tape_id"]
        r = c.post(f"{base}/run", json={"nodes": [node("s", "sin", "x"),
                                                  node("p", "multiply", "s", "x"),
                                                  node("y", "sum", "p")], "fetch": []})
        assert r.status_code == 200, r.text
        for _ in range(3):  # compiled after the first: the later ones take the thread
            r = c.post(f"{base}/tapes/{tape}/gradient", json={"target": "y", "sources": ["x"]})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(value(r.json()["gradients"]["x"]),
                                       jax.grad(f)(jnp.asarray(x0)), rtol=1e-6)
        r = c.post(f"{base}/tapes/{tape}/hvp", json={"target": "y", "sources": ["x"],
                                                     "vectors": {"x": f32([1, 0, 0])}})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(value(r.json()["hvp"]["x"]),
                                   jax.hessian(f)(jnp.asarray(x0))[0], rtol=1e-5)
        # the source is gone: the next request sees it, nothing prepared before is reused
        assert c.delete(f"{base}/tensors/x").status_code == 204
        r = c.post(f"{base}/tapes/{tape}/gradient", json={"target": "y", "sources": ["x"]})
        assert r.status_code == 422 and "not a tensor of this session" in r.text, r.text


def test_failed_requests_leave_finished_tapes_as_they_were(client: TestClient) -> None:
    """Tapes that are not recording are kept by a request's snapshot only once the request
    names them; a request that changes one and then fails must still undo the change."""
    s = Sess(client)
    s.put("x", [1.0, 2.0])
    s.put("w", [0.5, 0.25], variable=True)
    done, kept = s.tape(), s.tape(persistent=True)
    s.run(node("y", "multiply", "x", "w"), node("l", "reduce_sum", "y"))
    s.stop(done)
    s.stop(kept)
    before = {t: s.tape_info(t) for t in (done, kept)}
    # a run whose watch names a finished tape: the first name is watched, the second fails
    r = client.post(f"{s.base}/run", json={"nodes": [], "watch": {done: ["x", "nope"]}})
    assert locs(problem(r, 422)) == [["body", "watch", done, 1]]
    # a persistent tape's gradient applied to an optimizer none of whose variables the
    # target reaches: the tape is used, then the request fails
    s.put("other", [1.0], variable=True)
    assert client.post(f"{s.base}/optimizers", json={
        "name": "o", "method": "sgd", "learning_rate": 0.1,
        "variables": ["other"]}).status_code == 201
    r = client.post(f"{s.base}/tapes/{kept}/gradient", json={"target": "l", "apply": "o"})
    assert problem(r, 422)["detail"].startswith("no source has a gradient")
    assert {t: s.tape_info(t) for t in (done, kept)} == before
    assert s.grad(kept, "l", ["w"])["w"]["data"] == [1.0, 2.0]
