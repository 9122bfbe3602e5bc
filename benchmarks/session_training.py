"""A training step through a gradtape session over HTTP, against the same step in jitted JAX.

The MLP of benchmarks/mlp.py (784-512-512-10 tanh, softmax cross-entropy, batch 128,
float32). Its six weights live in a session of a `gradtape serve` subprocess as trainable
variables. One step is seven requests:

1. PUT tensors/X and 2. PUT tensors/Y: the new batch, as b64 tensors;
3. POST tapes: open a tape;
4. POST run: the forward pass (13 nodes) with "fetch": [];
5. POST tapes/{tid}/gradient: the loss wrt the six weights, save_as g_<W>, encoding none
   (dtype and shape only: the gradients stay on the server);
6. POST run: u_<W> = multiply(g_<W>, lr) and assign_sub(<W>, u_<W>) for each weight, fetch [];
7. DELETE the tape.

Requests go through the standard library's keep-alive `http.client` (`--client stdlib`, the
default: little cost of its own per request) or httpx (`--client httpx`); bodies are encoded
with orjson. The baseline is the same step in this process: `jax.jit` of value_and_grad + the SGD update,
weights kept on the device between steps, the batch coming from NumPy each step, the loss
fetched to host. Both run the same batches from the same initial weights, interleaved step by
step, and the final weights are checked to agree. Goal: the session step within 1.3x of the
jitted step.

Beside it, interleaved the same way, the TensorFlow-style flow with the update on the server
(`TapeApplyTrainer`: open a tape, run with the batch, tape gradient with `"apply"`, delete the
tape; goal 2.5x), once with the batch as b64 JSON and once as the run's binary part. Its run
and its gradient request ask for nothing back, so the server answers them before their compute
ends (as JAX answers a call in process); each of these steps is timed up to a request that
waits for the update (`GET` of the session), so that it is timed done. Then the same
flows as loops of `--loop-size` steps, each loop waited for at its end, against as many
jitted steps dispatched as a loop in process and waited for at their end, loop by loop.

Then the five-part tutorial of API.md (examples/tutorial_httpx.py, imported and pointed at the same
server) runs end to end, `--tutorial-runs` times: the number of requests and the total time of
each run, and its printed answers are checked against API.md.

    python benchmarks/session_training.py [--steps 20] [--warmup 3] [--tutorial-runs 3]
                                          [--loops 4] [--loop-size 10]
                                          [--client stdlib|httpx]
    python benchmarks/session_training.py --smoke    # 2 steps, 1 tutorial run; no results
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import io
import os
import sys
import time
from typing import Any

import httpx
import jax
import numpy as np
import orjson
from _common import (
    ROOT,
    KeepAlive,
    binary_body,
    environment,
    gradtape_server,
    median,
    ms,
    table,
    verdict,
    write_result,
)
from mlp import SHAPES, WEIGHTS, batch, init_weights, jax_loss, mlp_graph

LR = 0.1
GOAL = 1.3
JSON = {"content-type": "application/json"}
TUTORIAL_EXPECTED = [
    "part1 dz/dx = [[8,8],[8,8]] float32 [2,2]",
    "part2 dz/dy = 8 float32 []",
    "part3 dz/dx = 108 float32 []",
    "part3 dy/dx = 6 float32 []",
    "part4 n=6 doutput/dx = 12 float32 []",
    "part4 n=5 doutput/dx = 12 float32 []",
    "part4 n=4 doutput/dx = 4 float32 []",
    "part5 dy/dx = 3 float32 []",
    "part5 d2y/dx2 = 6 float32 []",
]
REQUESTS = ["PUT X", "PUT Y", "POST tapes", "POST run (forward)", "POST gradient",
            "POST run (updates)", "DELETE tape"]


def b64(array: np.ndarray) -> dict[str, Any]:
    return {"dtype": "float32", "shape": list(array.shape),
            "b64": base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode()}


def from_b64(tensor: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(tensor["b64"]), "<f4").reshape(tensor["shape"])


class SessionTrainer:
    """The client side of one training step through a session."""

    def __init__(self, client: httpx.Client, weights: dict[str, np.ndarray],
                 lean: KeepAlive | None = None):
        self.client = client
        self.lean = lean  # when given, requests go through it instead of httpx
        self.sid = self._call("POST", "/v1/sessions", {"ttl_seconds": 3600})["session_id"]
        self.base = f"/v1/sessions/{self.sid}"
        for name, value in weights.items():
            self._call("PUT", f"{self.base}/tensors/{name}",
                       {"value": b64(value), "variable": True, "trainable": True})
        self.forward = [n for n in mlp_graph()["nodes"]]
        self.updates: list[dict[str, Any]] = []
        for name in WEIGHTS:
            self.updates.append({"id": f"u_{name}", "op": "multiply",
                                 "args": [f"g_{name}", LR]})
            self.updates.append({"id": name, "op": "assign_sub", "args": [name, f"u_{name}"]})

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        # orjson both ways, as a client that cares for speed does: the standard library's
        # encoder alone takes over a millisecond on the 540 KB body of a b64 batch
        content = None if body is None else orjson.dumps(body)
        return self._send(method, path, content, JSON)

    def _send(self, method: str, path: str, content: bytes | None,
              headers: dict[str, str]) -> Any:
        if self.lean is not None:
            status, raw = self.lean.request(method, path, content, headers)
        else:
            r = self.client.request(method, path, content=content, headers=headers)
            status, raw = r.status_code, r.content
        if status >= 400:
            raise RuntimeError(f"{method} {path} -> {status}: {raw[:2000]!r}")
        return None if status == 204 else orjson.loads(raw)

    def _timer(self, times: list[float]) -> Any:
        """A `_call` that appends each request's time to `times`."""
        def timed(method: str, path: str, body: Any = None) -> Any:
            start = time.perf_counter()
            out = self._call(method, path, body)
            times.append(time.perf_counter() - start)
            return out

        return timed

    def step(self, X: np.ndarray, Y: np.ndarray) -> tuple[float, list[float]]:
        """One step; returns its time and the time of each of its requests."""
        times: list[float] = []
        timed = self._timer(times)
        start = time.perf_counter()
        timed("PUT", f"{self.base}/tensors/X", {"value": b64(X)})
        timed("PUT", f"{self.base}/tensors/Y", {"value": b64(Y)})
        tape = timed("POST", f"{self.base}/tapes", {})["tape_id"]
        timed("POST", f"{self.base}/run", {"nodes": self.forward, "fetch": []})
        grads = timed("POST", f"{self.base}/tapes/{tape}/gradient", {
            "target": "loss", "sources": list(WEIGHTS),
            "save_as": {name: f"g_{name}" for name in WEIGHTS}, "encoding": "none"})
        timed("POST", f"{self.base}/run", {"nodes": self.updates, "fetch": []})
        timed("DELETE", f"{self.base}/tapes/{tape}")
        elapsed = time.perf_counter() - start
        assert set(grads["gradients"]) == set(WEIGHTS)
        return elapsed, times

    def settled(self) -> None:
        """Wait for the session's updates under way: describing the session reads every
        value (an update whose answer asks for none is answered before it is computed)."""
        self._call("GET", self.base)

    def weight(self, name: str) -> np.ndarray:
        return from_b64(self._call("GET", f"{self.base}/tensors/{name}?encoding=base64"))

    def close(self) -> None:
        self._call("DELETE", self.base)


