"""Tensors as raw bytes after a JSON header (the Open Inference Protocol's binary extension)."""

from __future__ import annotations

import base64
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

GRAPH: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [3, 4]},
               "w": {"dtype": "float32", "shape": [4]}},
    "nodes": [{"id": "xw", "op": "matmul", "args": ["x", "w"]},
              {"id": "loss", "op": "reduce_sum", "args": ["xw"]}],
    "outputs": ["loss"],
}


def binary_body(header: dict[str, Any], *arrays: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    blob = b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
                    for a in arrays)
    return head + blob, {"content-type": "application/octet-stream",
                         "inference-header-content-length": str(len(head))}


def ref(a: np.ndarray, nbytes: int | None = None) -> dict[str, Any]:
    return {"dtype": a.dtype.name, "shape": list(a.shape),
            "parameters": {"binary_data_size": a.nbytes if nbytes is None else nbytes}}


X = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
W = np.array([0.5, -1.0, 2.0, 0.25], dtype=np.float32)


def test_binary_inputs_give_the_json_answer(client: TestClient) -> None:
    body = {"graph": GRAPH, "target": "loss", "sources": ["x", "w"],
            "inputs": {"x": ref(X), "w": ref(W)}}
    content, headers = binary_body(body, X, W)
    r = client.post("/v1/gradient", content=content, headers=headers)
    assert r.status_code == 200, r.text
    as_json = client.post("/v1/gradient", json={
        **body, "inputs": {"x": X.tolist(), "w": W.tolist()}})
    assert r.json() == as_json.json()
    # d sum(x @ w) / dx = w in every row; / dw = column sums of x
    grads = jax.grad(lambda x, w: jnp.sum(x @ w), argnums=(0, 1))(X, W)
    np.testing.assert_allclose(r.json()["gradients"]["x"]["data"], grads[0], rtol=1e-6)
    np.testing.assert_allclose(r.json()["gradients"]["w"]["data"], grads[1], rtol=1e-6)


def test_binary_batch_in_a_session_step(client: TestClient) -> None:
    sid = client.post("/v1/sessions", json={}).json()["session_id"]
    base = f"/v1/sessions/{sid}"
    assert client.put(f"{base}/tensors/w", json={"value": {"dtype": "float32", "shape": [4],
                                                            "data": W.tolist()},
                                                  "variable": True}).status_code == 200
    assert client.post(f"{base}/optimizers", json={"name": "sgd", "method": "sgd",
                                                   "learning_rate": 0.1}).status_code == 201
    y = np.array([1.0, 0.0, -1.0], dtype=np.float32)
    body = {"inputs": {"x": ref(X), "y": ref(y)}, "target": "loss", "optimizer": "sgd",
            "nodes": [{"id": "p", "op": "matmul", "args": ["x", "w"]},
                      {"id": "e", "op": "subtract", "args": ["p", "y"]},
                      {"id": "sq", "op": "square", "args": ["e"]},
                      {"id": "loss", "op": "reduce_sum", "args": ["sq"]}],
            "fetch": ["loss"]}
    content, headers = binary_body(body, X, y)
    r = client.post(f"{base}/step", content=content, headers=headers)
    assert r.status_code == 200, r.text
    loss, grad = jax.value_and_grad(lambda w: jnp.sum((X @ w - y) ** 2))(W)
    np.testing.assert_allclose(r.json()["values"]["loss"]["data"], loss, rtol=1e-5)
    got = client.get(f"{base}/tensors/w").json()["data"]
    np.testing.assert_allclose(got, W - 0.1 * np.asarray(grad), rtol=1e-5)


