"""Functions, `call` and control flow (`cond`, `fori_loop`, `while_loop`, `scan`).

Each op's values and derivatives (gradient, JVP, Hessian, HVP) are compared in float64 with
JAX's own control flow on the same function (`jax.lax.*` with `jax.grad`, `jax.jvp`,
`jax.hessian`) and with central differences; then graphs over HTTP, every validation error
(a 422 naming the node and the function), the compile budget (control flow has no eager form),
graph ids with and without functions, and a session run whose loop a tape differentiates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from engine.compute import Engine
from engine.errors import InvalidGraph
from engine.graph import canonical_form, graph_id, parse_graph
from engine.program import Function, Program
from engine.sessions import codec
from engine.sessions.state import Record
from service.config import Settings
from service.main import create_app
from service.schemas.examples import TUTORIAL_GRAPH, TUTORIAL_GRAPH_ID

ENGINE = Engine()


def fn(params: list[str], outputs: list[str], *nodes: tuple[Any, ...]) -> dict[str, Any]:
    """A function object: nodes as (id, op, args...) or (id, op, args..., {attrs})."""
    out = []
    for n in nodes:
        attrs = n[-1] if isinstance(n[-1], dict) else None
        body = {"id": n[0], "op": n[1], "args": list(n[2:-1] if attrs else n[2:])}
        if attrs:
            body["attrs"] = attrs
        out.append(body)
    return {"params": params, "nodes": out, "outputs": outputs}


def tensor(x: Any) -> dict[str, Any]:
    x = np.asarray(x)
    return {"dtype": x.dtype.name, "shape": list(x.shape), "data": x.tolist()}


def parse(graph: dict[str, Any]) -> Program:
    return parse_graph(graph, max_nodes=1000, max_elements=10**6)


# ----- the cases: a graph with one control-flow node and JAX's version of it -----

def _step(c: Any) -> Any:
    return jnp.sin(c) + c * 0.7


CASES: dict[str, tuple[dict[str, Any], Callable[[Any], Any]]] = {
    # call: a graph-level function, called by name
    "call": ({"functions": {"f": fn(["a"], ["r"], ("s", "sin", "a"), ("r", "multiply", "s", "a"))},
              "nodes": [{"id": "y", "op": "call", "args": ["x"], "attrs": {"function": "f"}},
                        {"id": "t", "op": "sum", "args": ["y"]}]},
             lambda x: jnp.sum(jnp.sin(x) * x)),
    # cond on a value computed from x: both branches are taken somewhere in x's range
    "cond": ({"nodes": [
        {"id": "m", "op": "sum", "args": ["x"]},
        {"id": "p", "op": "greater", "args": ["m", 0.0]},
        {"id": "y", "op": "cond", "args": ["p", "x"], "attrs": {
            "true": fn(["a"], ["r"], ("r", "sin", "a")),
            "false": fn(["a"], ["r"], ("q", "multiply", "a", "a"), ("r", "exp", "q"))}},
        {"id": "t", "op": "sum", "args": ["y"]}]},
        lambda x: jnp.sum(jax.lax.cond(jnp.sum(x) > 0, jnp.sin, lambda a: jnp.exp(a * a), x))),
    "fori_loop": ({"nodes": [
        {"id": "y", "op": "fori_loop", "args": ["x"], "attrs": {
            "lower": 1, "upper": 4,
            "body": fn(["i", "c"], ["r"], ("f", "cast", "i", {"dtype": "float64"}),
                       ("s", "sin", "c"), ("h", "multiply", "s", "f"), ("r", "add", "h", "c"))}},
        {"id": "t", "op": "sum", "args": ["y"]}]},
        lambda x: jnp.sum(jax.lax.fori_loop(1, 4, lambda i, c: jnp.sin(c) * i + c, x))),
    # stops after 3 of its at most 6 iterations (the counter is part of the carry)
    "while_loop": ({"nodes": [
        {"id": ["y", "k"], "op": "while_loop", "args": ["x", 0.0], "attrs": {
            "max_iterations": 6,
            "cond": fn(["c", "n"], ["go"], ("go", "less", "n", 2.5)),
            "body": fn(["c", "n"], ["r", "n1"], ("s", "sin", "c"), ("h", "multiply", "c", 0.7),
                       ("r", "add", "s", "h"), ("n1", "add", "n", 1.0))}},
        {"id": "t", "op": "sum", "args": ["y"]}]},
        # (JAX's while_loop has no reverse mode: the same three steps as a fori_loop)
        lambda x: jnp.sum(jax.lax.fori_loop(0, 3, lambda i, c: _step(c), x))),
    # the bound stops it: the condition stays true
    "while_loop_bound": ({"nodes": [
        {"id": "y", "op": "while_loop", "args": ["x"], "attrs": {
            "max_iterations": 4,
            "cond": fn(["c"], ["go"], ("m", "sum", "c"), ("go", "less", "m", 1e9)),
            "body": fn(["c"], ["r"], ("s", "sin", "c"), ("h", "multiply", "c", 0.7),
                       ("r", "add", "s", "h"))}},
        {"id": "t", "op": "sum", "args": ["y"]}]},
        lambda x: jnp.sum(jax.lax.fori_loop(0, 4, lambda i, c: _step(c), x))),
    "scan": ({"nodes": [
        {"id": "xs", "op": "reshape", "args": ["x"], "attrs": {"shape": [3, 2]}},
        {"id": ["c", "ys"], "op": "scan", "args": [1.0, "xs"], "attrs": {
            "num_carry": 1,
            "body": fn(["c", "v"], ["r", "y"], ("y", "multiply", "c", "v"), ("s", "sin", "y"),
                       ("q", "sum", "s"), ("r", "add", "c", "q"))}},
        {"id": "u", "op": "sum", "args": ["ys"]},
        {"id": "t", "op": "add", "args": ["u", "c"]}]},
        lambda x: _scan_ref(x, False)),
    "scan_reverse": ({"nodes": [
        {"id": "xs", "op": "reshape", "args": ["x"], "attrs": {"shape": [3, 2]}},
        {"id": ["c", "ys"], "op": "scan", "args": [1.0, "xs"], "attrs": {
            "num_carry": 1, "reverse": True,
            "body": fn(["c", "v"], ["r", "y"], ("y", "multiply", "c", "v"), ("s", "sin", "y"),
                       ("q", "sum", "s"), ("r", "add", "c", "q"))}},
        {"id": "u", "op": "sum", "args": ["ys"]},
        {"id": "t", "op": "add", "args": ["u", "c"]}]},
        lambda x: _scan_ref(x, True)),
}


def _scan_ref(x: Any, reverse: bool) -> Any:
    def body(c: Any, v: Any) -> Any:
        y = c * v
        return c + jnp.sum(jnp.sin(y)), y

    c, ys = jax.lax.scan(body, jnp.float64(1.0), x.reshape(3, 2), reverse=reverse)
    return jnp.sum(ys) + c


X0 = np.array([0.3, -0.8, 0.5, 1.1, -0.4, 0.9])
POINTS = [X0, -X0]  # -X0: the other branch of cond


def central(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def value(graph: dict[str, Any], x: np.ndarray) -> float:
    bound = ENGINE.bind(parse(graph), {"x": tensor(x)})
    return float(ENGINE.evaluate(bound, ["t"])["t"])


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("point", [0, 1])
def test_values_and_derivatives_match_jax(name: str, point: int) -> None:
    graph, ref = CASES[name]
    x = POINTS[point]
    bound = ENGINE.bind(parse(graph), {"x": tensor(x)})
    xj = jnp.asarray(x)
    # reverse mode: value and gradient against jax.grad and central differences
    got = ENGINE.gradient(bound, "t", ["x"])
    np.testing.assert_allclose(got["value"], ref(xj), rtol=1e-12)
    assert np.asarray(got["gradients"]["x"]).dtype == np.float64
    np.testing.assert_allclose(got["gradients"]["x"], jax.grad(ref)(xj), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["gradients"]["x"], central(lambda v: value(graph, v), x),
                               rtol=1e-6, atol=1e-8)
    # forward mode: a JVP against jax.jvp
    tangent = np.linspace(-1.0, 1.0, x.size)
    jvp = ENGINE.jvp(bound, {"x": tensor(tangent)}, ["t"])
    np.testing.assert_allclose(jvp["tangents"]["t"], jax.jvp(ref, (xj,), (jnp.asarray(tangent),))[1],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["fori_loop", "while_loop", "scan"])
def test_hessian_and_hvp_through_a_loop(name: str) -> None:
    graph, ref = CASES[name]
    bound = ENGINE.bind(parse(graph), {"x": tensor(X0)})
    xj = jnp.asarray(X0)
    hess = ENGINE.hessian(bound, "t", ["x"])["hessian"]["x"]["x"]
    np.testing.assert_allclose(hess, jax.hessian(ref)(xj), rtol=1e-9, atol=1e-11)
    v = np.linspace(0.5, -0.5, X0.size)
    hvp = ENGINE.hvp(bound, "t", ["x"], {"x": tensor(v)})["hvp"]["x"]
    np.testing.assert_allclose(hvp, jax.jvp(jax.grad(ref), (xj,), (jnp.asarray(v),))[1],
                               rtol=1e-9, atol=1e-11)

    def grad_at(x: np.ndarray) -> np.ndarray:
        b = ENGINE.bind(parse(graph), {"x": tensor(x)})
        return np.asarray(ENGINE.gradient(b, "t", ["x"])["gradients"]["x"])

    h = 1e-5
    fd = (grad_at(X0 + h * v) - grad_at(X0 - h * v)) / (2 * h)
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-8)


def test_forward_only_while_loop_runs_to_its_condition() -> None:
    """Without max_iterations: lax.while_loop, forward mode (evaluate, jvp)."""
    graph = {"nodes": [{"id": "y", "op": "while_loop", "args": ["x"], "attrs": {
        "cond": fn(["c"], ["go"], ("m", "max", "c"), ("go", "less", "m", 10.0)),
        "body": fn(["c"], ["r"], ("r", "multiply", "c", 1.5))}}]}
    x = np.array([1.0, 2.0])
    bound = ENGINE.bind(parse(graph), {"x": tensor(x)})

    def ref(v: Any) -> Any:
        return jax.lax.while_loop(lambda c: jnp.max(c) < 10.0, lambda c: c * 1.5, v)

    np.testing.assert_allclose(ENGINE.evaluate(bound)["y"], ref(jnp.asarray(x)))
    jvp = ENGINE.jvp(bound, {"x": tensor(np.ones(2))})
    np.testing.assert_allclose(jvp["tangents"]["y"], np.full(2, 1.5**4))


# ----- over HTTP -----


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(_env_file=None, max_iterations=20))) as c:
        yield c


def post(client: TestClient, route: str, body: dict[str, Any], status: int = 200) -> Any:
    r = client.post(route, json=body)
    assert r.status_code == status, r.text[:2000]
    return r.json()


def test_gradient_over_http(client: TestClient) -> None:
    graph, ref = CASES["scan"]
    body = post(client, "/v1/gradient", {"graph": graph, "inputs": {"x": tensor(X0)},
                                         "target": "t"})
    assert body["gradients"]["x"]["dtype"] == "float64"
    np.testing.assert_allclose(body["gradients"]["x"]["data"], jax.grad(ref)(jnp.asarray(X0)),
                               rtol=1e-10)
    gid = post(client, "/v1/graphs", graph, 201)["graph_id"]
    again = post(client, "/v1/hvp", {"graph_id": gid, "inputs": {"x": tensor(X0)},
                                     "target": "t", "vectors": {"x": tensor(np.ones(6))}})
    want = jax.jvp(jax.grad(ref), (jnp.asarray(X0),), (jnp.ones(6),))[1]
    np.testing.assert_allclose(again["hvp"]["x"]["data"], want, rtol=1e-9)


def loop_graph(body: Any, **attrs: Any) -> dict[str, Any]:
    return {"nodes": [{"id": "loop", "op": "fori_loop", "args": ["x"],
                       "attrs": {"lower": 0, "upper": 2, "body": body, **attrs}}]}


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (what, graph, node, words in the detail)
    ("undefined name in an inline function",
     loop_graph(fn(["i", "c"], ["r"], ("r", "multiply", "c", "w"))),
     "loop/body/r", "undefined name 'w': a function sees only its params"),
    ("undefined name in a graph-level function",
     {**loop_graph("step"), "functions": {"step": fn(["i", "c"], ["r"], ("r", "add", "c", "z"))}},
     "step/r", "function 'step', node 'r': undefined name 'z'"),
    ("unknown function name", loop_graph("nope"), "loop",
     "names function 'nope', which the graph does not declare"),
    ("not a function", loop_graph(3), "loop", "expected a function"),
    ("a function without params", loop_graph({"nodes": [], "outputs": ["c"]}), "loop/body",
     "params must be a list of names"),
    ("a duplicate param", loop_graph(fn(["c", "c"], ["c"], ("r", "sin", "c"))), "loop/body",
     "param 'c' is listed twice"),
    ("an output that is not defined", loop_graph(fn(["i", "c"], ["q"], ("r", "sin", "c"))),
     "loop/body", "output 'q' is not a param or a node id"),
    ("unknown op inside", loop_graph(fn(["i", "c"], ["r"], ("r", "sine", "c"))), "loop/body/r",
     "unknown op 'sine'"),
    ("too few params", loop_graph(fn(["c"], ["r"], ("r", "sin", "c"))), "loop/body",
     "it has 1 params (c) but is called with 2 values"),
    ("the body changes the carry's shape",
     loop_graph(fn(["i", "c"], ["r"], ("r", "sum", "c"))), "loop/body",
     "it changes carry 0 from float64[3] to float64[]"),
    ("the body returns two values for one carry",
     loop_graph(fn(["i", "c"], ["c", "c"], ("r", "sin", "c"))), "loop/body",
     "it returns 2 values"),
    ("a type error inside the body",
     loop_graph(fn(["i", "c"], ["r"], ("m", "reshape", "c", {"shape": [2, 2]}),
                   ("r", "sin", "m"))), "loop/body/m", "op 'reshape' cannot take arguments"),
    ("a bound that is not an integer literal", loop_graph(fn(["i", "c"], ["c"], ("r", "sin", "c")),
                                                         upper="n"),
     "loop", "attribute 'upper' of op 'fori_loop': expected an integer"),
    ("branches of different types",
     {"nodes": [{"id": "b", "op": "cond", "args": [True, "x"], "attrs": {
         "true": fn(["a"], ["r"], ("r", "sin", "a")),
         "false": fn(["a"], ["r"], ("r", "sum", "a"))}}]},
     "b", "the true branch (function 'true') gives float64[3], the false branch (function "
     "'false') gives float64[]"),
    ("a predicate that is not a bool scalar",
     {"nodes": [{"id": "b", "op": "cond", "args": ["x", "x"], "attrs": {
         "true": fn(["a"], ["a"], ("r", "sin", "a")),
         "false": fn(["a"], ["a"], ("r", "sin", "a"))}}]},
     "b", "the predicate (the first argument) must be a bool scalar, got float64[3]"),
    ("a loop condition that is not a bool scalar",
     {"nodes": [{"id": "w", "op": "while_loop", "args": ["x"], "attrs": {
         "cond": fn(["c"], ["c"], ("r", "sin", "c")),
         "body": fn(["c"], ["r"], ("r", "sin", "c"))}}]},
     "w/cond", "a loop condition returns one bool scalar; this one returns float64[3]"),
    ("num_carry past the arguments",
     {"nodes": [{"id": "s", "op": "scan", "args": ["x"], "attrs": {
         "num_carry": 2, "body": fn(["c"], ["c"], ("r", "sin", "c"))}}]},
     "s", "num_carry is 2, but there are only 1 arguments"),
    ("functions that call each other",
     {**loop_graph("f"), "functions": {
         "f": fn(["i", "c"], ["r"], ("r", "call", "i", "c", {"function": "g"})),
         "g": fn(["i", "c"], ["r"], ("r", "call", "i", "c", {"function": "f"}))}},
     "f/r/g/r/f", "recursion is not supported"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_validation_errors_name_the_node_and_the_function(
        client: TestClient, case: tuple[str, dict[str, Any], str, str]) -> None:
    _, graph, node, words = case
    r = client.post("/v1/evaluate", json={"graph": graph,
                                          "inputs": {"x": tensor(np.ones(3))}})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["node"] == node, body
    assert words in body["detail"], body["detail"]


def test_reverse_mode_needs_max_iterations(client: TestClient) -> None:
    graph = {"nodes": [{"id": "w", "op": "while_loop", "args": ["x"], "attrs": {
        "cond": fn(["c"], ["go"], ("m", "sum", "c"), ("go", "less", "m", 10.0)),
        "body": fn(["c"], ["r"], ("r", "multiply", "c", 2.0))}},
        {"id": "t", "op": "sum", "args": ["w"]}]}
    request = {"graph": graph, "inputs": {"x": tensor(np.ones(2))}, "target": "t"}
    for route in ("/v1/gradient", "/v1/hessian"):
        body = post(client, route, request, 422)
        assert body["node"] == "w"
        assert "set its max_iterations" in body["detail"]
    # forward mode runs it; a loop that reaches GRADTAPE_MAX_ITERATIONS (20 here) is a 422
    fwd = post(client, "/v1/jvp", {"graph": graph, "inputs": {"x": tensor(np.ones(2))},
                                   "tangents": {"x": tensor(np.ones(2))}, "outputs": ["t"]})
    assert fwd["values"]["t"]["data"] == 16.0 and fwd["tangents"]["t"]["data"] == 16.0
    body = post(client, "/v1/evaluate", {"graph": graph, "inputs": {"x": tensor(np.zeros(2))}},
                422)
    assert body["node"] == "w"
    assert "reached GRADTAPE_MAX_ITERATIONS (20) iterations" in body["detail"]


def test_control_flow_past_the_compile_budget_is_refused() -> None:
    settings = Settings(_env_file=None, max_compile_weight=1)
    graph, _ = CASES["fori_loop"]
    with TestClient(create_app(settings)) as client:
        body = post(client, "/v1/gradient", {"graph": graph, "inputs": {"x": tensor(X0)},
                                             "target": "t"}, 413)
        assert "cannot run uncompiled" in body["detail"]
        # a graph without control flow runs eagerly past the budget, as before
        plain = {"nodes": [{"id": "t", "op": "sum", "args": ["x"]}]}
        post(client, "/v1/gradient", {"graph": plain, "inputs": {"x": tensor(X0)},
                                      "target": "t"})


def test_cost_counts_the_trips() -> None:
    def loop(upper: int) -> dict[str, Any]:
        return loop_graph(fn(["i", "c"], ["r"], ("r", "sin", "c")), upper=upper)

    costs = []
    for upper in (2, 20):
        bound = ENGINE.bind(parse(loop(upper)), {"x": tensor(np.ones(1000))})
        query = ENGINE._query(bound, "gradient", ("loop",), ("x",))
        costs.append(ENGINE.cost(bound, query))
    assert costs[1].flops > 5 * costs[0].flops
    assert costs[1].peak_bytes > 3 * costs[0].peak_bytes  # reverse mode keeps every step


def test_graph_ids_with_and_without_functions(client: TestClient) -> None:
    # a graph without functions keeps the id it always had
    assert post(client, "/v1/graphs", TUTORIAL_GRAPH, 201)["graph_id"] == TUTORIAL_GRAPH_ID
    program = parse(TUTORIAL_GRAPH)
    assert "functions" not in canonical_form(TUTORIAL_GRAPH, program)
    named = {"functions": {"sq": fn(["a"], ["r"], ("r", "multiply", "a", "a"))},
             "nodes": [{"id": "y", "op": "call", "args": ["x"], "attrs": {"function": "sq"}}]}
    gid = post(client, "/v1/graphs", named, 201)["graph_id"]
    # aliases and key order do not change it; the function's body and name do
    same = {"nodes": [{"attrs": {"function": "sq"}, "args": ["x"], "op": "call", "id": "y"}],
            "functions": {"sq": {"outputs": ["r"], "params": ["a"], "nodes": [
                {"id": "r", "op": "mul", "args": ["a", "a"]}]}}}
    assert post(client, "/v1/graphs", same, 200)["graph_id"] == gid
    other = {**named, "functions": {"sq": fn(["a"], ["r"], ("r", "add", "a", "a"))}}
    renamed = {"functions": {"sq2": named["functions"]["sq"]},
               "nodes": [{"id": "y", "op": "call", "args": ["x"], "attrs": {"function": "sq2"}}]}
    inline = {"nodes": [{"id": "y", "op": "call", "args": ["x"],
                         "attrs": {"function": named["functions"]["sq"]}}]}
    ids = {gid, *(post(client, "/v1/graphs", g, 201)["graph_id"] for g in (other, renamed,
                                                                            inline))}
    assert len(ids) == 4
    # the same function under two names is one function: one compiled body
    a, b = (parse(g).eqns[0].attrs[0][1] for g in (named, renamed))
    assert isinstance(a, Function) and a == b and a.ref != b.ref
    assert graph_id(canonical_form(named, parse(named))) == gid


def test_a_function_may_call_one_declared_after_it() -> None:
    graph = {"functions": {"outer": fn(["a"], ["r"], ("r", "call", "a", {"function": "inner"})),
                           "inner": fn(["a"], ["r"], ("r", "exp", "a"))},
             "nodes": [{"id": "y", "op": "call", "args": ["x"], "attrs": {"function": "outer"}}]}
    bound = ENGINE.bind(parse(graph), {"x": tensor(np.array([0.0, 1.0]))})
    np.testing.assert_allclose(ENGINE.evaluate(bound)["y"], np.exp([0.0, 1.0]))
    with pytest.raises(InvalidGraph, match="undefined name 'x'"):
        parse({"functions": {"f": fn(["a"], ["r"], ("r", "add", "a", "x"))},
               "nodes": [{"id": "y", "op": "call", "args": ["x"], "attrs": {"function": "f"}}]})


# ----- sessions -----


def test_session_run_with_a_loop_and_a_tape_gradient(client: TestClient) -> None:
    sid = post(client, "/v1/sessions", {}, 201)["session_id"]
    base = f"/v1/sessions/{sid}"
    assert client.put(f"{base}/tensors/x", json={"value": tensor(X0)}).status_code == 200
    tape = post(client, f"{base}/tapes", {}, 201)["tape_id"]
    post(client, f"{base}/tapes/{tape}/watch", {"tensors": ["x"]})
    graph, ref = CASES["while_loop"]
    loop = graph["nodes"][0]
    functions = {"again": loop["attrs"]["body"]}
    out = post(client, f"{base}/run", {
        "functions": functions,
        "nodes": [{**loop, "attrs": {**loop["attrs"], "body": "again"}},
                  {"id": "t", "op": "sum", "args": ["y"]}]})
    np.testing.assert_allclose(out["values"]["t"]["data"], ref(jnp.asarray(X0)), rtol=1e-12)
    assert client.post(f"{base}/tapes/{tape}/stop").status_code == 200
    grads = post(client, f"{base}/tapes/{tape}/gradient", {"target": "t", "sources": ["x"]})
    np.testing.assert_allclose(grads["gradients"]["x"]["data"], jax.grad(ref)(jnp.asarray(X0)),
                               rtol=1e-10)
    # errors in a run's functions name the node and the function too
    bad = post(client, f"{base}/run", {"nodes": [{"id": "z", "op": "call", "args": ["x"],
                                                  "attrs": {"function": "nope"}}]}, 422)
    assert bad["node"] == "z" and "does not declare" in bad["detail"]


def test_records_with_functions_survive_the_session_codec() -> None:
    """A session kept outside the process (Redis) stores a record's functions as JSON."""
    graph, _ = CASES["call"]
    eqn = parse(graph).eqns[0]
    rec = Record(eqn.prim.name, eqn.attrs, (1,), (2,), "y")
    back = codec._unrecord(orjson.loads(orjson.dumps(codec._record(rec))))
    assert back == rec and hash(back.attrs) == hash(rec.attrs)
    (_, function), = back.attrs
    assert isinstance(function, Function) and function.name == "f"
