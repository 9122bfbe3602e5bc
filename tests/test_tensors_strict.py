"""Strict decoding of request tensors (API.md, "Tensors").

A value its dtype cannot hold exactly (a non-string dtype, a boolean among numbers, a number
in a bool tensor, a fraction or an out-of-range value in an integer tensor, a finite number
that overflows a float dtype, null, an impossible shape, a string other than the non-finite
ones) is a 422 naming the field at fault, or a 413 when the tensor is over the element
limit; never a silent conversion and never a 5xx. Each rule is checked on
`engine.tensors.decode` and over HTTP.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from engine.errors import InvalidTensor, TooLarge
from engine.tensors import MAX_DIM, MAX_DIMS, decode
from service.config import Settings
from service.main import create_app

# ----- helpers -----


def rejects(value: Any, *says: str, loc: tuple[str | int, ...] = ("x",),
            error: type[Exception] = InvalidTensor, **kwargs: Any) -> str:
    """decode(value) raises `error` at `loc`, its message holding every fragment of `says`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error) as info:
            decode(value, ("x",), **kwargs)
    exc: Any = info.value
    assert type(exc) is error
    assert exc.loc == loc, (exc.loc, exc.detail)
    detail: str = exc.detail
    for fragment in says:
        assert fragment in detail, f"{fragment!r} not in {detail!r}"
    return detail


def accepts(value: Any, **kwargs: Any) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return decode(value, ("x",), **kwargs)


def nested(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = [value]
    return value


SIN = {"nodes": [{"id": "y", "op": "sin", "args": ["x"]}]}
SUM_OF_SIN = {"nodes": [{"id": "s", "op": "sin", "args": ["x"]},
                        {"id": "y", "op": "reduce_sum", "args": ["s"]}]}


def declared(dtype: str) -> dict[str, Any]:
    return {"inputs": {"x": {"dtype": dtype}}, "nodes": [{"id": "y", "op": "sin", "args": ["x"]}]}


def problem(r: Response, status: int, loc: list[Any], *says: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:1000]
    assert r.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    body = r.json()
    assert body["status"] == status
    assert body["errors"][0]["loc"] == loc, body
    for fragment in says:
        assert fragment in body["detail"], f"{fragment!r} not in {body['detail']!r}"
    return body


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(_env_file=None)), raise_server_exceptions=False) as c:
        yield c


def evaluate(api: TestClient, x: Any, graph: dict[str, Any] = SIN) -> Response:
    return api.post("/v1/evaluate", json={"graph": graph, "inputs": {"x": x}})


def put(api: TestClient, value: Any) -> Response:
    r = api.post("/v1/sessions", json={})
    assert r.status_code == 201, r.text
    return api.put(f"/v1/sessions/{r.json()['session_id']}/tensors/x", json={"value": value})


# ----- 1. dtype must be a string -----


@pytest.mark.parametrize("dtype", [{}, [1], 3, 1.5, True, None],
                         ids=["object", "array", "int", "float", "bool", "null"])
def test_a_non_string_dtype_is_invalid(dtype: Any) -> None:
    rejects({"dtype": dtype, "data": 1}, "dtype must be a string", "float32",
            loc=("x", "dtype"))
    rejects({"dtype": dtype, "shape": [1], "b64": "AACAPw=="}, "dtype must be a string",
            loc=("x", "dtype"))


def test_an_unknown_dtype_is_invalid() -> None:
    rejects({"dtype": "float16", "data": 1}, "unknown dtype 'float16'", "float32, float64",
            loc=("x", "dtype"))


def test_http_non_string_dtype(api: TestClient) -> None:
    problem(evaluate(api, {"dtype": {}, "data": 1}), 422, ["body", "inputs", "x", "dtype"],
            "dtype must be a string")
    problem(evaluate(api, {"dtype": [1], "data": [1.0]}), 422,
            ["body", "inputs", "x", "dtype"], "got an array")


# ----- 2. booleans and numbers do not mix -----


def test_a_bare_boolean_where_float32_is_declared() -> None:
    rejects(True, "boolean in a float32 tensor", "dtype bool", dtype="float32")
    rejects(False, "boolean in an int64 tensor", dtype="int64")


