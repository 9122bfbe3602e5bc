"""POST /v1/minimize and the engine's minimization loop, against independent oracles.

SciPy's L-BFGS-B on SciPy's own Rosenbrock function and gradient finds the minimum the
service must find; least squares has a closed form (`numpy.linalg.lstsq`), and so has a
quadratic for the first-order methods. Then the loop's stops (tolerance, iterations, a
non-finite step), what it refuses (each bad field a 422 naming it; over the compile budget
or the work limit a 413), and registered graphs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from scipy.optimize import minimize as scipy_minimize
from scipy.optimize import rosen, rosen_der

from engine.cache import CompileCache
from engine.compute import Engine
from engine.errors import InvalidGraph
from engine.graph import parse_graph
from engine.minimize import MAX_ITERATIONS, minimize
from service.config import Settings
from service.main import create_app
from service.schemas.minimize import EXAMPLE_REQUEST, EXAMPLE_RESPONSE

# ----- graphs


def _load_benchmark() -> Any:
    """The graph builders of benchmarks/minimize.py: the tests and the benchmark solve the
    same problems."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "minimize.py"
    spec = importlib.util.spec_from_file_location("minimize_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BENCHMARK = _load_benchmark()
rosenbrock = _BENCHMARK.rosenbrock_graph  # sum 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2
least_squares = _BENCHMARK.least_squares_graph  # ||A x - b||^2 over x


QUADRATIC: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float64", "shape": [3]}, "c": {"dtype": "float64", "shape": [3]}},
    "nodes": [
        {"id": "d", "op": "subtract", "args": ["x", "c"]},
        {"id": "s", "op": "square", "args": ["d"]},
        {"id": "f", "op": "sum", "args": ["s"]},
    ],
    "outputs": ["f"],
}
C = [1.0, -2.0, 0.5]

LOG: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float64", "shape": []}, "k": {"dtype": "int32", "shape": []}},
    "nodes": [{"id": "f", "op": "log", "args": ["x"]},
              {"id": "v", "op": "multiply", "args": ["x", [1.0, 2.0]]}],
    "outputs": ["f"],
}
"""log(x): sgd walks x down until a step lands below zero. `k` (an integer) and `v` (not a
scalar) are there to be refused."""

ROSEN_START = [-1.2, 1.0]


def data(tensor: dict[str, Any]) -> np.ndarray:
    return np.asarray(tensor["data"], dtype=tensor["dtype"])


def with_minimize(settings: Settings) -> FastAPI:
    """The app (which registers the minimize routes)."""
    return create_app(settings)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(with_minimize(Settings(_env_file=None))) as test_client:
        yield test_client


def post(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/minimize", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def problem(client: TestClient, status: int, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/minimize", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    answer: dict[str, Any] = r.json()
    return answer


# ----- against the oracles


def test_rosenbrock_2d_reaches_scipys_minimum(client: TestClient) -> None:
    answer = post(client, graph=rosenbrock(2), inputs={"x": ROSEN_START}, target="f",
                  variables=["x"], max_iterations=1000, tolerance=1e-8)
    oracle = scipy_minimize(rosen, np.array(ROSEN_START), jac=rosen_der, method="L-BFGS-B",
                            options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 1000})
    x = data(answer["variables"]["x"])
    assert answer["converged"] is True and answer["reason"] == "converged"
    assert answer["gradient_norm"] <= 1e-8
    np.testing.assert_allclose(x, oracle.x, atol=1e-6)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-7)
    assert data(answer["value"]) == pytest.approx(rosen(x), abs=1e-14)
    assert answer["value"]["dtype"] == "float64"
    assert 0 < answer["iterations"] < 1000


def test_rosenbrock_100d_reaches_scipys_minimum(client: TestClient) -> None:
    start = ROSEN_START * 50
    answer = post(client, graph=rosenbrock(100), inputs={"x": start}, target="f",
                  variables=["x"], max_iterations=5000)
    oracle = scipy_minimize(rosen, np.array(start), jac=rosen_der, method="L-BFGS-B",
                            options={"gtol": 1e-8, "ftol": 1e-15, "maxiter": 5000})
    x = data(answer["variables"]["x"])
    assert answer["reason"] == "converged", answer["iterations"]
    assert answer["gradient_norm"] <= 1e-6
    np.testing.assert_allclose(x, oracle.x, atol=1e-4)
    np.testing.assert_allclose(x, np.ones(100), atol=1e-6)


