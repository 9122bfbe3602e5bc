"""The Python client (clients/python, `import gradtape as gt`) against a real server.

The service is started once for the module on a free loopback port. Derivatives are checked
against independent oracles: central differences in float64 with NumPy, and closed forms.
Request counts are taken with an httpx event hook on the client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "clients" / "python"))  # also without `pip install -e`

import gradtape as gt  # noqa: E402
from gradtape import _codec  # noqa: E402
from gradtape._catalog import CATALOG  # noqa: E402

from tests.live import live_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("client-server")) as url:
        yield url


class Counted:
    """A client whose requests are recorded as (method, last path segment, body)."""

    def __init__(self, url: str, binary: bool = True):
        self.calls: list[tuple[str, str, bytes]] = []
        self.requests: list[httpx.Request] = []
        self.client = gt.Client(url, binary=binary, event_hooks={"request": [self._seen]})

    def _seen(self, request: httpx.Request) -> None:
        self.requests.append(request)
        self.calls.append((request.method, request.url.path.rsplit("/", 1)[-1],
                           request.content))

    def routes(self) -> list[str]:
        return [f"{m} {p}" for m, p, _ in self.calls]

    def take(self) -> list[str]:
        routes = self.routes()
        self.calls.clear()
        return routes


@pytest.fixture
def counted(server: str) -> Iterator[Counted]:
    c = Counted(server)
    yield c
    c.client.close()


@pytest.fixture
def client(counted: Counted) -> gt.Client:
    return counted.client


def central_diff(fn: Callable[[np.ndarray], Any], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d fn / dx by central differences in float64: shape fn(x).shape + x.shape."""
    x = np.asarray(x, dtype=np.float64)
    out_shape = np.shape(fn(x))
    jac = np.zeros(out_shape + x.shape)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        jac[(..., *i)] = (np.asarray(fn(x + step)) - np.asarray(fn(x - step))) / (2 * h)
    return jac


# ----- the tutorial -----

def test_tutorial_numbers(client: gt.Client) -> None:
    with client.session() as s:
        x = s.constant([[1.0, 1.0], [1.0, 1.0]])
        with s.GradientTape() as t:
            t.watch(x)
            y = gt.reduce_sum(x)
            z = gt.multiply(y, y)
        g = t.gradient(z, x).numpy()
    assert g.dtype == np.float32 and g.shape == (2, 2)
    np.testing.assert_array_equal(g, [[8.0, 8.0], [8.0, 8.0]])

    with client.session() as s:
        x = s.constant([[1.0, 1.0], [1.0, 1.0]])
        with s.GradientTape() as t:
            t.watch(x)
            y = gt.reduce_sum(x)
            z = gt.multiply(y, y)
        assert float(t.gradient(z, y)) == 8.0

    with client.session() as s:
        x = s.constant(3.0)
        with s.GradientTape(persistent=True) as t:
            t.watch(x)
            y = x * x
            z = y * y
        assert float(t.gradient(z, x)) == 108.0
        assert float(t.gradient(y, x)) == 6.0

    def f(x: gt.Tensor, n: int) -> Any:
        output = 1.0
        for i in range(n):
            if 1 < i < 5:
                output = gt.multiply(output, x)
        return output

    for n, expected in ((6, 12.0), (5, 12.0), (4, 4.0)):
        with client.session() as s:
            x = s.constant(2.0)
            with s.GradientTape() as t:
                t.watch(x)
                out = f(x, n)
            assert float(t.gradient(out, x)) == expected

    with client.session() as s:
        v = s.Variable(1.0)
        with s.GradientTape() as t:
            with s.GradientTape() as t2:
                y = v * v * v
            dy_dx = t2.gradient(y, v)
        d2y_dx2 = t.gradient(dy_dx, v)
        assert dy_dx.numpy().dtype == np.float32
        assert float(dy_dx) == 3.0 and float(d2y_dx2) == 6.0


def test_tutorial_request_counts(counted: Counted) -> None:
    """What tutorial parts 1, 3 and 5 cost (examples/tutorial_httpx.py, written by hand,
    costs 8, 10 and 10 requests for them)."""
    client = counted.client

    def kinds() -> list[str]:
        return [r.split(" ")[0] + " " + ("tensors" if r.startswith("PUT") else
                                         r.split(" ")[1] if not r.startswith("DELETE")
                                         else "session") for r in counted.take()]

    with client.session() as s:
        x = s.constant([[1.0, 1.0], [1.0, 1.0]])
        with s.GradientTape() as t:
            t.watch(x)
            z = gt.reduce_sum(x) ** 2
        t.gradient(z, x).numpy()
    assert kinds() == ["POST sessions", "POST tapes", "POST run", "POST gradient",
                       "DELETE session"]

    with client.session() as s:
        x = s.constant(3.0)
        with s.GradientTape(persistent=True) as t:
            t.watch(x)
            y = x * x
            z = y * y
        t.gradient(z, x).numpy()
        t.gradient(y, x).numpy()
    assert kinds() == ["POST sessions", "POST tapes", "POST run", "POST gradient",
                       "POST gradient", "DELETE session"]

    with client.session() as s:
        v = s.Variable(1.0)
        with s.GradientTape() as t:
            with s.GradientTape() as t2:
                y = v * v * v
            dy_dx = t2.gradient(y, v)
        t.gradient(dy_dx, v).numpy()
    # t2 must stop before its gradient is recorded on t; t's stop is never needed
    assert kinds() == ["POST sessions", "PUT tensors", "POST tapes", "POST tapes", "POST run",
                       "POST stop", "POST gradient", "POST gradient", "DELETE session"]


def test_tutorial_example_prints_the_nine_lines(server: str) -> None:
    result = subprocess.run([sys.executable, "tutorial.py"], cwd=ROOT / "examples",
                            env={**os.environ, "GRADTAPE_URL": server}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
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
    wrong = subprocess.run([sys.executable, "tutorial.py"], cwd=ROOT / "examples",
                           env={**os.environ, "GRADTAPE_URL": f"{server}/no-such-prefix"},
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "404" in wrong.stderr and not wrong.stdout


# ----- derivatives against oracles -----

X0 = np.array([0.3, -1.2, 2.0, 0.7])
W = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])
A = np.array([1.0, -2.0, 0.5, 3.0])


def f_numpy(x: np.ndarray) -> float:
    return float(np.sum(np.sin(x) * x**2) + np.log(np.sum(np.exp(x))))


def f_gt(x: gt.Tensor) -> gt.Tensor:
    return gt.reduce_sum(gt.sin(x) * x**2) + gt.reduce_logsumexp(x)


