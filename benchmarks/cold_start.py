"""Cold start: the first call vs warm calls of a gradient on a graph never seen before.

Each graph is a fresh random 50-node graph of smooth elementwise ops (sin, cos, tanh,
sigmoid, softplus, add, subtract, multiply) on two float32 [16] inputs `a` and `b`, ending in
`add_n` of the dangling nodes and a scalar `sum` (so every node is live). Its gradient with
respect to both inputs is asked:

- in process, through `Engine` (parse_graph + Engine.bind + Engine.gradient, inputs as the
  nested lists a JSON body would carry), once with `CompileCache(jit_after=1)` (the default:
  eager on first sight, compiled on the second call) and once with `jit_after=0` (compiled on
  first sight);
- over HTTP, POST /v1/gradient with the graph inline, to `gradtape serve` with default
  settings (which compile in a background thread from the second call on, calls running
  eagerly meanwhile; warm calls are measured once `/v1/info` shows the compile done).

For each of `--graphs` fresh graphs: the first call, the second call and the median of
`--warm` warm calls (new input values each time). The baseline is `jax.jit(jax.grad(f))` of
the same function written directly with jax.numpy, results fetched to host
(`jax.device_get`) as the engine does. Before the measured graphs, one warm-up graph per
configuration pays the process's one-off costs (JAX initialisation, the first eager dispatch of
each primitive at this shape); it is reported apart.

Goals: first call under 25 ms (the default policy); warm calls at jit speed.

    python benchmarks/cold_start.py [--graphs 5] [--warm 20]
    python benchmarks/cold_start.py --smoke    # one graph, two warm calls; writes no results
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import jax
import jax.numpy as jnp
import numpy as np
from _common import environment, gradtape_server, median, ms, table, verdict, write_result

from engine.cache import CompileCache
from engine.compute import Engine
from engine.graph import parse_graph

SIZE = 16
NODES = 50
FIRST_CALL_GOAL_MS = 25.0
WARM_GOAL_RATIO = 1.0  # "at jit speed": reported as engine warm / jit(grad) warm

UNARY: dict[str, Callable[[Any], Any]] = {
    "sin": jnp.sin, "cos": jnp.cos, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
}
BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": jnp.add, "subtract": jnp.subtract, "multiply": jnp.multiply,
}


def random_graph(seed: int) -> dict[str, Any]:
    """A random graph of NODES nodes: NODES - 2 random ops, then add_n of every node no other
    node uses, then sum."""
    rng = random.Random(seed)
    names = ["a", "b"]
    unused = ["a", "b"]
    nodes: list[dict[str, Any]] = []
    for i in range(NODES - 2):
        ident = f"n{i}"
        first = unused.pop(rng.randrange(len(unused))) if unused else rng.choice(names)
        if rng.random() < 0.5:
            op = rng.choice(sorted(UNARY))
            args = [first]
        else:
            op = rng.choice(sorted(BINARY))
            second = rng.choice(names[-8:])
            args = [first, second]
            if second in unused:
                unused.remove(second)
        nodes.append({"id": ident, "op": op, "args": args})
        names.append(ident)
        unused.append(ident)
    nodes.append({"id": "total", "op": "add_n", "args": unused})
    nodes.append({"id": "out", "op": "sum", "args": ["total"]})
    return {"inputs": {"a": {"dtype": "float32", "shape": [SIZE]},
                       "b": {"dtype": "float32", "shape": [SIZE]}},
            "nodes": nodes, "outputs": ["out"]}


def as_jax(graph: dict[str, Any]) -> Callable[[Any, Any], Any]:
    """The same function written with jax.numpy."""
    def f(a: Any, b: Any) -> Any:
        env = {"a": a, "b": b}
        for node in graph["nodes"]:
            args = [env[x] for x in node["args"]]
            op = node["op"]
            if op in UNARY:
                env[node["id"]] = UNARY[op](*args)
            elif op in BINARY:
                env[node["id"]] = BINARY[op](*args)
            elif op == "add_n":
                env[node["id"]] = sum(args[1:], args[0])
            else:
                env[node["id"]] = jnp.sum(args[0])
        return env["out"]

    return f


def values(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return (rng.standard_normal(SIZE).astype(np.float32),
            rng.standard_normal(SIZE).astype(np.float32))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def engine_trial(engine: Engine, graph: dict[str, Any], seed: int, warm: int) -> dict[str, Any]:
    """First, second and warm calls of parse + bind + gradient on one unseen graph, and the
    jit(grad) baseline on the same function."""
    rng = np.random.default_rng(seed)

    def call(a: np.ndarray, b: np.ndarray) -> tuple[float, dict[str, float], dict[str, Any]]:
        t0 = time.perf_counter()
        program = parse_graph(graph, max_nodes=engine.limits.max_nodes,
                              max_elements=engine.limits.max_elements)
        t1 = time.perf_counter()
        bound = engine.bind(program, {"a": a.tolist(), "b": b.tolist()})
        t2 = time.perf_counter()
        out = engine.gradient(bound, "out", ["a", "b"])
        t3 = time.perf_counter()
        stages = {"parse_ms": ms(t1 - t0), "bind_ms": ms(t2 - t1), "gradient_ms": ms(t3 - t2)}
        return t3 - t0, stages, out

    first, first_stages, out = call(*values(rng))
    second, second_stages, _ = call(*values(rng))
    warm_times = [call(*values(rng))[0] for _ in range(warm)]

    program = parse_graph(graph, max_nodes=engine.limits.max_nodes,
                          max_elements=engine.limits.max_elements)
    bind_grad = []
    for _ in range(warm):
        a, b = values(rng)
        bind_grad.append(timed(lambda a=a, b=b: engine.gradient(
            engine.bind(program, {"a": a.tolist(), "b": b.tolist()}), "out", ["a", "b"]))[0])

    direct = jax.jit(jax.grad(as_jax(graph), argnums=(0, 1)))
    a, b = values(rng)
    jit_first, _ = timed(lambda: jax.device_get(direct(a, b)))
    jit_warm = []
    for _ in range(warm):
        a, b = values(rng)
        jit_warm.append(timed(lambda a=a, b=b: jax.device_get(direct(a, b)))[0])

    a, b = values(rng)  # the engine's answer agrees with jax.grad
    got = engine.gradient(engine.bind(program, {"a": a.tolist(), "b": b.tolist()}), "out",
                          ["a", "b"])["gradients"]
    want = jax.device_get(direct(a, b))
    for name, w in zip(("a", "b"), want, strict=True):
        np.testing.assert_allclose(got[name], w, rtol=2e-4, atol=1e-5)
    assert out["gradients"]["a"].shape == (SIZE,)
    return {"first_ms": ms(first), "second_ms": ms(second),
            "warm_ms": ms(median(warm_times)), "warm_bind_gradient_ms": ms(median(bind_grad)),
            "first_stages": first_stages, "second_stages": second_stages,
            "jit_grad_first_ms": ms(jit_first), "jit_grad_warm_ms": ms(median(jit_warm))}


def http_trial(client: httpx.Client, graph: dict[str, Any], seed: int,
               warm: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def call() -> float:
        a, b = values(rng)
        body = {"graph": graph, "inputs": {"a": a.tolist(), "b": b.tolist()}, "target": "out",
                "sources": ["a", "b"]}
        start = time.perf_counter()
        r = client.post("/v1/gradient", json=body)
        elapsed = time.perf_counter() - start
        r.raise_for_status()
        return elapsed

    def compiles() -> int:
        return int(client.get("/v1/info").json()["compile_cache"]["compiles"])

    before = compiles()
    first, second = call(), call()
    # the service compiles in the background from the second call on; calls made meanwhile
    # run eagerly. Measure the warm calls once the compiled code is in place.
    start = time.perf_counter()
    while compiles() == before and time.perf_counter() - start < 30:
        time.sleep(0.01)
    ready = time.perf_counter() - start
    warm_times = [call() for _ in range(warm)]
    return {"first_ms": ms(first), "second_ms": ms(second), "warm_ms": ms(median(warm_times)),
            "compile_ready_after_second_ms": ms(ready)}


def request_parts(graph: dict[str, Any], n: int) -> dict[str, float]:
    """Median times of the service's per-request work on an inline graph, in this process:
    request validation (pydantic) and graph parsing, which a registered graph_id skips."""
    import orjson

    from service.schemas.differentiation import GradientRequest

    rng = np.random.default_rng(0)
    a, b = values(rng)
    body = orjson.dumps({"graph": graph, "inputs": {"a": a.tolist(), "b": b.tolist()},
                         "target": "out", "sources": ["a", "b"]})
    parsed = json.loads(body)
    req = GradientRequest.model_validate(parsed)
    plain = req.graph.plain() if req.graph is not None else {}

    def med(fn: Callable[[], Any]) -> float:
        fn()
        return ms(median([timed(fn)[0] for _ in range(n)]))

    return {
        f"json.loads of the body ({len(body)} bytes; stdlib, as Starlette does)": med(
            lambda: json.loads(body)),
        "GradientRequest.model_validate (pydantic)": med(
            lambda: GradientRequest.model_validate(parsed)),
        "graph.plain() (model_dump)": med(lambda: req.graph.plain() if req.graph else None),
        "parse_graph": med(lambda: parse_graph(plain, max_nodes=10_000,
                                               max_elements=50_000_000)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs", type=int, default=5, help="fresh graphs per configuration")
    parser.add_argument("--warm", type=int, default=20, help="warm calls per graph (median)")
    parser.add_argument("--smoke", action="store_true",
                        help="one graph per configuration and two warm calls, to check that "
                        "it works (writes no results)")
    args = parser.parse_args()
    if args.smoke:
        args.graphs, args.warm = 1, 2
    env = environment()
    seeds = iter(range(1000, 100000))

    results: dict[str, Any] = {}
    for label, jit_after in (("engine jit_after=1", 1), ("engine jit_after=0", 0)):
        engine = Engine(cache=CompileCache(jit_after=jit_after))
        warmup = engine_trial(engine, random_graph(next(seeds)), 7, args.warm) \
            if not results else None  # the process's one-off costs are paid once
        trials = [engine_trial(engine, random_graph(next(seeds)), i, args.warm)
                  for i in range(args.graphs)]
        results[label] = {"jit_after": jit_after, "warmup_graph": warmup, "graphs": trials}
        print(f"{label}: done", flush=True)

    with gradtape_server() as server, httpx.Client(base_url=server.url, timeout=120) as client:
        warmup = http_trial(client, random_graph(next(seeds)), 7, args.warm)
        trials = [http_trial(client, random_graph(next(seeds)), i, args.warm)
                  for i in range(args.graphs)]
        results["HTTP default (jit_after=1)"] = {"jit_after": 1, "warmup_graph": warmup,
                                                "graphs": trials}
        print("HTTP: done", flush=True)

    parts = request_parts(random_graph(next(seeds)), args.warm)
    results["HTTP default (jit_after=1)"]["warm_request_parts_ms"] = parts

    rows = []
    for label, res in results.items():
        if res["warmup_graph"] is not None:
            rows.append([f"{label} (process warm-up graph)", *_cells(res["warmup_graph"])])
        for i, t in enumerate(res["graphs"]):
            rows.append([f"{label} graph {i + 1}", *_cells(t)])
    print()
    print(table(["configuration", "first ms", "second ms", f"warm ms (median {args.warm})",
                 "warm bind+grad ms", "jit(grad) 1st ms", "jit(grad) warm ms"], rows,
                title=f"Gradient of an unseen {NODES}-node graph (float32 [{SIZE}] inputs)"))

    summary: dict[str, Any] = {}
    srows = []
    for label, res in results.items():
        ts = res["graphs"]
        s = {k: median([t[k] for t in ts]) for k in ts[0] if isinstance(ts[0][k], float)}
        if "jit_grad_warm_ms" in s:
            s["warm_over_jit"] = s["warm_ms"] / s["jit_grad_warm_ms"]
            s["warm_bind_gradient_over_jit"] = (s["warm_bind_gradient_ms"] /
                                                s["jit_grad_warm_ms"])
        s["first_call_goal_met"] = s["first_ms"] < FIRST_CALL_GOAL_MS
        summary[label] = s
        srows.append([label, s["first_ms"], verdict(s["first_ms"] < FIRST_CALL_GOAL_MS),
                      s["second_ms"], s["warm_ms"], s.get("jit_grad_warm_ms"),
                      s.get("warm_over_jit"), s.get("warm_bind_gradient_over_jit")])
    print()
    print(table(["configuration", "first ms", f"< {FIRST_CALL_GOAL_MS:g} ms", "second ms",
                 "warm ms", "jit(grad) ms", "warm/jit", "bind+grad/jit"], srows,
                title=f"Medians over {args.graphs} fresh graphs"))

    stage_rows = []
    for label, res in results.items():
        ts = res["graphs"]
        if "first_stages" not in ts[0]:
            continue
        for which in ("first", "second"):
            st = {k: median([t[f"{which}_stages"][k] for t in ts]) for k in ts[0]["first_stages"]}
            stage_rows.append([f"{label}, {which} call", st["parse_ms"], st["bind_ms"],
                               st["gradient_ms"]])
    print()
    print(table(["call", "parse_graph ms", "Engine.bind ms", "Engine.gradient ms"], stage_rows,
                title="Where the first and second calls go (medians over the graphs; bind "
                "includes type inference)"))

    print()
    print(table(["part of a warm HTTP request (in process)", "median ms"], list(parts.items()),
                title="Where a warm HTTP call with an inline graph goes, besides the engine"))

    if args.smoke:
        print("\nsmoke run: no results written")
        return 0
    path = write_result("cold_start", {
        "config": {"graphs": args.graphs, "warm_calls": args.warm, "nodes": NODES,
                   "size": SIZE, "example_graph": random_graph(1000)},
        "goals": {"first_call_ms_max": FIRST_CALL_GOAL_MS,
                  "warm": "engine warm call / jax.jit(jax.grad(f)) warm call near 1"},
        "summary": summary, "results": results,
    }, env)
    print(f"\nwrote {path}")
    return 0


def _cells(t: dict[str, Any]) -> list[Any]:
    return [t["first_ms"], t["second_ms"], t["warm_ms"], t.get("warm_bind_gradient_ms"),
            t.get("jit_grad_first_ms"), t.get("jit_grad_warm_ms")]


if __name__ == "__main__":
    sys.exit(main())