def test_least_squares_matches_the_closed_form(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 8)), rng.normal(size=40)
    answer = post(client, graph=least_squares(40, 8),
                  inputs={"A": a.tolist(), "b": b.tolist(), "x": np.zeros(8).tolist()},
                  target="f", variables=["x"], tolerance=1e-9)
    expected, residual, _, _ = np.linalg.lstsq(a, b, rcond=None)
    assert answer["converged"] is True
    np.testing.assert_allclose(data(answer["variables"]["x"]), expected, atol=1e-9)
    assert data(answer["value"]) == pytest.approx(residual[0], rel=1e-12)
    assert set(answer["variables"]) == {"x"}  # A and b are held, not answered


@pytest.mark.parametrize(("method", "learning_rate", "options", "tolerance"), [
    ("sgd", 0.1, {}, 1e-9),
    ("sgd", 0.05, {"momentum": 0.5, "nesterov": True}, 1e-9),
    ("adam", 0.05, {"b1": 0.8}, 1e-4),
    ("adamw", 0.05, {"weight_decay": 0.0}, 1e-4),
    ("rmsprop", 0.01, {"decay": 0.9, "centered": True}, 1e-3),
    ("adagrad", 0.5, {}, 1e-6),
])
def test_first_order_methods_reach_the_quadratics_minimum(
        client: TestClient, method: str, learning_rate: float, options: dict[str, Any],
        tolerance: float) -> None:
    answer = post(client, graph=QUADRATIC, inputs={"x": [0.0, 0.0, 0.0], "c": C}, target="f",
                  variables=["x"], method=method, learning_rate=learning_rate,
                  options=options, max_iterations=10_000, tolerance=tolerance)
    assert answer["reason"] == "converged", answer
    assert answer["gradient_norm"] <= tolerance
    # |grad| = 2 |x - c|, so x is within tolerance / 2 of c
    np.testing.assert_allclose(data(answer["variables"]["x"]), C, atol=tolerance / 2 + 1e-12)


def test_float32_variables_stay_float32(client: TestClient) -> None:
    answer = post(client, graph=rosenbrock(2, "float32"), inputs={"x": ROSEN_START},
                  target="f", variables=["x"], tolerance=1e-3, max_iterations=500)
    assert answer["variables"]["x"]["dtype"] == "float32"
    assert answer["value"]["dtype"] == "float32"
    np.testing.assert_allclose(data(answer["variables"]["x"]), [1.0, 1.0], atol=1e-2)


# ----- history and the loop's stops


def test_history_has_one_value_per_iteration_and_lbfgs_never_goes_up(
        client: TestClient) -> None:
    answer = post(client, graph=rosenbrock(2), inputs={"x": ROSEN_START}, target="f",
                  variables=["x"], max_iterations=200, history=True)
    history = np.asarray(answer["history"])
    assert len(history) == answer["iterations"] > 10
    assert history[-1] == data(answer["value"])
    assert np.all(np.diff(history) <= 0), history
    assert history[0] < rosen(np.array(ROSEN_START))
    assert "history" not in post(client, graph=rosenbrock(2), inputs={"x": ROSEN_START},
                                 target="f", variables=["x"])


def test_max_iterations_stops_the_loop(client: TestClient) -> None:
    answer = post(client, graph=rosenbrock(2), inputs={"x": ROSEN_START}, target="f",
                  variables=["x"], max_iterations=5, history=True)
    assert answer["iterations"] == 5
    assert answer["converged"] is False and answer["reason"] == "max_iterations"
    assert len(answer["history"]) == 5
    assert answer["gradient_norm"] > 1e-6
    none = post(client, graph=rosenbrock(2), inputs={"x": ROSEN_START}, target="f",
                variables=["x"], max_iterations=0, history=True)
    assert (none["iterations"], none["reason"], none["history"]) == (0, "max_iterations", [])
    np.testing.assert_array_equal(data(none["variables"]["x"]), ROSEN_START)
    assert none["gradient_norm"] == pytest.approx(np.linalg.norm(rosen_der(
        np.array(ROSEN_START))))