def f_grad_closed(x: np.ndarray) -> np.ndarray:
    softmax = np.exp(x) / np.sum(np.exp(x))
    return np.cos(x) * x**2 + 2 * x * np.sin(x) + softmax


def test_tape_gradient_matches_differences_and_closed_form(client: gt.Client) -> None:
    with client.session() as s:
        x = s.constant(X0)  # float64 stays float64
        with s.GradientTape() as t:
            t.watch(x)
            y = f_gt(x)
        g = t.gradient(y, x).numpy()
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, central_diff(f_numpy, X0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g, f_grad_closed(X0), rtol=1e-12)


def test_tape_jacobian_and_batch_jacobian(client: gt.Client) -> None:
    def g_numpy(x: np.ndarray) -> np.ndarray:
        return np.tanh(W @ x)

    x0 = np.array([0.4, -0.9])
    with client.session() as s:
        x = s.constant(x0)
        w = s.constant(W)
        batch = s.constant(np.stack([x0, 2 * x0, -x0]))
        with s.GradientTape(persistent=True) as t:
            t.watch([x, batch])
            y = gt.tanh(w @ x)
            yb = gt.tanh(batch @ gt.transpose(w))  # [3 examples, 3 outputs]
        jac = t.jacobian(y, x).numpy()
        bjac = t.batch_jacobian(yb, batch).numpy()
    closed = (1 - np.tanh(W @ x0) ** 2)[:, None] * W
    np.testing.assert_allclose(jac, central_diff(g_numpy, x0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(jac, closed, rtol=1e-12)
    assert bjac.shape == (3, 3, 2)
    for i, xi in enumerate([x0, 2 * x0, -x0]):
        np.testing.assert_allclose(bjac[i], central_diff(g_numpy, xi), rtol=1e-6, atol=1e-9)


def test_tape_hvp_and_hessian_closed_form(client: gt.Client) -> None:
    v0 = np.array([1.0, 0.5, -1.0, 2.0])
    with client.session() as s:
        x = s.constant(X0)
        with s.GradientTape(persistent=True) as t:
            t.watch(x)
            h = gt.reduce_sum(x**4) / 4 + gt.reduce_sum(x * A) ** 2
        hvp = t.hvp(h, x, v0).numpy()
        hess = t.hessian(h, x).numpy()
    closed = np.diag(3 * X0**2) + 2 * np.outer(A, A)
    np.testing.assert_allclose(hess, closed, rtol=1e-12)
    np.testing.assert_allclose(hvp, closed @ v0, rtol=1e-12)
    grad = lambda z: z**3 + 2 * A * np.dot(A, z)  # noqa: E731
    np.testing.assert_allclose(hess, central_diff(grad, X0), rtol=1e-6, atol=1e-6)


def test_structures_output_gradients_and_unconnected(client: gt.Client) -> None:
    with client.session() as s:
        a = s.constant([1.0, 2.0])
        b = s.constant(3.0)
        c = s.constant(5.0)  # never watched
        with s.GradientTape(persistent=True) as t:
            t.watch([a, b])
            y = a * b
        grads = t.gradient(y, {"a": a, "pair": (b, c)})
        assert set(grads) == {"a", "pair"} and isinstance(grads["pair"], tuple)
        np.testing.assert_array_equal(grads["a"].numpy(), [3.0, 3.0])
        assert float(grads["pair"][0]) == 3.0 and grads["pair"][1] is None
        zero = t.gradient(y, [c], unconnected_gradients="zero")
        assert isinstance(zero, list) and float(zero[0]) == 0.0
        vjp = t.gradient(y, a, output_gradients=np.array([1.0, -1.0]))
        np.testing.assert_array_equal(vjp.numpy(), [3.0, -3.0])
        total = t.gradient([y, gt.reduce_sum(a)], b)  # a list of targets: their sum
        assert float(total) == 3.0


# ----- tapes -----

def test_persistent_tape_and_second_gradient_conflict(client: gt.Client) -> None:
    with client.session() as s:
        x = s.constant(2.0)
        with s.GradientTape() as t:
            t.watch(x)
            y = x * x
        assert float(t.gradient(y, x)) == 4.0
        with pytest.raises(gt.ConflictError) as info:
            t.gradient(y, x)
        assert info.value.status == 409 and "persistent" in info.value.detail
        with s.GradientTape(persistent=True) as p:
            p.watch(x)
            y = x**3
        assert [float(p.gradient(y, x)) for _ in range(3)] == [12.0, 12.0, 12.0]


def _server_tapes(server: str, s: Any) -> list[str]:
    info = httpx.get(f"{server}/v1/sessions/{s.session_id}").json()
    return [t["tape_id"] for t in info["tapes"]]


def test_a_tape_dropped_is_deleted_on_the_server(server: str, counted: Counted) -> None:
    """A training loop opens a tape each step and never deletes one (as TensorFlow code
    does): each tape is deleted on the server once its object is gone, with the session's
    next requests, so the session holds one or two tapes however long the loop runs. A tape
    still held keeps answering, and a non-persistent one still says it answered."""
    import gc

    with counted.client.session() as s:
        w = s.Variable(np.array([1.0, 2.0, 3.0], np.float32), name="w")
        opt = s.Optimizer("sgd", 0.25)
        for _ in range(12):
            with s.GradientTape() as tape:
                loss = gt.reduce_sum((w - 3.0) * (w - 3.0))
            opt.minimize(loss, [w], tape)
        np.testing.assert_allclose(w.numpy(), 3.0 - np.array([2.0, 1.0, 0.0]) * 0.5**12,
                                   rtol=1e-5)
        deleted = [r.split()[1] for r in counted.take() if r.startswith("DELETE")]
        assert len(deleted) == 11 and tape._id not in deleted  # the last one is held
        assert len(_server_tapes(server, s)) <= 2
        assert len(s._live_tapes()) == 1
        # a held persistent tape is kept; dropped, it goes with the next request
        with s.GradientTape(persistent=True) as kept:
            y = gt.reduce_sum(w * w)
        del tape
        gc.collect()
        assert [float(kept.gradient(y, w)[0]) for _ in range(2)] == [2 * float(w.numpy()[0])] * 2
        held = kept._id
        assert _server_tapes(server, s) == [held]
        with s.GradientTape() as once:
            z = gt.reduce_sum(w)
        once.gradient(z, w)
        with pytest.raises(gt.ConflictError):
            once.gradient(z, w)
        del kept
        gc.collect()
        s.flush()
        assert held not in _server_tapes(server, s)
        # a tape deleted by other means: dropping it sends a DELETE that finds nothing, and
        # the request it rides with is not failed for that
        with s.GradientTape(persistent=True) as other:
            gt.reduce_sum(w).numpy()
        gt.reduce_sum(w).numpy()  # a run: the tape's stop is sent first
        assert httpx.delete(f"{server}/v1/sessions/{s.session_id}/tapes/{other._id}"
                            ).status_code == 204
        del other
        gc.collect()
        counted.take()
        assert float(gt.reduce_sum(w * 2.0).numpy()) == pytest.approx(2 * w.numpy().sum())
        assert any(r.startswith("DELETE") for r in counted.take())
    # a tape outliving its session is not deleted again (the session took it with it)
    counted.take()
    del once
    gc.collect()
    assert s._queue == [] and counted.take() == []


def test_nested_tapes_third_derivative(client: gt.Client) -> None:
    with client.session() as s:
        x = s.Variable(2.0)
        with s.GradientTape() as t1:
            with s.GradientTape() as t2:
                with s.GradientTape() as t3:
                    y = x**4
                d1 = t3.gradient(y, x)
            d2 = t2.gradient(d1, x)
        d3 = t1.gradient(d2, x)
        assert (float(d1), float(d2), float(d3)) == (32.0, 48.0, 48.0)


def test_stop_recording_pauses_only_when_ops_ran(counted: Counted) -> None:
    with counted.client.session() as s:
        x = s.constant(2.0)
        with s.GradientTape(persistent=True) as t:
            t.watch(x)
            y = x * x
            with t.stop_recording():
                z = x * x * x  # not recorded: a constant for the tape
            w = y + z
            with t.stop_recording():
                pass  # nothing ran: no pause or resume is sent
        assert float(t.gradient(w, x)) == 4.0
        assert t.gradient(z, x) is None
        routes = counted.routes()
        assert routes.count("POST pause") == 1 and routes.count("POST resume") == 1


def test_reset_and_watch_accessed_variables(client: gt.Client) -> None:
    with client.session() as s:
        v = s.Variable([1.0, 2.0], name="v")
        frozen = s.Variable(3.0, trainable=False)
        with s.GradientTape() as t:
            y = gt.reduce_sum(v * v) * frozen
        assert [u.name for u in t.watched_variables()] == ["v"]
        gv, gf = t.gradient(y, [v, frozen])
        np.testing.assert_array_equal(gv.numpy(), [6.0, 12.0])
        assert gf is None  # not trainable: not watched
        with s.GradientTape(watch_accessed_variables=False) as t:
            y = v * v
        assert t.gradient(y, v) is None
        with s.GradientTape(persistent=True) as t:
            t.watch(frozen)
            y = frozen * 2.0
            t.reset()
            z = frozen * 5.0
        assert t.gradient(y, frozen) is None  # forgotten, and no longer watched
        assert t.gradient(z, frozen) is None


# ----- variables -----

def test_variables_assign(client: gt.Client) -> None:
    with client.session() as s:
        v = s.Variable([1.0, 2.0], name="weights")
        twin = s.Variable(0.0, name="weights")  # names are made unique, as TensorFlow does
        assert twin.name == "weights_1"
        v.assign_add([1.0, 1.0])
        np.testing.assert_array_equal(v.numpy(), [2.0, 3.0])
        v.assign_sub(s.constant([0.5, 0.5]))
        np.testing.assert_array_equal(v.numpy(), [1.5, 2.5])
        before = v * 1.0  # reads the value at this point
        v.assign(7.0)
        np.testing.assert_array_equal(v.numpy(), [7.0, 7.0])
        np.testing.assert_array_equal(before.numpy(), [1.5, 2.5])
        assert v.shape == (2,) and v.dtype == "float32"
        with s.GradientTape() as t:
            loss = gt.reduce_sum(v * v)
        g = t.gradient(loss, v)
        v.assign_sub(0.25 * g)  # one step of gradient descent
        np.testing.assert_array_equal(v.numpy(), [3.5, 3.5])


# ----- optimizers held in the session -----

def _regression(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(16, 3)).astype(np.float32),
            rng.normal(size=(16, 1)).astype(np.float32),
            rng.normal(size=(3, 1)).astype(np.float32))


def _optax_steps(method: str, lr: float, w0: np.ndarray, X: np.ndarray, Y: np.ndarray,
                 steps: int, **options: Any) -> np.ndarray:
    import jax
    import jax.numpy as jnp
    import optax

    opt = getattr(optax, method)(lr, **options)
    w, state = jnp.asarray(w0), opt.init(jnp.asarray(w0))
    for _ in range(steps):
        g = jax.grad(lambda w: jnp.mean((X @ w - Y) ** 2))(w)
        updates, state = opt.update(g, state, w)
        w = optax.apply_updates(w, updates)
    return np.asarray(w)


@pytest.mark.parametrize(("method", "options"), [("sgd", {"momentum": 0.5}), ("adam", {})])
def test_optimizer_minimize_is_one_request_and_matches_optax(
        counted: Counted, method: str, options: dict[str, Any]) -> None:
    X, Y, w0 = _regression(1)
    with counted.client.session() as s:
        w = s.Variable(w0, name="w")
        opt = gt.Optimizer(method, 0.05, **options)
        x, y = s.constant(X), s.constant(Y)
        for step in range(1, 4):
            with s.GradientTape() as tape:
                loss = gt.reduce_mean(gt.square(gt.matmul(x, w) - y))
            counted.calls.clear()
            assert opt.minimize(loss, [w], tape=tape) == step == opt.iterations
            # the forward run, then the gradient applied on the server (the optimizer is
            # created there on its first use); no gradient comes back
            routes = counted.routes()
            first = ["POST optimizers"] if step == 1 else []
            assert routes[-2 - len(first):] == ["POST run", *first, "POST gradient"], routes
            assert routes.count("POST optimizers") == len(first)
            assert json.loads(counted.calls[-1][2])["apply"] == opt.name
        np.testing.assert_allclose(w.numpy(), _optax_steps(method, 0.05, w0, X, Y, 3,
                                                           **options), rtol=1e-5, atol=1e-6)


def test_optimizer_apply_gradients_with_client_gradients(client: gt.Client) -> None:
    X, Y, w0 = _regression(2)
    with client.session() as s:
        w = s.Variable(w0)
        frozen = s.Variable(np.ones(2, np.float32))
        opt = s.Optimizer("sgd", 0.1, variables=[w, frozen])
        for _ in range(2):
            with s.GradientTape() as tape:
                loss = gt.reduce_mean(gt.square(gt.matmul(s.constant(X), w) - s.constant(Y)))
            grad = tape.gradient(loss, w)
            # a None gradient leaves its variable (and its state) as it is
            opt.apply_gradients([(grad, w), (None, frozen)])
        np.testing.assert_allclose(w.numpy(), _optax_steps("sgd", 0.1, w0, X, Y, 2),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(frozen.numpy(), [1.0, 1.0])
        assert opt.iterations == 2 and "sgd" in repr(opt)


def _optax_losses(method: str, lr: float, w0: np.ndarray, X: np.ndarray, Y: np.ndarray,
                  steps: int) -> list[float]:
    import jax
    import jax.numpy as jnp
    import optax

    opt = getattr(optax, method)(lr)
    w, state, losses = jnp.asarray(w0), opt.init(jnp.asarray(w0)), []
    for _ in range(steps):
        loss, g = jax.value_and_grad(lambda w: jnp.mean((X @ w - Y) ** 2))(w)
        updates, state = opt.update(g, state, w)
        w = optax.apply_updates(w, updates)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_optimizer_step_is_one_request_and_matches_optax(counted: Counted, method: str) -> None:
    X, Y, w0 = _regression(3)

    def loss_fn(w: Any, x: Any, y: Any) -> Any:
        return gt.reduce_mean(gt.square(gt.matmul(x, w) - y))

    with counted.client.session() as s:
        w = s.Variable(w0)
        x, y = s.constant(X), s.constant(Y)
        opt = s.Optimizer(method, 0.05)
        losses = [opt.step(loss_fn, w, x, y)]
        counted.calls.clear()
        losses.append(opt.step(loss_fn, w, x, y))
        assert counted.routes() == ["POST step"]  # the whole step, one request
        losses += opt.step(gt.function(loss_fn), w, x, y, repeat=3)
        assert opt.iterations == 5
        np.testing.assert_allclose(losses, _optax_losses(method, 0.05, w0, X, Y, 5),
                                   rtol=1e-5)
        np.testing.assert_allclose(w.numpy(), _optax_steps(method, 0.05, w0, X, Y, 5),
                                   rtol=1e-5, atol=1e-6)
        # node results are not kept in the session: only the variable changed
        info = counted.client.request("GET", f"/sessions/{s.session_id}")
        assert not any(t["name"].startswith("_step/") for t in info["tensors"])


def test_optimizer_step_carries_new_constants(counted: Counted) -> None:
    """A new batch each step goes with the step: one request a step."""
    X, Y, w0 = _regression(4)

    def loss_fn(w: Any, x: Any, y: Any) -> Any:
        return gt.reduce_mean(gt.square(gt.matmul(x, w) - y))

    with counted.client.session() as s:
        w = s.Variable(w0)
        opt = s.Optimizer("sgd", 0.1)
        halves = [(X[:8], Y[:8]), (X[8:], Y[8:])] * 2
        losses = [opt.step(loss_fn, w, s.constant(halves[0][0]), s.constant(halves[0][1]))]
        for Xh, Yh in halves[1:]:
            counted.calls.clear()
            x = s.constant(Xh)
            losses.append(opt.step(loss_fn, w, x, s.constant(Yh)))
            assert counted.routes() == ["POST step"]
            sent = json.loads(counted.calls[0][2])["inputs"]
            assert len(sent) == 2 and x.name in sent
            np.testing.assert_array_equal(x.numpy(), Xh)  # bound: usable as any constant
        # the same as four plain SGD steps on the halves
        import jax
        import jax.numpy as jnp

        v, expected = jnp.asarray(w0), []
        for Xh, Yh in halves:
            loss, g = jax.value_and_grad(lambda v, Xh=Xh, Yh=Yh: jnp.mean((Xh @ v - Yh) ** 2))(v)
            expected.append(float(loss))
            v = v - 0.1 * g
        np.testing.assert_allclose(losses, expected, rtol=1e-5)
        np.testing.assert_allclose(w.numpy(), np.asarray(v), rtol=1e-5, atol=1e-6)


def test_optimizer_step_without_its_loss_asks_for_nothing(counted: Counted) -> None:
    """`return_loss=False`: the step fetches nothing (the server answers before it is
    computed); the weights are those of the same steps with their losses."""
    X, Y, w0 = _regression(5)

    def loss_fn(w: Any, x: Any, y: Any) -> Any:
        return gt.reduce_mean(gt.square(gt.matmul(x, w) - y))

    with counted.client.session() as s:
        w = s.Variable(w0)
        x, y = s.constant(X), s.constant(Y)
        opt = s.Optimizer("adam", 0.05)
        for _ in range(3):
            counted.calls.clear()
            assert opt.step(loss_fn, w, x, y, return_loss=False) is None
            assert json.loads(counted.calls[-1][2])["fetch"] == []
        assert opt.step(loss_fn, w, x, y, repeat=2, return_loss=False) is None
        last = opt.step(loss_fn, w, x, y)
        assert opt.iterations == 6
        np.testing.assert_allclose(last, _optax_losses("adam", 0.05, w0, X, Y, 6)[-1],
                                   rtol=1e-5)
        np.testing.assert_allclose(w.numpy(), _optax_steps("adam", 0.05, w0, X, Y, 6),
                                   rtol=1e-5, atol=1e-6)


def test_optimizer_step_errors(client: gt.Client) -> None:
    with client.session() as s, client.session() as other:
        w = s.Variable([1.0, 2.0])
        opt = s.Optimizer("sgd", 0.1)
        with pytest.raises(TypeError, match="takes 1 arguments; step was given 2"):
            opt.step(lambda w: gt.reduce_sum(w * w), w, w)
        with pytest.raises(TypeError, match="'w' is list"):
            opt.step(lambda w: gt.reduce_sum(w * w), [1.0, 2.0])
        with pytest.raises(TypeError, match="the loss alone"):
            opt.step(lambda w: (gt.reduce_sum(w), gt.reduce_sum(w * w)), w)
        with pytest.raises(TypeError, match="of this optimizer's session"):
            opt.step(lambda w: gt.reduce_sum(w * w), other.Variable([1.0]))
        with pytest.raises(ValueError, match="repeat must be between"):
            opt.step(lambda w: gt.reduce_sum(w * w), w, repeat=0)
        # the server's checks: a loss that is not a scalar
        with pytest.raises(gt.InvalidGraphError, match="floating-point scalar"):
            opt.step(lambda w: w * w, w)
        np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])


