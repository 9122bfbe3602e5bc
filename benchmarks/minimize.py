"""Minimization: POST /v1/minimize's engine loop against SciPy's L-BFGS-B with JAX gradients.

For each problem, in one process:

- gradtape: `engine.minimize.minimize` on an `Engine` whose cache compiles on first sight
  (`CompileCache(jit_after=0, background=False)`): the first call (trace, XLA compile and the
  whole loop) and the median of warm calls (the compiled loop, new start each time is the
  same start: the loop is deterministic), its iterations, objective and gradient norm;
- SciPy: `scipy.optimize.minimize(method="L-BFGS-B", jac=True)` on the same objective written
  in `jax.numpy`, its value and gradient from one `jax.jit(jax.value_and_grad(f))` compiled
  beforehand (compile not timed), so each of SciPy's evaluations is one compiled call and the
  loop runs in Python: after one untimed run, the median of the same number of runs, its
  iterations and evaluations.

The problems: Rosenbrock in 2 and 100 dimensions from (-1.2, 1, -1.2, 1, ...), and least
squares ||A x - b||^2 with A (1500 x 1000, normal) over 1000 variables from zeros; all
float64. Both stop at a gradient norm of 1e-6 (gradtape: the Euclidean norm; SciPy's `gtol`:
the largest component, a weaker test) or 1000 iterations.

    python benchmarks/minimize.py                    # the full table
    python benchmarks/minimize.py --json out.json    # and the raw numbers
    python benchmarks/minimize.py --smoke            # small sizes, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # also when loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, median, ms, table
from scipy.optimize import minimize as scipy_minimize

from engine.cache import CompileCache
from engine.compute import Engine
from engine.graph import parse_graph
from engine.minimize import minimize

TOLERANCE = 1e-6


def rosenbrock_graph(n: int, dtype: str = "float64") -> dict[str, Any]:
    return {
        "inputs": {"x": {"dtype": dtype, "shape": [n]}},
        "nodes": [
            {"id": "a", "op": "slice", "args": ["x"], "attrs": {"begin": [0], "size": [n - 1]}},
            {"id": "b", "op": "slice", "args": ["x"], "attrs": {"begin": [1], "size": [n - 1]}},
            {"id": "a2", "op": "square", "args": ["a"]},
            {"id": "d", "op": "subtract", "args": ["b", "a2"]},
            {"id": "d2", "op": "square", "args": ["d"]},
            {"id": "t1", "op": "multiply", "args": [100.0, "d2"]},
            {"id": "e", "op": "subtract", "args": [1.0, "a"]},
            {"id": "t2", "op": "square", "args": ["e"]},
            {"id": "s", "op": "add", "args": ["t1", "t2"]},
            {"id": "f", "op": "sum", "args": ["s"]},
        ],
        "outputs": ["f"],
    }


def least_squares_graph(m: int, n: int) -> dict[str, Any]:
    return {
        "inputs": {"A": {"dtype": "float64", "shape": [m, n]},
                   "x": {"dtype": "float64", "shape": [n]},
                   "b": {"dtype": "float64", "shape": [m]}},
        "nodes": [
            {"id": "Ax", "op": "matmul", "args": ["A", "x"]},
            {"id": "r", "op": "subtract", "args": ["Ax", "b"]},
            {"id": "r2", "op": "square", "args": ["r"]},
            {"id": "f", "op": "sum", "args": ["r2"]},
        ],
        "outputs": ["f"],
    }


def rosen_jnp(x: Any) -> Any:
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


Problem = tuple[str, dict[str, Any], dict[str, np.ndarray], Callable[[Any], Any]]


def problems(smoke: bool) -> list[Problem]:
    big, (m, n) = (10, (60, 40)) if smoke else (100, (1500, 1000))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(m, n)), rng.normal(size=m)
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    found: list[Problem] = []
    for size in (2, big):
        start = np.array([-1.2, 1.0] * (size // 2))
        found.append((f"Rosenbrock {size}-D", rosenbrock_graph(size), {"x": start}, rosen_jnp))
    found.append((f"least squares {m}x{n}", least_squares_graph(m, n),
                  {"A": a, "b": b, "x": np.zeros(n)},
                  lambda x: jnp.sum((aj @ x - bj) ** 2)))
    return found


def run_gradtape(graph: dict[str, Any], inputs: dict[str, np.ndarray], repeats: int,
                 max_iterations: int) -> dict[str, Any]:
    engine = Engine(cache=CompileCache(jit_after=0, background=False))
    program = parse_graph(graph, max_nodes=100, max_elements=10**8)
    bound = engine.bind_values(program, dict(inputs))

    def call() -> dict[str, Any]:
        return minimize(engine, bound, "f", ["x"], max_iterations=max_iterations,
                        tolerance=TOLERANCE)

    start = time.perf_counter()
    answer = call()
    first = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        warm.append(time.perf_counter() - start)
    return {"iterations": answer["iterations"], "evaluations": None,
            "value": float(answer["value"]), "gradient_norm": answer["gradient_norm"],
            "reason": answer["reason"], "first_s": first, "warm_ms": ms(median(warm))}


def run_scipy(f: Callable[[Any], Any], start: np.ndarray, repeats: int,
              max_iterations: int) -> dict[str, Any]:
    value_and_grad = jax.jit(jax.value_and_grad(f))
    jax.block_until_ready(value_and_grad(jnp.asarray(start)))  # compiled before timing

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(x)
        return float(value), np.asarray(grad)

    warm, result = [], None
    for i in range(max(repeats, 1) + 1):  # the first run warms SciPy and JAX's dispatch up
        begin = time.perf_counter()
        result = scipy_minimize(fun, start, jac=True, method="L-BFGS-B",
                                options={"gtol": TOLERANCE, "ftol": 0.0,
                                         "maxiter": max_iterations})
        if i:
            warm.append(time.perf_counter() - begin)
    assert result is not None
    _, grad = fun(result.x)
    return {"iterations": int(result.nit), "evaluations": int(result.nfev),
            "value": float(result.fun), "gradient_norm": float(np.linalg.norm(grad)),
            "reason": "converged" if result.success else str(result.message),
            "first_s": None, "warm_ms": ms(median(warm))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="small sizes and one warm run: seconds")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per solver")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    max_iterations = 200 if args.smoke else 1000
    rows, results = [], []
    for name, graph, inputs, f in problems(args.smoke):
        ours = run_gradtape(graph, inputs, repeats, max_iterations)
        theirs = run_scipy(f, inputs["x"], repeats, max_iterations)
        for solver, found in (("gradtape lbfgs", ours), ("scipy L-BFGS-B + jax.jit grad", theirs)):
            results.append({"problem": name, "solver": solver, **found})
            rows.append([name, solver, found["iterations"], found["evaluations"],
                         found["value"], found["gradient_norm"], found["reason"],
                         found["first_s"], found["warm_ms"]])
    print(table(["problem", "solver", "iterations", "evaluations", "objective", "|gradient|",
                 "stopped", "first call (s)", "warm (ms)"], rows,
                title="Minimization: one compiled loop against SciPy's Python loop"))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"benchmark": "minimize", "environment": environment(),
                       "tolerance": TOLERANCE, "max_iterations": max_iterations,
                       "repeats": repeats, "results": results}, out, indent=2)
        print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