def test_booleans_in_a_numeric_array() -> None:
    rejects([True, 1.5], "boolean in a float32 tensor at index [0]", dtype="float32")
    rejects([1.5, True], "boolean in a float32 tensor at index [1]", "send numbers")
    rejects([[0.5, 1.0], [True, 2.0]], "at index [1, 0]")
    rejects([[0, 1], [1, False]], "at index [1, 1]")
    rejects([True, 1.5], "boolean", dtype="float64")


def test_booleans_in_a_numeric_tensor_object() -> None:
    rejects({"dtype": "float32", "data": [True, False]}, "boolean in a float32 tensor",
            loc=("x", "data"))
    rejects({"dtype": "int32", "data": True}, "boolean in an int32 tensor", loc=("x", "data"))
    rejects({"data": [[True]]}, "boolean in a float32 tensor", loc=("x", "data"))
    rejects({"dtype": "float64", "shape": [2], "data": [1.0, True]}, "index [1]",
            loc=("x", "data"))


def test_numbers_in_a_bool_tensor() -> None:
    rejects({"dtype": "bool", "data": [0, 1]}, "number in a bool tensor at index [0]",
            "true and false", loc=("x", "data"))
    rejects({"dtype": "bool", "data": [True, 1.0]}, "number in a bool tensor at index [1]",
            loc=("x", "data"))
    rejects({"dtype": "bool", "data": 1}, "number in a bool tensor", loc=("x", "data"))
    rejects(0.0, "number in a bool tensor", dtype="bool")
    rejects({"dtype": "bool", "data": ["NaN"]}, "non-finite values need a float dtype",
            loc=("x", "data"))


def test_booleans_and_numbers_alone_keep_their_dtypes() -> None:
    assert accepts([True, False]).dtype == np.bool_
    assert accepts(True).dtype == np.bool_
    assert accepts(True, dtype="bool").dtype == np.bool_
    got = accepts([1, 2.5])
    assert got.dtype == np.float32 and got.tolist() == [1.0, 2.5]
    got = accepts({"dtype": "bool", "data": [[True], [False]]})
    assert got.dtype == np.bool_ and got.tolist() == [[True], [False]]
    assert accepts({"dtype": "bool", "shape": [0], "data": []}).dtype == np.bool_


@pytest.mark.parametrize("shape", [(1000,), (10, 100), (4, 10, 10), (2, 3, 4, 25)])
@pytest.mark.parametrize("fill", [0.5, 1.0, 0], ids=["few-0-or-1", "all-1.0", "all-0"])
def test_one_boolean_in_a_large_array_is_found(shape: tuple[int, ...], fill: Any) -> None:
    # the check looks only at values that read as 0 or 1 when there are few of them, and at
    # every element when there are many: both ways must find the one boolean
    size = math.prod(shape)
    at = (size * 7) // 10
    flat: list[Any] = [fill] * size
    flat[at] = True
    data = np.array(flat, dtype=object).reshape(shape).tolist()
    index = [int(i) for i in np.unravel_index(at, shape)]
    rejects(data, f"boolean in a float32 tensor at index {index}")
    flat[at] = fill
    got = accepts(np.array(flat, dtype=object).reshape(shape).tolist())
    assert got.dtype == np.float32 and got.shape == shape
    assert np.all(got == np.float32(fill))


def test_numbers_that_read_as_0_and_1_are_not_booleans() -> None:
    rng = np.random.default_rng(1)
    onehot = np.eye(10)[rng.integers(0, 10, 500)]
    got = accepts(onehot.astype(int).tolist())
    assert got.dtype == np.float32 and np.array_equal(got, onehot)
    relu = np.maximum(rng.standard_normal((60, 50)), 0.0)
    relu[3, 4] = 1.0
    got = accepts(relu.tolist())
    assert np.array_equal(got, relu.astype(np.float32))


def test_http_declared_float32_input_given_true(api: TestClient) -> None:
    problem(evaluate(api, True, declared("float32")), 422, ["body", "inputs", "x"],
            "boolean in a float32 tensor")


def test_http_evaluate_input_mixing_booleans_and_numbers(api: TestClient) -> None:
    problem(evaluate(api, [1.0, True]), 422, ["body", "inputs", "x"], "boolean",
            "index [1]")


