"""Register an ONNX model with gradtape, then ask for a saliency map and a Hessian-vector product.

The model is a small classifier built with onnx.helper: probs = softmax(tanh(x W1 + b1) W2 + b2),
with a second output, loss = -sum(label * log_softmax(...)). Its weights are initializers, so on
the server they are inputs with defaults: requests leave them out, and name them in `sources`
to differentiate them.

    GRADTAPE_URL=http://127.0.0.1:8000 python examples/onnx_saliency.py

Needs httpx, numpy and onnx (to build the model); the server needs nothing but the model bytes.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {"W1": rng.normal(size=(4, 8)) / 2, "b1": np.zeros(8),
               "W2": rng.normal(size=(8, 3)) / 3, "b2": np.zeros(3)}
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h0"], name="hidden"),
        helper.make_node("Tanh", ["h0"], ["h"]),
        helper.make_node("Gemm", ["h", "W2", "b2"], ["logits"], name="output"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=-1),
        helper.make_node("Mul", ["logp", "label"], ["picked"]),
        helper.make_node("ReduceSum", ["picked"], ["total"], keepdims=0),
        helper.make_node("Neg", ["total"], ["loss"]),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("label", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def post(client: httpx.Client, path: str, **kwargs: Any) -> Any:
    response = client.post(path, **kwargs)
    response.raise_for_status()
    return response.json()


def main(client: httpx.Client) -> dict[str, Any]:
    model = build_model()
    created = post(client, "/v1/graphs", content=model.SerializeToString(),
                   headers={"Content-Type": "application/onnx"})
    graph_id = created["graph_id"]
    print("registered", graph_id, "inputs:", created["inputs"])

    x = [[0.5, -1.0, 2.0, 0.1]]
    label = [[0.0, 1.0, 0.0]]
    inputs = {"x": x, "label": label}
    probs = post(client, "/v1/evaluate", json={"graph_id": graph_id, "inputs": inputs,
                                              "outputs": ["probs"]})["values"]["probs"]["data"]
    top = int(np.argmax(probs[0]))
    print("probs", probs[0], "top class", top)

    # saliency: d probs[top] / d x, a VJP with a one-hot cotangent
    onehot = [[1.0 if k == top else 0.0 for k in range(3)]]
    saliency = post(client, "/v1/gradient", json={
        "graph_id": graph_id, "inputs": inputs, "target": "probs", "sources": ["x"],
        "output_gradients": onehot})["gradients"]["x"]["data"]
    print("saliency d probs[top] / dx", saliency[0])

    # curvature of the loss along a direction in the first layer's weights
    direction = np.full((4, 8), 0.1).tolist()
    hvp = post(client, "/v1/hvp", json={
        "graph_id": graph_id, "inputs": inputs, "target": "loss", "sources": ["W1"],
        "vectors": {"W1": direction}})
    print("loss", hvp["value"]["data"], "HVP row 0", np.round(hvp["hvp"]["W1"]["data"][0], 6))
    return {"probs": probs, "saliency": saliency, "hvp": hvp}


if __name__ == "__main__":
    with httpx.Client(base_url=os.environ.get("GRADTAPE_URL", "http://127.0.0.1:8000"),
                      timeout=60) as http:
        main(http)