def test_a_minimum_at_the_start_converges_in_no_iterations(client: TestClient) -> None:
    answer = post(client, graph=QUADRATIC, inputs={"x": C, "c": C}, target="f",
                  variables=["x"])
    assert (answer["iterations"], answer["reason"], answer["gradient_norm"]) == \
        (0, "converged", 0.0)


def test_a_non_finite_step_stops_the_loop_before_it_is_taken(client: TestClient) -> None:
    # x: 3 -> 2.33 -> 1.48 -> 0.12 -> negative (log is NaN there)
    answer = post(client, graph=LOG, inputs={"x": 3.0, "k": 1}, target="f", variables=["x"],
                  method="sgd", learning_rate=2.0, history=True)
    assert answer["converged"] is False and answer["reason"] == "non_finite"
    assert answer["iterations"] == 3
    x = 3.0
    for _ in range(3):
        x -= 2.0 / x
    assert data(answer["variables"]["x"]) == pytest.approx(x)
    assert data(answer["value"]) == pytest.approx(np.log(x))
    assert answer["gradient_norm"] == pytest.approx(1 / x)
    assert len(answer["history"]) == 3 and np.all(np.isfinite(answer["history"]))
    # not finite at the start: nothing runs, and the answer says so
    start = post(client, graph=LOG, inputs={"x": -1.0, "k": 1}, target="f", variables=["x"])
    assert (start["iterations"], start["reason"]) == (0, "non_finite")
    assert start["value"]["data"] == "NaN"  # log(-1); its gradient, -1, is finite
    assert start["gradient_norm"] == 1.0
    zero = post(client, graph=LOG, inputs={"x": 0.0, "k": 1}, target="f", variables=["x"])
    assert (zero["reason"], zero["value"]["data"], zero["gradient_norm"]) == \
        ("non_finite", "-Infinity", "Infinity")


def test_several_variables_and_held_inputs(client: TestClient) -> None:
    answer = post(client, graph=QUADRATIC, inputs={"x": [0.0, 0.0, 0.0], "c": [4.0, 0.0, 1.0]},
                  target="f", variables=["c", "x"], method="sgd", learning_rate=0.25,
                  tolerance=1e-10)
    assert list(answer["variables"]) == ["c", "x"]
    x, c = data(answer["variables"]["x"]), data(answer["variables"]["c"])
    np.testing.assert_allclose(x, c, atol=1e-10)
    np.testing.assert_allclose(x, [2.0, 0.0, 0.5], atol=1e-10)  # they meet half-way


def test_registered_graph(client: TestClient) -> None:
    r = client.post("/v1/graphs", json=rosenbrock(2))
    assert r.status_code in (200, 201), r.text
    answer = post(client, graph_id=r.json()["graph_id"], inputs={"x": ROSEN_START},
                  target="f", variables=["x"], max_iterations=1000)
    np.testing.assert_allclose(data(answer["variables"]["x"]), [1.0, 1.0], atol=1e-6)
    missing = problem(client, 404, graph_id="g_" + "0" * 32, inputs={"x": ROSEN_START},
                      target="f", variables=["x"])
    assert missing["errors"][0]["loc"] == ["body", "graph_id"]


def test_the_documented_example(client: TestClient) -> None:
    assert post(client, **EXAMPLE_REQUEST) == EXAMPLE_RESPONSE
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/minimize"]["post"]
    media = operation["requestBody"]["content"]["application/json"]
    assert next(iter(media["examples"].values()))["value"] == EXAMPLE_REQUEST
    assert operation["responses"]["200"]["content"]["application/json"]["example"] == \
        EXAMPLE_RESPONSE
    assert {"413", "422", "404", "503"} <= set(operation["responses"])


# ----- what it refuses

