"""Optimisers held in a session (engine level): updates against optax run in process on the
same numbers and against the update formulas, TensorFlow's rule that a variable left out of an
update keeps its value and its state, tape gradients applied as one update, bad input, and the
state as plain data (codec round trip, byte accounting)."""

from __future__ import annotations

import asyncio
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine.compute import Engine
from engine.errors import Conflict, InvalidGraph, NotFound
from engine.sessions import codec
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import Session
from engine.sessions.store import InMemorySessionStore


@pytest.fixture
def rt_s() -> tuple[SessionRuntime, Session]:
    store = InMemorySessionStore()
    return SessionRuntime(Engine(), store.check_bytes), asyncio.run(store.create())


W0 = np.array([1.0, -2.0, 0.5], np.float32)
GRADS = [np.array(g, np.float32) for g in ([0.1, -0.3, 2.0], [1.0, 0.5, -0.2], [-0.4, 0.0, 0.3])]


def value(rt: SessionRuntime, s: Session, name: str) -> np.ndarray:
    return np.asarray(rt.get_tensor(s, name))


def test_sgd_is_w_minus_lr_g(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    rt.put_tensor(s, "w", W0.tolist(), variable=True)
    opt = rt.create_optimizer(s, "sgd", "sgd", 0.1)
    assert rt.describe_optimizer(s, opt) == {"name": "sgd", "method": "sgd",
                                             "learning_rate": 0.1, "options": {},
                                             "variables": ["w"], "step": 0}
    assert rt.apply_gradients(s, "sgd", {"w": GRADS[0].tolist()}) == {"step": 1}
    np.testing.assert_allclose(value(rt, s, "w"), W0 - np.float32(0.1) * GRADS[0], rtol=1e-6)


@pytest.mark.parametrize(("method", "options"), [
    ("sgd", {"momentum": 0.9, "nesterov": True}), ("adam", {"b1": 0.8}), ("adamw", {}),
    ("rmsprop", {"decay": 0.5}), ("adagrad", {})])
def test_updates_match_optax_in_process(rt_s: tuple[SessionRuntime, Session], method: str,
                                        options: dict[str, Any]) -> None:
    rt, s = rt_s
    rt.put_tensor(s, "w", W0.tolist(), variable=True)
    rt.put_tensor(s, "g", 0.0)
    rt.create_optimizer(s, "o", method, 0.05, options)
    reference = getattr(optax, method)(learning_rate=0.05, **options)
    w, state = jnp.asarray(W0), reference.init(jnp.asarray(W0))
    for i, g in enumerate(GRADS):
        rt.put_tensor(s, "g", g.tolist())  # by name, a session tensor
        assert rt.apply_gradients(s, "o", {"w": "g"}) == {"step": i + 1}
        updates, state = reference.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)
        np.testing.assert_allclose(value(rt, s, "w"), np.asarray(w), rtol=1e-5, atol=1e-7)