def test_optimizer_errors(client: gt.Client) -> None:
    with client.session() as s, client.session() as other:
        w = s.Variable([1.0, 2.0])
        with pytest.raises(ValueError, match="method must be one of"):
            s.Optimizer("lbfgs", 0.1)
        opt = s.Optimizer("sgd", 0.1, variables=[w])
        with pytest.raises(ValueError, match="grads_and_vars is empty"):
            opt.apply_gradients([(None, w)])
        with pytest.raises(TypeError, match="variables of this optimizer's session"):
            opt.apply_gradients([([1.0, 1.0], other.Variable([0.0, 0.0]))])
        with s.GradientTape() as tape:
            loss = gt.reduce_sum(w * w)
        # an optimizer the server refuses: the problem names the field
        bad = s.Optimizer("sgd", -1.0)
        with pytest.raises(gt.InvalidRequestError) as err:
            bad.minimize(loss, [w], tape=tape)
        assert err.value.loc == ["body", "learning_rate"]
        # a variable the optimizer does not update
        v = s.Variable([3.0])
        with s.GradientTape() as tape:
            loss = gt.reduce_sum(w * v)
        with pytest.raises(gt.InvalidGraphError, match="not a variable of optimizer"):
            opt.minimize(loss, [v], tape=tape)
        assert gt.Optimizer("sgd", 0.1)._session is other  # the innermost open session
    with pytest.raises(RuntimeError, match="needs an open session"):
        gt.Optimizer("sgd", 0.1)