def test_http_output_gradients_true(api: TestClient) -> None:
    r = api.post("/v1/gradient", json={"graph": SIN, "inputs": {"x": 1.0}, "target": "y",
                                       "output_gradients": True})
    problem(r, 422, ["body", "output_gradients"], "boolean in a float32 tensor")


def test_http_hvp_vector_true(api: TestClient) -> None:
    r = api.post("/v1/hvp", json={"graph": SUM_OF_SIN, "inputs": {"x": [1.0, 2.0]},
                                  "target": "y", "vectors": {"x": True}})
    problem(r, 422, ["body", "vectors", "x"], "boolean in a float32 tensor")


def test_http_jvp_tangent_true(api: TestClient) -> None:
    r = api.post("/v1/jvp", json={"graph": SIN, "inputs": {"x": 1.0},
                                  "tangents": {"x": True}})
    problem(r, 422, ["body", "tangents", "x"], "boolean in a float32 tensor")


def test_http_session_put_numbers_as_bool(api: TestClient) -> None:
    problem(put(api, {"dtype": "bool", "data": [0, 1]}), 422, ["body", "value", "data"],
            "number in a bool tensor")


def test_http_bool_inputs_still_work(api: TestClient) -> None:
    r = api.post("/v1/evaluate", json={
        "graph": {"nodes": [{"id": "y", "op": "logical_not", "args": ["x"]}]},
        "inputs": {"x": [True, False]}})
    assert r.status_code == 200, r.text
    assert r.json()["values"]["y"]["data"] == [False, True]


# ----- 3. integer dtypes take whole numbers in range -----


def test_a_fraction_in_an_integer_tensor() -> None:
    rejects(1.7, "1.7 is not a whole number", "int32", "round it", dtype="int32")
    rejects({"dtype": "int64", "data": [1, 2.5]}, "2.5 at index [1] is not a whole number",
            loc=("x", "data"))
    rejects({"dtype": "int32", "data": [1.0] * 300 + [0.25]}, "0.25 at index [300]",
            loc=("x", "data"))


def test_integral_floats_are_fine_in_an_integer_tensor() -> None:
    got = accepts({"dtype": "int32", "data": [2.0, 3, -4.0]})
    assert got.dtype == np.int32 and got.tolist() == [2, 3, -4]
    got = accepts(2.0, dtype="int64")
    assert got.dtype == np.int64 and got.item() == 2
    got = accepts({"dtype": "int32", "data": [1] * 300 + [2.0]})
    assert got.dtype == np.int32 and got[-1] == 2
    rejects({"dtype": "int32", "data": [1] * 300 + [2.5]}, "2.5 at index [300]",
            loc=("x", "data"))


def test_out_of_range_for_an_integer_dtype() -> None:
    rejects({"dtype": "int32", "data": 1e10}, "out of range for int32", "int64",
            loc=("x", "data"))
    rejects({"dtype": "int32", "data": [1e10]}, "at index [0]", "out of range for int32",
            loc=("x", "data"))
    rejects({"dtype": "int32", "data": [-2**31 - 1]}, "out of range for int32",
            loc=("x", "data"))
    rejects({"dtype": "int32", "data": [2**40]}, "out of range for int32", loc=("x", "data"))
    rejects({"dtype": "int64", "data": [2**63]}, "out of range for int64", loc=("x", "data"))
    rejects({"dtype": "int64", "data": [2**64 - 1]}, "out of range for int64",
            loc=("x", "data"))
    rejects({"dtype": "int64", "data": [2**70]}, "out of range for int64", loc=("x", "data"))
    rejects({"dtype": "int64", "data": [2.0**63]}, "out of range for int64",
            loc=("x", "data"))
    rejects({"dtype": "int32", "data": [1] * 300 + [2**31]}, "index [300]",
            loc=("x", "data"))
    rejects(2**31, "out of range for int32", dtype="int32")


