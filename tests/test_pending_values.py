"""An optimiser's update, and a run's results, are kept before they are computed
(engine/sessions/state.py: `Values`).

JAX runs a compiled call asynchronously. A training step's request keeps the variables' new
values and the optimiser's new state as the call's own arrays, and answers without waiting
for them when it fetches nothing; the session's next request is read and planned while the
step still runs. A run that fetches nothing does the same with its results. What clients see
must not change: every read of a value through the session's `values` gives the NumPy array
the call computes, a session holds at most one call's values still pending, and a snapshot
restores pending values as they were.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine.compute import Engine
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import BIG, Session, Values
from engine.sessions.store import InMemorySessionStore
from engine.sessions.training import train_step

LINEAR = [{"id": "p", "op": "matmul", "args": ["X", "W"]},
          {"id": "r", "op": "subtract", "args": ["p", "Y"]},
          {"id": "sq", "op": "multiply", "args": ["r", "r"]},
          {"id": "loss", "op": "mean", "args": ["sq"]}]


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(8, 3)).astype(np.float32),
            rng.normal(size=(8, 2)).astype(np.float32))


class Adam:
    """optax's Adam in process: the oracle of every step."""

    def __init__(self, w0: np.ndarray):
        self.opt = optax.adam(0.1)
        self.w = jnp.asarray(w0)
        self.state = self.opt.init(self.w)

    def step(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        g = jax.grad(lambda w: jnp.mean((X @ w - Y) ** 2))(self.w)
        updates, self.state = self.opt.update(g, self.state, self.w)
        self.w = optax.apply_updates(self.w, updates)
        return np.asarray(self.w)


@pytest.fixture
def rt_s() -> tuple[SessionRuntime, Session]:
    store = InMemorySessionStore()
    return SessionRuntime(Engine(), store.check_bytes), asyncio.run(store.create())


def start(rt: SessionRuntime, s: Session, big: bool = False) -> tuple[np.ndarray, Adam]:
    w0 = np.random.default_rng(7).normal(size=(3, 2)).astype(np.float32)
    rt.put_tensor(s, "W", w0, variable=True)
    if big:  # a second, big variable (kept as its device array too) the loss reads
        rt.put_tensor(s, "B", np.zeros((256, 256), np.float32), variable=True)
    rt.create_optimizer(s, "o", "adam", 0.1)
    return w0, Adam(w0)


def step(rt: SessionRuntime, s: Session, i: int, fetch: list[str] | None = None
         ) -> dict[str, Any]:
    X, Y = data(i)
    return train_step(rt, s, LINEAR, {"X": X, "Y": Y}, "loss", "o", fetch, 1, 100)


def big_step(rt: SessionRuntime, s: Session) -> None:
    """A step of a session with the big variable B too (the loss adds mean(B * B))."""
    start(rt, s, big=True)
    nodes = [*LINEAR[:-1], {"id": "m", "op": "mean", "args": ["sq"]},
             {"id": "b2", "op": "multiply", "args": ["B", "B"]},
             {"id": "bs", "op": "mean", "args": ["b2"]},
             {"id": "loss", "op": "add", "args": ["m", "bs"]}]
    X, Y = data(0)
    train_step(rt, s, nodes, {"X": X, "Y": Y}, "loss", "o", None, 1, 100)


def current(s: Session) -> int:
    return s.variables[s.names["W"].variable].current  # type: ignore[index]


def test_an_update_is_kept_pending_and_a_read_waits_for_it(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    _, ref = start(rt, s)
    answer = step(rt, s, 0)
    assert answer == {"values": {}, "step": 1}
    tid = current(s)
    held = s.values.raw(tid)
    assert isinstance(held, jax.Array)  # not waited for
    assert s.array(tid) is held  # a compiled call reads it as it is
    assert s.values.pending() == [tid, *s.optimizers["o"].state[s.names["W"].variable]]
    assert 0 < s.values.under_way < math.inf  # the step's estimated work
    value = s.values[tid]  # a read waits, and keeps the NumPy form
    assert type(value) is np.ndarray
    np.testing.assert_allclose(value, ref.step(*data(0)), rtol=1e-5, atol=1e-6)
    assert type(s.values.raw(tid)) is np.ndarray and s.values[tid] is value
    assert tid not in s.values.pending()


def test_a_session_holds_one_update_pending_at_most(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    _, ref = start(rt, s)
    handle = s.names["W"].variable
    for i in range(4):
        step(rt, s, i)
        expected = ref.step(*data(i))
        latest = {current(s), *s.optimizers["o"].state[handle]}  # type: ignore[index]
        assert set(s.values.pending()) == latest
    np.testing.assert_allclose(s.values[current(s)], expected, rtol=1e-5, atol=1e-6)
    # the optimiser's state is optax's, leaf for leaf (count, mu, nu)
    leaves = [np.asarray(s.values[t]) for t in s.optimizers["o"].state[handle]]  # type: ignore
    for got, want in zip(leaves, jax.tree_util.tree_leaves(ref.state), strict=True):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)


def test_apply_and_the_tape_route_keep_their_update_pending_with_its_work(
        rt_s: tuple[SessionRuntime, Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """`apply_gradients` and a tape's gradient with `apply` keep their update pending too,
    with their estimated work: the update's per element, the compiled call's."""
    from engine.sessions.runtime import UPDATE_FLOPS_PER_ELEMENT

    rt, s = rt_s
    w0, _ = start(rt, s)
    rt.put_tensor(s, "g", np.ones((3, 2), np.float32))
    rt.apply_gradients(s, "o", {"W": "g"})
    assert current(s) in s.values.pending()
    assert s.values.under_way == UPDATE_FLOPS_PER_ELEMENT * 6
    # Adam's first step moves each weight by the learning rate against the gradient's sign
    w1 = w0 - np.float32(0.1)
    np.testing.assert_allclose(s.values[current(s)], w1, rtol=1e-5)
    # the tape route: the backward pass and the update as one call, from the same state
    X, Y = data(1)
    tape = rt.open_tape(s, False, True)
    rt.run(s, LINEAR, [], 100, inputs={"X": X, "Y": Y})
    tape.stopped = True  # the end of the `with` block

    def separate(*args: Any) -> None:
        raise AssertionError("the tape's update went the separate way")

    monkeypatch.setattr(rt, "_apply", separate)
    rt.gradient(s, tape, "loss", ["W"], apply="o")
    assert current(s) in s.values.pending()
    assert 0 < s.values.under_way < math.inf
    opt = optax.adam(0.1)
    state = opt.init(jnp.asarray(w0))
    _, state = opt.update(jnp.ones((3, 2), jnp.float32), state, jnp.asarray(w0))
    g = jax.grad(lambda w: jnp.mean((X @ w - Y) ** 2))(jnp.asarray(w1))
    updates, _ = opt.update(g, state, jnp.asarray(w1))
    np.testing.assert_allclose(s.values[current(s)], np.asarray(w1 + updates), rtol=1e-5,
                               atol=1e-6)


def test_a_new_update_waits_for_the_last_one(rt_s: tuple[SessionRuntime, Session]) -> None:
    """The bound on updates under way: a step waits, once its own call is made, for what
    the session still holds pending (here a value another call is still computing)."""
    rt, s = rt_s
    start(rt, s)
    rt.put_tensor(s, "Z", np.zeros((), np.float32))
    z = s.names["Z"].tensor
    computing = Computing()
    s.values.hold(z, computing)  # type: ignore[arg-type]
    step(rt, s, 0)
    assert computing.waited and type(s.values.raw(z)) is np.ndarray  # type: ignore[arg-type]
    big = Computing(nbytes=BIG + 4)  # a big one is waited for and kept as it is
    s.values.hold(z, big)  # type: ignore[arg-type]
    s.values.start(1.0)
    assert big.waited and s.values.raw(z) is big and not s.values.last


def test_a_step_that_fetches_waits(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    w0, _ = start(rt, s)
    X, Y = data(0)
    answer = step(rt, s, 0, fetch=["loss"])
    assert type(answer["values"]["loss"]) is np.ndarray
    np.testing.assert_allclose(answer["values"]["loss"], np.mean((X @ w0 - Y) ** 2),
                               rtol=1e-5)


def test_a_big_variable_keeps_its_device_array_once_read(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    big_step(rt, s)
    tid = s.variables[s.names["B"].variable].current  # type: ignore[index]
    device = s.device[tid]
    assert s.values.raw(tid) is device
    value = s.values[tid]
    assert type(value) is np.ndarray and s.array(tid) is device
    np.testing.assert_array_equal(value, np.zeros((256, 256), np.float32))


def test_sizes_do_not_wait(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    start(rt, s)
    step(rt, s, 0)
    pending = s.values.pending()
    assert pending and s.footprint() == s.held_bytes
    assert s.values.pending() == pending  # the byte count read sizes only
    assert s.nbytes == sum(v.nbytes for v in s.values.values())  # tensor bytes: waits
    assert s.values.pending() == []


def test_values_reads_give_numpy_and_copies_keep_pending() -> None:
    values = Values({1: np.ones(2, np.float32)})
    values[2] = jnp.arange(3.0)
    values[3] = jnp.full((4,), 2.0)
    values.under_way = 5e6
    copy = values.copy()
    assert isinstance(copy, Values) and copy.pending() == [2, 3] and copy.under_way == 5e6
    assert type(values.get(2)) is np.ndarray and values.get(9, "none") == "none"
    assert values.pending() == [3] and copy.pending() == [2, 3]
    assert all(type(v) is np.ndarray for v in values.values()) and values.pending() == []
    assert [type(v) for _, v in copy.items()] == [np.ndarray] * 3
    popped = Values({5: jnp.zeros(2)}).pop(5)
    assert type(popped) is np.ndarray
    assert Values().pop(5, None) is None
    with pytest.raises(KeyError):
        Values().pop(5)
    sized = Values({1: jnp.zeros(4, jnp.float32)})
    assert [v.nbytes for v in sized.held()] == [16] and sized.pending() == [1]


class Computing:
    """A pending value whose compute has not finished (what a slow update leaves)."""

    def __init__(self, nbytes: int = 4) -> None:
        self.done = False
        self.waited = False
        self.nbytes = nbytes

    def is_ready(self) -> bool:
        return self.done

    def block_until_ready(self) -> Computing:
        self.waited = True
        return self

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self.waited = True  # np.asarray: what waits for a JAX array
        return np.zeros((), np.float32)


def test_work_that_may_wait_for_an_update_runs_off_the_event_loop() -> None:
    """While an update is under way whose work is more than the event loop takes on (or
    unknown), a request's compute work goes to a worker thread, where reading the update may
    wait; a small update under way, or one computed, leaves cheap work on the event loop."""
    import threading

    from service.config import Settings
    from service.state import Services

    svc = Services.build(Settings())
    computing = Computing()

    async def main() -> list[bool]:
        loop_thread = threading.get_ident()
        sid = (await svc.create_session(None)).session_id

        def put(s: Session) -> None:
            s.values.hold(s.new_id(), computing)

        await svc.in_session(sid, put)
        seen = []
        limit = svc.settings.inline_idle_max_flops  # no other request is in flight
        for done, work in ((False, math.inf), (False, limit + 1), (False, limit),
                           (True, math.inf)):
            computing.done = done

            def on_loop(s: Session, work: float = work) -> bool:
                s.values.under_way = work
                return threading.get_ident() == loop_thread

            await svc.in_session(sid, on_loop)
            seen.append(await svc.in_session(
                sid, lambda s: threading.get_ident() == loop_thread, compute=True))
        return seen

    assert asyncio.run(main()) == [False, False, True, True]


def test_a_run_that_fetches_nothing_keeps_its_results_pending(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    """Its results and an assigned variable stay pending; reads wait; a tape's gradient over
    the run (its kept intermediates pending) is `jax.grad`'s; the next run waits for them."""
    rt, s = rt_s
    X, Y = data(2)
    w0 = np.random.default_rng(3).normal(size=(3, 2)).astype(np.float32)
    rt.put_tensor(s, "W", w0, variable=True)
    rt.put_tensor(s, "V", np.zeros((3, 2), np.float32), variable=True)
    tape = rt.open_tape(s, False, True)
    nodes = [*LINEAR, {"id": "V", "op": "assign_add", "args": ["V", 1.0]}]
    assert rt.run(s, nodes, [], 100, inputs={"X": X, "Y": Y}) == {}
    made = {s.names[n].tensor for n in ("p", "r", "sq", "loss")} | {
        s.variables[s.names["V"].variable].current}  # type: ignore[index]
    assert made <= set(s.values.pending()) and 0 < s.values.under_way < math.inf
    tape.stopped = True
    grads = rt.gradient(s, tape, "loss", ["W"])["gradients"]
    want = jax.grad(lambda w: jnp.mean((X @ w - Y) ** 2))(jnp.asarray(w0))
    np.testing.assert_allclose(np.asarray(grads["W"]), np.asarray(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rt.get_tensor(s, "V"), np.ones((3, 2)))
    loss = s.names["loss"].tensor
    rt.run(s, [{"id": "z", "op": "sin", "args": ["W"]}], [], 100)
    assert loss not in s.values.pending()  # waited for before the next run kept its own
    np.testing.assert_allclose(s.values[loss], np.mean((X @ w0 - Y) ** 2), rtol=1e-5)
    fetched = rt.run(s, [{"id": "c", "op": "cos", "args": ["W"]}], ["c", "z"], 100)
    assert all(type(v) is np.ndarray for v in fetched.values())
    np.testing.assert_allclose(fetched["z"], np.sin(w0), rtol=1e-6)


def test_the_next_call_waits_for_the_last_ones_values() -> None:
    """`start` waits for the last call's values: small ones take their NumPy form, big ones
    stay as their arrays (a copy from the accelerator where there is one) until read."""
    values = Values()
    big, small = jnp.arange(BIG // 4 + 1, dtype=jnp.float32), jnp.ones(3, jnp.float32)
    values.hold(1, big)
    values.hold(2, small)
    assert [tid for tid, _ in values.last] == [1, 2]
    values.start(7.0)
    assert values.last == () and values.ready() and values.under_way == 7.0
    assert values.raw(1) is big and type(values.raw(2)) is np.ndarray
    assert values.pending() == [1]
    np.testing.assert_array_equal(values[1], np.arange(BIG // 4 + 1, dtype=np.float32))
    assert values.pending() == []


def test_on_an_accelerator_a_big_value_is_put_there_once(
        rt_s: tuple[SessionRuntime, Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """A big batch bound in the session is copied to the accelerator by the first call that
    reads it, and read from there after; rebinding the name drops the copy. The steps give
    the same weights as on a CPU (the same session's steps without it)."""
    from engine.sessions import state

    rt, s = rt_s
    rng = np.random.default_rng(5)
    X = rng.normal(size=(8192, 3)).astype(np.float32)  # 96 KiB: big
    Y = rng.normal(size=(8192, 2)).astype(np.float32)
    w0 = rng.normal(size=(3, 2)).astype(np.float32)
    rt.put_tensor(s, "W", w0, variable=True)
    rt.put_tensor(s, "X", X)
    rt.create_optimizer(s, "o", "sgd", 0.1)
    x = s.names["X"].tensor
    assert x is not None and x not in s.device
    monkeypatch.setattr(state, "on_accelerator", lambda: True)
    for i in range(2):
        rt.put_tensor(s, "Y", Y)
        train_step(rt, s, LINEAR, {}, "loss", "o", ["loss"], 1, 100)
        if i == 0:
            kept = s.device[x]
            assert isinstance(kept, jax.Array) and s.array(x) is kept
            np.testing.assert_array_equal(np.asarray(kept), X)
        assert s.device[x] is kept  # put there once
    y = s.names["Y"].tensor
    assert y is not None and type(s.array(y)) is np.ndarray  # small: read as it is
    w = jnp.asarray(w0)
    for _ in range(2):
        w = w - 0.1 * jax.grad(lambda w: jnp.mean((X @ w - Y) ** 2))(w)
    np.testing.assert_allclose(rt.get_tensor(s, "W"), np.asarray(w), rtol=1e-5, atol=1e-6)
    rt.put_tensor(s, "X", X[:4])
    assert x not in s.device  # the old value went with its name


def test_apply_reads_shapes_without_waiting(rt_s: tuple[SessionRuntime, Session],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`apply_gradients` checks a gradient against its variable by shape and dtype: neither
    the variable an update still computes nor a gradient held in the session is read (waited
    for, or copied from the accelerator) before the update's call."""
    rt, s = rt_s
    big_step(rt, s)
    handle = s.names["B"].variable
    before = s.variables[handle].current  # type: ignore[index]
    assert isinstance(s.values.raw(before), jax.Array)  # big: still held as the call's
    gB = np.full((256, 256), 0.5, np.float32)
    rt.put_tensor(s, "gB", gB)
    read = []
    settle = Values._settle

    def spy(values: Values, tid: int, array: Any) -> np.ndarray:
        read.append(tid)
        return settle(values, tid, array)

    monkeypatch.setattr(Values, "_settle", spy)
    rt.apply_gradients(s, "o", {"B": "gB"})
    assert before not in read
    # optax's Adam from B = 0: the step's gradient of mean(B * B) is zero, then 0.5
    opt = optax.adam(0.1)
    b = jnp.zeros((256, 256), jnp.float32)
    state = opt.init(b)
    for g in (jnp.zeros_like(b), jnp.asarray(gB)):
        updates, state = opt.update(g, state, b)
        b = optax.apply_updates(b, updates)
    np.testing.assert_allclose(rt.get_tensor(s, "B"), np.asarray(b), rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="the variable is float32"):
        rt.put_tensor(s, "g3", np.ones(3, np.float32))
        rt.apply_gradients(s, "o", {"B": "g3"})