def test_a_variable_left_out_keeps_its_value_and_state(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    rt.put_tensor(s, "a", W0.tolist(), variable=True)
    rt.put_tensor(s, "b", W0.tolist(), variable=True)
    rt.create_optimizer(s, "adam", "adam", 0.1)
    for g in GRADS[:2]:
        rt.apply_gradients(s, "adam", {"a": g.tolist()})
    np.testing.assert_array_equal(value(rt, s, "b"), W0)
    rt.apply_gradients(s, "adam", {"b": GRADS[0].tolist()})
    # b's first update is the one a fresh Adam makes: its moments were never touched
    reference = optax.adam(0.1)
    updates, _ = reference.update(jnp.asarray(GRADS[0]), reference.init(jnp.asarray(W0)))
    np.testing.assert_allclose(value(rt, s, "b"), np.asarray(W0 + updates), rtol=1e-6)


def test_a_tape_gradient_applied_as_one_update(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    rt.put_tensor(s, "w", W0.tolist(), variable=True)
    rt.put_tensor(s, "frozen", [1.0], variable=True, trainable=False)
    rt.create_optimizer(s, "sgd", "sgd", 0.25)
    assert rt.optimizer(s, "sgd").labels == ("w",)  # trainable variables only
    for step in range(1, 4):
        tape = rt.open_tape(s, persistent=False, watch_accessed_variables=True)
        w = value(rt, s, "w")
        rt.run(s, [{"id": "d", "op": "subtract", "args": ["w", 3.0]},
                   {"id": "sq", "op": "multiply", "args": ["d", "d"]},
                   {"id": "loss", "op": "sum", "args": ["sq"]}], [], 100)
        answer = rt.gradient(s, tape, "loss", None, apply="sgd", fetch_gradients=True)
        assert answer["step"] == step
        np.testing.assert_allclose(answer["gradients"]["w"], 2 * (w - 3), rtol=1e-6)
        np.testing.assert_allclose(value(rt, s, "w"), w - 0.25 * 2 * (w - 3), rtol=1e-6)
    # a source that is not one of the optimizer's variables cannot be applied
    tape = rt.open_tape(s, persistent=False, watch_accessed_variables=True)
    rt.watch(s, tape, ["frozen"])
    rt.run(s, [{"id": "f", "op": "sum", "args": ["frozen"]}], [], 100)
    with pytest.raises(InvalidGraph) as err:
        rt.gradient(s, tape, "f", ["frozen"], apply="sgd")
    assert err.value.loc == ("sources", 0) and "not a variable" in err.value.detail
    # nothing to apply: the optimizer's variables are not connected to the target
    tape = rt.open_tape(s, persistent=False, watch_accessed_variables=True)
    rt.run(s, [{"id": "g", "op": "sum", "args": ["frozen"]}], [], 100)
    with pytest.raises(InvalidGraph) as err:
        rt.gradient(s, tape, "g", None, apply="sgd")
    assert err.value.loc == ("sources",) and "no source has a gradient" in err.value.detail
    assert rt.optimizer(s, "sgd").step == 3


X0 = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float32)
M0 = np.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]], np.float32)
B0 = np.array([0.05, -0.1], np.float32)


def _fused_forward(rt: SessionRuntime, s: Session) -> None:
    """loss = sum(tanh(X @ (M * 2) + b)^2), M read again after an assign on the tape
    (two versions: TensorFlow sums its gradient over both reads)."""
    rt.run(s, [{"id": "m2", "op": "multiply", "args": ["M", 2.0]},
               {"id": "z", "op": "matmul", "args": ["X", "m2"]},
               {"id": "a", "op": "add", "args": ["z", "b"]},
               {"id": "h", "op": "tanh", "args": ["a"]},
               {"id": "sq", "op": "multiply", "args": ["h", "h"]},
               {"id": "l1", "op": "sum", "args": ["sq"]},
               {"id": "M", "op": "assign_add", "args": ["M", 0.125]},
               {"id": "l2", "op": "sum", "args": ["M"]},
               {"id": "loss", "op": "add", "args": ["l1", "l2"]}], [], 100)


def _fused_reference(M: Any, b: Any) -> tuple[Any, Any]:
    """d loss / d (M, b) of `_fused_forward`, by jax.grad on the same function."""
    import jax

    def f(M: Any, b: Any) -> Any:
        h = jnp.tanh(jnp.asarray(X0) @ (M * 2) + b)
        return jnp.sum(h * h) + jnp.sum(M + 0.125)

    return jax.grad(f, argnums=(0, 1))(M, b)


@pytest.mark.parametrize("method,options", [("sgd", {"momentum": 0.5}), ("adam", {}),
                                            ("rmsprop", {})])
