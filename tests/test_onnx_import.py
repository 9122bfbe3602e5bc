"""ONNX import (docs/API.md, "ONNX import"): models built with onnx.helper are registered with
POST /v1/graphs as application/onnx; their forward pass is compared with onnxruntime, their
gradients (with respect to inputs and to weights, which are inputs with defaults) and HVPs
with central finite differences in float64; unmapped ops, bodies that are not models and other
media types are refused with the documented problems."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from engine.compute import Engine
from engine.graph import parse_graph
from engine.onnx import coverage
from tests.test_ops import tensor

ONNX = {"content-type": "application/onnx"}
FLOAT = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}
ENGINE = Engine()

# ----- model builders: each takes the float dtype, so that the same model runs in float32
# against onnxruntime and in float64 against finite differences


def model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[Any, list[Any]]],
          outputs: dict[str, tuple[Any, list[Any] | None]], weights: dict[str, np.ndarray],
          opset: int = 17) -> onnx.ModelProto:
    def info(name: str, spec: tuple[Any, list[Any] | None]) -> onnx.ValueInfoProto:
        dtype, shape = spec
        return helper.make_tensor_value_info(name, FLOAT.get(dtype, dtype), shape)

    graph = helper.make_graph(nodes, "test", [info(n, s) for n, s in inputs.items()],
                              [info(n, s) for n, s in outputs.items()],
                              [numpy_helper.from_array(v, n) for n, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(proto)
    return proto


def weights(dtype: Any, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, "".join(shapes))))
    return {n: (rng.normal(size=s) / np.sqrt(max(s[-1], 1))).astype(dtype)
            for n, s in shapes.items()}


def logistic_regression(dtype: Any) -> onnx.ModelProto:
    w = weights(dtype, coef=(4, 1), intercept=(1,))
    return model([helper.make_node("Gemm", ["x", "coef", "intercept"], ["logit"], name="linear"),
                  helper.make_node("Sigmoid", ["logit"], ["probability"], name="sigmoid")],
                 {"x": (dtype, ["N", 4])}, {"probability": (dtype, ["N", 1])}, w)


def mlp(dtype: Any) -> onnx.ModelProto:
    w = weights(dtype, w1=(4, 8), b1=(8,), w2=(8, 3), b2=(3,))
    return model([helper.make_node("MatMul", ["x", "w1"], ["h0"]),
                  helper.make_node("Add", ["h0", "b1"], ["h1"]),
                  helper.make_node("Tanh", ["h1"], ["h"]),
                  helper.make_node("MatMul", ["h", "w2"], ["o0"]),
                  helper.make_node("Add", ["o0", "b2"], ["o"]),
                  helper.make_node("LogSoftmax", ["o"], ["y"], axis=-1)],
                 {"x": (dtype, [2, 4])}, {"y": (dtype, [2, 3])}, w, opset=13)


def cnn(dtype: Any) -> onnx.ModelProto:
    """Conv(pads, strides) -> Relu -> MaxPool -> Flatten -> Gemm(transB) -> Softmax."""
    w = weights(dtype, k=(4, 2, 3, 3), kb=(4,), fc=(3, 36), fcb=(3,))
    return model([
        helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv1", pads=[1, 1, 1, 1],
                         strides=[1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["y"], axis=1)],
        {"x": (dtype, [2, 2, 6, 6])}, {"y": (dtype, [2, 3])}, w, opset=13)


def cnn_more(dtype: Any) -> onnx.ModelProto:
    """BatchNormalization, AveragePool with SAME padding, GlobalAveragePool, a Reshape whose
    shape is computed from Shape (folded at import), Transpose, Concat, ReduceMean, Clip,
    LeakyRelu, Dropout, Pow, Sqrt, Exp, Log, Neg, Abs, Div, Sub, Squeeze and Unsqueeze."""
    w = weights(dtype, k=(3, 2, 2, 2), scale=(3,), bias=(3,), mean=(3,), var=(3,))
    w["var"] = np.abs(w["var"]) + 0.5
    two = numpy_helper.from_array(np.array(2.0, dtype), "two")
    return model([
        helper.make_node("Conv", ["x", "k"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"],
                         epsilon=1e-3),
        helper.make_node("LeakyRelu", ["bn"], ["lr"], alpha=0.1),
        helper.make_node("Dropout", ["lr"], ["d"]),
        helper.make_node("AveragePool", ["d"], ["ap"], kernel_shape=[2, 2], auto_pad="SAME_UPPER"),
        helper.make_node("GlobalAveragePool", ["ap"], ["g"]),
        helper.make_node("Shape", ["g"], ["gs"]),
        helper.make_node("Gather", ["gs", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["g", "target"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["t"], perm=[1, 0]),
        helper.make_node("Constant", [], ["two_c"], value=two),
        helper.make_node("Pow", ["t", "two_c"], ["sq"]),
        helper.make_node("Add", ["sq", "two_c"], ["sq2"]),
        helper.make_node("Sqrt", ["sq2"], ["rt"]),
        helper.make_node("Log", ["rt"], ["lg"]),
        helper.make_node("Exp", ["t"], ["ex"]),
        helper.make_node("Div", ["lg", "ex"], ["q"]),
        helper.make_node("Neg", ["q"], ["nq"]),
        helper.make_node("Abs", ["nq"], ["aq"]),
        helper.make_node("Sub", ["aq", "t"], ["s"]),
        helper.make_node("Clip", ["s", "lo", "hi"], ["cl"]),
        helper.make_node("Concat", ["cl", "t"], ["both"], axis=0),
        helper.make_node("ReduceMean", ["both", "zero_axis"], ["m"], keepdims=1),
        helper.make_node("Squeeze", ["m", "zero_axis"], ["y"])],
        {"x": (dtype, [2, 2, 5, 5])}, {"y": (dtype, [2])},
        {**w, "zero": np.array(0, np.int64), "zero_axis": np.array([0], np.int64),
         "minus_one": np.array([-1], np.int64), "lo": np.array(-3.0, dtype),
         "hi": np.array(3.0, dtype)}, opset=18)


def opset_10(dtype: Any) -> onnx.ModelProto:
    """The attribute forms that later opsets moved into inputs: Squeeze and Unsqueeze axes,
    ReduceSum axes, Clip bounds, and Softmax over the input coerced to 2-D."""
    w = weights(dtype, w=(3, 4))
    return model([
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Unsqueeze", ["h"], ["u"], axes=[1]),
        helper.make_node("Clip", ["u"], ["c"], min=-0.5, max=0.5),
        helper.make_node("Softmax", ["c"], ["s"], axis=1),
        helper.make_node("ReduceSum", ["s"], ["r"], axes=[2], keepdims=1),
        helper.make_node("Squeeze", ["r"], ["y"], axes=[1, 2])],
        {"x": (dtype, [2, 3])}, {"y": (dtype, [2])}, w, opset=10)


MODELS: dict[str, Callable[[Any], onnx.ModelProto]] = {
    "logistic_regression": logistic_regression, "mlp": mlp, "cnn": cnn, "cnn_more": cnn_more,
    "opset_10": opset_10}


def example_input(proto: onnx.ModelProto, dtype: Any, batch: int = 2) -> np.ndarray:
    dims = [d.dim_value or batch for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(5).normal(size=dims).astype(dtype)


def register(client: TestClient, proto: onnx.ModelProto, status: int = 201) -> dict[str, Any]:
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


def arr(t: dict[str, Any]) -> np.ndarray:
    return np.asarray(t["data"], dtype=t["dtype"])


# ----- forward against onnxruntime


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_matches_onnxruntime(client: TestClient, name: str) -> None:
    proto = MODELS[name](np.float32)
    created = register(client, proto)
    x = example_input(proto, np.float32)
    x_name = proto.graph.input[0].name
    (want,) = ort.InferenceSession(proto.SerializeToString()).run(None, {x_name: x})
    r = client.post("/v1/evaluate", json={"graph_id": created["graph_id"],
                                          "inputs": {x_name: x.tolist()}})
    assert r.status_code == 200, r.text
    out = proto.graph.output[0].name
    got = arr(r.json()["values"][out])
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_a_dynamic_batch_axis_takes_any_batch(client: TestClient) -> None:
    proto = logistic_regression(np.float32)
    gid = register(client, proto)["graph_id"]
    session = ort.InferenceSession(proto.SerializeToString())
    for batch in (1, 5):
        x = example_input(proto, np.float32, batch)
        r = client.post("/v1/evaluate", json={"graph_id": gid, "inputs": {"x": x.tolist()}})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(arr(r.json()["values"]["probability"]),
                                   session.run(None, {"x": x})[0], rtol=1e-5)


# ----- gradients and HVPs against finite differences, in float64


def translated(client: TestClient, gid: str) -> Any:
    graph = client.get(f"/v1/graphs/{gid}").json()["graph"]
    return parse_graph(graph, max_nodes=1000, max_elements=10**6)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_match_finite_differences(client: TestClient, name: str) -> None:
    """The VJP with a random cotangent, with respect to the input (the default source) and to
    every weight (named in sources), against central differences of <cot, f>; on a few
    elements of each."""
    proto = MODELS[name](np.float64)
    gid = register(client, proto)["graph_id"]
    program = translated(client, gid)
    x_name, out = proto.graph.input[0].name, proto.graph.output[0].name
    x = example_input(proto, np.float64)
    values = {x_name: x, **{n: np.array(v) for n, v in program.input_defaults.items()}}
    floats = [n for n, v in values.items() if v.dtype == np.float64]
    base = ENGINE.evaluate(ENGINE.bind(program, {x_name: tensor(x)}))[out]
    cot = np.random.default_rng(3).normal(size=np.shape(base))
    request = {"graph_id": gid, "inputs": {x_name: tensor(x)}, "target": out,
               "output_gradients": tensor(cot)}
    r = client.post("/v1/gradient", json=request)
    assert r.status_code == 200, r.text
    assert list(r.json()["gradients"]) == [x_name]  # weights only when named
    r = client.post("/v1/gradient", json={**request, "sources": floats})
    assert r.status_code == 200, r.text
    grads = {n: arr(g) for n, g in r.json()["gradients"].items()}

    def contracted(name: str, value: np.ndarray) -> float:
        sent = {x_name: tensor(x), name: tensor(value)}
        return float(np.vdot(cot, ENGINE.evaluate(ENGINE.bind(program, sent))[out]))

    rng = np.random.default_rng(11)
    for name in floats:
        v = values[name]
        for flat in rng.choice(v.size, size=min(v.size, 6), replace=False):
            i = np.unravel_index(flat, v.shape)
            h = 1e-6 * max(1.0, abs(v[i]))
            plus, minus = v.copy(), v.copy()
            plus[i] += h
            minus[i] -= h
            fd = (contracted(name, plus) - contracted(name, minus)) / (2 * h)
            assert grads[name][i] == pytest.approx(fd, rel=1e-5, abs=1e-7), (name, i)


def test_hvp_with_respect_to_weights(client: TestClient) -> None:
    """HVP of a scalar loss of the MLP in its first layer's weights, against central
    differences of the gradient."""
    proto = mlp(np.float64)
    loss = [helper.make_node("ReduceSum", ["y"], ["loss"], keepdims=0)]
    graph = helper.make_graph([*proto.graph.node, *loss], "mlp_loss", proto.graph.input,
                              [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])],
                              proto.graph.initializer)
    proto = helper.make_model(graph, opset_imports=proto.opset_import)
    gid = register(client, proto)["graph_id"]
    x = example_input(proto, np.float64)
    w1 = numpy_helper.to_array(proto.graph.initializer[0])
    v = np.random.default_rng(2).normal(size=w1.shape)
    r = client.post("/v1/hvp", json={"graph_id": gid, "inputs": {"x": tensor(x)},
                                     "target": "loss", "sources": ["w1"],
                                     "vectors": {"w1": tensor(v)}})
    assert r.status_code == 200, r.text
    h = 1e-5

    def grad(w: np.ndarray) -> np.ndarray:
        r = client.post("/v1/gradient", json={"graph_id": gid, "target": "loss",
                                              "inputs": {"x": tensor(x), "w1": tensor(w)},
                                              "sources": ["w1"]})
        return arr(r.json()["gradients"]["w1"])

    fd = (grad(w1 + h * v) - grad(w1 - h * v)) / (2 * h)
    np.testing.assert_allclose(arr(r.json()["hvp"]["w1"]), fd, rtol=1e-5, atol=1e-8)


# ----- what the import answers besides


def test_the_translation_is_an_ordinary_graph(client: TestClient) -> None:
    proto = cnn(np.float32)
    created = register(client, proto)
    assert created["inputs"] == ["x", "k", "kb", "fc", "fcb"]
    assert created["outputs"] == ["y"]
    body = client.get(f"/v1/graphs/{created['graph_id']}").json()
    graph = body["graph"]
    assert graph["inputs"]["x"] == {"dtype": "float32", "shape": [2, 2, 6, 6]}
    k = graph["inputs"]["k"]
    assert (k["dtype"], k["shape"], k["default"]["shape"]) == ("float32", [4, 2, 3, 3],
                                                              [4, 2, 3, 3])
    assert [n["op"] for n in graph["nodes"]] == ["conv", "reshape", "add", "relu", "max_pool",
                                                 "reshape", "transpose", "matmul", "add",
                                                 "softmax"]
    # the id is that of the translated graph: sent as JSON, it is the same graph
    again = client.post("/v1/graphs", json=graph)
    assert again.status_code == 200 and again.json()["graph_id"] == created["graph_id"]
    # and the model sent again is known
    assert register(client, proto, 200)["graph_id"] == created["graph_id"]


def test_shape_arithmetic_is_computed_at_import(client: TestClient) -> None:
    graph = client.get(f"/v1/graphs/{register(client, cnn_more(np.float32))['graph_id']}"
                       ).json()["graph"]
    ops = [n["op"] for n in graph["nodes"]]
    assert "take" not in ops and "concatenate" in ops  # Shape -> Gather -> ... was folded
    reshape = next(n for n in graph["nodes"] if n["op"] == "reshape" and n["id"] == "flat")
    assert reshape["attrs"]["shape"] == [2, -1]
    # integer initializers read as constants (axes, shapes) are not inputs
    assert set(graph["inputs"]) == {"x", "k", "scale", "bias", "mean", "var", "lo", "hi"}


def problem(r: Any, status: int, *fragments: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


def test_an_unmapped_op_is_a_422_naming_the_node_and_its_op_type(client: TestClient) -> None:
    proto = model([helper.make_node("Relu", ["x"], ["r"], name="act"),
                   helper.make_node("Hardmax", ["r"], ["y"], name="pick")],
                  {"x": (np.float32, [2, 3])}, {"y": (np.float32, [2, 3])}, {})
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    body = problem(r, 422, "ONNX node 'pick' (Hardmax)", "'Hardmax' has no mapping")
    assert body["node"] == "pick"
    assert ["body", "graph", "node", 1] in [e["loc"] for e in body["errors"]]
    # a node without a name is named by its index
    proto.graph.node[1].ClearField("name")
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    assert problem(r, 422, "ONNX node '#1' (Hardmax)")["node"] == "#1"


def test_an_op_outside_its_opsets_is_a_422(client: TestClient) -> None:
    proto = model([helper.make_node("Add", ["x", "x"], ["y"], name="sum")],
                  {"x": (np.float32, [2])}, {"y": (np.float32, [2])}, {}, opset=6)
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    problem(r, 422, "ONNX node 'sum' (Add)", "at opset 6 is not covered", "opsets 7 to")


def test_an_output_the_import_does_not_compute_is_a_422(client: TestClient) -> None:
    proto = model([helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
                   helper.make_node("Cast", ["mask"], ["y"], name="use_mask",
                                    to=TensorProto.FLOAT)],
                  {"x": (np.float32, [2])}, {"y": (np.float32, [2])}, {})
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    problem(r, 422, "ONNX node 'use_mask' (Cast)", "'mask' is not produced")


def test_unsupported_element_types_are_a_422(client: TestClient) -> None:
    proto = model([helper.make_node("Relu", ["x"], ["y"])],
                  {"x": (TensorProto.FLOAT16, [2])}, {"y": (TensorProto.FLOAT16, [2])}, {})
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    problem(r, 422, "graph input 'x' has element type FLOAT16")


@pytest.mark.parametrize("content", [b"not a model", b"\x08\x07\x12\x04", b""])
def test_a_body_that_is_not_a_model_is_a_422(client: TestClient, content: bytes) -> None:
    r = client.post("/v1/graphs", content=content, headers=ONNX)
    problem(r, 422, "ONNX model")


def test_another_media_type_is_a_415(client: TestClient) -> None:
    r = client.post("/v1/graphs", content=logistic_regression(np.float32).SerializeToString(),
                    headers={"content-type": "application/octet-stream"})
    problem(r, 415, "application/json or application/onnx")


def test_json_bodies_are_checked_as_before(client: TestClient) -> None:
    r = client.post("/v1/graphs", content=b'{"nodes": [', headers={"content-type":
                                                                    "application/json"})
    problem(r, 400, "malformed JSON")
    r = client.post("/v1/graphs", json={"nodes": []})
    body = problem(r, 422, "nodes")
    assert body["errors"][0]["loc"] == ["body", "nodes"]
    problem(client.post("/v1/graphs"), 422, "Field required")


def test_the_openapi_document_lists_both_media_types(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/graphs"]["post"]
    content = operation["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Graph"}
    assert content["application/onnx"]["schema"]["format"] == "binary"


def test_the_coverage_table_is_documented() -> None:
    """docs/ONNX.md lists every mapped op type with its opsets."""
    text = (Path(__file__).parent.parent / "docs" / "ONNX.md").read_text()
    rows = {m[0]: m[1] for m in re.findall(r"^\| `(\w+)` \| ([\d]+-[\d]+) \|", text, re.M)}
    for entry in coverage():
        lo, hi = entry["opsets"]
        assert rows.get(entry["op_type"]) == f"{lo}-{hi}", entry


def test_the_saliency_example(client: TestClient) -> None:
    """examples/onnx_saliency.py against the app: its saliency is the derivative of the top
    class's probability, as central differences of onnxruntime's forward pass give it."""
    import importlib.util

    path = Path(__file__).parent.parent / "examples" / "onnx_saliency.py"
    spec = importlib.util.spec_from_file_location("onnx_saliency", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(client)
    session = ort.InferenceSession(example.build_model().SerializeToString())
    x = np.array([[0.5, -1.0, 2.0, 0.1]], np.float32)
    label = np.array([[0.0, 1.0, 0.0]], np.float32)
    top = int(np.argmax(result["probs"][0]))
    fd = np.zeros(4)
    for i in range(4):
        step = np.zeros_like(x)
        step[0, i] = 1e-2
        plus = session.run(["probs"], {"x": x + step, "label": label})[0][0, top]
        minus = session.run(["probs"], {"x": x - step, "label": label})[0][0, top]
        fd[i] = (plus - minus) / 2e-2
    np.testing.assert_allclose(result["saliency"][0], fd, rtol=1e-2, atol=1e-3)
    hvp = np.asarray(result["hvp"]["hvp"]["W1"]["data"])
    assert hvp.shape == (4, 8) and np.isfinite(hvp).all() and np.abs(hvp).max() > 0
