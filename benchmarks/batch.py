"""What `batch` costs: per-example gradients of a small model, three ways, in this process.

The model is a tanh MLP (8 -> width -> 1) on ONE example, its loss the squared error against a
target; the question is the gradient of each example's loss with respect to the weights, for B
examples (what DP-SGD and influence functions need):

- `batch`: one `Engine.gradient` with `batch={"x": 0, "y": 0}` (the query under `jax.vmap`);
- `loop`: B `Engine.gradient` calls on one example each (what a client does without `batch`);
- `jax.jit(jax.vmap(jax.grad))`: the same in plain JAX, the floor.

Rounds alternate between the three; the table gives medians per call and the ratios. The
batched answer is checked against the loop's.

    python benchmarks/batch.py             # ~30 s
    python benchmarks/batch.py --smoke     # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from engine.compute import Engine
from engine.graph import parse_graph

IN = 8


def model(width: int) -> dict[str, Any]:
    return {
        "inputs": {"x": {"dtype": "float32", "shape": [IN]},
                   "y": {"dtype": "float32", "shape": []},
                   "w1": {"dtype": "float32", "shape": [IN, width]},
                   "w2": {"dtype": "float32", "shape": [width]}},
        "nodes": [{"id": "m", "op": "matmul", "args": ["x", "w1"]},
                  {"id": "h", "op": "tanh", "args": ["m"]},
                  {"id": "p", "op": "dot", "args": ["h", "w2"]},
                  {"id": "e", "op": "subtract", "args": ["p", "y"]},
                  {"id": "loss", "op": "square", "args": ["e"]}],
        "outputs": ["loss"],
    }


def jax_loss(w1: Any, w2: Any, x: Any, y: Any) -> Any:
    return (jnp.tanh(x @ w1) @ w2 - y) ** 2


def median_us(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def run(examples: int, width: int, rounds: int, calls: int) -> dict[str, float]:
    engine = Engine()
    program = parse_graph(model(width), max_nodes=1000, max_elements=10**8)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(examples, IN)).astype(np.float32)
    y = rng.normal(size=(examples,)).astype(np.float32)
    w1 = (rng.normal(size=(IN, width)) / np.sqrt(IN)).astype(np.float32)
    w2 = (rng.normal(size=(width,)) / np.sqrt(width)).astype(np.float32)
    batched = engine.bind_values(program, {"x": x, "y": y, "w1": w1, "w2": w2},
                                 batch=("x", "y"))
    singles = [engine.bind_values(program, {"x": x[i], "y": y[i], "w1": w1, "w2": w2})
               for i in range(examples)]
    per_example = jax.jit(jax.vmap(jax.grad(jax_loss, argnums=(0, 1)), (None, None, 0, 0)))

    def batch_call() -> Any:
        return engine.gradient(batched, "loss", ["w1", "w2"])

    def loop_call() -> Any:
        return [engine.gradient(b, "loss", ["w1", "w2"]) for b in singles]

    def jax_call() -> Any:
        return jax.device_get(per_example(w1, w2, x, y))

    for fn in (batch_call, loop_call, jax_call):  # eager first calls, then compiled
        for _ in range(3):
            fn()
    got = batch_call()["gradients"]["w1"]
    want = np.stack([r["gradients"]["w1"] for r in loop_call()])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    times: dict[str, list[float]] = {"batch": [], "loop": [], "jax": []}
    for _ in range(rounds):
        times["batch"].append(median_us(batch_call, calls))
        times["loop"].append(median_us(loop_call, max(1, calls // 10)))
        times["jax"].append(median_us(jax_call, calls))
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    rounds, calls = (1, 2) if args.smoke else (args.rounds, args.calls)
    sizes = [(16, 32)] if args.smoke else [(16, 32), (256, 64), (1024, 256)]
    print("| examples x width | batch | loop of single calls | jax.jit(vmap(grad)) | "
          "loop / batch | batch / jax |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for examples, width in sizes:
        t = run(examples, width, rounds, calls)
        print(f"| {examples} x {width} | {t['batch']:.0f} us | {t['loop']:.0f} us | "
              f"{t['jax']:.0f} us | {t['loop'] / t['batch']:.1f} | "
              f"{t['batch'] / t['jax']:.2f} |")