# ----- lazy batching -----

def test_ops_are_sent_as_one_run_fetching_only_what_is_needed(counted: Counted) -> None:
    with counted.client.session() as s:
        x = s.constant(np.linspace(0.0, 1.0, 8))
        y = x
        for _ in range(20):
            y = gt.tanh(y * 1.5 + 0.1)
        total = gt.reduce_sum(y)
        value = float(total)
        assert counted.routes() == ["POST sessions", "POST run"]
        body = json.loads(counted.calls[-1][2])
        assert len(body["nodes"]) == 61 and body["fetch"] == [total.name]
        assert list(body["inputs"]) == [x.name]
        expected = np.linspace(0.0, 1.0, 8)
        for _ in range(20):
            expected = np.tanh(expected * 1.5 + 0.1)
        assert value == pytest.approx(float(np.sum(expected)), rel=1e-12)
        float(total)  # known now: no request
        assert len(counted.routes()) == 2
        # names of dropped results are reused, so a loop does not pile up server tensors
        info = counted.client.request("GET", f"/sessions/{s.session_id}")
        assert len(info["tensors"]) < 10


def test_a_session_that_computes_nothing_costs_nothing(counted: Counted) -> None:
    with counted.client.session() as s:
        c = s.constant([1, 2, 3])
        assert c.numpy().dtype == np.int32 and c.shape == (3,)  # ints are int32, as in TF
        np.testing.assert_array_equal(np.asarray(c), [1, 2, 3])
        assert s.session_id is None
    assert counted.routes() == []


