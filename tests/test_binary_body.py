"""Tensors as raw bytes after a JSON header (the Open Inference Protocol's binary extension)."""

from __future__ import annotations

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
