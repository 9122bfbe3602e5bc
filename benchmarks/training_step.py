"""The MLP training step through `POST .../step` against the same jitted step in process.

The MLP of benchmarks/mlp.py (784-512-512-10 tanh, softmax cross-entropy, batch 128), its
weights held in a session of a `gradtape serve` subprocess with an optax SGD optimizer. A step
that asks for nothing back is answered before its update is computed (as JAX answers a call in
process), so each setup is timed two ways, alternating with its baseline:

- `loss each step`: every request fetches the loss and so returns once its step is
  computed; the baseline is blocked on after every step;
- `loop of N`: N requests, the last one fetching its loss, per step, against N jitted steps
  dispatched as a loop in process and waited for at the end.

The setups:

- `step, batch as b64`: one request carrying the batch (X, Y as b64 tensors);
- `step, batch as binary`: the same batch as raw bytes after a JSON header (the Open
  Inference Protocol's binary tensor extension: `Inference-Header-Content-Length`);
- `step, indices into a data set`: the data set uploaded once into the session, the request
  sends 128 indices and the step gathers the batch (`gather` nodes) before the forward pass;
  its baseline gathers from the data set on the device inside the jitted step;
- `step, batch bound`: the batch already in the session, no inputs (the floor of the route);
- `step, batch bound, <other> client`: the same with the other HTTP client (below);
- `repeat: R`, per step: R steps on the bound batch in one request (it answers their losses,
  so it is waited for), against R jitted steps dispatched as a loop;
- `step, batch bound, Adam`: a second optimizer of the same weights, optax's Adam, against
  optax's Adam in process (the weights after the same steps compared too);
- `step, Python client`: the same SGD steps written with the Python client
  (`opt.step(loss_fn, *weights, s.constant(X), s.constant(Y))`: one request a step, the
  batch as b64 through httpx, the loss answered) in a session of its own;
- the baseline: `jax.jit` of value_and_grad and the optax update in this process, weights kept
  on the device, the batch from NumPy each step (for the b64 row), or fixed (for the others).

Requests go through the standard library's keep-alive `http.client` (`--client stdlib`, the
default), whose own cost per request is small, or through httpx (`--client httpx`), a client
library that spends 0.4-0.7 ms of Python on each request here; bodies are encoded with orjson.

Goals (issue figures): step ≤ 1.3x the jitted step; repeat ≤ 1.1x R jitted steps. The final
weights of the server's SGD and of the baseline are compared after the same steps.

    python benchmarks/training_step.py [--steps 20] [--loops 6] [--loop-size 10]
                                       [--repeat 100] [--client stdlib|httpx]
    python benchmarks/training_step.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jax
import numpy as np
import optax
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KeepAlive, binary_body, gradtape_server, median, table
from mlp import WEIGHTS, batch, init_weights, jax_loss, mlp_graph
from session_training import b64, from_b64

LR = 0.1
ADAM_LR = 1e-3
JSON = {"content-type": "application/json"}


def jax_step(opt: Any = None) -> Any:
    opt = optax.sgd(LR) if opt is None else opt

    @jax.jit
    def step(params: dict[str, Any], state: Any, X: Any, Y: Any) -> Any:
        loss, grads = jax.value_and_grad(jax_loss)(params, X, Y)
        updates, state = opt.update(grads, state, params)
        return loss, optax.apply_updates(params, updates), state

    return step, opt


def jax_gather_step(opt: Any) -> Any:
    @jax.jit
    def step(params: dict[str, Any], state: Any, DX: Any, DY: Any, idx: Any) -> Any:
        loss, grads = jax.value_and_grad(jax_loss)(params, DX[idx], DY[idx])
        updates, state = opt.update(grads, state, params)
        return loss, optax.apply_updates(params, updates), state

    return step


def client_steps(url: str, weights: dict[str, np.ndarray], batches: list[Any],
                 rows: dict[str, list[float]], steps: int) -> float:
    """The same SGD steps written with the Python client: `opt.step(loss_fn, ...)` with the
    batch as new constants each step (one request a step; httpx underneath, big arrays as
    b64; it answers the loss, so each step is waited for), against the jitted step; returns
    the weights' largest difference at the end."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))
    import gradtape as gt

    def loss_fn(W1: Any, b1: Any, W2: Any, b2: Any, W3: Any, b3: Any, X: Any, Y: Any) -> Any:
        h1 = gt.tanh(gt.matmul(X, W1) + b1)
        h2 = gt.tanh(gt.matmul(h1, W2) + b2)
        logits = gt.matmul(h2, W3) + b3
        return -gt.reduce_mean(gt.reduce_sum(Y * gt.log_softmax(logits), axis=1))

    step_fn, opt = jax_step()
    params = {k: jax.device_put(v) for k, v in weights.items()}
    state = opt.init(params)
    with gt.Client(url, timeout=600) as client, client.session() as s:
        variables = [s.Variable(weights[k], name=k) for k in WEIGHTS]
        sgd = s.Optimizer("sgd", LR)
        for i in range(steps + 2):
            X, Y = batches[i % len(batches)]
            server = timed(lambda X=X, Y=Y: sgd.step(loss_fn, *variables, s.constant(X),
                                                     s.constant(Y)))

            def jit_one(X: Any = X, Y: Any = Y) -> None:
                nonlocal params, state
                _, params, state = jax.block_until_ready(step_fn(params, state, X, Y))

            local = timed(jit_one)
            if i >= 2:  # the first two compile
                rows["step, Python client (opt.step, batch as new constants)"].append(server)
                rows["jit step, batch from NumPy (client row)"].append(local)
        return max(float(np.max(np.abs(v.numpy() - np.asarray(params[k]))))
                   for k, v in zip(WEIGHTS, variables, strict=True))


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Setup:
    """One way of sending steps, against its baseline: `server(i, fetch)` sends step i (its
    batch is the i-th), asking for the loss when `fetch`; `local(i)` calls the jitted step i
    in process and returns its outputs, not waited for."""

    name: str
    baseline: str
    server: Callable[[int, bool], None]
    local: Callable[[int], Any]