class TapeApplyTrainer(SessionTrainer):
    """The TensorFlow-style flow with the update on the server: four requests a step.

    1. POST tapes; 2. POST run with the batch as `inputs` (b64 JSON, or with `binary` the
    body's binary part) and the forward pass, fetch [];
    3. POST tapes/{tid}/gradient with `"apply": "sgd"` (an optax SGD optimiser of the
    session over the six weights: the gradients never leave the server); 4. DELETE the tape.
    """

    def __init__(self, client: httpx.Client, weights: dict[str, np.ndarray],
                 lean: KeepAlive | None = None, binary: bool = False):
        super().__init__(client, weights, lean)
        self.binary = binary  # the batch as the run's binary part instead of b64 JSON
        self._call("POST", f"{self.base}/optimizers", {
            "name": "sgd", "method": "sgd", "learning_rate": LR, "variables": list(WEIGHTS)})

    def step(self, X: np.ndarray, Y: np.ndarray) -> tuple[float, list[float]]:
        times: list[float] = []
        timed = self._timer(times)
        start = time.perf_counter()
        tape = timed("POST", f"{self.base}/tapes", {})["tape_id"]
        if self.binary:
            run_start = time.perf_counter()
            self._send("POST", f"{self.base}/run", *binary_body(
                {"inputs": {"X": X, "Y": Y}, "nodes": self.forward, "fetch": []}))
            times.append(time.perf_counter() - run_start)
        else:
            timed("POST", f"{self.base}/run", {"inputs": {"X": b64(X), "Y": b64(Y)},
                                               "nodes": self.forward, "fetch": []})
        out = timed("POST", f"{self.base}/tapes/{tape}/gradient",
                    {"target": "loss", "apply": "sgd"})
        timed("DELETE", f"{self.base}/tapes/{tape}")
        elapsed = time.perf_counter() - start
        assert out["step"] >= 1, out
        return elapsed, times


