"""The lean path of the stateless routes, and the parse cache of inline graphs.

A POST with `Content-Type: application/json` to a stateless route is answered by
service/fastpath.py; the same body sent as `application/vnd.gradtape+json` (any `+json` type is
accepted) goes through FastAPI's router. Both must give the same status, headers that matter
and body, for answers and for every kind of error.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.registry import GraphRegistry
from service.config import Settings
from service.main import create_app

ROUTER = "application/vnd.gradtape+json"  # taken by the router, never by the fast path

GRAPH: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [2, 2]}},
    "nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"]},
              {"id": "z", "op": "multiply", "args": ["y", "y"]}],
    "outputs": ["z"],
}
X = [[1.0, 2.0], [3.0, 4.0]]


def both(client: TestClient, path: str, body: bytes | dict[str, Any]) -> tuple[Any, Any]:
    """The answer of the fast path and the router's answer to the same body."""
    raw = body if isinstance(body, bytes) else None
    kw: dict[str, Any] = {"content": raw} if raw is not None else {"json": body}
    fast = client.post(path, headers={"content-type": "application/json"}, **kw)
    slow = client.post(path, headers={"content-type": ROUTER}, **kw)
    return fast, slow


def same(fast: Any, slow: Any, status: int) -> dict[str, Any]:
    assert fast.status_code == slow.status_code == status, (fast.text, slow.text)
    assert fast.headers["content-type"] == slow.headers["content-type"]
    assert fast.json() == slow.json()
    assert fast.headers.get("retry-after") == slow.headers.get("retry-after")
    body: dict[str, Any] = fast.json()
    return body


@pytest.mark.parametrize("path, extra", [
    ("/v1/evaluate", {}),
    ("/v1/gradient", {"target": "z", "sources": ["x", "y"]}),
    ("/v1/jacobian", {"target": "y", "sources": ["x"]}),
    ("/v1/hvp", {"target": "z", "sources": ["x"], "vectors": {"x": X}, "include": ["hvp"]}),
    ("/v1/hessian", {"target": "z", "sources": ["x"]}),
    ("/v1/jvp", {"tangents": {"x": X}}),
])
def test_fast_and_router_answers_are_the_same(client: TestClient, path: str,
                                              extra: dict[str, Any]) -> None:
    gid = client.post("/v1/graphs", json=GRAPH).json()["graph_id"]
    for graph in ({"graph_id": gid}, {"graph": GRAPH}):
        body = same(*both(client, path, {**graph, "inputs": {"x": X}, **extra}), 200)
        assert body  # a real answer: the values are checked against JAX in test_api_stateless


def test_gradient_numbers_through_the_fast_path(client: TestClient) -> None:
    r = client.post("/v1/gradient", json={"graph": GRAPH, "inputs": {"x": X},
                                          "target": "z", "sources": ["x"]})
    assert r.status_code == 200
    # d (sum x)^2 / dx = 2 * sum(x) = 20 everywhere
    assert r.json()["gradients"]["x"]["data"] == [[20.0, 20.0], [20.0, 20.0]]


@pytest.mark.parametrize("body, status, says", [
    # the engine's errors: a node at fault, a bad input, an unknown graph id
    ({"graph": {**GRAPH, "nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"]},
                                   {"id": "z", "op": "multiply", "args": ["y", "w"]}]},
      "inputs": {"x": X}, "target": "z"}, 422, "w"),
    ({"graph": GRAPH, "inputs": {"x": [1.0, 2.0]}, "target": "z"}, 422, "shape"),
    ({"graph_id": "g_" + "0" * 32, "inputs": {"x": X}, "target": "z"}, 404, "graph"),
    # the request model's errors: answered by the router's handler in both cases
    ({"graph": GRAPH, "inputs": {"x": X}}, 422, "target"),
    ({"graph": GRAPH, "graph_id": "g_1", "inputs": {"x": X}, "target": "z"}, 422, "exactly one"),
    (b'{"graph": ', 400, "malformed JSON"),
])
def test_fast_and_router_errors_are_the_same(client: TestClient, body: Any, status: int,
                                             says: str) -> None:
    answer = same(*both(client, "/v1/gradient", body), status)
    assert says in answer["detail"], answer


def test_body_over_the_limit_is_413_on_both_paths() -> None:
    app = create_app(Settings(_env_file=None, max_body_bytes=2000))
    big = {"graph": GRAPH, "inputs": {"x": X}, "target": "z", "pad": "x" * 3000}
    with TestClient(app) as client:
        fast, slow = both(client, "/v1/gradient", big)
        assert fast.status_code == slow.status_code == 413
        assert "GRADTAPE_MAX_BODY_BYTES" in fast.json()["detail"]


def test_fast_path_keeps_metrics_request_ids_and_api_keys() -> None:
    app = create_app(Settings(_env_file=None, api_keys="k1"))
    body = {"graph": GRAPH, "inputs": {"x": X}, "target": "z"}
    with TestClient(app) as client:
        r = client.post("/v1/gradient", json=body)
        assert r.status_code == 401  # the key middleware is outside the fast path
        r = client.post("/v1/gradient", json=body, headers={"x-api-key": "k1",
                                                           "x-request-id": "req-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
        metrics = client.get("/metrics").text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("gradtape_http_requests_total{")
                and 'route="/v1/gradient"' in ln and 'status="200"' in ln)
    assert float(line.rsplit(" ", 1)[1]) == 1.0


def test_inline_graph_is_parsed_once(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []
    original = GraphRegistry.parse

    def counting(self: GraphRegistry, graph: Any) -> Any:
        parsed.append(len(graph["nodes"]))
        return original(self, graph)

    monkeypatch.setattr(GraphRegistry, "parse", counting)
    body = {"graph": GRAPH, "inputs": {"x": X}, "target": "z"}
    for _ in range(3):
        assert client.post("/v1/gradient", json=body).status_code == 200
    assert parsed == [2]
    # another graph (one attr differs) is another program
    other = {**GRAPH, "nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"],
                                 "attrs": {"axis": 0}},
                                {"id": "z", "op": "dot", "args": ["y", "y"]}]}
    r = client.post("/v1/gradient", json={**body, "graph": other})
    assert r.status_code == 200, r.text
    # d (y.y) / dx with y = column sums: 2 * y[j] in column j
    assert r.json()["gradients"]["x"]["data"] == [[8.0, 12.0], [8.0, 12.0]]
    assert parsed == [2, 2]
    # an invalid graph is never remembered: it fails the same way every time
    bad = {**body, "graph": {**GRAPH, "nodes": [{"id": "z", "op": "nope", "args": ["x"]}]}}
    for _ in range(2):
        r = client.post("/v1/gradient", json=bad)
        assert r.status_code == 422 and "nope" in r.json()["detail"]
    assert parsed == [2, 2, 1, 1]