def test_integer_limits_are_exact() -> None:
    got = accepts({"dtype": "int32", "data": [-2**31, 2**31 - 1]})
    assert got.tolist() == [-2**31, 2**31 - 1]
    got = accepts({"dtype": "int64", "data": [-2**63, 2**63 - 1]})
    assert got.tolist() == [-2**63, 2**63 - 1]
    # next to a float, an integer beyond 2**53 keeps its exact value
    got = accepts({"dtype": "int64", "data": [2**63 - 1, 2.0]})
    assert got.tolist() == [2**63 - 1, 2]
    got = accepts({"dtype": "int64", "data": [2**53 + 1, 0.0]})
    assert got.tolist() == [2**53 + 1, 0]
    got = accepts({"dtype": "int64", "data": [2**63 - 1] + [2.0] * 300})
    assert got[0] == 2**63 - 1 and got[-1] == 2
    detail = rejects({"dtype": "int32", "data": [[5.0] * 30] * 10 + [[5] * 29 + [2**40]]},
                     "at index [10, 29]", loc=("x", "data"))
    assert str(2**40) in detail


def test_non_finite_values_in_an_integer_tensor() -> None:
    rejects({"dtype": "int32", "data": "NaN"}, "cannot be stored as int32",
            "non-finite values need a float dtype", loc=("x", "data"))
    rejects({"dtype": "int64", "data": [1, "Infinity"]}, "index [1]",
            "non-finite values need a float dtype", loc=("x", "data"))


def test_http_declared_int32_input_given_a_fraction(api: TestClient) -> None:
    problem(evaluate(api, [1.0, 1.5], declared("int32")), 422, ["body", "inputs", "x"],
            "1.5 at index [1] is not a whole number")


def test_http_int32_out_of_range(api: TestClient) -> None:
    problem(evaluate(api, {"dtype": "int32", "data": [1e10]}), 422,
            ["body", "inputs", "x", "data"], "out of range for int32")


# ----- 4. null is not a number -----


def test_null_in_data() -> None:
    rejects([1, None], "null in data at index [1]", 'write NaN as the string "NaN"')
    rejects({"data": [None]}, "null in data", '"NaN"', loc=("x", "data"))
    rejects({"data": None}, "null", '"NaN"', loc=("x", "data"))
    rejects(None, "null", '"NaN"')
    rejects([[1.0, 2.0], [None, 4.0]], "index [1, 0]")
    rejects([0.5] * 300 + [None], "index [300]")
    rejects({"dtype": "int32", "data": [1, None]}, "null", loc=("x", "data"))
    rejects({"dtype": "bool", "data": [True, None]}, "null", loc=("x", "data"))


def test_http_null_in_an_input(api: TestClient) -> None:
    problem(evaluate(api, [1, None]), 422, ["body", "inputs", "x"], "null",
            'write NaN as the string "NaN"')
    problem(evaluate(api, {"data": None}), 422, ["body", "inputs", "x", "data"], '"NaN"')


# ----- 5. a finite value must fit its float dtype -----


def test_overflow_of_float32() -> None:
    rejects(1e300, "out of range for float32", "float64")
    rejects([1e39], "1e+39 at index [0] is out of range for float32")
    rejects({"dtype": "float32", "data": [[1.0], [-1e39]]}, "index [1, 0]",
            loc=("x", "data"))
    rejects([0.5] * 300 + [1e39], "index [300]", "out of range for float32")
    rejects(10**400, "out of range for float32")
    rejects([10**400, 1.0], "out of range", dtype="float64")
    # a NaN next to the overflow does not hide it
    rejects(["NaN", 1e39], "index [1]", "out of range")
    rejects([math.nan] * 300 + [1e39], "index [300]", "out of range")


def test_the_float32_boundary_is_where_rounding_overflows() -> None:
    largest = float(np.finfo(np.float32).max)
    first_overflow = 2.0**128 - 2.0**103  # rounds to infinity, not to the largest float32
    last_fit = math.nextafter(first_overflow, 0.0)
    for value in (largest, 3.4028235e38, last_fit):
        assert accepts(value).item() == largest
        assert accepts([value, -value]).tolist() == [largest, -largest]
        assert accepts([value] * 300)[-1] == largest
    rejects(first_overflow, "out of range")
    rejects([first_overflow], "out of range")
    rejects([1.0] * 300 + [-first_overflow], "index [300]")