# ----- operators, NumPy, the catalogue -----

def test_operators_indexing_and_numpy_interop(client: gt.Client) -> None:
    a0 = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], dtype=np.float32)
    with client.session() as s:
        a = s.constant(a0)
        results = {
            "+": (a + 1, a0 + 1), "r-": (10 - a, 10 - a0), "*": (a * a, a0 * a0),
            "/": (a / 2, a0 / 2), "**": (a**2, a0**2), "@": (a @ gt.transpose(a), a0 @ a0.T),
            "neg": (-a, -a0), "abs": (abs(a), np.abs(a0)), "<": (a < 0, a0 < 0),
            ">=": (a >= 3, a0 >= 3), "==": (a == 5, a0 == 5), "row": (a[1], a0[1]),
            "elem": (a[0, -1], a0[0, -1]), "slice": (a[:, 1:], a0[:, 1:]),
            "np*": (np.float32(2) * a, 2 * a0), "ndarray+": (a0 + a, a0 + a0),
        }
        for label, (tensor, expected) in results.items():
            np.testing.assert_allclose(np.asarray(tensor), expected, err_msg=label)
        assert float(a[0, 0]) == 1.0 and int(a[1, 1]) == 5
        assert bool(gt.reduce_any(a < 0)) and not bool(gt.reduce_all(a < 0))
        assert a.shape == (2, 3) and a.dtype == "float32" and len(a) == 2


def test_catalogue_functions_and_tensorflow_aliases(client: gt.Client) -> None:
    x0 = np.array([-1.0, 0.0, 2.0])
    with client.session() as s:
        x = s.constant(x0)
        m = s.constant(np.array([[2.0, 1.0], [1.0, 3.0]]))
        checks = [
            (gt.math.softplus(x), np.log1p(np.exp(x0))),
            (gt.nn.relu(x), np.maximum(x0, 0)),
            (gt.reduce_mean(gt.reshape(x, [3, 1]), 1), x0),  # attrs positionally, as in TF
            (gt.concat([x, x], 0), np.concatenate([x0, x0])),
            (gt.einsum("i,i->", x, x), x0 @ x0),
            (gt.linalg.inv(m), np.linalg.inv([[2.0, 1.0], [1.0, 3.0]])),
            (gt.cast(x, gt.int32), x0.astype(np.int32)),
        ]
        for tensor, expected in checks:
            np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-12)
        _, second = gt.split(gt.constant([1.0, 2.0, 3.0, 4.0]), 2)
        np.testing.assert_array_equal(second.numpy(), [3.0, 4.0])
    names = {n for spec in CATALOG for n in (spec["name"], *spec["aliases"])}
    for name in names:
        holder: Any = gt
        for part in name.split("."):
            holder = getattr(holder, part)
        assert callable(holder) and holder.__doc__, name


def test_catalogue_has_not_drifted_from_the_server(client: gt.Client) -> None:
    live = client.ops()
    assert live == CATALOG, ("clients/python/gradtape/_catalog.py is out of date: run "
                             "python clients/python/generate_catalog.py")


# ----- errors -----

def test_bad_op_names_node_and_field(client: gt.Client) -> None:
    from gradtape.tensor import apply

    with client.session() as s:
        x = s.constant([1.0, 2.0])
        bad = apply("no_such_op", [x])[0]
        with pytest.raises(gt.InvalidGraphError) as info:
            bad.numpy()
        err = info.value
        assert err.status == 422 and err.type == "invalid-graph"
        assert err.node == bad.name and err.loc == ["body", "nodes", 0, "op"]
        assert "unknown op 'no_such_op'" in err.detail
        with pytest.raises(gt.InvalidGraphError) as info:
            gt.reshape(x, [3, 5]).numpy()
        assert info.value.node is not None and info.value.node.startswith("reshape:")
        assert "reshape" in str(info.value) and str(info.value).startswith("HTTP 422")


def test_deleted_session_is_a_404(client: gt.Client) -> None:
    with client.session() as s:
        x = s.constant(1.0)
        float(x * 2.0)
        sid = s.session_id
        assert sid is not None
        client.request("DELETE", f"/sessions/{sid}")
        with pytest.raises(gt.NotFoundError) as info:
            float(x * 3.0)
        assert info.value.status == 404 and sid in info.value.detail
        s.session_id = None  # already gone
    with client.session() as s:
        float(s.constant(1.0) + 1.0)
        sid = s.session_id
    with pytest.raises(gt.NotFoundError):  # deleted when its block ended
        client.request("GET", f"/sessions/{sid}")