APPLY_REQUESTS = ["POST tapes", "POST run (batch + forward)", "POST gradient (apply)",
                  "DELETE tape"]
APPLY_GOAL = 2.5


def jax_step_fn() -> Any:
    @jax.jit
    def step(params: dict[str, Any], X: Any, Y: Any) -> tuple[Any, dict[str, Any]]:
        loss, grads = jax.value_and_grad(jax_loss)(params, X, Y)
        return loss, jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads)

    return step


def run_tutorial(url: str, runs: int) -> list[dict[str, Any]]:
    """examples/tutorial_httpx.py (the hand-written REST client) against `url`: requests and total time per run."""
    os.environ["GRADTAPE_URL"] = url
    spec = importlib.util.spec_from_file_location("gradtape_tutorial",
                                                  ROOT / "examples" / "tutorial_httpx.py")
    assert spec is not None and spec.loader is not None
    tutorial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tutorial)
    count = 0

    def counter(request: httpx.Request) -> None:
        nonlocal count
        count += 1

    tutorial.client.event_hooks["request"] = [counter]
    out = []
    for _ in range(runs):
        count = 0
        buf = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            tutorial.main()
        elapsed = time.perf_counter() - start
        lines = buf.getvalue().splitlines()
        out.append({"requests": count, "total_ms": ms(elapsed),
                    "ms_per_request": ms(elapsed) / count, "output": lines,
                    "matches_api_md": lines == TUTORIAL_EXPECTED})
    tutorial.client.close()
    return out


def attribution(weights: dict[str, np.ndarray], X: np.ndarray, Y: np.ndarray,
                n: int = 10) -> dict[str, float]:
    """Median times, in this process, of the pieces of work a session step is made of: the
    compute the server runs (through an Engine on the same graph) and the encoding work on
    both sides of the wire."""
    import json

    import orjson

    from engine.cache import CompileCache
    from engine.compute import Engine
    from engine.graph import parse_graph
    from engine.tensors import decode, encode

    engine = Engine(cache=CompileCache())
    program = parse_graph(mlp_graph(), max_nodes=10_000, max_elements=50_000_000)
    bound = engine.bind_values(program, {"X": X, "Y": Y, **weights})
    grads = engine.gradient(bound, "loss", WEIGHTS)["gradients"]
    response = orjson.dumps({"gradients": {k: encode(v, encoding="base64")
                                           for k, v in grads.items()}})
    wire_x = b64(X)
    jax_step = jax_step_fn()
    params = jax.device_put(weights)

    def one_jax_step() -> None:
        loss, new = jax_step(params, X, Y)
        float(loss)
        jax.block_until_ready(new)

    work = {
        "server compute: forward pass (Engine.evaluate of every node, fetched)": lambda:
            engine.evaluate(bound, [n for e in program.eqns for n in e.outs]),
        "server compute: gradient (Engine.gradient: forward again + backward)": lambda:
            engine.gradient(bound, "loss", WEIGHTS),
        "server: b64-encode the six gradients for the response": lambda: [
            encode(g, encoding="base64") for g in grads.values()],
        f"client: json.loads of the gradient response ({len(response) / 1e6:.1f} MB)": lambda:
            json.loads(response),
        "client: b64 + json.dumps of the PUT X body": lambda: json.dumps({"value": b64(X)}),
        "server: json.loads + b64-decode of the PUT X body": lambda: decode(
            json.loads(json.dumps({"value": wire_x}))["value"]),
        "baseline: one jitted JAX step (value_and_grad + update)": one_jax_step,
    }
    out = {}
    for name, fn in work.items():
        for _ in range(3):
            fn()
        out[name] = ms(median([_seconds(fn) for _ in range(n)]))
    return out


