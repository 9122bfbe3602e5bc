"""The MLP training step through `POST .../step` against the same jitted step in process.

The MLP of benchmarks/mlp.py (784-512-512-10 tanh, softmax cross-entropy, batch 128), its
weights held in a session of a `gradtape serve` subprocess with an optax SGD optimizer. Timed,
step by step, interleaved with the baseline:

- `step, batch as b64`: one request carrying the batch (X, Y as b64 tensors);
- `step, batch bound`: the batch already in the session, no inputs (the floor of the route);
- `repeat: R`, per step: R steps on the bound batch in one request;
- the baseline: `jax.jit` of value_and_grad and the optax update in this process, weights kept
  on the device, the batch from NumPy each step (for the b64 row), or fixed (for the others).

Goals (issue figures): step ≤ 1.3x the jitted step; repeat ≤ 1.1x R jitted steps. The final
weights of the server's SGD and of the baseline are compared after the same steps.

    python benchmarks/training_step.py [--steps 20] [--repeat 100]
    python benchmarks/training_step.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import gradtape_server, median, table
from mlp import WEIGHTS, batch, init_weights, jax_loss, mlp_graph
from session_training import b64, from_b64

LR = 0.1


def jax_step() -> Any:
    opt = optax.sgd(LR)

    @jax.jit
    def step(params: dict[str, Any], state: Any, X: Any, Y: Any) -> Any:
        loss, grads = jax.value_and_grad(jax_loss)(params, X, Y)
        updates, state = opt.update(grads, state, params)
        return loss, optax.apply_updates(params, updates), state

    return step, opt


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a few steps, seconds")
    args = parser.parse_args()
    steps, repeat = (2, 3) if args.smoke else (args.steps, args.repeat)
    rng = np.random.default_rng(0)
    weights = init_weights(rng)
    batches = [batch(rng) for _ in range(steps + 2)]
    step_fn, opt = jax_step()
    params = {k: jax.device_put(v) for k, v in weights.items()}
    state = opt.init(params)
    nodes = mlp_graph()["nodes"]
    rows: dict[str, list[float]] = {"step, batch as b64": [], "jit step, batch from NumPy": [],
                                    "step, batch bound": [], "jit step, batch fixed": [],
                                    f"repeat {repeat}, per step": [],
                                    f"{repeat} jit steps, per step": []}
    with gradtape_server(access_log="false") as server, \
            httpx.Client(base_url=server.url, timeout=600) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        for name, value in weights.items():
            c.put(f"{base}/tensors/{name}", json={"value": b64(value), "variable": True})
        r = c.post(f"{base}/optimizers", json={"name": "sgd", "method": "sgd",
                                                "learning_rate": LR, "variables": list(WEIGHTS)})
        assert r.status_code == 201, r.text

        def step_request(body: dict[str, Any]) -> None:
            r = c.post(f"{base}/step", json={"nodes": nodes, "target": "loss",
                                              "optimizer": "sgd", **body})
            assert r.status_code == 200, r.text

        for X, Y in batches[:2]:  # warm-up: compile both sides
            step_request({"inputs": {"X": b64(X), "Y": b64(Y)}})
            _, params, state = jax.block_until_ready(step_fn(params, state, X, Y))
        for X, Y in batches[2:]:
            rows["step, batch as b64"].append(timed(
                lambda X=X, Y=Y: step_request({"inputs": {"X": b64(X), "Y": b64(Y)}})))

            def jit_one(X: Any = X, Y: Any = Y) -> None:
                nonlocal params, state
                _, params, state = jax.block_until_ready(step_fn(params, state, X, Y))

            rows["jit step, batch from NumPy"].append(timed(jit_one))
        got = {k: from_b64(c.get(f"{base}/tensors/{k}?encoding=base64").json()) for k in WEIGHTS}
        drift = max(float(np.max(np.abs(got[k] - np.asarray(params[k])))) for k in WEIGHTS)
        X, Y = batches[-1]
        Xd, Yd = jax.device_put(X), jax.device_put(Y)
        step_request({"inputs": {"X": b64(X), "Y": b64(Y)}})  # bind the batch
        _, params, state = jax.block_until_ready(step_fn(params, state, Xd, Yd))
        step_request({"repeat": repeat})  # compile the loop
        for _ in range(steps):
            rows["step, batch bound"].append(timed(lambda: step_request({})))

            def jit_fixed() -> None:
                nonlocal params, state
                _, params, state = jax.block_until_ready(step_fn(params, state, Xd, Yd))

            rows["jit step, batch fixed"].append(timed(jit_fixed))
        for _ in range(max(2, steps // 5)):
            rows[f"repeat {repeat}, per step"].append(
                timed(lambda: step_request({"repeat": repeat})) / repeat)

            def jit_many() -> None:
                nonlocal params, state
                for _ in range(repeat):
                    _, params, state = step_fn(params, state, Xd, Yd)
                jax.block_until_ready(params)

            rows[f"{repeat} jit steps, per step"].append(timed(jit_many) / repeat)
    med = {k: median(v) * 1e3 for k, v in rows.items()}
    pairs = [("step, batch as b64", "jit step, batch from NumPy", 1.3),
             ("step, batch bound", "jit step, batch fixed", 1.3),
             (f"repeat {repeat}, per step", f"{repeat} jit steps, per step", 1.1)]
    print(table(["setup", "median ms per step", "baseline ms", "ratio", "goal"],
                [[a, f"{med[a]:.2f}", f"{med[b]:.2f}", f"{med[a] / med[b]:.2f}x", f"<= {g}x"]
                 for a, b, g in pairs],
                title="MLP 784-512-512-10, batch 128, SGD: POST .../step vs jit in process"))
    print(f"weights after the same {steps} b64 steps: max |server - in process| = {drift:.2e}")
    return 0 if drift < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
