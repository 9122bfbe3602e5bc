"""What `check_numerics` costs: a gradient through the engine, compiled, with the check off (the
default path) and on (one more compiled function counts the NaNs and infinities of every
forward value and backward cotangent before the query runs). Rounds alternate between the two
so that drift in the machine's speed falls on both alike.

    python benchmarks/check_numerics.py            # ~30 s
    python benchmarks/check_numerics.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from engine.compute import Engine
from engine.graph import parse_graph


def mlp(width: int, layers: int) -> dict[str, Any]:
    """A tanh MLP on a batch of 64 rows, its loss the sum of squares of the last layer."""
    inputs: dict[str, Any] = {"x": {"dtype": "float32", "shape": [64, width]}}
    nodes: list[dict[str, Any]] = []
    h = "x"
    for i in range(layers):
        inputs[f"w{i}"] = {"dtype": "float32", "shape": [width, width]}
        nodes += [{"id": f"m{i}", "op": "matmul", "args": [h, f"w{i}"]},
                  {"id": f"h{i}", "op": "tanh", "args": [f"m{i}"]}]
        h = f"h{i}"
    nodes += [{"id": "sq", "op": "square", "args": [h]},
              {"id": "loss", "op": "reduce_sum", "args": ["sq"]}]
    return {"inputs": inputs, "nodes": nodes, "outputs": ["loss"]}


def run(width: int, layers: int, rounds: int, calls: int) -> dict[str, float]:
    engine = Engine()
    program = parse_graph(mlp(width, layers), max_nodes=10_000, max_elements=10**8)
    rng = np.random.default_rng(0)
    values = {n: (rng.normal(size=(64 if n == "x" else width, width)) / np.sqrt(width))
              .astype(np.float32) for n in program.inputs}
    bounds = {flag: engine.bind_values(program, values, check_numerics=flag)
              for flag in (False, True)}
    sources = [n for n in program.inputs if n != "x"]

    def timed(flag: bool) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            engine.gradient(bounds[flag], "loss", sources)
        return (time.perf_counter() - start) / calls * 1e6

    for flag in (False, True):  # eager first calls, then compiled
        for _ in range(3):
            engine.gradient(bounds[flag], "loss", sources)
    off, on = [], []
    for _ in range(rounds):
        off.append(timed(False))
        on.append(timed(True))
    off_us, on_us = statistics.median(off), statistics.median(on)
    return {"off_us": off_us, "on_us": on_us, "ratio": on_us / off_us}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    rounds, calls = (2, 5) if args.smoke else (args.rounds, args.calls)
    sizes = [(16, 2)] if args.smoke else [(16, 2), (256, 4), (1024, 4)]
    print("| MLP gradient (64 rows, width x layers) | check off | check on | on / off |")
    print("| --- | ---: | ---: | ---: |")
    for width, layers in sizes:
        out = run(width, layers, rounds, calls)
        print(f"| {width} x {layers} | {out['off_us']:.0f} us | {out['on_us']:.0f} us | "
              f"{out['ratio']:.2f} |")
