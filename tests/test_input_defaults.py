"""Inputs with a default value in a registered graph (docs/API.md, "Graph language additions"):
a request may leave them out, they can still be differentiated by naming them in sources, and
the default sources are the floating inputs without one. Over HTTP."""

from __future__ import annotations

import base64
import copy
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.schemas.examples import TUTORIAL_GRAPH, TUTORIAL_GRAPH_ID

W = [0.5, -2.0]
# loss = sum((x @ w + b)^2): the weights w and b have defaults, x is sent
MODEL: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [3, 2]},
               "w": {"dtype": "float32", "shape": [2], "default": W},
               "b": {"dtype": "float32", "shape": [], "default": 1.0}},
    "nodes": [{"id": "z", "op": "matmul", "args": ["x", "w"]},
              {"id": "y", "op": "add", "args": ["z", "b"]},
              {"id": "sq", "op": "square", "args": ["y"]},
              {"id": "total", "op": "sum", "args": ["sq"]}],
    "outputs": ["total"],
}
X = np.array([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]], np.float32)


def register(client: TestClient, graph: dict[str, Any], status: int = 201) -> str:
    r = client.post("/v1/graphs", json=graph)
    assert r.status_code == status, r.text
    gid: str = r.json()["graph_id"]
    return gid


def data(t: dict[str, Any]) -> np.ndarray:
    return np.asarray(t["data"], dtype=t["dtype"])


def expected(x: np.ndarray, w: np.ndarray, b: float) -> tuple[float, np.ndarray, np.ndarray]:
    y = x.astype(np.float64) @ w + b
    return float((y * y).sum()), 2 * x.T @ y, np.array(2 * y.sum())


def test_a_request_may_leave_out_inputs_with_defaults(client: TestClient) -> None:
    gid = register(client, MODEL)
    r = client.post("/v1/gradient", json={"graph_id": gid, "inputs": {"x": X.tolist()},
                                          "target": "total"})
    assert r.status_code == 200, r.text
    body = r.json()
    value, _, _ = expected(X, np.array(W), 1.0)
    assert float(body["value"]["data"]) == pytest.approx(value, rel=1e-6)
    # default sources: the floating inputs without a default
    assert list(body["gradients"]) == ["x"]
    y = X.astype(np.float64) @ np.array(W) + 1.0
    np.testing.assert_allclose(data(body["gradients"]["x"]), 2 * np.outer(y, W), rtol=1e-6)


def test_inputs_with_defaults_are_differentiated_when_named(client: TestClient) -> None:
    gid = register(client, MODEL)
    r = client.post("/v1/gradient", json={"graph_id": gid, "inputs": {"x": X.tolist()},
                                          "target": "total", "sources": ["w", "b"]})
    assert r.status_code == 200, r.text
    _, dw, db = expected(X, np.array(W), 1.0)
    grads = r.json()["gradients"]
    np.testing.assert_allclose(data(grads["w"]), dw, rtol=1e-6)
    np.testing.assert_allclose(data(grads["b"]), db, rtol=1e-6)
    # the Hessian of the loss in w is 2 x^T x
    v = [1.0, -1.0]
    r = client.post("/v1/hvp", json={"graph_id": gid, "inputs": {"x": X.tolist()},
                                     "target": "total", "sources": ["w"], "vectors": {"w": v}})
    assert r.status_code == 200, r.text
    hx = 2 * X.astype(np.float64).T @ X.astype(np.float64)
    np.testing.assert_allclose(data(r.json()["hvp"]["w"]), hx @ np.array(v), rtol=1e-6)


def test_a_sent_value_overrides_the_default(client: TestClient) -> None:
    gid = register(client, MODEL)
    w = np.array([1.0, 1.0])
    r = client.post("/v1/evaluate", json={"graph_id": gid, "inputs": {"x": X.tolist(),
                                                                      "w": w.tolist()}})
    assert r.status_code == 200, r.text
    value, _, _ = expected(X, w, 1.0)
    assert float(r.json()["values"]["total"]["data"]) == pytest.approx(value, rel=1e-6)


def test_the_registered_graph_keeps_its_defaults(client: TestClient) -> None:
    gid = register(client, MODEL)
    body = client.get(f"/v1/graphs/{gid}").json()
    assert body["graph"] == MODEL
    assert body["inputs"] == ["x", "w", "b"]


def test_graphs_without_defaults_keep_their_ids(client: TestClient) -> None:
    assert register(client, TUTORIAL_GRAPH) == TUTORIAL_GRAPH_ID
    spelled = copy.deepcopy(TUTORIAL_GRAPH)
    spelled["inputs"]["x"]["default"] = None  # null is no default
    assert register(client, spelled, 200) == TUTORIAL_GRAPH_ID


def test_defaults_are_part_of_the_graph_id(client: TestClient) -> None:
    gid = register(client, MODEL)
    other = copy.deepcopy(MODEL)
    other["inputs"]["w"]["default"] = [0.5, -1.0]
    assert register(client, other) != gid
    without = copy.deepcopy(MODEL)
    del without["inputs"]["w"]["default"]
    assert register(client, without) != gid
    # the same values written as bytes are the same graph
    as_bytes = copy.deepcopy(MODEL)
    as_bytes["inputs"]["w"]["default"] = {
        "dtype": "float32", "shape": [2],
        "b64": base64.b64encode(np.array(W, "<f4").tobytes()).decode()}
    assert register(client, as_bytes, 200) == gid


@pytest.mark.parametrize("default,says", [
    ({"dtype": "float64", "data": W}, "does not match the declared dtype float32"),
    ([1.0, 2.0, 3.0], "has shape [3], but the input is declared with shape [2]"),
    ([[1.0], [1.0, 2.0]], "ragged"),
    ("NaN!", ""),
])
def test_a_default_is_checked_against_the_declaration(client: TestClient, default: Any,
                                                      says: str) -> None:
    graph = copy.deepcopy(MODEL)
    graph["inputs"]["w"]["default"] = default
    r = client.post("/v1/graphs", json=graph)
    assert r.status_code == 422, r.text
    body = r.json()
    assert "default of input 'w'" in body["detail"], body
    assert says in body["detail"], body
    assert any(e["loc"][:4] == ["body", "inputs", "w", "default"] for e in body["errors"]), body


def test_a_missing_input_without_default_is_still_a_422(client: TestClient) -> None:
    gid = register(client, MODEL)
    r = client.post("/v1/evaluate", json={"graph_id": gid, "inputs": {}})
    assert r.status_code == 422, r.text
    assert "input 'x' has no value" in r.json()["detail"]
