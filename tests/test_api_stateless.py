"""The stateless HTTP API, end to end through TestClient, checked against the API contract (docs/API.md).

Covers the tutorial numbers on the stateless routes, registered graphs, the tensor wire
formats, every class of bad input (each an RFC 9457 problem naming the field or node at
fault, never a 5xx), and the service routes (health, info, ops, metrics, docs, OpenAPI).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.main import create_app

# --------------------------------------------------------------------------- helpers

TUTORIAL: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [2, 2]}},
    "nodes": [
        {"id": "y", "op": "reduce_sum", "args": ["x"]},
        {"id": "z", "op": "multiply", "args": ["y", "y"]},
    ],
    "outputs": ["z"],
}
ONES = [[1, 1], [1, 1]]
X = {"x": ONES}
EIGHTS = {"dtype": "float32", "shape": [2, 2], "data": [[8.0, 8.0], [8.0, 8.0]]}
TWOS = {"dtype": "float32", "shape": [2, 2], "data": [[2.0, 2.0], [2.0, 2.0]]}
HESS_XX = {"dtype": "float32", "shape": [2, 2, 2, 2],
           "data": [[[[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]]],
                    [[[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]]]]}


def f32(data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    """A response tensor of float32; a scalar when `shape` is left out."""
    return {"dtype": "float32", "shape": shape or [], "data": data}


def graph(*nodes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"nodes": list(nodes), **extra}


def node(id_: str, op: str, *args: Any, **attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "op": op, "args": list(args)}
    if attrs:
        out["attrs"] = attrs
    return out


SQUARE = graph(node("y", "multiply", "x", "x"))


def tut(**extra: Any) -> dict[str, Any]:
    """A request on the tutorial graph with x = ones."""
    return {"graph": copy.deepcopy(TUTORIAL), "inputs": copy.deepcopy(X), **extra}


def ok(r: Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text[:1000]
    assert r.headers["content-type"].startswith("application/json"), r.headers
    return r.json()


def assert_problem(r: Response, status: int, *, loc: list[Any] | None = None,
                   node: str | None = None, says: tuple[str, ...] = ()) -> dict[str, Any]:
    """An RFC 9457 problem with this status; `loc` must be one of errors[].loc, `node` the
    node at fault, and every `says` fragment must appear in `detail` (case-insensitive)."""
    assert r.status_code == status, r.text[:1000]
    assert r.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    body = r.json()
    for key in ("type", "title", "status", "detail"):
        assert key in body, body
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if loc is not None:
        locs = [e["loc"] for e in body.get("errors", [])]
        assert loc in locs, f"expected loc {loc} in {locs}: {body}"
        for e in body["errors"]:
            assert isinstance(e["msg"], str) and e["msg"]
    if node is not None:
        assert body.get("node") == node, body
        assert repr(node) in body["detail"] or node in body["detail"], body
    for fragment in says:
        assert fragment.lower() in body["detail"].lower(), f"{fragment!r} not in {body}"
    return body


def b64_of(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def from_b64(t: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(t["dtype"]).newbyteorder("<") if t["dtype"] != "bool" else np.bool_
    return np.frombuffer(base64.b64decode(t["b64"]), dtype=dtype).reshape(t["shape"])


@pytest.fixture
def make_client() -> Iterator[Any]:
    """Builds clients on custom settings; each is closed (lifespan ended) after the test."""
    opened: list[TestClient] = []

    def make(raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
        c = TestClient(create_app(Settings(_env_file=None, **overrides)),
                       raise_server_exceptions=raise_server_exceptions)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


# --------------------------------------------------------------------------- 1. tutorial


def test_tutorial_gradient_wrt_input(client: TestClient) -> None:
    body = ok(client.post("/v1/gradient", json=tut(target="z", sources=["x"])))
    assert body == {"value": f32(16.0), "gradients": {"x": EIGHTS}}


def test_tutorial_gradient_wrt_intermediate(client: TestClient) -> None:
    body = ok(client.post("/v1/gradient", json=tut(target="z", sources=["y"])))
    assert body == {"value": f32(16.0), "gradients": {"y": f32(8.0)}}


def test_gradient_default_sources_are_the_floating_inputs(client: TestClient) -> None:
    body = ok(client.post("/v1/gradient", json=tut(target="z")))
    assert body == {"value": f32(16.0), "gradients": {"x": EIGHTS}}


def test_tutorial_hvp(client: TestClient) -> None:
    body = ok(client.post("/v1/hvp", json=tut(target="z", sources=["x"],
                                              vectors={"x": ONES})))
    assert body == {"value": f32(16.0), "gradients": {"x": EIGHTS}, "hvp": {"x": EIGHTS}}


def test_hvp_with_a_non_uniform_vector(client: TestClient) -> None:
    # H = 2 everywhere, so H v = 2 * sum(v) in every entry
    body = ok(client.post("/v1/hvp", json=tut(target="z", vectors={"x": [[1, 2], [3, 4]]})))
    assert body["hvp"] == {"x": f32([[20.0, 20.0], [20.0, 20.0]], [2, 2])}


@pytest.mark.parametrize("include", [["hvp"], ["value"], ["gradients", "hvp"],
                                     ["hvp", "value", "hvp"]])
def test_hvp_answers_only_the_parts_asked(client: TestClient, include: list[str]) -> None:
    full = {"value": f32(16.0), "gradients": {"x": EIGHTS}, "hvp": {"x": EIGHTS}}
    body = ok(client.post("/v1/hvp", json=tut(target="z", sources=["x"], vectors={"x": ONES},
                                              include=include)))
    assert body == {part: full[part] for part in include}


def test_hvp_include_must_name_parts(client: TestClient) -> None:
    for include in ([], ["hessian"]):
        r = client.post("/v1/hvp", json=tut(target="z", vectors={"x": ONES}, include=include))
        assert r.status_code == 422 and r.json()["errors"][0]["loc"][:2] == ["body", "include"]


def test_tutorial_hessian_blocks(client: TestClient) -> None:
    body = ok(client.post("/v1/hessian", json=tut(target="z", sources=["x", "y"])))
    assert body == {
        "value": f32(16.0),
        "gradients": {"x": EIGHTS, "y": f32(8.0)},
        "hessian": {"x": {"x": HESS_XX, "y": TWOS}, "y": {"x": TWOS, "y": f32(2.0)}},
    }


def test_tutorial_jacobian(client: TestClient) -> None:
    body = ok(client.post("/v1/jacobian", json=tut(target="z", sources=["x"])))
    assert body == {"value": f32(16.0), "jacobian": {"x": EIGHTS}}
    body = ok(client.post("/v1/jacobian", json=tut(target="y", sources=["x"])))
    assert body == {"value": f32(4.0), "jacobian": {"x": f32(ONES, [2, 2])}}


def test_jacobian_shape_is_target_shape_plus_source_shape(client: TestClient) -> None:
    body = ok(client.post("/v1/jacobian", json={
        "graph": SQUARE, "inputs": {"x": [1.0, 2.0, 3.0]}, "target": "y"}))
    assert body == {"value": f32([1.0, 4.0, 9.0], [3]),
                    "jacobian": {"x": f32([[2.0, 0, 0], [0, 4.0, 0], [0, 0, 6.0]], [3, 3])}}


def test_tutorial_evaluate_intermediates(client: TestClient) -> None:
    body = ok(client.post("/v1/evaluate", json=tut(outputs=["y", "z"])))
    assert body == {"values": {"y": f32(4.0), "z": f32(16.0)}}
    body = ok(client.post("/v1/evaluate", json=tut()))
    assert body == {"values": {"z": f32(16.0)}}, "outputs default to the graph's outputs"


def test_tutorial_jvp(client: TestClient) -> None:
    body = ok(client.post("/v1/jvp", json=tut(tangents={"x": ONES}, outputs=["y", "z"])))
    # dy = sum(t) = 4, dz = 2 y dy = 32
    assert body == {"values": {"y": f32(4.0), "z": f32(16.0)},
                    "tangents": {"y": f32(4.0), "z": f32(32.0)}}


def test_gradient_of_a_list_of_targets_is_of_their_total(client: TestClient) -> None:
    body = ok(client.post("/v1/gradient", json=tut(target=["y", "z"], sources=["x"])))
    assert body == {"value": {"y": f32(4.0), "z": f32(16.0)},
                    "gradients": {"x": f32([[9.0, 9.0], [9.0, 9.0]], [2, 2])}}
    body = ok(client.post("/v1/gradient", json=tut(
        target=["y", "z"], output_gradients={"y": 2.0, "z": 1.0})))
    assert body["gradients"] == {"x": f32([[10.0, 10.0], [10.0, 10.0]], [2, 2])}


def test_non_scalar_target_gets_gradient_of_its_sum_or_a_vjp(client: TestClient) -> None:
    req = {"graph": SQUARE, "inputs": {"x": [1.0, 2.0]}, "target": "y"}
    body = ok(client.post("/v1/gradient", json=req))
    assert body == {"value": f32([1.0, 4.0], [2]), "gradients": {"x": f32([2.0, 4.0], [2])}}
    body = ok(client.post("/v1/gradient", json={**req, "output_gradients": [1.0, 10.0]}))
    assert body["gradients"] == {"x": f32([2.0, 40.0], [2])}


def test_unconnected_gradients_none_and_zero(client: TestClient) -> None:
    req = {"graph": graph(node("y", "sin", "x"), inputs={"x": None, "w": None}),
           "inputs": {"x": 0.0, "w": [1.0, 2.0]}, "target": "y", "sources": ["x", "w"]}
    body = ok(client.post("/v1/gradient", json=req))
    assert body["gradients"] == {"x": f32(1.0), "w": None}
    body = ok(client.post("/v1/gradient", json={**req, "unconnected_gradients": "zero"}))
    assert body["gradients"] == {"x": f32(1.0), "w": f32([0.0, 0.0], [2])}


# --------------------------------------------------------------------------- 2. graphs


def test_register_graph_201_then_200_with_the_same_id(client: TestClient) -> None:
    first = ok(client.post("/v1/graphs", json=TUTORIAL), 201)
    assert set(first) >= {"graph_id", "inputs", "outputs", "num_nodes"}
    assert isinstance(first["graph_id"], str) and first["graph_id"]
    assert first["inputs"] == ["x"]
    assert first["outputs"] == ["z"]
    assert first["num_nodes"] == 2
    again = ok(client.post("/v1/graphs", json=TUTORIAL), 200)
    assert again == first


def test_graph_id_ignores_aliases_and_key_order(client: TestClient) -> None:
    gid = ok(client.post("/v1/graphs", json=TUTORIAL), 201)["graph_id"]
    rewritten = {
        "outputs": ["z"],
        "nodes": [
            {"args": ["x"], "op": "sum", "id": "y"},
            {"op": "math.multiply", "args": ["y", "y"], "id": "z"},
        ],
        "inputs": {"x": {"shape": [2, 2], "dtype": "float32"}},
    }
    assert ok(client.post("/v1/graphs", json=rewritten), 200)["graph_id"] == gid
    # attrs in another order, op written as the TF alias
    a = graph(node("s", "sum", "x", axis=0, keepdims=True))
    b = graph({"attrs": {"keepdims": True, "axis": 0}, "args": ["x"], "op": "reduce_sum",
               "id": "s"})
    ida = ok(client.post("/v1/graphs", json=a), 201)["graph_id"]
    assert ok(client.post("/v1/graphs", json=b), 200)["graph_id"] == ida
    assert ida != gid


def test_different_graphs_get_different_ids(client: TestClient) -> None:
    gid = ok(client.post("/v1/graphs", json=TUTORIAL), 201)["graph_id"]
    other = copy.deepcopy(TUTORIAL)
    other["nodes"][1]["op"] = "add"
    assert ok(client.post("/v1/graphs", json=other), 201)["graph_id"] != gid


def test_get_registered_graph(client: TestClient) -> None:
    created = ok(client.post("/v1/graphs", json=TUTORIAL), 201)
    body = ok(client.get(f"/v1/graphs/{created['graph_id']}"))
    assert {k: body[k] for k in created} == created
    assert body["graph"] == TUTORIAL


def test_differentiate_a_registered_graph(client: TestClient) -> None:
    gid = ok(client.post("/v1/graphs", json=TUTORIAL), 201)["graph_id"]
    for _ in range(2):  # the second call goes through the compiled path
        body = ok(client.post("/v1/gradient", json={"graph_id": gid, "inputs": X,
                                                    "target": "z", "sources": ["x"]}))
        assert body == {"value": f32(16.0), "gradients": {"x": EIGHTS}}
    body = ok(client.post("/v1/hvp", json={"graph_id": gid, "inputs": X, "target": "z",
                                           "vectors": {"x": ONES}}))
    assert body["hvp"] == {"x": EIGHTS}
    body = ok(client.post("/v1/evaluate", json={"graph_id": gid, "inputs": X,
                                                "outputs": ["y"]}))
    assert body == {"values": {"y": f32(4.0)}}


def test_unknown_graph_id_is_404(client: TestClient) -> None:
    r = client.post("/v1/gradient", json={"graph_id": "g_0123456789abcdef", "inputs": X,
                                          "target": "z"})
    assert_problem(r, 404, loc=["body", "graph_id"], says=("g_0123456789abcdef",))
    r = client.get("/v1/graphs/g_0123456789abcdef")
    assert_problem(r, 404, says=("g_0123456789abcdef",))


def test_unknown_graph_id_on_get_blames_the_path_not_the_body(client: TestClient) -> None:
    # Regression (fixed in f5b0d74): GET /v1/graphs/g_nope used to answer
    # errors[].loc == ["body", "graph_id"] though the id is a path parameter.
    r = client.get("/v1/graphs/g_nope")
    body = assert_problem(r, 404, says=("g_nope",))
    for err in body.get("errors", []):
        assert err["loc"] == ["path", "graph_id"], body


def test_invalid_graph_is_rejected_at_registration(client: TestClient) -> None:
    r = client.post("/v1/graphs", json=graph(node("y", "summ", "x")))
    assert_problem(r, 422, loc=["body", "nodes", 0, "op"], node="y", says=("sum",))


# --------------------------------------------------------------------------- 3. wire formats


def test_bare_numbers_are_float32_and_scalars_have_empty_shape(client: TestClient) -> None:
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "multiply", "a", 2.0)), "inputs": {"a": 3}}))
    assert body == {"values": {"y": {"dtype": "float32", "shape": [], "data": 6.0}}}
    assert isinstance(body["values"]["y"]["data"], float)


def test_float64_object_gives_float64_results(client: TestClient) -> None:
    req = {"graph": graph(node("y", "sum", "x"), node("z", "multiply", "y", "y")),
           "inputs": {"x": {"dtype": "float64", "shape": [2, 2], "data": [1, 1, 1, 1]}},
           "target": "z"}
    body = ok(client.post("/v1/gradient", json=req))
    assert body == {"value": {"dtype": "float64", "shape": [], "data": 16.0},
                    "gradients": {"x": {"dtype": "float64", "shape": [2, 2],
                                        "data": [[8.0, 8.0], [8.0, 8.0]]}}}
    # float64 precision survives: sin(1) to 16 digits
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "sin", "x"), inputs={"x": {"dtype": "float64"}}),
        "inputs": {"x": [1, 2]}}))
    assert body["values"]["y"]["dtype"] == "float64"
    assert body["values"]["y"]["data"] == [float(np.sin(1.0)), float(np.sin(2.0))]


def test_flat_data_with_shape_is_row_major(client: TestClient) -> None:
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "multiply", "x", 1.0)),
        "inputs": {"x": {"dtype": "float32", "shape": [2, 2], "data": [1, 2, 3, 4]}}}))
    assert body["values"]["y"] == f32([[1.0, 2.0], [3.0, 4.0]], [2, 2])


@pytest.mark.parametrize("array", [
    np.array([[1.5, -2.25], [3.0, 0.1]], dtype="<f4"),
    np.array([[1.5, -(2.0 ** -30)], [np.pi, 1e300]], dtype="<f8"),
    np.array([1, -2, 2**31 - 1], dtype="<i4"),
    np.array([2**40, -1], dtype="<i8"),
    np.array([True, False, True]),
], ids=["float32", "float64", "int32", "int64", "bool"])
def test_b64_round_trips_exactly(client: TestClient, array: np.ndarray) -> None:
    dtype = "bool" if array.dtype == np.bool_ else array.dtype.name
    sent = {"dtype": dtype, "shape": list(array.shape), "b64": b64_of(array)}
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "stop_gradient", "x")), "inputs": {"x": sent},
        "outputs": ["x", "y"], "encoding": "base64"}))
    for name in ("x", "y"):
        out = body["values"][name]
        assert set(out) == {"dtype", "shape", "b64"}, out
        assert out["dtype"] == dtype and out["shape"] == list(array.shape)
        back = from_b64(out)
        assert back.tobytes() == array.tobytes()  # bit for bit


def test_b64_output_of_a_computation(client: TestClient) -> None:
    body = ok(client.post("/v1/gradient", json=tut(target="z", encoding="base64")))
    assert from_b64(body["value"]).tolist() == 16.0 and body["value"]["shape"] == []
    grad = from_b64(body["gradients"]["x"])
    assert grad.dtype == np.float32 and grad.tolist() == [[8.0, 8.0], [8.0, 8.0]]


def test_non_finite_values_out(client: TestClient) -> None:
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "log", "x")), "inputs": {"x": [0.0, 1.0, -1.0]}}))
    assert body == {"values": {"y": f32(["-Infinity", 0.0, "NaN"], [3])}}
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "log", "x")), "inputs": {"x": 0.0}}))
    assert body == {"values": {"y": f32("-Infinity")}}
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "log", "x")), "inputs": {"x": [0.0, -1.0]},
        "encoding": "base64"}))
    out = from_b64(body["values"]["y"])
    assert out[0] == -np.inf and np.isnan(out[1])


def test_non_finite_values_in(client: TestClient) -> None:
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "multiply", "x", 1.0)),
        "inputs": {"x": ["NaN", "Infinity", "-Infinity", 1]}}))
    assert body == {"values": {"y": f32(["NaN", "Infinity", "-Infinity", 1.0], [4])}}
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "add", "x", 1.0)),
        "inputs": {"x": {"dtype": "float64", "shape": [3], "data": ["NaN", "Infinity", 2]}},
        "outputs": ["x", "y"]}))
    assert body["values"]["x"] == {"dtype": "float64", "shape": [3],
                                   "data": ["NaN", "Infinity", 2.0]}
    assert body["values"]["y"] == {"dtype": "float64", "shape": [3],
                                   "data": ["NaN", "Infinity", 3.0]}


def test_int32_and_bool_inputs(client: TestClient) -> None:
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "multiply", "x", 2)),
        "inputs": {"x": {"dtype": "int32", "shape": [3], "data": [1, 2, 3]}}}))
    assert body == {"values": {"y": {"dtype": "int32", "shape": [3], "data": [2, 4, 6]}}}
    body = ok(client.post("/v1/evaluate", json={
        "graph": graph(node("y", "logical_not", "m"), node("w", "where", "m", "x", 0.0)),
        "inputs": {"m": [True, False], "x": [1.0, 2.0]}, "outputs": ["y", "w"]}))
    assert body == {"values": {"y": {"dtype": "bool", "shape": [2], "data": [False, True]},
                               "w": f32([1.0, 0.0], [2])}}


def test_integer_source_gets_null_gradient(client: TestClient) -> None:
    req = {"graph": graph(node("y", "multiply", "x", "n"), node("z", "sum", "y")),
           "inputs": {"x": [1.0, 2.0], "n": {"dtype": "int32", "data": [3, 4]}},
           "target": "z"}
    body = ok(client.post("/v1/gradient", json={**req, "sources": ["x", "n"]}))
    assert body == {"value": f32(11.0), "gradients": {"x": f32([3.0, 4.0], [2]), "n": None}}
    body = ok(client.post("/v1/gradient", json=req))
    assert body["gradients"] == {"x": f32([3.0, 4.0], [2])}, "default: floating inputs only"


# --------------------------------------------------------------------------- 4. bad input


def test_malformed_json(client: TestClient) -> None:
    r = client.post("/v1/gradient", content=b'{"graph": ',
                    headers={"content-type": "application/json"})
    body = assert_problem(r, 400, says=("malformed JSON",))
    assert body["type"] == "urn:gradtape:problem:malformed-json"
    assert body["errors"][0]["loc"][0] == "body"


BAD_INPUTS: list[tuple[str, str, dict[str, Any], int, list[Any] | None, str | None,
                       tuple[str, ...]]] = [
    # (id, route, body, status, loc, node, fragments of detail)
    ("missing-target", "/v1/gradient", tut(), 422, ["body", "target"], None, ("target",)),
    ("sources-not-a-list", "/v1/gradient", tut(target="z", sources="x"), 422,
     ["body", "sources"], None, ("sources",)),
    ("graph-and-graph_id", "/v1/gradient", tut(target="z", graph_id="g_x"), 422,
     ["body"], None, ("graph", "graph_id")),
    ("neither-graph-nor-graph_id", "/v1/gradient", {"inputs": X, "target": "z"}, 422,
     ["body"], None, ("graph", "graph_id")),
    ("unknown-field", "/v1/gradient", tut(target="z", tagret="z"), 422,
     ["body", "tagret"], None, ("tagret",)),
    ("bad-encoding", "/v1/gradient", tut(target="z", encoding="hex"), 422,
     ["body", "encoding"], None, ("encoding",)),
    ("bad-unconnected", "/v1/gradient", tut(target="z", unconnected_gradients="zeros"), 422,
     ["body", "unconnected_gradients"], None, ("unconnected_gradients",)),
    ("empty-nodes", "/v1/evaluate", {"graph": {"nodes": []}}, 422,
     ["body", "graph", "nodes"], None, ("nodes",)),
    ("unknown-op", "/v1/evaluate", {"graph": graph(node("y", "reduce_summ", "x")),
                                    "inputs": X}, 422,
     ["body", "graph", "nodes", 0, "op"], "y", ("reduce_summ", "did you mean", "reduce_sum")),
    ("wrong-arity", "/v1/evaluate", {"graph": graph(node("y", "multiply", "x")),
                                     "inputs": X}, 422,
     ["body", "graph", "nodes", 0, "args"], "y", ("multiply", "2", "1")),
    ("unknown-attr", "/v1/evaluate", {"graph": graph(node("y", "sum", "x", axes=0)),
                                      "inputs": X}, 422,
     ["body", "graph", "nodes", 0, "attrs", "axes"], "y", ("axes", "axis")),
    ("bad-attr-value", "/v1/evaluate", {"graph": graph(node("y", "sum", "x", axis="a")),
                                        "inputs": X}, 422,
     ["body", "graph", "nodes", 0, "attrs", "axis"], "y", ("axis", "integer")),
    ("undefined-name", "/v1/evaluate", {
        "graph": graph(node("y", "multiply", "x", "w"), inputs={"x": None}), "inputs": X}, 422,
     ["body", "graph", "nodes", 0, "args", 1], "y", ("'w'", "undefined")),
    ("uses-a-later-node", "/v1/evaluate", {
        "graph": graph(node("y", "multiply", "x", "z"), node("z", "sum", "x"),
                       inputs={"x": None}), "inputs": X}, 422,
     ["body", "graph", "nodes", 0, "args", 1], "y", ("'z'", "before")),
    ("duplicate-node-id", "/v1/evaluate", {
        "graph": graph(node("y", "sum", "x"), node("y", "sin", "x")), "inputs": X}, 422,
     ["body", "graph", "nodes", 1, "id"], "y", ("'y'", "unique")),
    ("bad-graph-output", "/v1/evaluate", {
        "graph": graph(node("y", "sin", "x"), outputs=["q"]), "inputs": {"x": 1.0}}, 422,
     ["body", "graph", "outputs", 0], None, ("'q'",)),
    ("ragged-array", "/v1/evaluate", {"graph": TUTORIAL, "inputs": {"x": [[1, 1], [1]]}}, 422,
     ["body", "inputs", "x"], None, ("ragged",)),
    ("ragged-constant", "/v1/evaluate", {
        "graph": graph(node("y", "add", "x", [[1], [1, 2]])), "inputs": {"x": 1.0}}, 422,
     ["body", "graph", "nodes", 0, "args", 1], None, ("ragged",)),
    ("bad-dtype", "/v1/evaluate", {"graph": TUTORIAL, "inputs": {"x": {
        "dtype": "float16", "shape": [2, 2], "data": [1, 1, 1, 1]}}}, 422,
     ["body", "inputs", "x", "dtype"], None, ("float16", "float32")),
    ("bad-declared-dtype", "/v1/evaluate", {
        "graph": graph(node("y", "sin", "x"), inputs={"x": {"dtype": "float16"}}),
        "inputs": {"x": 1.0}}, 422,
     ["body", "graph", "inputs", "x", "dtype"], None, ("float32",)),
    ("dtype-not-as-declared", "/v1/evaluate", {"graph": TUTORIAL, "inputs": {"x": {
        "dtype": "float64", "shape": [2, 2], "data": [1, 1, 1, 1]}}}, 422,
     ["body", "inputs", "x"], None, ("float64", "float32")),
    ("shape-not-as-declared", "/v1/evaluate", {"graph": TUTORIAL,
                                               "inputs": {"x": [1.0, 2.0, 3.0]}}, 422,
     ["body", "inputs", "x"], None, ("[2, 2]", "[3]")),
    ("b64-wrong-length", "/v1/evaluate", {"graph": TUTORIAL, "inputs": {"x": {
        "dtype": "float32", "shape": [2, 2], "b64": b64_of(np.zeros(2, "<f4"))}}}, 422,
     ["body", "inputs", "x", "b64"], None, ("8 bytes", "16")),
    ("b64-not-base64", "/v1/evaluate", {"graph": TUTORIAL, "inputs": {"x": {
        "dtype": "float32", "shape": [2, 2], "b64": "!!!!"}}}, 422,
     ["body", "inputs", "x", "b64"], None, ("base64",)),
    ("b64-without-shape", "/v1/evaluate", {"graph": SQUARE, "inputs": {"x": {
        "dtype": "float32", "b64": "AAAAAA=="}}}, 422,
     ["body", "inputs", "x", "shape"], None, ("shape",)),
    ("data-length-vs-shape", "/v1/evaluate", {"graph": TUTORIAL, "inputs": {"x": {
        "dtype": "float32", "shape": [2, 2], "data": [1, 1, 1]}}}, 422,
     ["body", "inputs", "x", "shape"], None, ("[2, 2]", "3")),
    ("negative-shape", "/v1/evaluate", {"graph": SQUARE, "inputs": {"x": {
        "shape": [-1], "data": [1]}}}, 422,
     ["body", "inputs", "x", "shape"], None, ("shape",)),
    ("bad-string-in-data", "/v1/evaluate", {"graph": SQUARE, "inputs": {"x": [1, "two"]}},
     422, ["body", "inputs", "x"], None, ("'two'",)),
    ("null-input", "/v1/evaluate", {"graph": SQUARE, "inputs": {"x": None}}, 422,
     ["body", "inputs", "x"], None, ()),
    ("nan-in-int32", "/v1/evaluate", {"graph": SQUARE, "inputs": {"x": {
        "dtype": "int32", "data": ["NaN"]}}}, 422,
     ["body", "inputs", "x", "data"], None, ("int32",)),
    ("shape-mismatch-between-ops", "/v1/evaluate", {
        "graph": graph(node("p", "sin", "a"), node("m", "matmul", "p", "b")),
        "inputs": {"a": [[1.0, 2.0, 3.0]], "b": [[1.0, 2.0]]}}, 422,
     None, "m", ("matmul", "[1, 3]", "[1, 2]")),
    ("broadcast-mismatch", "/v1/evaluate", {
        "graph": graph(node("s", "add", "a", "b")),
        "inputs": {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0]}}, 422, None, "s", ("add",)),
    ("bad-reshape", "/v1/evaluate", {
        "graph": graph(node("r", "reshape", "x", shape=[3])), "inputs": {"x": [1.0, 2.0]}},
     422, None, "r", ("reshape",)),
    ("missing-input-value", "/v1/evaluate", {"graph": TUTORIAL, "inputs": {}}, 422,
     ["body", "inputs", "x"], None, ("'x'",)),
    ("unknown-input-name", "/v1/evaluate", tut(inputs={"x": ONES, "w": 1.0}), 422,
     ["body", "inputs", "w"], None, ("'w'",)),
    ("unknown-output", "/v1/evaluate", tut(outputs=["q"]), 422,
     ["body", "outputs", 0], None, ("'q'",)),
    ("unknown-source", "/v1/gradient", tut(target="z", sources=["x", "q"]), 422,
     ["body", "sources", 1], None, ("'q'",)),
    ("duplicate-source", "/v1/gradient", tut(target="z", sources=["x", "x"]), 422,
     ["body", "sources", 1], None, ("'x'",)),
    ("unknown-target", "/v1/gradient", tut(target="q"), 422, ["body", "target"], None,
     ("'q'",)),
    ("unknown-target-in-list", "/v1/gradient", tut(target=["z", "q"]), 422,
     ["body", "target", 1], None, ("'q'",)),
    ("empty-target-list", "/v1/gradient", tut(target=[]), 422, ["body", "target"], None,
     ("target",)),
    ("integer-target", "/v1/gradient", {
        "graph": graph(node("n", "argmax", "x")), "inputs": {"x": [1.0, 2.0]},
        "target": "n", "sources": ["x"]}, 422, ["body", "target"], None,
     ("'n'", "int", "float")),
    ("hessian-non-scalar", "/v1/hessian", {"graph": SQUARE, "inputs": {"x": [1.0, 2.0]},
                                           "target": "y"}, 422, ["body", "target"], None,
     ("scalar", "[2]", "sum", "jacobian")),
    ("hvp-non-scalar", "/v1/hvp", {"graph": SQUARE, "inputs": {"x": [1.0, 2.0]},
                                   "target": "y", "vectors": {"x": [1.0, 1.0]}}, 422,
     ["body", "target"], None, ("scalar", "sum", "jacobian")),
    ("hvp-missing-vectors", "/v1/hvp", tut(target="z"), 422, ["body", "vectors"], None,
     ("vectors",)),
    ("vectors-missing-a-source", "/v1/hvp", tut(target="z", sources=["x"], vectors={}), 422,
     ["body", "vectors"], None, ("'x'",)),
    ("vector-for-a-non-source", "/v1/hvp", tut(target="z", sources=["x"],
                                               vectors={"x": ONES, "q": 1.0}), 422,
     ["body", "vectors", "q"], None, ("'q'",)),
    ("vector-wrong-shape", "/v1/hvp", tut(target="z", vectors={"x": [1.0]}), 422,
     ["body", "vectors", "x"], None, ("[1]", "[2, 2]")),
    ("output-gradients-wrong-shape", "/v1/gradient", {
        "graph": SQUARE, "inputs": {"x": [1.0, 2.0]}, "target": "y",
        "output_gradients": [1.0, 1.0, 1.0]}, 422,
     ["body", "output_gradients"], None, ("[3]", "[2]")),
    ("output-gradients-unknown-target", "/v1/gradient", tut(
        target=["y", "z"], output_gradients={"q": 1.0}), 422,
     ["body", "output_gradients", "q"], None, ("'q'",)),
    ("tangent-unknown-name", "/v1/jvp", tut(tangents={"q": 1.0}), 422,
     ["body", "tangents", "q"], None, ("'q'",)),
    ("tangent-wrong-shape", "/v1/jvp", tut(tangents={"x": [1.0, 2.0, 3.0]}), 422,
     ["body", "tangents", "x"], None, ("[3]", "[2, 2]")),
    ("tangent-of-an-int-input", "/v1/jvp", {
        "graph": SQUARE, "inputs": {"x": {"dtype": "int32", "data": [1, 2]}},
        "tangents": {"x": [1.0, 2.0]}}, 422, ["body", "tangents", "x"], None, ("int32",)),
    ("graph_id-not-a-string", "/v1/gradient", {"graph_id": 5, "inputs": X, "target": "z"},
     422, ["body", "graph_id"], None, ("graph_id",)),
]


@pytest.mark.parametrize(("route", "body", "status", "loc", "node_id", "says"),
                         [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_4xx(client: TestClient, route: str, body: dict[str, Any],
                                  status: int, loc: list[Any] | None, node_id: str | None,
                                  says: tuple[str, ...]) -> None:
    assert_problem(client.post(route, json=body), status, loc=loc, node=node_id, says=says)


def test_wrong_type_for_target_names_the_field(client: TestClient) -> None:
    # SERVICE BUG (unclear message): {"target": 3} answers
    # detail "body.target.str: Input should be a valid string (and 1 more)" with
    # errors[].loc ["body","target","str"] and ["body","target","list[str]"]: pydantic's
    # union-member names leak into loc, as if `target` had fields `str` and `list[str]`.
    r = client.post("/v1/gradient", json=tut(target=3))
    body = assert_problem(r, 422, loc=["body", "target"], says=("target",))
    for err in body["errors"]:
        assert err["loc"] == ["body", "target"], body
    assert "target.str" not in body["detail"]


def test_bad_input_not_a_json_object(client: TestClient) -> None:
    assert_problem(client.post("/v1/gradient", json=[1, 2]), 422, loc=["body"])
    assert_problem(client.post("/v1/gradient", content=b"",
                               headers={"content-type": "application/json"}), 422,
                   loc=["body"])


@pytest.mark.parametrize("value", [
    {"dtype": "int32", "shape": [1], "data": [2**40]},
    {"dtype": "int64", "shape": [1], "data": [2**70]},
], ids=["int32-overflow", "int64-overflow"])
def test_integer_out_of_range_is_a_422(make_client: Any, value: dict[str, Any]) -> None:
    # Regression (fixed in 000ff2b): used to be a 500 (OverflowError in NumPy).
    r = make_client(raise_server_exceptions=False).post("/v1/evaluate", json={
        "graph": SQUARE, "inputs": {"x": value}})
    assert_problem(r, 422, loc=["body", "inputs", "x", "data"], says=(value["dtype"],))


def test_scalar_nan_into_an_integer_dtype_is_a_422(make_client: Any) -> None:
    # Regression (fixed in 000ff2b): {"dtype": "int32", "data": "NaN"} used to be a 500
    # (ValueError: cannot convert float NaN to integer); the list form ["NaN"] was a 422.
    r = make_client(raise_server_exceptions=False).post("/v1/evaluate", json={
        "graph": SQUARE, "inputs": {"x": {"dtype": "int32", "data": "NaN"}}})
    assert_problem(r, 422, loc=["body", "inputs", "x", "data"], says=("int32",))


def test_too_many_dimensions_is_not_called_ragged(client: TestClient) -> None:
    # SERVICE BUG (wrong message): a 65-deep [[...[1.0]...]] is rectangular, but the answer
    # says "ragged nested array: every row must have the same length". NumPy 2.4 words its
    # error "...would exceed the maximum number of dimension of 64", which the check in
    # engine/tensors.py _from_nested ("maximum supported dimension" / "ndim") misses.
    value: Any = 1.0
    for _ in range(65):
        value = [value]
    r = client.post("/v1/evaluate", json={"graph": SQUARE, "inputs": {"x": value}})
    body = assert_problem(r, 422, loc=["body", "inputs", "x"], says=("dimension",))
    assert "ragged" not in body["detail"]


def test_huge_intermediate_is_not_a_5xx(make_client: Any) -> None:
    # Regression (fixed in 000ff2b/8ff43ea): a 200-byte request whose node broadcasts to
    # 1e15 elements used to answer 500 (XLA RESOURCE_EXHAUSTED, 4 PB).
    r = make_client(raise_server_exceptions=False).post("/v1/evaluate", json={
        "graph": graph(node("big", "broadcast_to", "x", shape=[100000, 100000, 100000])),
        "inputs": {"x": 1.0}})
    assert_problem(r, 413, node="big", says=("elements",))


def test_node_results_obey_max_elements(make_client: Any) -> None:
    # Regression (fixed in 000ff2b/8ff43ea): with GRADTAPE_MAX_ELEMENTS=1000 an input of
    # 1001 elements was a 413, but a node producing 1200 elements from a scalar was a 200.
    c = make_client(max_elements=1000)
    assert_problem(c.post("/v1/evaluate", json={
        "graph": SQUARE, "inputs": {"x": [1.0] * 1001}}), 413,
        loc=["body", "inputs", "x"], says=("1000",))
    r = c.post("/v1/evaluate", json={
        "graph": graph(node("big", "broadcast_to", "x", shape=[40, 30])),
        "inputs": {"x": 1.0}})
    assert_problem(r, 413, node="big", says=("1000",))


def _big_request(n: int) -> dict[str, Any]:
    return {"graph": graph(node("y", "sum", "x")), "inputs": {"x": [1.0] * n}, "target": "y"}


def test_body_over_limit_with_content_length_is_413(make_client: Any) -> None:
    c = make_client(max_body_bytes=2048)
    small = json.dumps(_big_request(100)).encode()
    assert len(small) < 2048
    ok(c.post("/v1/gradient", content=small, headers={"content-type": "application/json"}))
    big = json.dumps(_big_request(600)).encode()
    assert len(big) > 2048
    r = c.post("/v1/gradient", content=big, headers={"content-type": "application/json"})
    assert_problem(r, 413, says=("2048",))


def test_streamed_body_over_limit_is_413(make_client: Any) -> None:
    c = make_client(max_body_bytes=2048)

    def chunks(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 256):
            yield data[i:i + 256]

    small = json.dumps(_big_request(100)).encode()
    r = c.post("/v1/gradient", content=chunks(small),
               headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers  # really chunked
    assert ok(r)["gradients"]["x"]["shape"] == [100]
    big = json.dumps(_big_request(600)).encode()
    r = c.post("/v1/gradient", content=chunks(big),
               headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, says=("2048",))


def test_too_many_nodes(make_client: Any) -> None:
    # API.md: "413 over a size limit". GRADTAPE_MAX_NODES is one, like GRADTAPE_MAX_ELEMENTS
    # (which is a 413). Regression: the service answered 422 before f5b0d74.
    c = make_client(max_nodes=3)
    chain = [node(f"n{i}", "sin", "x" if i == 0 else f"n{i - 1}") for i in range(4)]
    ok(c.post("/v1/evaluate", json={"graph": graph(*chain[:3]), "inputs": {"x": 0.0}}))
    r = c.post("/v1/evaluate", json={"graph": graph(*chain), "inputs": {"x": 0.0}})
    assert_problem(r, 413, loc=["body", "graph", "nodes"], says=("4", "3"))
    r = c.post("/v1/graphs", json=graph(*chain))
    assert_problem(r, 413, loc=["body", "nodes"], says=("4", "3"))


def test_unknown_route_is_404(client: TestClient) -> None:
    assert_problem(client.get("/v1/nope"), 404, says=("/v1/nope",))
    assert_problem(client.post("/v2/gradient", json=tut(target="z")), 404)


def test_wrong_method_is_405_with_allow(client: TestClient) -> None:
    r = client.get("/v1/gradient")
    assert_problem(r, 405, says=("GET", "POST"))
    assert r.headers["allow"] == "POST"
    r = client.delete("/v1/graphs/g_x")
    assert_problem(r, 405)
    assert "GET" in r.headers["allow"]


def test_api_keys(make_client: Any) -> None:
    c = make_client(api_keys="k1, k2")
    req = tut(target="z", sources=["x"])
    body = assert_problem(c.post("/v1/gradient", json=req), 401, says=("missing",))
    assert body["type"] and "bearer" in c.post("/v1/gradient", json=req).headers.get(
        "www-authenticate", "").lower()
    assert_problem(c.post("/v1/gradient", json=req, headers={"X-API-Key": "nope"}), 401,
                   says=("wrong",))
    assert_problem(c.post("/v1/gradient", json=req,
                          headers={"Authorization": "Bearer nope"}), 401, says=("wrong",))
    assert_problem(c.post("/v1/gradient", json=req, headers={"Authorization": "k1"}), 401)
    expected = {"value": f32(16.0), "gradients": {"x": EIGHTS}}
    assert ok(c.post("/v1/gradient", json=req, headers={"X-API-Key": "k1"})) == expected
    assert ok(c.post("/v1/gradient", json=req, headers={"X-API-Key": "k2"})) == expected
    assert ok(c.post("/v1/gradient", json=req,
                     headers={"Authorization": "Bearer k1"})) == expected
    assert_problem(c.get("/v1/info"), 401)
    assert ok(c.get("/v1/info", headers={"X-API-Key": "k1"}))["api_keys_required"] is True
    assert ok(c.get("/v1/health/live")) == {"status": "ok"}
    assert ok(c.get("/v1/health/ready")) == {"status": "ok"}


def test_without_keys_configured_no_key_is_needed(client: TestClient) -> None:
    ok(client.post("/v1/gradient", json=tut(target="z"), headers={"X-API-Key": "anything"}))
    assert ok(client.get("/v1/info"))["api_keys_required"] is False


# --------------------------------------------------------------------------- 5. service routes


def test_health(client: TestClient) -> None:
    assert ok(client.get("/v1/health/live")) == {"status": "ok"}
    assert ok(client.get("/v1/health/ready")) == {"status": "ok"}


def test_info(make_client: Any) -> None:
    c = make_client(max_nodes=77, max_body_bytes=4096)
    body = ok(c.get("/v1/info"))
    assert isinstance(body["version"], str) and re.match(r"\d+\.\d+", body["version"])
    assert body["jax_version"] == jax.__version__
    expected = "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else "cpu"
    assert body["backend"] == expected
    assert body["devices"] and all("platform" in d for d in body["devices"])
    assert body["limits"]["max_nodes"] == 77
    assert body["limits"]["max_body_bytes"] == 4096
    assert "max_elements" in body["limits"]


def test_ops_catalogue(client: TestClient) -> None:
    ops = ok(client.get("/v1/ops"))
    assert isinstance(ops, list) and len(ops) > 20
    names: set[str] = set()
    for op in ops:
        assert {"name", "aliases", "arity", "attrs", "differentiable", "doc"} <= set(op), op
        assert isinstance(op["doc"], str) and op["doc"] and "\n" not in op["doc"]
        assert op["name"] not in names
        names.add(op["name"])
    by_name = {op["name"]: op for op in ops}
    assert "reduce_sum" in by_name["sum"]["aliases"]
    assert "axis" in by_name["sum"]["attrs"]
    assert by_name["multiply"]["arity"] == 2
    assert by_name["tanh"]["differentiable"] is True
    aliases = [a for op in ops for a in op["aliases"]]
    assert len(aliases) == len(set(aliases)) and not names & set(aliases)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _requests(samples: dict[Any, float], method: str, route: str, status: str) -> float:
    key = ("gradtape_http_requests_total",
           tuple(sorted({"method": method, "route": route, "status": status}.items())))
    return samples.get(key, 0.0)


def _cache(samples: dict[Any, float], name: str) -> float:
    for key in (f"gradtape_compile_cache_{name}_total", f"gradtape_compile_cache_{name}"):
        if (key, ()) in samples:
            return samples[(key, ())]
    raise AssertionError(f"no compile-cache counter {name!r} in /metrics")


def test_metrics(client: TestClient) -> None:
    req = tut(target="z", sources=["x"])
    ok(client.post("/v1/gradient", json=req))
    first = client.get("/metrics")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/plain")
    before = _samples(first.text)
    assert _requests(before, "POST", "/v1/gradient", "200") == 1
    assert _cache(before, "misses") >= 1

    ok(client.post("/v1/gradient", json=req))
    client.post("/v1/gradient", json=tut(target="q"))  # a 422
    gid = ok(client.post("/v1/graphs", json=TUTORIAL), 201)["graph_id"]
    ok(client.get(f"/v1/graphs/{gid}"))
    client.get("/v1/graphs/g_nope")
    after = _samples(client.get("/metrics").text)
    assert _requests(after, "POST", "/v1/gradient", "200") == 2
    assert _requests(after, "POST", "/v1/gradient", "422") == 1
    assert _requests(after, "GET", "/v1/graphs/{graph_id}", "200") == 1
    assert _requests(after, "GET", "/v1/graphs/{graph_id}", "404") == 1
    assert not any(gid in str(k) for k in after), "routes are labelled by template"
    assert _cache(after, "hits") == _cache(before, "hits") + 1
    assert _cache(after, "entries") >= 1
    assert _cache(after, "compiles") >= 0


def test_docs_pages_use_only_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        refs = re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"', html)
        assert any(ref.endswith(".js") for ref in refs), refs
        assert not re.search(r"https?://", html), f"{page} loads something from the network"
        for ref in refs:
            assert ref.startswith("/"), ref
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            assert len(asset.content) > 1000, ref
        assert "/openapi.json" in html


def _resolve_refs(node: Any, root: dict[str, Any]) -> int:
    count = 0
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            assert ref.startswith("#/"), ref
            target: Any = root
            for part in ref[2:].split("/"):
                assert part in target, f"dangling $ref {ref}"
                target = target[part]
            count += 1
        for value in node.values():
            count += _resolve_refs(value, root)
    elif isinstance(node, list):
        for value in node:
            count += _resolve_refs(value, root)
    return count


def test_openapi_is_3_1_and_examples_work(client: TestClient) -> None:
    spec = ok(client.get("/openapi.json"))
    assert re.fullmatch(r"3\.1\.\d+", spec["openapi"])
    assert spec["info"]["title"] and spec["info"]["version"]
    assert _resolve_refs(spec, spec) > 0
    for path, item in spec["paths"].items():
        assert path.startswith("/v1/"), path
        for method, op in item.items():
            assert method in {"get", "post", "put", "delete", "patch"}
            assert op["responses"], (path, method)
    schemas = spec["components"]["schemas"]
    expected = {"/v1/evaluate": 200, "/v1/gradient": 200, "/v1/jacobian": 200,
                "/v1/hvp": 200, "/v1/hessian": 200, "/v1/jvp": 200, "/v1/graphs": 201}
    for path, status in expected.items():
        body = spec["paths"][path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        examples = schemas[schema["$ref"].split("/")[-1]].get("examples")
        assert examples, f"{path} has no request example"
        example = examples[0]
        carried = example if path == "/v1/graphs" else example["graph"]
        assert carried == TUTORIAL, path
        r = client.post(path, json=example)
        assert r.status_code == status, (path, r.text[:1000])
    grad_example = schemas["GradientRequest"]["examples"][0]
    assert ok(client.post("/v1/gradient", json=grad_example)) == {
        "value": f32(16.0), "gradients": {"x": EIGHTS}}


def test_default_attrs_written_out_give_the_same_graph_id(client: TestClient) -> None:
    plain = {"nodes": [{"id": "y", "op": "sum", "args": ["x"]}]}
    spelled = {"nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"],
                          "attrs": {"axis": None, "keepdims": False}}]}
    other = {"nodes": [{"id": "y", "op": "sum", "args": ["x"], "attrs": {"keepdims": True}}]}
    ids = [client.post("/v1/graphs", json=g).json()["graph_id"] for g in (plain, spelled, other)]
    assert ids[0] == ids[1] != ids[2]


def test_encoding_none_answers_dtype_and_shape_only(client: TestClient) -> None:
    r = client.post("/v1/gradient", json={"graph": TUTORIAL, "inputs": X, "target": "z",
                                          "sources": ["x", "y"], "encoding": "none"})
    assert r.status_code == 200, r.text
    assert r.json() == {"value": {"dtype": "float32", "shape": []},
                        "gradients": {"x": {"dtype": "float32", "shape": [2, 2]},
                                      "y": {"dtype": "float32", "shape": []}}}


@pytest.mark.parametrize("b64", ["AACAPw==\n", "AACAP w==", "AACAPw=", "AACA*w=="])
def test_b64_is_decoded_strictly(client: TestClient, b64: str) -> None:
    r = client.post("/v1/evaluate", json={
        "graph": graph(node("y", "negative", "x")),
        "inputs": {"x": {"dtype": "float32", "shape": [], "b64": b64}}})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "inputs", "x", "b64"]


def test_hvp_checks_the_vector_of_an_unconnected_source(client: TestClient) -> None:
    g = graph(node("z", "sum", "x"), inputs={"x": {}, "w": {}}, outputs=["z"])
    r = client.post("/v1/hvp", json={"graph": g, "inputs": {"x": [1.0, 2.0], "w": [1.0]},
                                     "target": "z", "sources": ["x", "w"],
                                     "vectors": {"x": [1.0, 1.0], "w": [1.0, 2.0, 3.0]}})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "vectors", "w"]


def test_request_latency_histogram_matches_prometheus_client() -> None:
    """The request counts and latency buckets kept by `Metrics.observe` expose what
    prometheus_client's own Counter and Histogram would, for the same observations (bucket
    edges included: an observation equal to a bound is in that bucket)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from service.metrics import LATENCY_BUCKETS, Metrics

    metrics = Metrics()
    registry = CollectorRegistry()
    counter = Counter("gradtape_http_requests", "HTTP requests", ["method", "route", "status"],
                      registry=registry)
    histogram = Histogram("gradtape_http_request_seconds", "HTTP request latency",
                          ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
    rng = np.random.default_rng(0)
    seconds = [*rng.exponential(0.01, 200), *LATENCY_BUCKETS, 0.0, 100.0]
    for i, s in enumerate(seconds):
        method, route, status = ("POST", "/v1/gradient", 200) if i % 3 else ("GET", "/x", 404)
        metrics.observe(method, route, status, float(s))
        counter.labels(method, route, str(status)).inc()
        histogram.labels(method, route).observe(float(s))

    def families(text: str) -> dict[Any, float]:
        return {k: v for k, v in _samples(text).items()
                if k[0].startswith(("gradtape_http_requests_total", "gradtape_http_request_seconds"))
                and not k[0].endswith("_created")}

    ours = families(generate_latest(metrics.registry).decode())
    theirs = families(generate_latest(registry).decode())
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-12), key
    assert ours[("gradtape_http_requests_total", (("method", "GET"), ("route", "/x"),
                                                 ("status", "404")))] == len(range(0, 217, 3))
