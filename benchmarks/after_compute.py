"""What a step request's own Python costs once the step's compute has run.

On a CPU, the jitted MLP step of benchmarks/mlp.py (784-512-512-10, batch 128) streams
through megabytes of weights, activations and gradients on every core, and leaves the caches
holding them. Python that runs next (the end of the request, its answer, the client's next
request, the server reading and planning it) finds its own objects and code evicted. In
process, what follows a step is little more than the next call; a server has a request to
answer and the next one to read.

Two measurements, each alternating with its baseline:

- in process: a slice of the step route's own Python (parsing a step body with orjson and
  validating it with the route's request model, then the nodes as the engine takes them)
  timed warm (just run) and right after the jitted step (a fresh slice of work, the step
  waited for);
- over HTTP (a `gradtape serve` subprocess, the standard library's keep-alive client): a
  step through `POST .../step` that answers its loss, on the MLP with the batch bound in
  the session, against the jitted step in process; and a step of a two-element variable
  (`sum(w * w)`) in the same session, whose compute is nothing: the route's own cost, right
  after the MLP step, then the next request, then after ten more.

    python benchmarks/after_compute.py [--rounds 60]
    python benchmarks/after_compute.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import jax
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import KeepAlive, gradtape_server, median, table
from mlp import WEIGHTS, batch, init_weights, mlp_graph
from session_training import b64
from training_step import jax_step

from service.schemas.optimizers import StepRequest

JSON = {"content-type": "application/json"}
WARM = 10  # requests of the tiny step in a row, the last one timed warm
TINY = [{"id": "sq", "op": "multiply", "args": ["w", "w"]},
        {"id": "tiny_loss", "op": "sum", "args": ["sq"]}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--smoke", action="store_true", help="a few rounds, seconds")
    args = parser.parse_args()
    rounds = 3 if args.smoke else args.rounds
    rng = np.random.default_rng(0)
    weights = init_weights(rng)
    X, Y = batch(rng)
    step_fn, opt = jax_step()
    params = {k: jax.device_put(v) for k, v in weights.items()}
    state = opt.init(params)
    Xd, Yd = jax.device_put(X), jax.device_put(Y)
    nodes = mlp_graph()["nodes"]
    body = orjson.dumps({"nodes": nodes, "target": "loss", "optimizer": "sgd",
                         "fetch": ["loss"]})

    def jit_step() -> None:
        nonlocal params, state
        _, params, state = jax.block_until_ready(step_fn(params, state, Xd, Yd))

    def route_python() -> float:
        start = time.perf_counter()
        request = StepRequest.model_validate(orjson.loads(body))
        [n.model_dump(exclude_unset=True) for n in request.nodes]
        return time.perf_counter() - start

    rows: dict[str, list[float]] = defaultdict(list)
    for _ in range(3):
        jit_step()
        route_python()
    for _ in range(rounds):
        jit_step()
        rows["after"].append(route_python())
        rows["warm"].append(route_python())
    inproc = [("the step route's Python (parse, validate, nodes), warm",
               median(rows["warm"]), 1.0),
              ("the same, right after the jitted MLP step", median(rows["after"]),
               median(rows["after"]) / median(rows["warm"]))]
    print(table(["in process", "median ms", "ratio"],
                [(n, v * 1e3, f"{r:.2f}x") for n, v, r in inproc],
                "The route's own Python, warm and after the step's compute"))
    print()
    with gradtape_server(access_log="false") as server, \
            httpx.Client(base_url=server.url, timeout=600) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        for name, value in weights.items():
            c.put(f"{base}/tensors/{name}", json={"value": b64(value), "variable": True})
        c.put(f"{base}/tensors/w", json={"value": [1.0, 2.0], "variable": True})
        for name, variables in (("sgd", list(WEIGHTS)), ("tiny", ["w"])):
            r = c.post(f"{base}/optimizers", json={"name": name, "method": "sgd",
                                                    "learning_rate": 0.1,
                                                    "variables": variables})
            assert r.status_code == 201, r.text
        lean = KeepAlive(server.url)

        def post(content: bytes) -> float:
            start = time.perf_counter()
            status, raw = lean.request("POST", f"{base}/step", content, JSON)
            assert status == 200, raw
            return time.perf_counter() - start

        post(orjson.dumps({"nodes": nodes, "target": "loss", "optimizer": "sgd",
                           "inputs": {"X": b64(X), "Y": b64(Y)}}))  # binds the batch
        tiny = orjson.dumps({"nodes": TINY, "target": "tiny_loss", "optimizer": "tiny",
                             "fetch": ["tiny_loss"]})
        for _ in range(3):
            post(body)
            post(tiny)
            jit_step()
        for _ in range(rounds):
            rows["mlp"].append(post(body))
            rows["tiny after"].append(post(tiny))
            rows["tiny second"].append(post(tiny))
            for _ in range(WARM):
                warm_one = post(tiny)
            rows["tiny warm"].append(warm_one)
            start = time.perf_counter()
            jit_step()
            rows["jit"].append(time.perf_counter() - start)
    mlp, after, second, warm, jit = (median(rows[k]) for k in (
        "mlp", "tiny after", "tiny second", "tiny warm", "jit"))
    print(table(["over HTTP", "median ms"], [
        ("MLP step through POST .../step, loss answered", mlp * 1e3),
        ("the jitted MLP step in process", jit * 1e3),
        ("the difference: what the request adds to the step", (mlp - jit) * 1e3),
        ("a step of sum(w * w) (the route's own cost), right after the MLP step",
         after * 1e3),
        ("the same, the next request", second * 1e3),
        (f"the same, after {WARM} more", warm * 1e3)],
        "What a waited step adds to its compute, against the route's own cost"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