# ----- the transport -----

def _answers(*responses: httpx.Response) -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return seen, httpx.MockTransport(handler)


BUSY = {"type": "urn:gradtape:problem:service-unavailable", "title": "Service Unavailable",
        "status": 503, "detail": "the server is busy"}


def test_retry_honours_retry_after_and_keeps_the_idempotency_key() -> None:
    seen, transport = _answers(
        httpx.Response(503, headers={"Retry-After": "1"}, json=BUSY),
        httpx.Response(201, json={"session_id": "s_1"}))
    client = gt.Client("http://gradtape.test", transport=transport, backoff=0.01)
    started = time.monotonic()
    assert client.request("POST", "/sessions", {}) == {"session_id": "s_1"}
    assert time.monotonic() - started >= 1.0  # Retry-After, not the 10 ms backoff
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 2 and len(keys) == 1


def test_retries_give_up_with_the_problem() -> None:
    capacity = {"type": "urn:gradtape:problem:capacity-exceeded", "title": "Capacity exceeded",
                "status": 429, "detail": "too many sessions"}
    seen, transport = _answers(*[httpx.Response(429, json=capacity) for _ in range(3)])
    client = gt.Client("http://gradtape.test", transport=transport, max_retries=2,
                       backoff=0.01)
    with pytest.raises(gt.CapacityError) as info:
        client.request("POST", "/sessions", {})
    assert len(seen) == 3 and info.value.status == 429
    assert info.value.detail == "too many sessions"


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADTAPE_API_KEY", "k-123")
    monkeypatch.setenv("GRADTAPE_URL", "http://from-env.test")
    seen, transport = _answers(httpx.Response(200, json={"status": "ok"}))
    client = gt.Client(transport=transport)
    client.request("GET", "/health/live")
    assert seen[0].headers["X-API-Key"] == "k-123"
    assert str(seen[0].url) == "http://from-env.test/v1/health/live"


# ----- large arrays: raw bytes after the JSON, or base64 in it -----

def _sent(request: httpx.Request) -> tuple[Any, bytes]:
    """A request's JSON and the bytes after it (the binary tensor extension)."""
    length = request.headers.get("Inference-Header-Content-Length")
    if length is None:
        assert request.headers["Content-Type"] == "application/json"
        return json.loads(request.content), b""
    return json.loads(request.content[:int(length)]), request.content[int(length):]


def test_large_arrays_travel_as_bytes_exactly(server: str) -> None:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((300, 40))
    big[0, 0] = np.nan
    for binary in (True, False):
        counted = Counted(server, binary=binary)
        with counted.client.session() as s:
            x = s.constant(big)
            y = (x * 2.0).numpy()
        counted.client.close()
        head, raw = _sent(counted.requests[1])
        sent = head["inputs"][x.name]
        if binary:
            assert sent == {"dtype": "float64", "shape": [300, 40],
                            "parameters": {"binary_data_size": big.nbytes}}
            assert raw == big.astype("<f8").tobytes()
        else:
            assert set(sent) == {"dtype", "shape", "b64"} and raw == b""
        assert y.dtype == np.float64 and y.shape == (300, 40)
        np.testing.assert_array_equal(y, big * 2.0)  # bit for bit, NaN included


def _arrays() -> list[np.ndarray]:
    """Arrays of each dtype, big and small, with NaN and infinities, 0-d and empty."""
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((8, 16)).astype(np.float32)
    f32[1, 2], f32[3, 4], f32[5, 6] = np.nan, np.inf, -np.inf
    return [
        f32,
        rng.standard_normal(100),                                  # float64
        np.array([1.5, np.nan, -np.inf], np.float32),              # small, not finite
        np.array([0.25, -3.0], np.float64),                        # small, finite: JSON
        np.float32(np.inf) * np.ones((), np.float32),              # 0-d, not finite
        np.array(2.5, np.float64),                                 # 0-d, finite
        rng.integers(-2**31, 2**31, (4, 25)).astype(np.int32),
        rng.integers(-2**62, 2**62, 70).astype(np.int64),
        rng.random((10, 10)) > 0.5,                                # bool
        np.zeros((0, 3), np.float32),                              # empty
        np.zeros((2, 0, 40), np.int32),
    ]


ARRAYS = _arrays()


@pytest.mark.parametrize("binary", [True, False])
def test_arrays_round_trip_in_a_session(server: str, binary: bool) -> None:
    with gt.Client(server, binary=binary) as client, client.session() as s:
        variables = [s.Variable(a, trainable=False) for a in ARRAYS]  # PUT .../tensors/v
        constants = [s.constant(a) for a in ARRAYS]                  # a run's inputs
        ran = [gt.identity(c) for c in constants] + [gt.identity(a) for a in ARRAYS]
        s.flush()
        tensors = f"/sessions/{s.session_id}/tensors"
        for i, a in enumerate(ARRAYS):  # every one as bytes, empty and small ones included
            client.request("PUT", f"{tensors}/bytes{i}",
                           {"value": _codec.encode(a, b64_min_elements=0)})
        for i, (a, v, y) in enumerate(zip(ARRAYS * 2, variables * 2, ran, strict=True)):
            stored, as_bytes = (_codec.decode(client.request(
                "GET", f"{tensors}/{name}", params={"encoding": "base64"}))
                for name in (v.name, f"bytes{i % len(ARRAYS)}"))
            for got in (stored, as_bytes, y.numpy()):
                assert got.dtype == a.dtype and got.shape == a.shape
                np.testing.assert_array_equal(got, a)


@gt.function
def echo(x: Any) -> Any:
    return {"y": gt.identity(x), "n": gt.reduce_sum(gt.cast(gt.isnan(gt.cast(x, "float64")),
                                                            "int32"))}


@pytest.mark.parametrize("binary", [True, False])
def test_arrays_round_trip_through_the_stateless_routes(server: str, binary: bool) -> None:
    with gt.Client(server, binary=binary) as client:
        for a in ARRAYS:
            got = client.evaluate(echo, a)
            assert got["y"].dtype == a.dtype and got["y"].shape == a.shape
            np.testing.assert_array_equal(got["y"], a)
            assert int(got["n"]) == int(np.isnan(a.astype(np.float64)).sum())