def test_float64_holds_what_float32_cannot() -> None:
    assert accepts(1e300, dtype="float64").item() == 1e300
    assert accepts({"dtype": "float64", "data": [1e300, 1.0]}).tolist() == [1e300, 1.0]
    assert accepts([2**70]).item(0) == np.float32(2**70)


def test_non_finite_strings_stay_accepted() -> None:
    got = accepts(["Infinity", "-Infinity", "NaN", 1])
    assert got.dtype == np.float32
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2]) and got[3] == 1
    assert accepts("Infinity").item() == math.inf
    assert math.isnan(accepts({"dtype": "float64", "data": "NaN"}).item())
    got = accepts({"dtype": "float64", "shape": [2, 2], "data": [1, "NaN", "-Infinity", 4]})
    assert got.shape == (2, 2) and got[1, 0] == -np.inf


def test_http_session_put_overflow(api: TestClient) -> None:
    problem(put(api, 1e300), 422, ["body", "value"], "out of range for float32")


def test_http_constant_overflow(api: TestClient) -> None:
    graph = {"nodes": [{"id": "y", "op": "add", "args": ["x", [1e39, 1.0]]}]}
    problem(evaluate(api, [1.0, 1.0], graph), 422, ["body", "graph", "nodes", 0, "args", 1],
            "out of range for float32")


# ----- 6. shapes and nesting -----


def test_too_many_dimensions_in_a_shape() -> None:
    rejects({"dtype": "float32", "shape": [0] * 65, "b64": ""}, "65 dimensions",
            f"at most {MAX_DIMS}", loc=("x", "shape"))
    rejects({"dtype": "float32", "shape": [1] * (MAX_DIMS + 1), "data": [1.0]},
            "dimensions", loc=("x", "shape"))
    got = accepts({"dtype": "float32", "shape": [1] * MAX_DIMS, "data": [1.0]})
    assert got.shape == (1,) * MAX_DIMS


def test_a_dimension_too_large() -> None:
    rejects({"dtype": "float32", "shape": [2**62, 2**62, 0], "b64": ""}, str(MAX_DIM),
            loc=("x", "shape"))
    rejects({"dtype": "float32", "shape": [MAX_DIM + 1], "data": [1.0]}, str(MAX_DIM),
            loc=("x", "shape"))


def test_a_shape_too_large_for_the_element_limit() -> None:
    rejects({"dtype": "float32", "shape": [MAX_DIM, MAX_DIM], "b64": ""}, "limit is 1000",
            loc=("x", "shape"), error=TooLarge, max_elements=1000)
    rejects({"dtype": "float32", "shape": [MAX_DIM, MAX_DIM, 0], "b64": ""},
            "limit is 1000", loc=("x", "shape"), error=TooLarge, max_elements=1000)
    rejects({"dtype": "float32", "shape": [2000], "data": [1.0]}, "limit is 1000",
            loc=("x", "shape"), error=TooLarge, max_elements=1000)
    # without a limit an empty shape still has to fit in memory
    rejects({"dtype": "float32", "shape": [MAX_DIM, MAX_DIM, 0], "b64": ""},
            "non-zero dimensions", loc=("x", "shape"))
    assert accepts({"dtype": "float32", "shape": [3, 0], "b64": ""},
                   max_elements=1000).shape == (3, 0)


@pytest.mark.parametrize("shape", [[True], [-1], [1.5], "2", {"a": 1}, [[2]]])
def test_a_shape_that_is_not_a_list_of_counts(shape: Any) -> None:
    rejects({"dtype": "float32", "shape": shape, "data": [1.0]}, "shape must be a list",
            loc=("x", "shape"))


def test_too_many_nested_levels() -> None:
    rejects(nested(MAX_DIMS + 1), f"at most {MAX_DIMS} dimensions")
    rejects(nested(65), "dimensions")
    rejects({"data": nested(MAX_DIMS + 1)}, "nested levels", loc=("x", "data"))
    assert accepts(nested(MAX_DIMS)).shape == (1,) * MAX_DIMS


def test_ragged_arrays() -> None:
    rejects([[1, 2], [3]], "ragged")
    rejects([[1, 2], 3], "ragged")
    rejects([1, [2]], "ragged")
    rejects([[1, 2], [3], [4, 5, 6]], "ragged")
    rejects([[1.0] * 300, [1.0] * 299], "ragged")
    rejects([[1.0] * 150, [1.0] * 100, [1.0] * 200], "ragged")
    rejects([[1.0] * 300, [1.0] * 299 + [[1.0]]], "ragged")
    rejects([[1.0] * 300, 1.0], "ragged")
    rejects([1.0] * 300 + [nested(40)], "ragged")