def _seconds(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--tutorial-runs", type=int, default=3)
    parser.add_argument("--loops", type=int, default=4,
                        help="loops of the tape + apply flows timed (after one untimed)")
    parser.add_argument("--loop-size", type=int, default=10)
    parser.add_argument("--client", choices=["stdlib", "httpx"], default="stdlib",
                        help="the HTTP client of the training steps: the standard library's "
                        "keep-alive http.client (least client cost) or httpx")
    parser.add_argument("--smoke", action="store_true",
                        help="one warm-up and one timed step, one tutorial run, to check that "
                        "it works; the answers are still checked (writes no results)")
    args = parser.parse_args()
    attribution_calls = 10
    if args.smoke:
        args.steps, args.warmup, args.tutorial_runs, args.loops, args.loop_size = 1, 1, 1, 1, 2
        attribution_calls = 2
    env = environment()
    rng = np.random.default_rng(0)
    weights = init_weights(rng)
    batches = [batch(rng) for _ in range(args.warmup + args.steps)]
    looped = [batch(rng) for _ in range(args.loop_size)]  # each loop trains on these

    jax_step = jax_step_fn()
    params = jax.device_put(weights)
    session_times: list[float] = []
    per_request: list[list[float]] = []
    apply_times: list[float] = []
    apply_per_request: list[list[float]] = []
    binary_times: list[float] = []
    jax_times: list[float] = []
    loop_times: dict[str, list[float]] = {"apply": [], "binary": [], "jit": []}
    with gradtape_server() as server, httpx.Client(base_url=server.url, timeout=120) as client:
        lean = KeepAlive(server.url) if args.client == "stdlib" else None
        trainer = SessionTrainer(client, weights, lean)
        applier = TapeApplyTrainer(client, weights, lean)
        binary = TapeApplyTrainer(client, weights, lean, binary=True)
        def waited(flow: TapeApplyTrainer, X: np.ndarray, Y: np.ndarray
                   ) -> tuple[float, list[float]]:
            start = time.perf_counter()
            _, times = flow.step(X, Y)
            flow.settled()
            return time.perf_counter() - start, times

        for i, (X, Y) in enumerate(batches):
            elapsed, times = trainer.step(X, Y)  # its last run keeps its results: done
            apply_elapsed, apply_times_one = waited(applier, X, Y)
            binary_elapsed, _ = waited(binary, X, Y)
            start = time.perf_counter()
            loss, params = jax_step(params, X, Y)
            float(loss)
            jax.block_until_ready(params)
            jax_elapsed = time.perf_counter() - start
            if i >= args.warmup:
                session_times.append(elapsed)
                per_request.append(times)
                apply_times.append(apply_elapsed)
                apply_per_request.append(apply_times_one)
                binary_times.append(binary_elapsed)
                jax_times.append(jax_elapsed)
        final = {name: trainer.weight(name) for name in WEIGHTS}
        before_loops = jax.device_get(params)
        for k in range(args.loops + 1):  # the first loop is not timed
            for name, flow in (("apply", applier), ("binary", binary)):
                start = time.perf_counter()
                for X, Y in looped:
                    flow.step(X, Y)
                flow.settled()
                if k:
                    loop_times[name].append((time.perf_counter() - start) / len(looped))
            start = time.perf_counter()
            for X, Y in looped:
                loss, params = jax_step(params, X, Y)
            float(loss)
            jax.block_until_ready(params)
            if k:
                loop_times["jit"].append((time.perf_counter() - start) / len(looped))
        final_apply = {name: applier.weight(name) for name in WEIGHTS}
        final_binary = {name: binary.weight(name) for name in WEIGHTS}
        trainer.close()
        applier.close()
        binary.close()
        tutorial = run_tutorial(server.url, args.tutorial_runs)

    params = jax.device_get(params)
    max_diff = {name: float(np.max(np.abs(final_apply[name] - params[name])))
                for name in WEIGHTS}
    for name in WEIGHTS:
        # the seven-request flow took no loop: its weights are the loops' starting point
        np.testing.assert_allclose(final[name], before_loops[name], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(final_apply[name], params[name], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(final_binary[name], params[name], rtol=1e-3, atol=1e-4)

    s, j = ms(median(session_times)), ms(median(jax_times))
    a = ms(median(apply_times))
    b = ms(median(binary_times))
    ratio = s / j
    apply_ratio = a / j
    print(table(["step", "median ms", "min ms", "max ms"], [
        ["gradtape session over HTTP (7 requests)", s, ms(min(session_times)),
         ms(max(session_times))],
        ["gradtape tape + gradient apply (4 requests)", a, ms(min(apply_times)),
         ms(max(apply_times))],
        ["the same, the batch as the run's binary part", b, ms(min(binary_times)),
         ms(max(binary_times))],
        ["jax.jit(value_and_grad + SGD update), in process", j, ms(min(jax_times)),
         ms(max(jax_times))],
    ], title=f"Training step, MLP 784-512-512-10, batch 128 ({args.steps} steps after "
             f"{args.warmup} warm-up, interleaved; {args.client} client)"))
    print(f"\nratio session / jit: {ratio:.2f}  (goal <= {GOAL}: {verdict(ratio <= GOAL)})")
    print(f"ratio tape + apply / jit: {apply_ratio:.2f}  (goal <= {APPLY_GOAL}: "
          f"{verdict(apply_ratio <= APPLY_GOAL)}); the batch as binary: {b / j:.2f}")
    lj = ms(median(loop_times["jit"]))
    la, lb = ms(median(loop_times["apply"])), ms(median(loop_times["binary"]))
    print()
    print(table(["loop of steps, per step", "median ms", "ratio", "goal"], [
        ["gradtape tape + gradient apply", la, f"{la / lj:.2f}x", f"<= {APPLY_GOAL}x"],
        ["the same, the batch as the run's binary part", lb, f"{lb / lj:.2f}x",
         f"<= {APPLY_GOAL}x"],
        ["jax.jit step, dispatched as a loop", lj, "", ""],
    ], title=f"The tape + apply flows as loops of {args.loop_size} steps, each waited for at "
             f"its end ({args.loops} loops each, alternating)"))
    print("final weights agree with the JAX run (max abs diff "
          f"{max(max_diff.values()):.2e})")

    breakdown = {name: ms(median([t[k] for t in per_request])) for k, name in
                 enumerate(REQUESTS)}
    print()
    print(table(["request", "median ms", "share of step"],
                [[k, v, f"{100 * v / s:.0f}%"] for k, v in breakdown.items()],
                title="Where a session step goes (client-side time per request)"))
    apply_breakdown = {name: ms(median([t[k] for t in apply_per_request])) for k, name in
                       enumerate(APPLY_REQUESTS)}
    print()
    print(table(["request", "median ms", "share of step"],
                [[k, v, f"{100 * v / a:.0f}%"] for k, v in apply_breakdown.items()],
                title="Where a tape + apply step goes (client-side time per request)"))

    parts = attribution(weights, *batches[0], n=attribution_calls)
    print()
    print(table(["piece of work (in process)", "median ms"], list(parts.items()),
                title="What the step is made of, timed alone in this process"))

    print()
    print(table(["tutorial run", "requests", "total ms", "ms / request", "answers = API.md"],
                [[i + 1, t["requests"], t["total_ms"], t["ms_per_request"],
                  "yes" if t["matches_api_md"] else "NO"] for i, t in enumerate(tutorial)],
                title="The five-part tutorial (examples/tutorial_httpx.py) end to end"))
    if not all(t["matches_api_md"] for t in tutorial):
        print("tutorial output:\n" + "\n".join(tutorial[0]["output"]))

    ok = all(t["matches_api_md"] for t in tutorial)
    if args.smoke:
        print("\nsmoke run: no results written")
        return 0 if ok else 1
    path = write_result("session_training", {
        "config": {"steps": args.steps, "warmup": args.warmup, "lr": LR, "client": args.client,
                   "shapes": {k: list(v) for k, v in SHAPES.items()},
                   "requests_per_step": REQUESTS},
        "goals": {"session_over_jit_max": GOAL},
        "median_step_ms": {"session_http": s, "jax_jit": j},
        "ratio": ratio, "goal_met": ratio <= GOAL,
        "tape_apply": {"median_step_ms": a, "ratio": apply_ratio, "goal": APPLY_GOAL,
                       "goal_met": apply_ratio <= APPLY_GOAL,
                       "per_request_median_ms": apply_breakdown,
                       "step_ms": [ms(t) for t in apply_times],
                       "binary_batch": {"median_step_ms": b, "ratio": b / j,
                                        "step_ms": [ms(t) for t in binary_times]},
                       "loops": {"size": args.loop_size,
                                 "per_step_ms": {k: [ms(t) for t in v]
                                                 for k, v in loop_times.items()},
                                 "ratio": la / lj, "binary_ratio": lb / lj}},
        "per_request_median_ms": breakdown,
        "attribution_ms": parts,
        "final_weights_max_abs_diff": max_diff,
        "session_step_ms": [ms(t) for t in session_times],
        "jax_step_ms": [ms(t) for t in jax_times],
        "tutorial": tutorial,
    }, env)
    print(f"\nwrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