@pytest.mark.parametrize("case, status, says, loc", [
    ("size", 422, "takes 48 bytes", ["body", "inputs", "x", "parameters", "binary_data_size"]),
    ("short", 422, "ends", ["body", "inputs", "w", "parameters", "binary_data_size"]),
    ("extra", 422, "add up to", None),
    ("shape", 422, "shape", ["body", "inputs", "x", "shape"]),
    ("dtype", 422, "unknown dtype", ["body", "inputs", "x", "dtype"]),
    ("field", 422, "beside binary data", ["body", "inputs", "x"]),
    ("header", 400, "only", None),
    ("not-a-number", 400, "byte length", None),
])
def test_binary_body_errors(client: TestClient, case: str, status: int, says: str,
                            loc: list[Any] | None) -> None:
    x_ref, w_ref = ref(X), ref(W)
    arrays: list[np.ndarray] = [X, W]
    if case == "size":
        x_ref = ref(X, 40)
    elif case == "short":
        arrays = [X, W[:2]]
    elif case == "extra":
        arrays = [X, W, W]
    elif case == "shape":
        x_ref = {**x_ref, "shape": "3x4"}
    elif case == "dtype":
        x_ref = {**x_ref, "dtype": "float8"}
    elif case == "field":
        x_ref = {**x_ref, "data": [1]}
    body = {"graph": GRAPH, "target": "loss", "inputs": {"x": x_ref, "w": w_ref}}
    content, headers = binary_body(body, *arrays)
    if case == "header":
        headers["inference-header-content-length"] = str(len(content) + 1)
    elif case == "not-a-number":
        headers["inference-header-content-length"] = "12a"
    r = client.post("/v1/gradient", content=content, headers=headers)
    assert r.status_code == status, r.text
    problem = r.json()
    assert says in problem["detail"], problem
    if loc is not None:
        assert problem["errors"][0]["loc"] == loc, problem


def test_octet_stream_without_the_header_is_415(client: TestClient) -> None:
    r = client.post("/v1/gradient", content=b"\x00\x01",
                    headers={"content-type": "application/octet-stream"})
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]


def test_a_graph_registered_with_binary_constants_is_the_json_graph(client: TestClient) -> None:
    """A constant sent as bytes is kept as the base64 tensor it could have been sent as: the
    same graph id as the JSON graph, and the same answers."""
    c = np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float64)
    nodes: list[dict[str, Any]] = [{"id": "xc", "op": "multiply", "args": ["x", ref(c)]},
                                   {"id": "loss", "op": "reduce_sum", "args": ["xc"]}]
    graph = {"inputs": {"x": {"dtype": "float64", "shape": [3, 4]}},
             "nodes": nodes, "outputs": ["loss"]}
    content, headers = binary_body(graph, c)
    binary = client.post("/v1/graphs", content=content, headers=headers)
    assert binary.status_code == 201, binary.text
    as_b64 = {**graph, "nodes": [{**nodes[0], "args": ["x", {
        "dtype": "float64", "shape": [3, 4], "b64": base64.b64encode(c.tobytes()).decode()}]},
        nodes[1]]}
    again = client.post("/v1/graphs", json=as_b64)
    assert again.status_code == 200, again.text  # already registered: the same graph
    gid = binary.json()["graph_id"]
    assert again.json()["graph_id"] == gid
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    r = client.post("/v1/gradient", json={"graph_id": gid, "inputs": {"x": x.tolist()},
                                          "target": "loss"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["gradients"]["x"]["data"], c, rtol=1e-15)
    bad, headers = binary_body(graph, c[:2])
    r = client.post("/v1/graphs", content=bad, headers=headers)
    assert r.status_code == 422, r.text
    assert "binary" in r.json()["detail"]


def test_binary_constants_in_a_steps_nodes(client: TestClient) -> None:
    """A step whose nodes hold a tensor of the binary part: each step uses its own bytes."""
    sid = client.post("/v1/sessions", json={}).json()["session_id"]
    base = f"/v1/sessions/{sid}"
    assert client.put(f"{base}/tensors/w", json={"value": W.tolist(),
                                                  "variable": True}).status_code == 200
    assert client.post(f"{base}/optimizers", json={"name": "sgd", "method": "sgd",
                                                   "learning_rate": 0.1}).status_code == 201
    w = W.astype(np.float64)
    for seed in range(3):
        target = np.random.default_rng(seed).normal(size=4).astype(np.float32)
        body = {"target": "loss", "optimizer": "sgd", "fetch": ["loss"],
                "nodes": [{"id": "e", "op": "subtract", "args": ["w", ref(target)]},
                          {"id": "sq", "op": "square", "args": ["e"]},
                          {"id": "loss", "op": "reduce_sum", "args": ["sq"]}]}
        content, headers = binary_body(body, target)
        r = client.post(f"{base}/step", content=content, headers=headers)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["values"]["loss"]["data"],
                                   np.sum((w - target) ** 2), rtol=1e-5)
        w = w - 0.1 * 2 * (w - target)  # d sum((w - t)^2) / dw = 2 (w - t)
        np.testing.assert_allclose(client.get(f"{base}/tensors/w").json()["data"], w,
                                   rtol=1e-5)