def test_binary_and_base64_give_the_same_results(server: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((128, 784)).astype(np.float32)
    w = rng.standard_normal((784, 2)).astype(np.float32) * 0.05
    y = rng.standard_normal((128, 1)).astype(np.float32)
    w0 = rng.standard_normal((784, 1)).astype(np.float32) * 0.05
    big_constant = rng.standard_normal(784).astype(np.float32)

    @gt.function
    def shifted_loss(x: Any, w: Any) -> Any:  # a big constant in the registered graph
        return gt.reduce_sum(gt.tanh((x - big_constant) @ w))

    def loss_fn(w: Any, x: Any, y: Any) -> Any:
        return gt.reduce_mean(gt.square(gt.matmul(x - big_constant, w) - y))

    results = []
    for binary in (True, False):
        with gt.Client(server, binary=binary) as client:
            grad = client.gradient(shifted_loss, x, w)
            hvp = client.hvp(shifted_loss, x, w, vectors={"x": np.ones_like(x)},
                             sources=["x"], include=["hvp"])
            with client.session() as s:
                v = s.Variable(w0)
                opt = s.Optimizer("sgd", 0.1)
                losses = [opt.step(loss_fn, v, s.constant(x), s.constant(y)) for _ in range(2)]
                with s.GradientTape() as tape:
                    out = gt.matmul(s.constant(x), v)
                tape_grad = tape.gradient(out, v, output_gradients=np.full((128, 1), 0.5,
                                                                           np.float32))
                opt.apply_gradients([(tape_grad, v)])
                results.append((grad.value, grad.gradients["x"], grad.gradients["w"],
                                hvp.hvp["x"], losses, tape_grad.numpy(), v.numpy()))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    closed = (x - big_constant).T @ (1 - np.tanh((x - big_constant) @ w) ** 2)
    np.testing.assert_allclose(results[0][2], closed, rtol=2e-3, atol=2e-3)


def test_the_wire_body_is_binary_only_when_it_should_be(server: str) -> None:
    x = np.arange(128 * 784, dtype=np.float32).reshape(128, 784)
    small = np.array([1.0, 2.0], np.float32)
    for binary in (True, False):
        counted = Counted(server, binary=binary)
        with counted.client.session() as s:
            s.Variable(x, name="x")
            s.Variable(small, name="small")
            s.flush()
        counted.client.close()
        puts = [r for r in counted.requests if r.method == "PUT"]
        assert len(puts) == 2
        big_head, big_raw = _sent(puts[0])
        small_head, small_raw = _sent(puts[1])
        assert small_head["value"]["data"] == [1.0, 2.0] and small_raw == b""  # JSON only
        assert "b64" not in json.dumps(small_head)
        if binary:
            assert puts[0].headers["Content-Type"] == "application/octet-stream"
            assert big_raw == x.tobytes()
            assert len(puts[0].content) - x.nbytes < 200  # the JSON header is all the rest
            assert big_head["value"] == {"dtype": "float32", "shape": [128, 784],
                                         "parameters": {"binary_data_size": x.nbytes}}
            assert b"b64" not in puts[0].content[:-x.nbytes]
        else:
            assert "Inference-Header-Content-Length" not in puts[0].headers
            assert big_raw == b"" and set(big_head["value"]) == {"dtype", "shape", "b64"}
            assert base64.b64decode(big_head["value"]["b64"]) == x.tobytes()


def test_binary_tensors_follow_the_json_in_the_order_they_appear() -> None:
    a = np.arange(70, dtype=np.int64)
    b = np.array([np.nan], np.float32)
    c = np.ones((3, 30), bool)
    body = {"z": {"first": _codec.encode(a)}, "a": [_codec.encode(b), {"deep": [_codec.encode(c)]}],
            "small": _codec.encode(np.array([1, 2], np.int32)), "none": None}
    content, headers = _codec.write(body)
    n = int(headers["Inference-Header-Content-Length"])
    assert content[n:] == a.tobytes() + b.tobytes() + c.tobytes()
    head = json.loads(content[:n])
    assert [head["z"]["first"]["parameters"], head["a"][0]["parameters"],
            head["a"][1]["deep"][0]["parameters"]] == [
        {"binary_data_size": 560}, {"binary_data_size": 4}, {"binary_data_size": 90}]
    as_json, json_headers = _codec.write(body, binary=False)
    assert json_headers == {"Content-Type": "application/json"}
    assert json.loads(as_json) == _codec.as_json(body)
    # big-endian and strided arrays are written little-endian, row-major
    strided = np.arange(200, dtype=">f8")[::2]
    content, headers = _codec.write([_codec.encode(strided)])
    assert content[int(headers["Inference-Header-Content-Length"]):] == \
        strided.astype("<f8").tobytes()


def test_bodies_without_orjson_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"nodes": [{"id": "y", "op": "multiply", "args": ["x", 2.5]}],
            "inputs": {"x": _codec.encode(np.linspace(0, 1, 100, dtype=np.float32)),
                       "é": _codec.encode(np.array([np.inf]))},
            "fetch": ["y"], "ttl": None}
    with_orjson = (_codec.write(body), _codec.write(body, binary=False))
    monkeypatch.setattr(_codec, "orjson", None)
    assert (_codec.write(body), _codec.write(body, binary=False)) == with_orjson


@pytest.mark.parametrize("orjson", [True, False])
def test_bare_non_finite_numbers_are_refused_before_sending(
        monkeypatch: pytest.MonkeyPatch, orjson: bool) -> None:
    # JSON has no NaN (orjson would write null); tensors carry them as bytes instead
    if not orjson:
        monkeypatch.setattr(_codec, "orjson", None)
    seen, transport = _answers()
    client = gt.Client("http://gradtape.test", transport=transport)
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="JSON compliant"):
            client.request("POST", "/sessions", {"ttl_seconds": value,
                                                 "x": _codec.encode(np.ones(64))})
    assert seen == []


def test_a_retry_sends_the_same_bytes() -> None:
    body = {"value": _codec.encode(np.random.default_rng(3).standard_normal((20, 20))),
            "variable": True}
    for binary in (True, False):
        seen, transport = _answers(httpx.Response(503, headers={"Retry-After": "0"}, json=BUSY),
                                   httpx.Response(429, json=BUSY),
                                   httpx.Response(200, json={"name": "w"}))
        client = gt.Client("http://gradtape.test", transport=transport, backoff=0.0,
                           binary=binary)
        assert client.request("PUT", "/sessions/s_1/tensors/w", body) == {"name": "w"}
        assert len(seen) == 3
        assert len({r.content for r in seen}) == 1
        assert len({tuple(sorted(r.headers.items())) for r in seen}) == 1
        assert ("Inference-Header-Content-Length" in seen[0].headers) == binary

    async def main() -> list[httpx.Request]:
        seen, transport = _answers(httpx.Response(503, headers={"Retry-After": "0"}, json=BUSY),
                                   httpx.Response(200, json={"name": "w"}))
        async with gt.AsyncClient("http://gradtape.test", transport=transport) as client:
            assert await client.request("PUT", "/sessions/s_1/tensors/w", body) == {"name": "w"}
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 2 and seen[0].content == seen[1].content
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    assert "Inference-Header-Content-Length" in seen[0].headers