def per_step(setup: Setup, rows: dict[str, list[float]], first: int, steps: int) -> None:
    """Each step waited for: the server's request fetches the loss (its answer comes once the
    step is computed); the jitted step is blocked on. Alternating, step by step."""
    for i in range(first, first + steps):
        rows[f"{setup.name}, loss each step"].append(timed(lambda i=i: setup.server(i, True)))
        rows[f"{setup.baseline}, waited for"].append(
            timed(lambda i=i: jax.block_until_ready(setup.local(i))))


def warm_up(setup: Setup) -> None:
    """Two steps each side, untimed: the first compiles."""
    for i in range(2):
        setup.server(i, i == 1)
        jax.block_until_ready(setup.local(i))


def loop(setup: Setup, rows: dict[str, list[float]], first: int, blocks: int,
         size: int) -> None:
    """A loop of `size` steps that reads the loss of its last step, per step: the server's
    requests ask for nothing but the last one's loss (an answer that asks for nothing comes
    before its update is computed, as JAX answers a call before its compute ends), and the
    jitted steps are dispatched as a loop in process is, the last one waited for. The loops
    alternate, block by block."""
    i = first
    for _ in range(blocks):
        start = time.perf_counter()
        for j in range(size):
            setup.server(i + j, j == size - 1)
        rows[f"{setup.name}, loop of {size}"].append((time.perf_counter() - start) / size)
        start = time.perf_counter()
        for j in range(size):
            out = setup.local(i + j)
        jax.block_until_ready(out)
        rows[f"{setup.baseline}, loop of {size}"].append((time.perf_counter() - start) / size)
        i += size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20,
                        help="steps timed one by one, per setup")
    parser.add_argument("--loops", type=int, default=6,
                        help="loops timed, per setup (--loop-size steps each)")
    parser.add_argument("--loop-size", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a few steps, seconds")
    parser.add_argument("--client", choices=["stdlib", "httpx"], default="stdlib",
                        help="the HTTP client of the timed requests: the standard library's "
                        "keep-alive http.client (least client cost) or httpx; the bound step "
                        "is timed with the other one too")
    args = parser.parse_args()
    steps, repeat, loops, size = ((2, 3, 1, 3) if args.smoke else
                                  (args.steps, args.repeat, args.loops, args.loop_size))
    rng = np.random.default_rng(0)
    weights = init_weights(rng)
    batches = [batch(rng) for _ in range(8)]  # step i trains on batches[i % 8]
    step_fn, opt = jax_step()
    params = {k: jax.device_put(v) for k, v in weights.items()}
    state = opt.init(params)
    nodes = mlp_graph()["nodes"]
    other = "httpx" if args.client == "stdlib" else "stdlib"
    rows: dict[str, list[float]] = defaultdict(list)
    with gradtape_server(access_log="false") as server, \
            httpx.Client(base_url=server.url, timeout=600) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        for name, value in weights.items():
            c.put(f"{base}/tensors/{name}", json={"value": b64(value), "variable": True})
        r = c.post(f"{base}/optimizers", json={"name": "sgd", "method": "sgd",
                                                "learning_rate": LR, "variables": list(WEIGHTS)})
        assert r.status_code == 201, r.text
        lean = KeepAlive(server.url)

        def post(path: str, content: bytes, headers: dict[str, str],
                 client: str = args.client) -> None:
            if client == "httpx":
                r = c.post(path, content=content, headers=headers)
                status, text = r.status_code, r.text
            else:
                status, raw = lean.request("POST", path, content, headers)
                text = raw.decode(errors="replace")
            assert status == 200, text

        def step_body(fetch: bool, **body: Any) -> dict[str, Any]:
            return {"nodes": nodes, "target": "loss", "optimizer": "sgd",
                    "fetch": ["loss"] if fetch else [], **body}

        def b64_step(i: int, fetch: bool) -> None:
            # orjson, as a client that cares for speed encodes (see session_training.py)
            X, Y = batches[i % len(batches)]
            post(f"{base}/step", orjson.dumps(step_body(fetch, inputs={"X": b64(X),
                                                                        "Y": b64(Y)})), JSON)

        def binary_step(i: int, fetch: bool) -> None:
            X, Y = batches[i % len(batches)]
            post(f"{base}/step", *binary_body(step_body(fetch, inputs={"X": X, "Y": Y})))

        def jit_batch(i: int) -> Any:
            nonlocal params, state
            X, Y = batches[i % len(batches)]
            loss, params, state = step_fn(params, state, X, Y)
            return loss, params, state

        setups = [Setup("step, batch as b64", "jit step, batch from NumPy", b64_step, jit_batch),
                  Setup("step, batch as binary", "jit step, batch from NumPy (binary row)",
                        binary_step, jit_batch)]
        for s in setups:
            warm_up(s)
        for s in setups:
            per_step(s, rows, 0, steps)
            loop(s, rows, steps, loops, size)
        got = {k: from_b64(c.get(f"{base}/tensors/{k}?encoding=base64").json()) for k in WEIGHTS}
        drift = max(float(np.max(np.abs(got[k] - np.asarray(params[k])))) for k in WEIGHTS)
        # a data set uploaded once; each step sends the indices of its batch
        data_X = np.concatenate([b[0] for b in batches])
        data_Y = np.concatenate([b[1] for b in batches])
        for name, value in (("DX", data_X), ("DY", data_Y)):
            assert c.put(f"{base}/tensors/{name}", json={"value": b64(value)}).is_success
        gather_nodes = [{"id": "X", "op": "gather", "args": ["DX", "idx"]},
                        {"id": "Y", "op": "gather", "args": ["DY", "idx"]}, *nodes]
        gather_fn = jax_gather_step(opt)
        DXd, DYd = jax.device_put(data_X), jax.device_put(data_Y)
        picks = [np.sort(rng.choice(len(data_X), 128, replace=False)).astype(np.int32)
                 for _ in range(16)]

        def gather_step(i: int, fetch: bool) -> None:
            idx = picks[i % len(picks)]
            post(f"{base}/step", orjson.dumps({
                "nodes": gather_nodes, "target": "loss", "optimizer": "sgd",
                "fetch": ["loss"] if fetch else [],
                "inputs": {"idx": {"dtype": "int32", "shape": [128], "data": idx.tolist()}}}),
                JSON)

        def jit_gather(i: int) -> Any:
            nonlocal params, state
            loss, params, state = gather_fn(params, state, DXd, DYd, picks[i % len(picks)])
            return loss, params, state

        X, Y = batches[-1]
        Xd, Yd = jax.device_put(X), jax.device_put(Y)

        def bound_step(i: int, fetch: bool, client: str = args.client) -> None:
            post(f"{base}/step", orjson.dumps(step_body(fetch)), JSON, client)

        def jit_fixed(i: int) -> Any:
            nonlocal params, state
            loss, params, state = step_fn(params, state, Xd, Yd)
            return loss, params, state

        gather = Setup("step, indices into a data set", "jit step, gather from the data set",
                       gather_step, jit_gather)
        warm_up(gather)
        b64_step(len(batches) - 1, True)  # bind the batch
        jax.block_until_ready(jit_batch(len(batches) - 1))
        bound = Setup("step, batch bound", "jit step, batch fixed", bound_step, jit_fixed)
        bound_other = Setup(f"step, batch bound, {other} client", "jit step, batch fixed "
                            f"({other} row)", lambda i, f: bound_step(i, f, other), jit_fixed)
        for s in (gather, bound, bound_other):
            per_step(s, rows, 0, steps)
            loop(s, rows, steps, loops, size)
        post(f"{base}/step", orjson.dumps(step_body(False, repeat=repeat)), JSON)  # compile
        for _ in range(repeat):  # the same steps in process
            jax.block_until_ready(jit_fixed(0))
        for _ in range(max(2, steps // 5)):
            rows[f"repeat {repeat}, per step"].append(
                timed(lambda: post(f"{base}/step", orjson.dumps(
                    step_body(False, repeat=repeat)), JSON)) / repeat)

            def jit_many() -> None:
                for _ in range(repeat):
                    out = jit_fixed(0)
                jax.block_until_ready(out)

            rows[f"{repeat} jit steps, per step"].append(timed(jit_many) / repeat)
        got = {k: from_b64(c.get(f"{base}/tensors/{k}?encoding=base64").json()) for k in WEIGHTS}
        drift = max(drift, *(float(np.max(np.abs(got[k] - np.asarray(params[k]))))
                             for k in WEIGHTS))
        # Adam, the batch bound: a second optimizer of the same variables, from the weights
        # SGD left, against optax's Adam in process from the same weights
        r = c.post(f"{base}/optimizers", json={"name": "adam", "method": "adam",
                                                "learning_rate": ADAM_LR,
                                                "variables": list(WEIGHTS)})
        assert r.status_code == 201, r.text
        adam_fn, adam = jax_step(optax.adam(ADAM_LR))
        aparams = {k: jax.device_put(v) for k, v in got.items()}
        astate = adam.init(aparams)

        def adam_step(i: int, fetch: bool) -> None:
            post(f"{base}/step", orjson.dumps(step_body(fetch, optimizer="adam")), JSON)

        def jit_adam(i: int) -> Any:
            nonlocal aparams, astate
            loss, aparams, astate = adam_fn(aparams, astate, Xd, Yd)
            return loss, aparams, astate

        adam_setup = Setup("step, batch bound, Adam", "jit step, batch fixed, Adam",
                           adam_step, jit_adam)
        warm_up(adam_setup)
        per_step(adam_setup, rows, 0, steps)
        loop(adam_setup, rows, steps, loops, size)
        got = {k: from_b64(c.get(f"{base}/tensors/{k}?encoding=base64").json()) for k in WEIGHTS}
        adam_drift = max(float(np.max(np.abs(got[k] - np.asarray(aparams[k]))))
                         for k in WEIGHTS)
        client_drift = client_steps(server.url, weights, batches, rows, steps)
    med = {k: median(v) * 1e3 for k, v in rows.items()}
    pairs = []
    for s in ("step, batch as b64", "step, batch as binary", "step, indices into a data set",
              "step, batch bound", f"step, batch bound, {other} client",
              "step, batch bound, Adam"):
        base_of = {"step, batch as b64": "jit step, batch from NumPy",
                   "step, batch as binary": "jit step, batch from NumPy (binary row)",
                   "step, indices into a data set": "jit step, gather from the data set",
                   "step, batch bound": "jit step, batch fixed",
                   f"step, batch bound, {other} client": f"jit step, batch fixed ({other} row)",
                   "step, batch bound, Adam": "jit step, batch fixed, Adam"}[s]
        pairs.append((f"{s}, loss each step", f"{base_of}, waited for", 1.3))
        pairs.append((f"{s}, loop of {size}", f"{base_of}, loop of {size}", 1.3))
    pairs += [("step, Python client (opt.step, batch as new constants)",
               "jit step, batch from NumPy (client row)", 1.3),
              (f"repeat {repeat}, per step", f"{repeat} jit steps, per step", 1.1)]
    print(table(["setup", "median ms per step", "baseline ms", "ratio", "goal"],
                [[a, f"{med[a]:.2f}", f"{med[b]:.2f}", f"{med[a] / med[b]:.2f}x", f"<= {g}x"]
                 for a, b, g in pairs],
                title="MLP 784-512-512-10, batch 128, SGD (and Adam): POST .../step vs jit in "
                f"process ({args.client} client)"))
    print(f"weights after the same SGD steps (every setup): max |server - in process| = "
          f"{drift:.2e}")
    print(f"weights after the same Adam steps: max |server - in process| = {adam_drift:.2e}")
    print(f"weights after the same {steps + 2} SGD steps through the Python client: "
          f"max |server - in process| = {client_drift:.2e}")
    return 0 if max(drift, adam_drift, client_drift) < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
