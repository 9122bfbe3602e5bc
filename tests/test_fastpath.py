"""The lean path of the stateless routes and of a training loop's session routes, and the
parse cache of inline graphs.

A POST with `Content-Type: application/json` to one of those routes is answered by
service/fastpath.py; the same body sent as `application/vnd.gradtape+json` (any `+json` type is
accepted) goes through FastAPI's router. Both must give the same status, headers that matter
and body, for answers and for every kind of error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from engine.registry import GraphRegistry
from service.config import Settings
from service.fastpath import FastPath
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


# ----- a training loop's session routes -----

FORWARD = [{"id": "p", "op": "matmul", "args": ["X", "W"]},
           {"id": "r", "op": "subtract", "args": ["p", "Y"]},
           {"id": "loss", "op": "sum", "args": ["r"]}]
XS = [[1.0, 2.0], [3.0, -1.0]]
YS = [[0.5], [2.0]]


def _session(client: TestClient) -> str:
    base = f"/v1/sessions/{client.post('/v1/sessions', json={}).json()['session_id']}"
    assert client.put(f"{base}/tensors/W", json={"value": [[0.5], [-1.0]],
                                                  "variable": True}).status_code == 200
    assert client.post(f"{base}/optimizers", json={
        "name": "sgd", "method": "sgd", "learning_rate": 0.1}).status_code == 201
    return base


def _loop(client: TestClient, base: str, media: str) -> list[Any]:
    """One TensorFlow-style step and one `step`, every request sent as `media`."""
    def post(path: str, body: Any) -> Any:
        return client.post(f"{base}{path}", content=orjson.dumps(body),
                           headers={"content-type": media})

    answers = []
    r = post("/tapes", {"persistent": True})
    assert r.status_code == 201, r.text
    tape = r.json()["tape_id"]
    for r in (post("/run", {"inputs": {"X": XS, "Y": YS}, "nodes": FORWARD, "fetch": ["p"]}),
              post(f"/tapes/{tape}/gradient", {"target": "loss", "sources": ["W"]}),
              post(f"/tapes/{tape}/gradient", {"target": "loss", "apply": "sgd"}),
              post("/step", {"nodes": FORWARD, "target": "loss", "optimizer": "sgd",
                             "fetch": ["p"]})):
        assert r.status_code == 200, r.text
        answers.append(r.json())
    r = client.delete(f"{base}/tapes/{tape}")
    assert r.status_code == 204
    answers.append(client.get(f"{base}/tensors/W").json())
    return answers


def test_session_routes_answer_the_same_on_both_paths(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[str] = []
    match = FastPath.match

    def spy(self: FastPath, method: str, path: str) -> Any:
        found = match(self, method, path)
        if found is not None:
            taken.append(f"{method} {found[0].path}")
        return found

    monkeypatch.setattr(FastPath, "match", spy)
    fast = _loop(client, _session(client), "application/json")
    assert taken == ["POST /v1/sessions/{session_id}/tapes",
                     "POST /v1/sessions/{session_id}/run",
                     "POST /v1/sessions/{session_id}/tapes/{tape_id}/gradient",
                     "POST /v1/sessions/{session_id}/tapes/{tape_id}/gradient",
                     "POST /v1/sessions/{session_id}/step",
                     "DELETE /v1/sessions/{session_id}/tapes/{tape_id}"]
    slow = _loop(client, _session(client), ROUTER)
    assert fast == slow
    # and the numbers: p = X W; d sum(XW - Y) / dW = column sums of X
    assert fast[0]["values"]["p"]["data"] == [[-1.5], [2.5]]
    assert fast[1]["gradients"]["W"]["data"] == [[4.0], [1.0]]
    # two SGD updates of 0.1 * that gradient
    np.testing.assert_allclose(fast[4]["data"], [[0.5 - 0.8], [-1.0 - 0.2]], rtol=1e-6)


@pytest.mark.parametrize("path, body, status, says", [
    ("/v1/sessions/s_nope/run", {"nodes": FORWARD}, 404, "s_nope"),
    ("{base}/tapes/t_nope/gradient", {"target": "loss"}, 404, "t_nope"),
    ("{base}/run", {"nodes": [{"id": "q", "op": "matmul", "args": ["X", "V"]}]}, 422,
     "undefined name 'V'"),
    ("{base}/run", {"nodes": [{"id": "q", "op": "nope", "args": ["X"]}]}, 422, "nope"),
    ("{base}/step", {"nodes": FORWARD, "target": "loss", "optimizer": "adam"}, 422, "adam"),
    ("{base}/step", {"nodes": FORWARD, "target": "loss"}, 422, "optimizer"),
    ("{base}/tapes", {"persistent": "yes"}, 422, "persistent"),
])
def test_session_route_errors_are_the_same_on_both_paths(
        client: TestClient, path: str, body: Any, status: int, says: str) -> None:
    base = _session(client)
    assert client.put(f"{base}/tensors/X", json={"value": XS}).status_code == 200
    answer = same(*both(client, path.format(base=base), body), status)
    assert says in str(answer), answer


def test_session_routes_keep_idempotency_keys(client: TestClient) -> None:
    base = _session(client)
    body = {"inputs": {"X": XS, "Y": YS}, "nodes": FORWARD, "fetch": []}
    step = {"nodes": FORWARD, "target": "loss", "optimizer": "sgd"}
    assert client.post(f"{base}/run", json=body).status_code == 200
    key = {"idempotency-key": "k-1"}
    first = client.post(f"{base}/step", json=step, headers=key)
    again = client.post(f"{base}/step", json=step, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() == {"values": {}, "step": 1}
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post(f"{base}/step", json={**step, "fetch": ["p"]}, headers=key)
    assert other.status_code == 422 and "different request" in other.text
    bad = client.post(f"{base}/step", json=step, headers={"idempotency-key": "a\tb"})
    assert bad.status_code == 422 and "printable ASCII" in bad.text
    # a deleted tape's key answers the deletion again, not a 404
    tape = client.post(f"{base}/tapes", json={}).json()["tape_id"]
    for _ in range(2):
        r = client.delete(f"{base}/tapes/{tape}", headers={"idempotency-key": "k-2"})
        assert r.status_code == 204
    assert client.delete(f"{base}/tapes/{tape}").status_code == 404


@pytest.mark.parametrize("status", [100, 200, 201, 204, 304, 404, 422, 500])
@pytest.mark.parametrize("headers", [None, {"Retry-After": "1"}])
def test_json_answers_have_starlettes_headers(status: int, headers: Any) -> None:
    """FastJSONResponse writes the headers of a plain JSON answer itself; they are the ones
    Starlette's JSONResponse gives, for every status and with extra headers."""
    from starlette.responses import JSONResponse

    from service.responses import FastJSONResponse, ProblemResponse

    content = {"a": [1, 2], "b": "é"}
    ours = FastJSONResponse(content, status_code=status, headers=headers)
    theirs = JSONResponse(content, status_code=status, headers=headers)
    assert ours.raw_headers == theirs.raw_headers
    problem = ProblemResponse(content, status_code=status, headers=headers)
    assert dict(problem.raw_headers)[b"content-type"] == b"application/problem+json"
