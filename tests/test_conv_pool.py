"""conv, max_pool, avg_pool and batch_norm beyond their spec in test_ops.py: 1-D and 3-D
windows, SAME padding, the channels_last layout, padding counted in averages, result shapes
from type inference, the work estimate, and bad attributes answered as 422 problems that name
the node and the attribute."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.signal
from fastapi.testclient import TestClient

from engine.cost import eqn_flops
from engine.graph import parse_graph
from engine.interpreter import Aval, TypeCache
from tests.test_ops import ENGINE, _same_pads, bind, np_conv, np_pool, tensor

RNG = np.random.default_rng(7)


def evaluate(op: str, *args: np.ndarray, **attrs: Any) -> np.ndarray:
    names = [f"a{i}" for i in range(len(args))]
    node = {"id": "y", "op": op, "args": names, "attrs": attrs}
    return np.asarray(ENGINE.evaluate(bind([node], dict(zip(names, args, strict=True))))["y"])


def test_conv_2d_matches_scipy_correlate() -> None:
    x, w = RNG.normal(size=(1, 1, 6, 5)), RNG.normal(size=(1, 1, 3, 2))
    want = scipy.signal.correlate(x[0, 0], w[0, 0], mode="valid")
    np.testing.assert_allclose(evaluate("conv", x, w)[0, 0], want, rtol=1e-12)


@pytest.mark.parametrize("shape,kernel,strides,dilation", [
    ((2, 3, 9), (4, 3, 3), [2], [2]),  # 1-D
    ((1, 2, 4, 5, 3), (3, 2, 2, 3, 2), [1, 2, 1], [1, 1, 2]),  # 3-D
])
def test_conv_1d_and_3d(shape: tuple[int, ...], kernel: tuple[int, ...], strides: list[int],
                        dilation: list[int]) -> None:
    x, w = RNG.normal(size=shape), RNG.normal(size=kernel)
    pads = [[1, 0]] * (len(shape) - 2)
    got = evaluate("conv", x, w, strides=strides, padding=pads, dilation=dilation)
    np.testing.assert_allclose(got, np_conv(x, w, strides, pads, dilation), rtol=1e-10)


@pytest.mark.parametrize("padding", ["SAME", "SAME_LOWER"])
def test_conv_same_padding_keeps_ceil_of_size_over_stride(padding: str) -> None:
    x, w = RNG.normal(size=(1, 2, 7, 6)), RNG.normal(size=(3, 2, 4, 3))
    got = evaluate("conv", x, w, strides=[2, 2], padding=padding.lower())
    assert got.shape == (1, 3, 4, 3)
    lower = padding == "SAME_LOWER"
    pads = [_same_pads(7, 4, 2, lower), _same_pads(6, 3, 2, lower)]
    np.testing.assert_allclose(got, np_conv(x, w, (2, 2), pads), rtol=1e-10)


def test_depthwise_conv() -> None:
    x, w = RNG.normal(size=(2, 3, 5, 5)), RNG.normal(size=(6, 1, 3, 3))
    got = evaluate("conv", x, w, groups=3)
    np.testing.assert_allclose(got, np_conv(x, w, groups=3), rtol=1e-10)


def test_channels_last_is_the_transposed_channels_first() -> None:
    x, w = RNG.normal(size=(2, 4, 6, 5)), RNG.normal(size=(6, 2, 3, 2))
    attrs = {"strides": [2, 1], "padding": "SAME", "dilation": [1, 2], "groups": 2}
    first = evaluate("conv", x, w, **attrs)
    last = evaluate("conv", x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0),
                    layout="channels_last", **attrs)
    np.testing.assert_allclose(last.transpose(0, 3, 1, 2), first, rtol=1e-12)
    for op in ("max_pool", "avg_pool"):
        a = evaluate(op, x, window=[2, 3], padding="SAME")
        b = evaluate(op, x.transpose(0, 2, 3, 1), window=[2, 3], padding="SAME",
                     layout="channels_last")
        np.testing.assert_allclose(b.transpose(0, 3, 1, 2), a, rtol=1e-12)


def test_pools_default_strides_are_the_window() -> None:
    x = RNG.normal(size=(1, 2, 6, 4))
    got = evaluate("max_pool", x, window=[2, 2])
    assert got.shape == (1, 2, 3, 2)
    np.testing.assert_allclose(got, np_pool(x, (2, 2), (2, 2), ((0, 0), (0, 0)), "max"))


def test_avg_pool_counts_padding_only_when_asked() -> None:
    x = RNG.normal(size=(1, 1, 4, 4)) + 3.0
    pads = ((1, 1), (1, 1))
    without = evaluate("avg_pool", x, window=[3, 3], strides=[1, 1], padding=[[1, 1], [1, 1]])
    with_pads = evaluate("avg_pool", x, window=[3, 3], strides=[1, 1], padding=[[1, 1], [1, 1]],
                         count_include_pad=True)
    np.testing.assert_allclose(without, np_pool(x, (3, 3), (1, 1), pads, "mean"), rtol=1e-12)
    np.testing.assert_allclose(with_pads, np_pool(x, (3, 3), (1, 1), pads, "mean_with_pads"),
                               rtol=1e-12)
    assert with_pads[0, 0, 0, 0] == pytest.approx(x[0, 0, :2, :2].sum() / 9)


def test_pool_1d_and_3d() -> None:
    x1 = RNG.normal(size=(2, 3, 8))
    np.testing.assert_allclose(evaluate("max_pool", x1, window=[3], strides=[2]),
                               np_pool(x1, (3,), (2,), ((0, 0),), "max"))
    x3 = RNG.normal(size=(1, 2, 4, 4, 5))
    np.testing.assert_allclose(evaluate("avg_pool", x3, window=[2, 2, 3], strides=[2, 2, 1]),
                               np_pool(x3, (2, 2, 3), (2, 2, 1), ((0, 0),) * 3, "mean"))


def test_batch_norm_on_another_axis_and_scalar_parameters() -> None:
    x = RNG.normal(size=(2, 5, 3))
    scale, bias = RNG.normal(size=3), RNG.normal(size=3)
    got = evaluate("batch_norm", x, scale, bias, np.zeros(3), np.ones(3), axis=-1, epsilon=0.0)
    np.testing.assert_allclose(got, x * scale + bias, rtol=1e-12)
    got = evaluate("batch_norm", x, np.array(2.0), np.array(1.0), np.array(0.5), np.array(3.0),
                   epsilon=1.0)
    np.testing.assert_allclose(got, (x - 0.5) / 2.0 * 2.0 + 1.0, rtol=1e-12)


@pytest.mark.parametrize("node,inputs,shape", [
    ({"op": "conv", "args": ["x", "w"], "attrs": {"strides": [2, 2], "padding": "SAME"}},
     {"x": (8, 3, 32, 31), "w": (16, 3, 5, 5)}, (8, 16, 16, 16)),
    ({"op": "conv", "args": ["x", "w"], "attrs": {"dilation": [2], "padding": [[3, 0]]}},
     {"x": (1, 2, 10), "w": (4, 2, 3)}, (1, 4, 9)),
    ({"op": "max_pool", "args": ["x"], "attrs": {"window": [3, 3], "strides": [2, 2]}},
     {"x": (8, 3, 32, 31)}, (8, 3, 15, 15)),
    ({"op": "avg_pool", "args": ["x"], "attrs": {"window": [2, 2], "layout": "channels_last"}},
     {"x": (8, 32, 31, 3)}, (8, 16, 15, 3)),
    ({"op": "batch_norm", "args": ["x", "c", "c", "c", "c"]},
     {"x": (8, 3, 32, 31), "c": (3,)}, (8, 3, 32, 31)),
])
def test_type_inference_gives_the_result_shape(node: dict[str, Any],
                                               inputs: dict[str, tuple[int, ...]],
                                               shape: tuple[int, ...]) -> None:
    program = parse_graph({"nodes": [{"id": "y", **node}]}, max_nodes=10, max_elements=10**8)
    avals = {n: Aval(inputs[n], np.dtype(np.float32)) for n in program.inputs}
    assert TypeCache().infer(program, avals).types["y"].shape == shape


def test_work_estimate_of_conv_and_pools() -> None:
    graph = {"nodes": [
        {"id": "c", "op": "conv", "args": ["x", "w"], "attrs": {"groups": 2}},
        {"id": "m", "op": "max_pool", "args": ["x"], "attrs": {"window": [2, 2]}}],
        "outputs": ["c", "m"]}
    program = parse_graph(graph, max_nodes=10, max_elements=10**6)
    avals = {"x": Aval((2, 4, 10, 10), np.dtype(np.float32)),
             "w": Aval((6, 2, 3, 3), np.dtype(np.float32))}
    types = TypeCache().infer(program, avals).types
    conv, pool = program.eqns
    # 2 x 6 x 8 x 8 results, each a dot product of 2 channels x 3 x 3 taps
    assert eqn_flops(conv, [avals["x"], avals["w"]], [types["c"]]) == 2 * (2 * 6 * 8 * 8) * 18
    # each of the 2 x 4 x 5 x 5 results reads a window of 4: every input once
    assert eqn_flops(pool, [avals["x"]], [types["m"]]) == 800


def problem(r: Any, node: str, *fragments: str) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["node"] == node, body
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


X = tensor(np.ones((1, 4, 5, 5), np.float32))
W = tensor(np.ones((2, 4, 3, 3), np.float32))


@pytest.mark.parametrize("attrs,fragments,loc", [
    ({"strides": [1, 1, 1]}, ("'strides'", "one entry per spatial axis (2)"), None),
    ({"dilation": [0, 1]}, ("'dilation'", ">= 1"), "dilation"),
    ({"padding": "FULL"}, ("'padding'", "SAME"), "padding"),
    ({"padding": [[1, 1]]}, ("'padding'", "pair per spatial axis (2)"), None),
    ({"padding": [[1, -1], [0, 0]]}, ("'padding'",), "padding"),
    ({"groups": 3}, ("'groups'",), None),
    ({"layout": "NCHW"}, ("'layout'", "channels_first"), "layout"),
])
def test_bad_conv_attrs_are_422_naming_node_and_attr(client: TestClient, attrs: dict[str, Any],
                                                     fragments: tuple[str, ...],
                                                     loc: str | None) -> None:
    graph = {"nodes": [{"id": "features", "op": "conv", "args": ["x", "w"], "attrs": attrs}]}
    r = client.post("/v1/evaluate", json={"graph": graph, "inputs": {"x": X, "w": W}})
    body = problem(r, "features", *fragments)
    if loc is not None:
        assert ["body", "graph", "nodes", 0, "attrs", loc] in [e["loc"] for e in body["errors"]]


def test_bad_pool_attrs_are_422_naming_node_and_attr(client: TestClient) -> None:
    def pool(attrs: dict[str, Any]) -> Any:
        graph = {"nodes": [{"id": "p", "op": "max_pool", "args": ["x"], "attrs": attrs}]}
        return client.post("/v1/evaluate", json={"graph": graph, "inputs": {"x": X}})

    problem(pool({}), "p", "needs the attribute 'window'")
    problem(pool({"window": [2]}), "p", "'window'", "one entry per spatial axis (2)")
    problem(pool({"window": [2, 2], "strides": [0, 1]}), "p", "'strides'", ">= 1")
    graph = {"nodes": [{"id": "bn", "op": "batch_norm", "args": ["x", "s", "s", "s", "s"]}]}
    r = client.post("/v1/evaluate", json={"graph": graph, "inputs": {"x": X, "s": [1.0, 2.0]}})
    problem(r, "bn", "scale", "one entry per channel (4")