def test_a_tape_gradient_and_its_update_run_as_one_call(
        rt_s: tuple[SessionRuntime, Session], monkeypatch: pytest.MonkeyPatch, method: str,
        options: dict[str, Any]) -> None:
    """The tape's backward pass and the optimiser's update are one compiled call (the
    separate update is never built), and the result is optax's update of jax.grad's
    gradients, step after step: two variables, one read in two versions, the answer's
    gradients when asked, an alias of a variable among the sources."""
    from engine.sessions import runtime

    rt, s = rt_s
    rt.put_tensor(s, "X", X0.tolist())
    rt.put_tensor(s, "M", M0.tolist(), variable=True)
    rt.put_tensor(s, "b", B0.tolist(), variable=True)
    rt.create_optimizer(s, "o", method, 0.05, options=options)

    def separate(*args: Any) -> Any:
        raise AssertionError("the update ran as a call of its own")

    monkeypatch.setattr(runtime.optim, "rule_many", separate)
    reference = getattr(optax, method)(0.05, **options)
    params = (jnp.asarray(M0), jnp.asarray(B0))
    state = reference.init(params)
    for step in range(1, 4):
        tape = rt.open_tape(s, persistent=False, watch_accessed_variables=True)
        _fused_forward(rt, s)
        fetch = step == 2
        answer = rt.gradient(s, tape, "loss", None, apply="o", fetch_gradients=fetch)
        grads = _fused_reference(*params)
        assert answer["step"] == step and ("gradients" in answer) == fetch
        if fetch:
            for label, g in zip(("M", "b"), grads, strict=True):
                np.testing.assert_allclose(answer["gradients"][label], g, rtol=1e-5,
                                           atol=1e-6)
        # the assign on the tape moved M before the update, as it does on the server
        params = (params[0] + 0.125, params[1])
        updates, state = reference.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(value(rt, s, "M"), params[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(value(rt, s, "b"), params[1], rtol=1e-5, atol=1e-6)
    # the optimiser's state is the one optax keeps (momentum or moments), leaf for leaf
    held = [leaf for h in (s.names["M"].variable, s.names["b"].variable)
            for leaf in (np.asarray(s.values[t]) for t in rt.optimizer(s, "o").state[h])
            if leaf.ndim > 0]  # the step counts are kept per variable, optax keeps one
    expected = [np.asarray(x) for x in jax_leaves(state) if np.ndim(x) > 0]
    assert len(held) == len(expected) > 0
    ordered = sorted(expected, key=lambda a: (a.shape, a.tobytes()))
    for got, want in zip(sorted(held, key=lambda a: (a.shape, a.tobytes())), ordered,
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # an alias of M among the sources: one update of M, not two
    s.names["M2"] = s.names["M"]
    before = value(rt, s, "M")
    tape = rt.open_tape(s, persistent=False, watch_accessed_variables=True)
    rt.run(s, [{"id": "t", "op": "sum", "args": ["M"]}], [], 100)
    answer = rt.gradient(s, tape, "t", ["M", "M2"], apply="o", fetch_gradients=True)
    np.testing.assert_allclose(answer["gradients"]["M"], answer["gradients"]["M2"])
    assert answer["step"] == 4 and not np.allclose(value(rt, s, "M"), before)


def jax_leaves(tree: Any) -> list[Any]:
    import jax

    return list(jax.tree_util.tree_leaves(tree))


def test_a_fused_update_matches_the_separate_one(rt_s: tuple[SessionRuntime, Session],
                                                 ) -> None:
    """Two sessions, the same steps: one applies the tape's gradient in the gradient request
    (one call), the other fetches it from a persistent tape and applies it with
    apply_gradients (two calls). Same variables and state at every step; output_gradients
    and a disconnected variable (left as it is) included."""
    rt, fused = rt_s
    other = asyncio.run(InMemorySessionStore().create())
    for s in (fused, other):
        rt.put_tensor(s, "X", X0.tolist())
        rt.put_tensor(s, "M", M0.tolist(), variable=True)
        rt.put_tensor(s, "b", B0.tolist(), variable=True)
        rt.put_tensor(s, "idle", [1.0, 2.0], variable=True)
        rt.create_optimizer(s, "o", "sgd", 0.1, options={"momentum": 0.9})
    cot = [[1.0, -0.5], [0.25, 2.0]]
    for step in range(1, 4):
        tape = rt.open_tape(fused, persistent=False, watch_accessed_variables=True)
        rt.run(fused, [{"id": "z", "op": "matmul", "args": ["X", "M"]},
                       {"id": "y", "op": "add", "args": ["z", "b"]}], [], 100)
        answer = rt.gradient(fused, tape, "y", None, output_gradients=cot, apply="o")
        assert answer == {"step": step}
        tape = rt.open_tape(other, persistent=True, watch_accessed_variables=True)
        rt.run(other, [{"id": "z", "op": "matmul", "args": ["X", "M"]},
                       {"id": "y", "op": "add", "args": ["z", "b"]}], [], 100)
        grads = rt.gradient(other, tape, "y", ["M", "b"], output_gradients=cot)["gradients"]
        rt.apply_gradients(other, "o", {k: np.asarray(g).tolist() for k, g in grads.items()})
        for name in ("M", "b", "idle"):
            np.testing.assert_allclose(value(rt, fused, name), value(rt, other, name),
                                       rtol=1e-6, atol=1e-7)
    assert np.array_equal(value(rt, fused, "idle"), [1.0, 2.0])


def test_unconnected_zero_applies_zeros_to_a_disconnected_variable(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    """`unconnected_gradients: zero` with a variable the tape does not reach: its zero
    gradient is applied too (Adam moves it by its momentum), as apply_gradients would."""
    rt, s = rt_s
    rt.put_tensor(s, "w", [1.0, 2.0], variable=True)
    rt.put_tensor(s, "idle", [3.0], variable=True)
    rt.create_optimizer(s, "o", "sgd", 0.5, options={"momentum": 0.9})
    for step in (1, 2):
        tape = rt.open_tape(s, persistent=False, watch_accessed_variables=True)
        rt.run(s, [{"id": "t", "op": "sum", "args": ["w"]}], [], 100)
        answer = rt.gradient(s, tape, "t", ["w", "idle"], unconnected="zero", apply="o",
                             fetch_gradients=True)
        assert answer["step"] == step
        np.testing.assert_array_equal(answer["gradients"]["idle"], [0.0])
    # sgd with momentum: w moved by -0.5 then -0.5 * 1.9; idle, with zero gradients, did not
    np.testing.assert_allclose(value(rt, s, "w"), [1.0 - 0.5 - 0.95, 2.0 - 0.5 - 0.95],
                               rtol=1e-6)
    np.testing.assert_array_equal(value(rt, s, "idle"), [3.0])


def test_bad_input(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    rt.put_tensor(s, "w", W0.tolist(), variable=True)
    rt.put_tensor(s, "c", 1.0)
    rt.put_tensor(s, "i", {"dtype": "int32", "data": [1]}, variable=True)
    cases: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [
        ({"method": "newton"}, ("method",), "unknown method"),
        ({"learning_rate": -1}, ("learning_rate",), "positive"),
        ({"learning_rate": True}, ("learning_rate",), "positive"),
        ({"options": {"beta": 0.9}}, ("options", "beta"), "no option 'beta'"),
        ({"options": {"b1": [0.9]}}, ("options", "b1"), "number"),
        ({"variables": ["c"]}, ("variables", 0), "constant"),
        ({"variables": ["w", "i"]}, ("variables", 1), "floating-point"),
        ({"variables": ["nope"]}, ("variables", 0), "not a tensor"),
    ]
    for extra, loc, words in cases:
        args = {"method": "adam", "learning_rate": 0.1, **extra}
        with pytest.raises(InvalidGraph) as err:
            rt.create_optimizer(s, "o", args["method"], args["learning_rate"],
                                args.get("options"), args.get("variables"))
        assert err.value.loc == loc and words in err.value.detail, (extra, err.value.detail)
    rt.create_optimizer(s, "o", "adam", 0.1, variables=["w"])
    with pytest.raises(Conflict, match="already has an optimizer"):
        rt.create_optimizer(s, "o", "sgd", 0.1)
    for grads, loc in [({}, ("gradients",)), ({"c": 1.0}, ("gradients", "c")),
                       ({"w": [1.0, 2.0]}, ("gradients", "w")),
                       ({"w": "nope"}, ("gradients", "w"))]:
        with pytest.raises(InvalidGraph) as err:
            rt.apply_gradients(s, "o", grads)
        assert err.value.loc == loc
    with pytest.raises(NotFound, match="no optimizer"):
        rt.apply_gradients(s, "other", {"w": [0.0, 0.0, 0.0]})
    rt.delete_optimizer(s, "o")
    with pytest.raises(NotFound):
        rt.delete_optimizer(s, "o")


def test_state_is_plain_data_counted_and_kept(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    rt.put_tensor(s, "w", np.zeros(1000, np.float32).tolist(), variable=True)
    before = s.held_bytes
    rt.create_optimizer(s, "adam", "adam", 0.1)
    assert s.held_bytes - before >= 2 * 4000  # Adam keeps two moments of the variable
    rt.apply_gradients(s, "adam", {"w": np.ones(1000, np.float32).tolist()})
    again = codec.load_state(codec.dump_state(s), dict(s.values), s.last_used)
    assert again.optimizers == s.optimizers
    rt.apply_gradients(again, "adam", {"w": np.ones(1000, np.float32).tolist()})
    rt.apply_gradients(s, "adam", {"w": np.ones(1000, np.float32).tolist()})
    np.testing.assert_array_equal(value(rt, again, "w"), value(rt, s, "w"))
    rt.delete_optimizer(s, "adam")
    assert s.held_bytes < before + 1000


# ----- over HTTP, on each store -----


def test_optimizers_over_http(store_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app

    with TestClient(create_app(store_settings)) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        c.put(f"{base}/tensors/w", json={"value": W0.tolist(), "variable": True})
        r = c.post(f"{base}/optimizers", json={"name": "opt", "method": "sgd",
                                                "learning_rate": 0.25,
                                                "options": {"momentum": 0.5}})
        assert r.status_code == 201 and r.json() == {
            "name": "opt", "method": "sgd", "learning_rate": 0.25,
            "options": {"momentum": 0.5}, "variables": ["w"], "step": 0}
        assert c.post(f"{base}/optimizers", json={"name": "opt", "method": "adam",
                                                   "learning_rate": 0.1}).status_code == 409
        r = c.post(f"{base}/optimizers", json={"name": "x", "method": "adam",
                                                "learning_rate": 0.1, "options": {"beta": 1}})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == [
            "body", "options", "beta"]
        reference = optax.sgd(0.25, momentum=0.5)
        w, state = jnp.asarray(W0), reference.init(jnp.asarray(W0))
        r = c.post(f"{base}/optimizers/opt/apply", json={"gradients": {"w": GRADS[0].tolist()}})
        assert r.json() == {"step": 1}
        updates, state = reference.update(jnp.asarray(GRADS[0]), state, w)
        w = optax.apply_updates(w, updates)
        # a tape's gradient applied in the same request, sources left out: the variables
        tid = c.post(f"{base}/tapes", json={}).json()["tape_id"]
        c.post(f"{base}/run", json={"nodes": [
            {"id": "d", "op": "subtract", "args": ["w", 3.0]},
            {"id": "sq", "op": "multiply", "args": ["d", "d"]},
            {"id": "loss", "op": "sum", "args": ["sq"]}], "fetch": []})
        r = c.post(f"{base}/tapes/{tid}/gradient", json={"target": "loss", "apply": "opt",
                                                         "fetch_gradients": True})
        assert r.status_code == 200, r.text
        grad = 2 * (np.asarray(w) - 3)
        np.testing.assert_allclose(r.json()["gradients"]["w"]["data"], grad, rtol=1e-6)
        assert r.json()["step"] == 2
        updates, state = reference.update(jnp.asarray(grad, jnp.float32), state, w)
        w = optax.apply_updates(w, updates)
        np.testing.assert_allclose(c.get(f"{base}/tensors/w").json()["data"], np.asarray(w),
                                   rtol=1e-6)
        assert c.get(f"{base}/optimizers/opt").json()["step"] == 2
        assert c.delete(f"{base}/optimizers/opt").status_code == 204
        assert c.get(f"{base}/optimizers/opt").status_code == 404


# ----- POST .../step -----

LINEAR = [{"id": "p", "op": "matmul", "args": ["X", "W"]},
          {"id": "r", "op": "subtract", "args": ["p", "Y"]},
          {"id": "sq", "op": "multiply", "args": ["r", "r"]},
          {"id": "loss", "op": "mean", "args": ["sq"]}]


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)


def _reference(method: str, lr: float, w0: np.ndarray, batches: list[Any]) -> tuple[Any, Any]:
    import jax

    opt = getattr(optax, method)(lr)
    w, state = jnp.asarray(w0), opt.init(jnp.asarray(w0))
    losses = []
    for X, Y in batches:
        loss, g = jax.value_and_grad(lambda w, X=X, Y=Y: jnp.mean((X @ w - Y) ** 2))(w)
        updates, state = opt.update(g, state, w)
        w = optax.apply_updates(w, updates)
        losses.append(float(loss))
    return np.asarray(w), losses


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_a_step_matches_the_same_step_in_process(store_settings: Any, method: str) -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app

    w0 = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    batches = [_data(i) for i in range(3)]
    expected_w, expected_losses = _reference(method, 0.1, w0, batches)
    with TestClient(create_app(store_settings)) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        c.put(f"{base}/tensors/W", json={"value": w0.tolist(), "variable": True})
        c.post(f"{base}/optimizers", json={"name": "o", "method": method,
                                            "learning_rate": 0.1})
        tid = c.post(f"{base}/tapes", json={}).json()["tape_id"]  # the client's own tape
        for i, (X, Y) in enumerate(batches):
            r = c.post(f"{base}/step", json={"nodes": LINEAR, "target": "loss",
                                              "optimizer": "o", "fetch": ["loss"],
                                              "inputs": {"X": X.tolist(), "Y": Y.tolist()}})
            assert r.status_code == 200, r.text
            assert r.json()["step"] == i + 1 and "losses" not in r.json()
            assert r.json()["values"]["loss"]["data"] == pytest.approx(expected_losses[i],
                                                                        rel=1e-5)
        np.testing.assert_allclose(c.get(f"{base}/tensors/W").json()["data"], expected_w,
                                   rtol=1e-5, atol=1e-6)
        names = {t["name"] for t in c.get(base).json()["tensors"]}
        assert names == {"W", "X", "Y"}  # the batch stays bound, node results do not
        assert c.get(f"{base}/tapes/{tid}").json()["ops_recorded"] == 0


def test_repeat_runs_the_steps_in_one_request(rt_s: tuple[SessionRuntime, Session]) -> None:
    from engine.sessions.training import train_step

    rt, s = rt_s
    w0 = np.random.default_rng(1).normal(size=(3, 2)).astype(np.float32)
    X, Y = _data(7)
    expected_w, expected_losses = _reference("sgd", 0.05, w0, [(X, Y)] * 5)
    rt.put_tensor(s, "W", w0.tolist(), variable=True)
    rt.create_optimizer(s, "o", "sgd", 0.05)
    answer = train_step(rt, s, LINEAR, {"X": X.tolist(), "Y": Y.tolist()}, "loss", "o",
                        ["p"], 5, 100)
    assert answer["step"] == 5
    np.testing.assert_allclose(answer["losses"], expected_losses, rtol=1e-5)
    np.testing.assert_allclose(value(rt, s, "W"), expected_w, rtol=1e-5, atol=1e-6)
    # the fetched values are those of the last forward pass, before its update
    w4, _ = _reference("sgd", 0.05, w0, [(X, Y)] * 4)
    np.testing.assert_allclose(answer["values"]["p"], X @ w4, rtol=1e-5, atol=1e-6)


def test_step_errors(store_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from service.main import create_app

    settings = store_settings.model_copy(update={"max_compile_weight": 1})
    with TestClient(create_app(settings)) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        c.put(f"{base}/tensors/W", json={"value": [[1.0]], "variable": True})
        c.put(f"{base}/tensors/c", json={"value": [[2.0]]})
        c.post(f"{base}/optimizers", json={"name": "o", "method": "sgd", "learning_rate": 0.1})
        good = [{"id": "p", "op": "multiply", "args": ["W", "c"]},
                {"id": "loss", "op": "sum", "args": ["p"]}]
        cases = [
            ({"nodes": [*good, {"id": "W", "op": "assign", "args": ["W", 1.0]}]},
             ["body", "nodes", 2, "op"], "assign ops are not allowed"),
            ({"target": "nope"}, ["body", "target"], "not a node of this step"),
            ({"target": "p"}, ["body", "target"], "scalar"),
            ({"fetch": ["c"]}, ["body", "fetch", 0], "not kept"),
            ({"nodes": [{"id": "loss", "op": "sum", "args": ["c"]}]}, ["body", "target"],
             "does not depend on any variable"),
        ]
        for change, loc, words in cases:
            body = {"nodes": good, "target": "loss", "optimizer": "o", **change}
            r = c.post(f"{base}/step", json=body)
            assert r.status_code == 422, (change, r.text)
            assert r.json()["errors"][0]["loc"] == loc and words in r.json()["detail"], r.text
        r = c.post(f"{base}/step", json={"nodes": good, "target": "loss", "optimizer": "x"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "optimizer"]
        tid = c.post(f"{base}/tapes", json={}).json()["tape_id"]
        r = c.post(f"{base}/tapes/{tid}/gradient", json={"target": "c", "apply": "x"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "apply"]
        r = c.post(f"{base}/step", json={"nodes": good, "target": "loss", "optimizer": "o",
                                          "repeat": 0})
        assert r.status_code == 422
        r = c.post(f"{base}/step", json={"nodes": good, "target": "loss", "optimizer": "o"})
        assert r.status_code == 413 and "GRADTAPE_MAX_COMPILE_WEIGHT" in r.json()["detail"]
        assert c.get(f"{base}/tensors/W").json()["data"] == [[1.0]]  # nothing was applied