def test_http_shape_with_65_dimensions(api: TestClient) -> None:
    problem(evaluate(api, {"dtype": "float32", "shape": [0] * 65, "b64": ""}), 422,
            ["body", "inputs", "x", "shape"], "at most 32")


def test_http_shape_with_a_huge_dimension(api: TestClient) -> None:
    problem(evaluate(api, {"dtype": "float32", "shape": [2**62, 2**62, 0], "b64": ""}), 422,
            ["body", "inputs", "x", "shape"], str(MAX_DIM))


def test_http_shape_over_the_element_limit() -> None:
    settings = Settings(_env_file=None, max_elements=1000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = evaluate(c, {"dtype": "float32", "shape": [MAX_DIM, MAX_DIM], "b64": ""})
        problem(r, 413, ["body", "inputs", "x", "shape"], "1000")


def test_http_too_deeply_nested(api: TestClient) -> None:
    problem(evaluate(api, nested(33)), 422, ["body", "inputs", "x"], "at most 32")


# ----- 7. strings are only the non-finite ones -----


def test_other_strings_are_invalid() -> None:
    rejects("abc", "expected a tensor", "'abc'")
    rejects(["1.5", 2.0], "unexpected string '1.5' in data at index [0]", '"NaN"')
    rejects({"data": [[1.0, "x"]]}, "index [0, 1]", loc=("x", "data"))
    rejects({"dtype": "int32", "data": ["3"]}, "unexpected string", loc=("x", "data"))
    rejects([1.0, {}], "an object at index [1]")
    rejects([[1.0] * 300, [1.0] * 299 + ["1.5"]], "unexpected string '1.5'", "[1, 299]")
    rejects({"dtype": "int64", "data": [1] * 300 + ["2"]}, "unexpected string '2'",
            loc=("x", "data"))


def test_http_constant_with_a_numeric_string(api: TestClient) -> None:
    graph = {"nodes": [{"id": "y", "op": "add", "args": ["x", ["1.5", 1.0]]}]}
    problem(evaluate(api, [1.0, 1.0], graph), 422, ["body", "graph", "nodes", 0, "args", 1],
            "unexpected string '1.5'")


# ----- 8. echoed client strings are clipped -----


def test_long_client_strings_are_clipped() -> None:
    long = "q" * 1_000_000
    for value, loc in [({"dtype": long, "data": 1}, ("x", "dtype")), (long, ("x",)),
                       ([1.0, long], ("x",)), ({"data": [long]}, ("x", "data")),
                       ({long: 1, "data": 1}, ("x",))]:
        detail = rejects(value, "1000000 characters", loc=loc)
        assert len(detail) < 400, len(detail)


def test_huge_integers_are_not_echoed_in_full() -> None:
    detail = rejects([10**1000], "out of range")
    assert len(detail) < 400


def test_http_long_dtype_is_clipped(api: TestClient) -> None:
    body = problem(put(api, {"dtype": "q" * 1_000_000, "data": 1}), 422,
                   ["body", "value", "dtype"], "unknown dtype", "1000000 characters")
    assert len(body["detail"]) < 400


# ----- the fast path agrees with NumPy on clean data -----


@pytest.mark.parametrize("shape", [(), (3,), (2, 2), (300,), (20, 30), (2, 3, 50)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_clean_data_decodes_to_numpys_values(shape: tuple[int, ...], dtype: str) -> None:
    rng = np.random.default_rng(sum(shape) + len(dtype))
    if dtype.startswith("float"):
        expected = (rng.standard_normal(shape) * 1e3).astype(dtype)
    else:
        expected = rng.integers(-1000, 1000, shape).astype(dtype)
    data = expected.tolist()
    got = accepts({"dtype": dtype, "data": data})
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    assert np.array_equal(got, expected)
    bare = accepts(data)
    assert bare.dtype == np.float32 and np.array_equal(bare, expected.astype(np.float32))
