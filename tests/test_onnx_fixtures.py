"""ONNX import of models exported by real frameworks (docs/ONNX.md, "Models of the
frameworks"): the fixtures under tests/fixtures/onnx, made once by make_fixtures.py
(scikit-learn, Keras) and export_torch.py (PyTorch), are registered with POST /v1/graphs as
application/onnx. Their forward pass is compared with onnxruntime and with the framework's own
answer saved beside them; their gradients (input saliency, and with respect to every weight)
with central finite differences of the translated graph computed in float64, and (PyTorch's
models, written again in jax.numpy from their weights) with `jax.grad`.

Every fixture listed in manifest.json must be there: a missing one fails, it is not skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from engine.compute import Engine
from engine.graph import parse_graph
from engine.tensors import decode, encode, is_tensor_object
from tests.test_onnx_import import ONNX, arr, model, problem, register
from tests.test_ops import tensor

FOLDER = Path(__file__).parent / "fixtures" / "onnx"
MANIFEST: list[dict[str, Any]] = json.loads((FOLDER / "manifest.json").read_text())["fixtures"]
ENTRIES = {entry["name"]: entry for entry in MANIFEST}
FOUND = sorted(path.stem for path in FOLDER.glob("*.onnx"))
MAX_BYTES = 200_000
ENGINE = Engine()


def load(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    with np.load(FOLDER / f"{name}.npz") as saved:
        return onnx.load(FOLDER / f"{name}.onnx"), dict(saved)


def input_name(proto: onnx.ModelProto) -> str:
    initializers = {t.name for t in proto.graph.initializer}
    (name,) = [v.name for v in proto.graph.input if v.name not in initializers]
    return name


def in_float64(graph: dict[str, Any]) -> dict[str, Any]:
    """The translated graph computing in float64: float32 inputs, their defaults, constants
    and casts become float64 (the attribute weights of ai.onnx.ml ops included)."""
    def widen(value: Any) -> Any:
        if is_tensor_object(value) and value["dtype"] == "float32":
            return encode(decode(value).astype(np.float64), encoding="base64")
        return value

    inputs = {}
    for name, spec in graph["inputs"].items():
        spec = dict(spec)
        if spec["dtype"] == "float32":
            spec["dtype"] = "float64"
            if "default" in spec:
                spec["default"] = widen(spec["default"])
        inputs[name] = spec
    nodes = []
    for node in graph["nodes"]:
        node = {**node, "args": [widen(a) for a in node["args"]]}
        if node["op"] == "cast" and node["attrs"]["dtype"] == "float32":
            node["attrs"] = {**node["attrs"], "dtype": "float64"}
        nodes.append(node)
    return {**graph, "inputs": inputs, "nodes": nodes}


# ----- the fixtures are there, and small


def test_every_fixture_of_the_manifest_is_there() -> None:
    """A fixture listed in manifest.json and missing fails here; one in the folder and not in
    the manifest fails too (the tests would not know which outputs to compare)."""
    assert {"sklearn_linear_regression", "sklearn_logistic_binary", "sklearn_logistic_3class",
            "sklearn_mlp_classifier", "keras_mlp", "keras_cnn"} <= set(ENTRIES)
    missing = [f"{name}.{ext}" for name in ENTRIES for ext in ("onnx", "npz")
               if not (FOLDER / f"{name}.{ext}").is_file()]
    assert not missing, f"fixtures listed in manifest.json are missing: {missing}"
    assert set(FOUND) == set(ENTRIES), "every .onnx fixture needs its manifest.json entry"
    for name in ENTRIES:
        for ext in ("onnx", "npz"):
            assert (FOLDER / f"{name}.{ext}").stat().st_size < MAX_BYTES, (name, ext)
        proto, saved = load(name)
        onnx.checker.check_model(proto)
        assert {"x", "y"} <= set(saved) and ("label" in saved) == bool(
            ENTRIES[name]["label_output"]), name


# ----- forward: onnxruntime and the framework's own answer


@pytest.mark.parametrize("name", FOUND)
def test_forward_matches_onnxruntime_and_the_framework(client: TestClient, name: str) -> None:
    entry = ENTRIES[name]
    proto, saved = load(name)
    gid = register(client, proto)["graph_id"]
    x_name, session = input_name(proto), ort.InferenceSession(proto.SerializeToString())
    outputs = [o.name for o in proto.graph.output]
    for batch in (saved["x"], saved["x"][:1]):  # every fixture has a dynamic batch axis
        r = client.post("/v1/evaluate", json={"graph_id": gid, "inputs": {x_name: tensor(batch)}})
        assert r.status_code == 200, r.text
        got = {n: arr(r.json()["values"][n]) for n in outputs}
        for out, want in zip(outputs, session.run(outputs, {x_name: batch}), strict=True):
            assert (got[out].dtype, got[out].shape) == (want.dtype, want.shape), out
            if want.dtype.kind == "f":
                np.testing.assert_allclose(got[out], want, rtol=2e-5, atol=2e-6, err_msg=out)
            else:
                np.testing.assert_array_equal(got[out], want, err_msg=out)
    # the whole batch, against the framework itself (scikit-learn computes in float64)
    y, main = saved["y"], got_full(client, gid, x_name, saved["x"], entry["output"])
    assert main.size == y.size
    np.testing.assert_allclose(main.reshape(y.shape), y, rtol=1e-4, atol=1e-5)
    if entry["label_output"]:
        label = got_full(client, gid, x_name, saved["x"], entry["label_output"])
        np.testing.assert_array_equal(label, saved["label"])


def got_full(client: TestClient, gid: str, x_name: str, x: np.ndarray, out: str
             ) -> np.ndarray:
    r = client.post("/v1/evaluate", json={"graph_id": gid, "inputs": {x_name: tensor(x)},
                                          "outputs": [out]})
    assert r.status_code == 200, r.text
    return arr(r.json()["values"][out])


# ----- gradients against central differences, in float64


@pytest.mark.parametrize("name", FOUND)
def test_gradients_match_finite_differences(client: TestClient, name: str) -> None:
    """The VJP of the compared output with a random cotangent, with respect to the input
    (saliency) and to every float weight, against central differences of <cot, f> on a few
    elements of each, with the translated graph in float64; the float32 gradients of the
    model as sent agree with them to float32 precision."""
    proto, saved = load(name)
    out, x_name = ENTRIES[name]["output"], input_name(proto)
    gid32 = register(client, proto)["graph_id"]
    graph = in_float64(client.get(f"/v1/graphs/{gid32}").json()["graph"])
    r = client.post("/v1/graphs", json=graph)
    assert r.status_code == 201, r.text
    gid = r.json()["graph_id"]
    program = parse_graph(graph, max_nodes=1000, max_elements=10**6)
    x = saved["x"].astype(np.float64)
    values = {x_name: x, **{n: np.array(v) for n, v in program.input_defaults.items()}}
    sources = [n for n, v in values.items() if v.dtype == np.float64]
    assert len(sources) >= 2, "a weight to differentiate"
    base = ENGINE.evaluate(ENGINE.bind(program, {x_name: tensor(x)}))[out]
    cot = np.random.default_rng(3).normal(size=np.shape(base))
    request = {"inputs": {x_name: tensor(x)}, "target": out, "output_gradients": tensor(cot),
               "sources": sources}
    r = client.post("/v1/gradient", json={"graph_id": gid, **request})
    assert r.status_code == 200, r.text
    grads = {n: arr(g) for n, g in r.json()["gradients"].items()}

    def contracted(source: str, value: np.ndarray) -> float:
        sent = {x_name: tensor(x), source: tensor(value)}
        return float(np.vdot(cot, ENGINE.evaluate(ENGINE.bind(program, sent))[out]))

    rng = np.random.default_rng(11)
    for source in sources:
        v = values[source]
        assert grads[source].shape == v.shape and np.abs(grads[source]).max() > 0, source
        for flat in rng.choice(v.size, size=min(v.size, 6), replace=False):
            i = np.unravel_index(flat, v.shape)
            h = 1e-6 * max(1.0, abs(v[i]))
            plus, minus = v.copy(), v.copy()
            plus[i] += h
            minus[i] -= h
            fd = (contracted(source, plus) - contracted(source, minus)) / (2 * h)
            assert grads[source][i] == pytest.approx(fd, rel=1e-5, abs=1e-7), (source, i)

    request32 = {**request, "inputs": {x_name: tensor(saved["x"])},
                 "output_gradients": tensor(cot.astype(np.float32))}
    r = client.post("/v1/gradient", json={"graph_id": gid32, **request32})
    assert r.status_code == 200, r.text
    for source, g in r.json()["gradients"].items():
        g32, g64 = arr(g), grads[source]
        assert g32.dtype == np.float32, source
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-5 * np.abs(g64).max(),
                                   err_msg=source)


# ----- the ai.onnx.ml mappings beyond what the fixtures use, and their refusals



def ml_model(node: onnx.NodeProto, x_shape: list[Any], y_shape: list[Any]) -> onnx.ModelProto:
    """One ai.onnx.ml node; a LinearClassifier's label output is an extra graph output."""
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)]
    if "label" in node.output:
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    graph = helper.make_graph([node], "ml", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, x_shape)], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", 1)])


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer_matches_onnxruntime(client: TestClient, norm: str) -> None:
    """Each row by its norm; a row whose norm is 0 stays as it is."""
    proto = ml_model(helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml",
                                      norm=norm), ["N", 3], ["N", 3])
    gid = register(client, proto)["graph_id"]
    x = np.array([[1.0, -2.0, 4.0], [0.0, 0.0, 0.0], [0.5, 3.0, 1.5]], np.float32)
    (want,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})
    got = got_full(client, gid, "x", x, "y")
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("transform", ["NONE", "LOGISTIC", "SOFTMAX"])
def test_linear_regressor_with_two_targets(client: TestClient, transform: str) -> None:
    coefficients = np.random.default_rng(1).normal(size=(2, 3))
    proto = ml_model(helper.make_node(
        "LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml", name="reg", targets=2,
        coefficients=coefficients.ravel().tolist(), intercepts=[0.5, -1.0],
        post_transform=transform), ["N", 3], ["N", 2])
    created = register(client, proto)
    assert created["inputs"] == ["x", "reg/coefficients", "reg/intercepts"]
    x = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    (want,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(got_full(client, created["graph_id"], "x", x, "y"), want,
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("x_shape", [[5], [2, 5]])
def test_array_feature_extractor_matches_onnxruntime(client: TestClient,
                                                     x_shape: list[int]) -> None:
    """The entries of the last axis at the indices; a 1-D input gives one row."""
    node = helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["y"], domain="ai.onnx.ml")
    graph = helper.make_graph(
        [node], "afe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                        helper.make_tensor_value_info("i", TensorProto.INT64, [3, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    gid = register(client, proto)["graph_id"]
    x = np.arange(np.prod(x_shape), dtype=np.float32).reshape(x_shape)
    i = np.array([[4], [0], [2]], np.int64)
    (want,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x, "i": i})
    r = client.post("/v1/evaluate", json={"graph_id": gid, "inputs": {"x": tensor(x),
                                                                      "i": tensor(i)}})
    assert r.status_code == 200, r.text
    got = arr(r.json()["values"]["y"])
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_unsupported_ml_forms_are_a_422(client: TestClient) -> None:
    def refused(node: onnx.NodeProto, *fragments: str) -> None:
        proto = ml_model(node, ["N", 2], ["N", 2])
        r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
        problem(r, 422, *fragments)

    refused(helper.make_node("LinearClassifier", ["x"], ["label", "y"], domain="ai.onnx.ml",
                             name="lc", coefficients=[1.0, 2.0, 3.0, 4.0],
                             classlabels_strings=["a", "b"]),
            "ONNX node 'lc' (LinearClassifier)", "string class labels")
    refused(helper.make_node("LinearClassifier", ["x"], ["label", "y"], domain="ai.onnx.ml",
                             name="lc", coefficients=[1.0, 2.0], classlabels_ints=[0, 1]),
            "one row of coefficients per class")
    refused(helper.make_node("LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml", name="r",
                             coefficients=[1.0, 2.0], post_transform="PROBIT"),
            "post_transform 'PROBIT' is not supported")
    refused(helper.make_node("ZipMap", ["x"], ["y"], domain="ai.onnx.ml", name="z",
                             classlabels_int64s=[0, 1]),
            "'ZipMap' (domain 'ai.onnx.ml') has no mapping")


# ----- a Reshape whose target comes from a dynamic batch axis (tf2onnx's Flatten)


def dynamic_flatten(target_nodes: list[onnx.NodeProto], y_shape: list[Any]
                    ) -> onnx.ModelProto:
    return model([helper.make_node("Shape", ["x"], ["s"]),
                  helper.make_node("Slice", ["s", "zero", "one"], ["batch"]),
                  *target_nodes,
                  helper.make_node("Reshape", ["x", "target"], ["y"], name="flatten")],
                 {"x": (np.float32, ["N", 2, 3])}, {"y": (np.float32, y_shape)},
                 {"zero": np.array([0], np.int64), "one": np.array([1], np.int64),
                  "six": np.array([6], np.int64)})


def test_a_reshape_to_a_dynamic_batch_axis(client: TestClient) -> None:
    proto = dynamic_flatten([helper.make_node("Concat", ["batch", "six"], ["target"], axis=0)],
                            ["N", 6])
    gid = register(client, proto)["graph_id"]
    graph = client.get(f"/v1/graphs/{gid}").json()["graph"]
    assert [(n["op"], n.get("attrs")) for n in graph["nodes"]] == [("reshape", {"shape": [-1, 6]})]
    for batch in (1, 4):
        x = np.arange(batch * 6, dtype=np.float32).reshape(batch, 2, 3)
        np.testing.assert_array_equal(got_full(client, gid, "x", x, "y"), x.reshape(batch, 6))


def test_a_dynamic_shape_read_otherwise_is_a_422(client: TestClient) -> None:
    # the target leaves two dimensions unknown to shape inference
    proto = dynamic_flatten([helper.make_node("Concat", ["batch", "batch", "six"], ["target"],
                                              axis=0)], ["N", "N", 6])
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    problem(r, 422, "ONNX node 'flatten' (Reshape)", "more than one dimension")
    # a tensor computed from the batch size
    proto = model([helper.make_node("Shape", ["x"], ["s"]),
                   helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
                   helper.make_node("Mul", ["x", "sf"], ["y"], name="scale")],
                  {"x": (np.float32, ["N"])}, {"y": (np.float32, ["N"])}, {})
    r = client.post("/v1/graphs", content=proto.SerializeToString(), headers=ONNX)
    problem(r, 422, "ONNX node 'scale' (Mul)", "computed from a shape that is not static")


# ----- gradients against JAX on the same function, written by hand from the weights


def _torch_mlp(w: dict[str, Any], x: Any) -> Any:
    h = jnp.tanh(x @ w["0.weight"].T + w["0.bias"])
    return jax_softmax(h @ w["2.weight"].T + w["2.bias"])


def _torch_cnn(w: dict[str, Any], x: Any) -> Any:
    c = jax.lax.conv_general_dilated(x, w["0.weight"], (1, 1), [(1, 1), (1, 1)])
    r = jax.nn.relu(c + w["0.bias"][None, :, None, None])
    p = jax.lax.reduce_window(r, -np.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    return jax_softmax(p.reshape(p.shape[0], -1) @ w["4.weight"].T + w["4.bias"])


def jax_softmax(z: Any) -> Any:
    return jax.nn.softmax(z, axis=1)


@pytest.mark.parametrize("name, fn", [("torch_mlp", _torch_mlp), ("torch_cnn", _torch_cnn)])
def test_gradients_match_jax_on_the_same_function(client: TestClient, name: str,
                                                   fn: Any) -> None:
    proto, saved = load(name)
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    x = saved["x"]
    out, x_name = ENTRIES[name]["output"], input_name(proto)
    gid = register(client, proto)["graph_id"]
    cot = np.random.default_rng(5).normal(size=saved["y"].shape).astype(np.float32)
    r = client.post("/v1/gradient", json={
        "graph_id": gid, "inputs": {x_name: tensor(x)}, "target": out,
        "output_gradients": tensor(cot), "sources": [x_name, *weights]})
    assert r.status_code == 200, r.text
    got = {n: arr(g) for n, g in r.json()["gradients"].items()}
    want_w, want_x = jax.grad(lambda w, v: (fn(w, v) * cot).sum(), argnums=(0, 1))(weights, x)
    np.testing.assert_allclose(got[x_name], want_x, rtol=1e-4, atol=1e-6)
    for n in weights:
        np.testing.assert_allclose(got[n], want_w[n], rtol=1e-4, atol=1e-6, err_msg=n)
