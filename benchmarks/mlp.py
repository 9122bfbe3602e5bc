"""MLP gradient and HVP: gradtape's Engine against plain jax.jit, in the same process.

The model: MLP 784-512-512-10 with tanh, softmax cross-entropy, batch 128, float32, written
as a gradtape graph (inputs X [128,784], one-hot Y [128,10], W1, b1, W2, b2, W3, b3; output
the mean loss). The graph is parsed once (the in-process counterpart of registering it) and
every call binds a new batch:

- gradtape gradient: Engine.bind_values (NumPy arrays, no wire decoding) + Engine.gradient of
  the loss with respect to the six weights (results come back as NumPy arrays);
- gradtape HVP: the same + Engine.hvp with vectors = random tensors shaped like the weights,
  passed as b64 tensor objects (the engine's only fast way in for vectors, so their decoding
  is part of the call; its cost alone is reported too);
- jax: `jax.jit(jax.grad(loss))` on the same function, and the jitted forward-over-reverse HVP
  `jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])`; `jax.jit(value_and_grad)`
  is shown as well, since Engine.gradient also returns the loss, and the jitted jvp of
  value_and_grad, which returns what Engine.hvp returns (value, gradient and HVP).

Everything is fetched to host (`jax.device_get`) in every variant. The calls are interleaved
(one of each method per iteration) and the table shows medians. The pair the HVP goal compares
(Engine.hvp with include ["hvp"] and NumPy vectors, JAX's jitted HVP) is then timed again
alone, back to back, alternating which goes first: in the rotation each call follows a
different one of the twelve methods, whose memory traffic it inherits.

Goals: gradtape gradient within 1.1x of jit(grad); gradtape HVP within 1.7x of the gradtape
gradient; Engine.hvp with include ["hvp"] within 1.05x of JAX's jitted HVP.

    python benchmarks/mlp.py [--iters 40]
    python benchmarks/mlp.py --smoke    # one timed call each, seconds; writes no results
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _common import environment, median, ms, table, verdict, write_result

from engine.cache import CompileCache
from engine.compute import Engine
from engine.graph import parse_graph
from engine.tensors import decode

BATCH, IN, HIDDEN, OUT = 128, 784, 512, 10
WEIGHTS = ("W1", "b1", "W2", "b2", "W3", "b3")
SHAPES = {"X": (BATCH, IN), "Y": (BATCH, OUT), "W1": (IN, HIDDEN), "b1": (HIDDEN,),
          "W2": (HIDDEN, HIDDEN), "b2": (HIDDEN,), "W3": (HIDDEN, OUT), "b3": (OUT,)}
GRAD_GOAL = 1.1
HVP_GOAL = 1.7
HVP_ONLY_GOAL = 1.05  # Engine.hvp with include ["hvp"] / JAX's jitted HVP


def mlp_graph(activation: str = "tanh") -> dict[str, Any]:
    """The MLP's mean softmax cross-entropy as a gradtape graph."""
    def node(ident: str, op: str, *args: str, **attrs: Any) -> dict[str, Any]:
        n: dict[str, Any] = {"id": ident, "op": op, "args": list(args)}
        if attrs:
            n["attrs"] = attrs
        return n

    return {
        "inputs": {name: {"dtype": "float32", "shape": list(shape)}
                   for name, shape in SHAPES.items()},
        "nodes": [
            node("z1", "matmul", "X", "W1"), node("a1", "add", "z1", "b1"),
            node("h1", activation, "a1"),
            node("z2", "matmul", "h1", "W2"), node("a2", "add", "z2", "b2"),
            node("h2", activation, "a2"),
            node("z3", "matmul", "h2", "W3"), node("logits", "add", "z3", "b3"),
            node("logp", "log_softmax", "logits"),
            node("yl", "multiply", "Y", "logp"),
            node("ll", "sum", "yl", axis=1),
            node("mean_ll", "mean", "ll"),
            node("loss", "negative", "mean_ll"),
        ],
        "outputs": ["loss"],
    }


def jax_loss(params: dict[str, Any], X: Any, Y: Any) -> Any:
    """The same loss written directly with jax.numpy."""
    h1 = jnp.tanh(X @ params["W1"] + params["b1"])
    h2 = jnp.tanh(h1 @ params["W2"] + params["b2"])
    logits = h2 @ params["W3"] + params["b3"]
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(logits), axis=1))