BAD: list[tuple[dict[str, Any], list[str | int], str]] = [
    ({"method": "newton"}, ["body", "method"], ""),
    ({"variables": ["y"]}, ["body", "variables", 0], "not an input"),
    ({"variables": ["v"]}, ["body", "variables", 0], "a node, not an input"),
    ({"variables": ["k"]}, ["body", "variables", 0], "int32"),
    ({"variables": ["x", "x"]}, ["body", "variables", 1], "twice"),
    ({"variables": []}, ["body", "variables"], ""),
    ({"target": "v"}, ["body", "target"], "scalar"),
    ({"target": "k"}, ["body", "target"], "int32"),
    ({"target": "nope"}, ["body", "target"], "not an input or a node"),
    ({"max_iterations": MAX_ITERATIONS + 1}, ["body", "max_iterations"], ""),
    ({"max_iterations": -1}, ["body", "max_iterations"], ""),
    ({"tolerance": -1.0}, ["body", "tolerance"], ""),
    ({"learning_rate": 0.0, "method": "sgd"}, ["body", "learning_rate"], ""),
    ({"method": "adam", "options": {"momentum": 0.9}}, ["body", "options", "momentum"],
     "adam has no option 'momentum'; its options: b1, b2, eps"),
    ({"options": {"memory_size": 0}}, ["body", "options", "memory_size"], "integer"),
    ({"options": {"memory_size": 2.5}}, ["body", "options", "memory_size"], "integer"),
    ({"method": "sgd", "options": {"nesterov": 1}}, ["body", "options", "nesterov"],
     "boolean"),
    ({"method": "sgd", "options": {"momentum": True}}, ["body", "options", "momentum"],
     "number"),
    ({"method": "adam", "options": {"b1": 1.5}}, ["body", "options", "b1"], "at most 1"),
]


@pytest.mark.parametrize(("change", "loc", "says"), BAD)
def test_bad_requests_are_422_naming_the_field(client: TestClient, change: dict[str, Any],
                                               loc: list[str | int], says: str) -> None:
    body = {"graph": LOG, "inputs": {"x": 3.0, "k": 1}, "target": "f", "variables": ["x"],
            **change}
    found = problem(client, 422, **body)
    assert found["errors"][0]["loc"] == loc, found
    assert says in found["detail"], found


def test_the_engine_checks_the_iteration_cap_itself() -> None:
    engine = Engine()
    bound = engine.bind(parse_graph(LOG, max_nodes=10, max_elements=10),
                        {"x": 3.0, "k": 1})
    with pytest.raises(InvalidGraph) as caught:
        minimize(engine, bound, "f", ["x"], max_iterations=11, max_iterations_cap=10)
    assert caught.value.loc == ("max_iterations",)
    with pytest.raises(InvalidGraph) as caught:
        minimize(engine, bound, "f", ["x"], method="bfgs")
    assert caught.value.loc == ("method",)


def test_over_the_compile_budget_is_413() -> None:
    settings = Settings(_env_file=None, max_compile_weight=1)
    with TestClient(with_minimize(settings)) as client:
        found = problem(client, 413, graph=rosenbrock(2), inputs={"x": ROSEN_START},
                        target="f", variables=["x"])
    assert "compile budget" in found["detail"]
    assert "cannot run uncompiled" in found["detail"]


def test_over_the_work_limit_is_413() -> None:
    settings = Settings(_env_file=None, max_request_flops=1e6)
    with TestClient(with_minimize(settings)) as client:
        found = problem(client, 413, graph=rosenbrock(100), inputs={"x": ROSEN_START * 50},
                        target="f", variables=["x"], max_iterations=10_000)
        assert "GRADTAPE_MAX_REQUEST_FLOPS" in found["detail"]
        assert "10000 iterations" in found["detail"]
        small = post(client, graph=rosenbrock(2), inputs={"x": ROSEN_START}, target="f",
                     variables=["x"], max_iterations=3)
        assert small["iterations"] == 3


# ----- compiling


def test_one_compile_serves_new_values() -> None:
    """Start points, learning rates, tolerances and float options are arguments of the
    compiled loop; integer and boolean options are part of it."""
    engine = Engine(cache=CompileCache(jit_after=0))
    program = parse_graph(QUADRATIC, max_nodes=10, max_elements=10)
    for i, lr in enumerate([0.1, 0.2, 0.3]):
        bound = engine.bind(program, {"x": [float(i), 0.0, 0.0], "c": C})
        found = minimize(engine, bound, "f", ["x"], method="sgd", learning_rate=lr,
                         options={"momentum": 0.1 * i}, tolerance=10.0 ** -(i + 6))
        assert found["converged"]
    assert engine.cache.stats.compiles == 1
    minimize(engine, bound, "f", ["x"], method="sgd", options={"momentum": 0.1,
                                                                "nesterov": True})
    assert engine.cache.stats.compiles == 2