def test_errors_of_binary_requests_are_the_clients_errors(server: str) -> None:
    big = np.ones((10, 10), np.float32)
    with gt.Client(server) as client:
        with pytest.raises(gt.NotFoundError):
            client.request("PUT", "/sessions/s_nowhere/tensors/x",
                           {"value": _codec.encode(big)})
        graph = echo.graph(big)
        with pytest.raises(gt.GradtapeError) as info:  # a tensor of the wrong shape
            client.request("POST", "/gradient", {"graph": graph, "target": "y",
                                                 "inputs": {"x": _codec.encode(big[:5])}})
        assert info.value.status == 422 and info.value.loc == ["body", "inputs", "x"]
        cut = _codec.Raw(big)
        cut.data = cut.data[:-4]  # fewer bytes than its dtype and shape take
        with pytest.raises(gt.GradtapeError) as info:
            client.request("POST", "/gradient", {"graph": graph, "target": "y",
                                                 "inputs": {"x": cut}})
        assert info.value.status == 422 and info.value.loc == [
            "body", "inputs", "x", "parameters", "binary_data_size"]
        with client.session() as s:
            x = s.constant(big)
            with pytest.raises(gt.GradtapeError) as info:
                float(gt.matmul(x, np.ones((3, 3), np.float32)))
            assert info.value.status == 422


def test_async_client_sends_bytes(server: str) -> None:
    requests: list[httpx.Request] = []

    async def seen(request: httpx.Request) -> None:
        requests.append(request)

    async def main(binary: bool) -> Any:
        async with gt.AsyncClient(server, binary=binary,
                                  event_hooks={"request": [seen]}) as client:
            return await client.evaluate(echo, ARRAYS[0])

    for binary in (True, False):
        requests.clear()
        got = asyncio.run(main(binary))
        np.testing.assert_array_equal(got["y"], ARRAYS[0])
        query = [r for r in requests if r.url.path.endswith("/evaluate")]
        assert query and ("Inference-Header-Content-Length" in query[-1].headers) == binary


# ----- gt.function and the stateless routes -----

@gt.function
def loss(x: Any, w: Any) -> Any:
    return gt.reduce_sum(gt.tanh(x @ w))


@gt.function
def shifted(x: Any) -> Any:
    d = x - np.array([1.0, 2.0])
    return {"value": gt.reduce_sum(d**4) / 4 + gt.reduce_sum(d * A[:2]) ** 2, "d": d}


def test_function_routes(counted: Counted) -> None:
    client = counted.client
    x0 = np.array([[0.1, -0.2, 0.3], [0.5, 0.4, -0.6]])
    w0 = W
    y = client.evaluate(loss, x0, w0)
    assert y == pytest.approx(np.sum(np.tanh(x0 @ w0)), rel=1e-12)

    grad = client.gradient(loss, x0, w0)
    np.testing.assert_allclose(grad.gradients["x"],
                               central_diff(lambda x: np.sum(np.tanh(x @ w0)), x0),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad.gradients["w"],
                               central_diff(lambda w: np.sum(np.tanh(x0 @ w)), w0),
                               rtol=1e-6, atol=1e-9)
    only_w = client.gradient(loss, x0, w0, sources=["w"])
    assert set(only_w.gradients) == {"w"}

    p = np.array([0.5, -1.0])
    d = p - [1.0, 2.0]
    closed_h = np.diag(3 * d**2) + 2 * np.outer(A[:2], A[:2])
    jac = client.jacobian(shifted, p, target="d")
    np.testing.assert_allclose(jac.jacobian["x"], np.eye(2))
    hvp = client.hvp(shifted, p, target="value", vectors={"x": [1.0, 1.0]}, include=["hvp"])
    np.testing.assert_allclose(hvp.hvp["x"], closed_h @ [1.0, 1.0], rtol=1e-12)
    assert hvp.value is None and hvp.gradients is None
    hess = client.hessian(shifted, p, target="value")
    np.testing.assert_allclose(hess.hessian["x"]["x"], closed_h, rtol=1e-12)
    jvp = client.jvp(shifted, p, tangents={"x": [1.0, 0.0]})
    np.testing.assert_allclose(jvp.tangents["d"], [1.0, 0.0])
    best = client.minimize(shifted, p, target="value", tolerance=1e-10, max_iterations=200)
    assert best.converged
    np.testing.assert_allclose(best.variables["x"], [1.0, 2.0], atol=1e-3)

    routes = counted.routes()
    # registered once per function and input signature, then named by graph_id
    assert routes.count("POST graphs") == 2
    client.gradient(loss, x0.astype(np.float32), w0.astype(np.float32))
    assert counted.routes().count("POST graphs") == 3
    graph = loss.graph(x0, w0)
    assert graph["inputs"] == {"x": {"dtype": "float64", "shape": [2, 3]},
                               "w": {"dtype": "float64", "shape": [3, 2]}}
    assert graph["outputs"] == ["out"] and graph["nodes"][-1]["id"] == "out"


def test_function_on_session_tensors_runs_eagerly(client: gt.Client) -> None:
    with client.session() as s:
        x = s.constant(np.ones((1, 3)))
        w = s.constant(np.ones((3, 2)))
        assert float(loss(x, w)) == pytest.approx(2 * np.tanh(3.0), rel=1e-12)


def test_traced_tensors_have_no_value() -> None:
    @gt.function
    def branchy(x: Any) -> Any:
        return x * 2.0 if float(x) > 0 else x

    with pytest.raises(TypeError, match=r"gt\.where"):
        branchy.graph(np.float32(1.0))


def test_async_client(server: str) -> None:
    async def main() -> None:
        async with gt.AsyncClient(server) as client:
            x0 = np.array([[0.1, 0.2, 0.3]])
            result = await client.gradient(loss, x0, W)
            np.testing.assert_allclose(
                result.gradients["w"], central_diff(lambda w: np.sum(np.tanh(x0 @ w)), W),
                rtol=1e-6, atol=1e-9)
            assert (await client.ops()) == CATALOG
            with pytest.raises(gt.NotFoundError):
                await client.request("GET", "/sessions/s_nowhere")
        seen, transport = _answers(httpx.Response(503, headers={"Retry-After": "0"},
                                                  json=BUSY),
                                   httpx.Response(200, json={"status": "ok"}))
        async with gt.AsyncClient("http://gradtape.test", transport=transport) as mocked:
            assert await mocked.request("GET", "/health/ready") == {"status": "ok"}
        assert len(seen) == 2

    asyncio.run(main())