def init_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    w = {}
    for name in WEIGHTS:
        shape = SHAPES[name]
        scale = 1.0 / np.sqrt(shape[0]) if len(shape) == 2 else 0.01
        w[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return w


def batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    X = rng.standard_normal((BATCH, IN)).astype(np.float32)
    Y = np.eye(OUT, dtype=np.float32)[rng.integers(0, OUT, BATCH)]
    return X, Y


def b64(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": "float32", "shape": list(array.shape),
            "b64": base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=40, help="timed calls per method")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches cycled")
    parser.add_argument("--smoke", action="store_true",
                        help="one timed call per method, to check that it works (seconds; "
                        "writes no results)")
    args = parser.parse_args()
    if args.smoke:
        args.iters, args.batches = 1, 2
    env = environment()
    rng = np.random.default_rng(0)
    weights = init_weights(rng)
    batches = [batch(rng) for _ in range(args.batches)]
    vectors = {name: rng.standard_normal(SHAPES[name]).astype(np.float32) for name in WEIGHTS}
    wire_vectors = {name: b64(v) for name, v in vectors.items()}

    engine = Engine(cache=CompileCache())  # the default policy: eager once, then compiled
    program = parse_graph(mlp_graph(), max_nodes=engine.limits.max_nodes,
                          max_elements=engine.limits.max_elements)

    def bound(i: int) -> Any:
        X, Y = batches[i % len(batches)]
        return engine.bind_values(program, {"X": X, "Y": Y, **weights})

    jit_grad = jax.jit(jax.grad(jax_loss))
    jit_value_and_grad = jax.jit(jax.value_and_grad(jax_loss))
    jit_hvp = jax.jit(lambda p, X, Y, v: jax.jvp(lambda q: jax.grad(jax_loss)(q, X, Y),
                                                 (p,), (v,))[1])
    # what Engine.hvp computes and returns: the value, the gradient and the HVP
    jit_value_grad_hvp = jax.jit(lambda p, X, Y, v: jax.jvp(
        lambda q: jax.value_and_grad(jax_loss)(q, X, Y), (p,), (v,)))

    def data(i: int) -> tuple[np.ndarray, np.ndarray]:
        return batches[i % len(batches)]

    # what a session's run keeps: every intermediate of the forward pass, per batch
    names = [n for e in program.eqns for n in e.outs]
    kept = [{k: np.asarray(v) for k, v in engine.evaluate(bound(i), names).items()}
            for i in range(len(batches))]

    methods: dict[str, Callable[[int], Any]] = {
        "jax jit(grad)": lambda i: jax.device_get(jit_grad(weights, *data(i))),
        "jax jit(value_and_grad)": lambda i: jax.device_get(
            jit_value_and_grad(weights, *data(i))),
        "gradtape Engine.gradient": lambda i: engine.gradient(bound(i), "loss", WEIGHTS),
        "gradtape Engine.gradient from kept intermediates": lambda i: engine.gradient(
            bound(i), "loss", WEIGHTS, stored=kept[i % len(batches)]),
        "jax jit(fwd-over-rev HVP)": lambda i: jax.device_get(
            jit_hvp(weights, *data(i), vectors)),
        "jax jit(value, grad and HVP)": lambda i: jax.device_get(
            jit_value_grad_hvp(weights, *data(i), vectors)),
        "gradtape Engine.hvp": lambda i: engine.hvp(bound(i), "loss", WEIGHTS, wire_vectors),
        "gradtape Engine.hvp include [hvp]": lambda i: engine.hvp(
            bound(i), "loss", WEIGHTS, wire_vectors, include=["hvp"]),
        "gradtape Engine.hvp include [hvp], NumPy vectors": lambda i: engine.hvp(
            bound(i), "loss", WEIGHTS, vectors, include=["hvp"]),
        "  b64 decoding of the HVP vectors alone": lambda i: [
            decode(v, max_elements=10**9) for v in wire_vectors.values()],
        "    of which base64.b64decode(validate=True)": lambda i: [
            base64.b64decode(v["b64"], validate=True) for v in wire_vectors.values()],
        "    base64.b64decode(validate=False), for comparison": lambda i: [
            base64.b64decode(v["b64"]) for v in wire_vectors.values()],
    }

    for i in range(3):  # warm-up: the engine's first call is eager, its second compiles
        for fn in methods.values():
            fn(i)
    got = engine.gradient(bound(0), "loss", WEIGHTS)["gradients"]
    want = jax.device_get(jit_grad(weights, *data(0)))
    for name in WEIGHTS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-5)
    got_hvp = engine.hvp(bound(0), "loss", WEIGHTS, wire_vectors)["hvp"]
    want_hvp = jax.device_get(jit_hvp(weights, *data(0), vectors))
    for name in WEIGHTS:
        np.testing.assert_allclose(got_hvp[name], want_hvp[name], rtol=2e-3, atol=1e-4)

    times: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods)
    for i in range(args.iters):
        for name in order[i % len(order):] + order[:i % len(order)]:
            start = time.perf_counter()
            methods[name](i)
            times[name].append(time.perf_counter() - start)

    med = {name: ms(median(ts)) for name, ts in times.items()}
    rows = [[name, med[name], ms(min(ts)), ms(max(ts))] for name, ts in times.items()]
    print(table(["method", "median ms", "min ms", "max ms"], rows,
                title=f"MLP {IN}-{HIDDEN}-{HIDDEN}-{OUT} tanh, batch {BATCH}, float32; "
                f"{args.iters} interleaved calls each, results fetched to host"))

    # the HVP goal's pair again, alone: the two calls back to back, which one goes first
    # alternating, so that neither follows a different neighbour (in the rotation above each
    # call follows another of the twelve methods, whose memory traffic it inherits)
    pair = {"gradtape Engine.hvp include [hvp], NumPy vectors":
            methods["gradtape Engine.hvp include [hvp], NumPy vectors"],
            "jax jit(fwd-over-rev HVP)": methods["jax jit(fwd-over-rev HVP)"]}
    paired: dict[str, list[float]] = {name: [] for name in pair}
    for i in range(args.iters):
        for name in (list(pair) if i % 2 else list(pair)[::-1]):
            start = time.perf_counter()
            pair[name](i)
            paired[name].append(time.perf_counter() - start)
    pg, pj = (ms(median(paired[name])) for name in pair)

    g, jg = med["gradtape Engine.gradient"], med["jax jit(grad)"]
    h, jh = med["gradtape Engine.hvp"], med["jax jit(fwd-over-rev HVP)"]
    ratios = {
        "gradient: gradtape / jax jit(grad)": (g / jg, GRAD_GOAL, g / jg <= GRAD_GOAL),
        "gradient: gradtape / jax jit(value_and_grad)": (
            g / med["jax jit(value_and_grad)"], None, None),
        "gradient from kept intermediates / gradtape gradient (a tape after a run)": (
            med["gradtape Engine.gradient from kept intermediates"] / g, None, None),
        "HVP: gradtape hvp / gradtape gradient": (h / g, HVP_GOAL, h / g <= HVP_GOAL),
        "HVP: jax hvp / jax jit(grad)": (jh / jg, None, None),
        "HVP: gradtape / jax": (h / jh, None, None),
        "HVP include [hvp]: gradtape / jax jit(fwd-over-rev HVP)": (
            med["gradtape Engine.hvp include [hvp]"] / jh, HVP_ONLY_GOAL,
            med["gradtape Engine.hvp include [hvp]"] / jh <= HVP_ONLY_GOAL),
        "HVP include [hvp], NumPy vectors (as JAX gets them) / jax": (
            med["gradtape Engine.hvp include [hvp], NumPy vectors"] / jh, HVP_ONLY_GOAL,
            med["gradtape Engine.hvp include [hvp], NumPy vectors"] / jh <= HVP_ONLY_GOAL),
        "HVP include [hvp], NumPy vectors / jax, the pair alone": (
            pg / pj, HVP_ONLY_GOAL, pg / pj <= HVP_ONLY_GOAL),
        "HVP include [hvp]: (gradtape - b64 decoding) / jax": (
            (med["gradtape Engine.hvp include [hvp]"]
             - med["  b64 decoding of the HVP vectors alone"]) / jh, None, None),
        "HVP: gradtape / jax jit(value, grad and HVP)": (
            h / med["jax jit(value, grad and HVP)"], None, None),
        "HVP: (gradtape - b64 decoding) / jax jit(value, grad and HVP)": (
            (h - med["  b64 decoding of the HVP vectors alone"]) /
            med["jax jit(value, grad and HVP)"], None, None),
    }
    print()
    print(table(["ratio", "value", "goal", "verdict"],
                [[k, v, f"<= {goal}" if goal else "-", verdict(ok) if ok is not None else "-"]
                 for k, (v, goal, ok) in ratios.items()], title="Ratios (of medians)"))

    if args.smoke:
        print("\nsmoke run: no results written")
        return 0
    path = write_result("mlp", {
        "config": {"iters": args.iters, "batches": args.batches, "layers": [IN, HIDDEN, HIDDEN,
                   OUT], "batch": BATCH, "activation": "tanh", "graph": mlp_graph()},
        "goals": {"gradient_over_jit_grad_max": GRAD_GOAL, "hvp_over_gradient_max": HVP_GOAL},
        "median_ms": med,
        "hvp_pair_median_ms": {"gradtape include [hvp], NumPy vectors": pg, "jax": pj},
        "ratios": {k: {"value": v, "goal": goal, "met": ok} for k, (v, goal, ok) in
                   ratios.items()},
        "times_ms": {k: [ms(t) for t in ts] for k, ts in times.items()},
        "compile_cache": engine.cache.stats.as_dict(),
    }, env)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
