"""A training step's plan is kept and reused while the session's names mean what they meant.

`POST .../step` plans its nodes against the session once per body (engine/sessions/
training.py: `StepPlan`); later steps only look their tensors up. Every way a session can
change under a kept plan is checked here against a fresh reference: the updates must be what
optax gives in process, and errors must be the ones a first step would raise.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine.compute import Engine
from engine.errors import InvalidGraph
from engine.sessions.runtime import SessionRuntime, reread
from engine.sessions.state import Binding, Session
from engine.sessions.store import InMemorySessionStore
from engine.sessions.training import train_step

LINEAR = [{"id": "p", "op": "matmul", "args": ["X", "W"]},
          {"id": "r", "op": "subtract", "args": ["p", "Y"]},
          {"id": "sq", "op": "multiply", "args": ["r", "r"]},
          {"id": "loss", "op": "mean", "args": ["sq"]}]


@pytest.fixture
def rt_s() -> tuple[SessionRuntime, Session]:
    store = InMemorySessionStore()
    return SessionRuntime(Engine(), store.check_bytes), asyncio.run(store.create())


def data(seed: int, rows: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, 3)).astype(np.float32),
            rng.normal(size=(rows, 2)).astype(np.float32))


class Reference:
    """The same optimiser in process, one jax.value_and_grad and optax update per step."""

    def __init__(self, w0: np.ndarray, lr: float, method: str = "sgd"):
        self.opt = getattr(optax, method)(lr)
        self.w = jnp.asarray(w0)
        self.state = self.opt.init(self.w)

    def step(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        def loss(w: Any) -> Any:
            return jnp.mean((X @ w - Y) ** 2)

        g = jax.grad(loss)(self.w)
        updates, self.state = self.opt.update(g, self.state, self.w)
        self.w = optax.apply_updates(self.w, updates)
        return np.asarray(self.w)


def step(rt: SessionRuntime, s: Session, nodes: list[dict[str, Any]] = LINEAR,
         inputs: dict[str, Any] | None = None, opt: str = "o") -> dict[str, Any]:
    return train_step(rt, s, nodes, inputs or {}, "loss", opt, None, 1, 100)


def w_now(rt: SessionRuntime, s: Session) -> np.ndarray:
    return np.asarray(rt.get_tensor(s, "W"))


def test_later_steps_reuse_the_plan(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    w0 = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    rt.put_tensor(s, "W", w0, variable=True)
    rt.create_optimizer(s, "o", "adam", 0.1)
    ref = Reference(w0, 0.1, "adam")
    plans = []
    for i in range(4):  # a new batch each step, as inputs
        X, Y = data(i)
        step(rt, s, inputs={"X": X, "Y": Y})
        np.testing.assert_allclose(w_now(rt, s), ref.step(X, Y), rtol=1e-5, atol=1e-6)
        plans.append(rt.step_plans.get(next(iter(rt.step_plans._items))))
    assert len(rt.step_plans) == 1 and all(p is plans[0] for p in plans)


def test_a_new_batch_shape_plans_again(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    w0 = np.ones((3, 2), np.float32)
    rt.put_tensor(s, "W", w0, variable=True)
    rt.create_optimizer(s, "o", "sgd", 0.05)
    ref = Reference(w0, 0.05)
    for rows in (8, 5, 8):
        X, Y = data(rows, rows)
        step(rt, s, inputs={"X": X, "Y": Y})
        np.testing.assert_allclose(w_now(rt, s), ref.step(X, Y), rtol=1e-5, atol=1e-6)
    # a shape that does not fit: planned again, and refused as a first step would be
    with pytest.raises(InvalidGraph) as err:
        step(rt, s, inputs={"X": np.ones((8, 4), np.float32), "Y": Y})
    assert err.value.node == "p"


def test_a_name_put_again_as_a_new_variable(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    X, Y = data(1)
    rt.put_tensor(s, "X", X)
    rt.put_tensor(s, "Y", Y)
    rt.put_tensor(s, "W", np.ones((3, 2), np.float32), variable=True)
    rt.create_optimizer(s, "o", "sgd", 0.05)
    step(rt, s)
    step(rt, s)
    # W is another variable now, which optimizer o does not update
    rt.put_tensor(s, "W", np.zeros((3, 2), np.float32), variable=True)
    with pytest.raises(InvalidGraph, match="does not depend on any variable"):
        step(rt, s)
    np.testing.assert_array_equal(w_now(rt, s), 0)
    # an optimizer of the new W: its steps update it, from zeros
    rt.delete_optimizer(s, "o")
    rt.create_optimizer(s, "o", "sgd", 0.5)
    ref = Reference(np.zeros((3, 2), np.float32), 0.5)
    for _ in range(2):
        step(rt, s)
        np.testing.assert_allclose(w_now(rt, s), ref.step(X, Y), rtol=1e-5, atol=1e-6)


def stepped_once(rt: SessionRuntime, s: Session, seed: int, w: float, lr: float
                 ) -> tuple[np.ndarray, np.ndarray, Reference]:
    """A bound batch, W full of `w` and SGD at `lr`, after one step (and its reference)."""
    X, Y = data(seed)
    w0 = np.full((3, 2), w, np.float32)
    rt.put_tensor(s, "X", X)
    rt.put_tensor(s, "Y", Y)
    rt.put_tensor(s, "W", w0, variable=True)
    rt.create_optimizer(s, "o", "sgd", lr)
    ref = Reference(w0, lr)
    step(rt, s)
    ref.step(X, Y)
    return X, Y, ref


def test_an_optimizer_made_again_with_another_rate(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    X, Y, ref = stepped_once(rt, s, 2, 0.5, 0.01)
    rt.delete_optimizer(s, "o")
    rt.create_optimizer(s, "o", "sgd", 0.3)
    ref2 = Reference(np.asarray(ref.w), 0.3)
    step(rt, s)
    np.testing.assert_allclose(w_now(rt, s), ref2.step(X, Y), rtol=1e-5, atol=1e-6)


def test_a_constant_become_a_variable_and_back(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    X, Y, ref = stepped_once(rt, s, 3, 0.1, 0.05)
    rt.put_tensor(s, "X", X, variable=True, trainable=False)  # read as a variable now
    step(rt, s)
    np.testing.assert_allclose(w_now(rt, s), ref.step(X, Y), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rt.get_tensor(s, "X"), X)  # not o's: never updated
    rt.put_tensor(s, "X", X)
    step(rt, s)
    np.testing.assert_allclose(w_now(rt, s), ref.step(X, Y), rtol=1e-5, atol=1e-6)
    # a name the plan read is gone: the error a first step gives
    rt.delete_tensor(s, "Y")
    with pytest.raises(InvalidGraph, match="undefined name 'Y'"):
        step(rt, s)


def test_indices_are_checked_on_every_step(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    X, Y = data(4, 20)
    rt.put_tensor(s, "DX", X)
    rt.put_tensor(s, "DY", Y)
    rt.put_tensor(s, "W", np.ones((3, 2), np.float32), variable=True)
    rt.create_optimizer(s, "o", "sgd", 0.05)
    nodes = [{"id": "X", "op": "gather", "args": ["DX", "idx"]},
             {"id": "Y", "op": "gather", "args": ["DY", "idx"]}, *LINEAR]
    ref = Reference(np.ones((3, 2), np.float32), 0.05)
    for idx in ([0, 3, 5], [19, 1, 2]):
        step(rt, s, nodes, {"idx": np.array(idx, np.int32)})
        np.testing.assert_allclose(w_now(rt, s), ref.step(X[idx], Y[idx]), rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(InvalidGraph, match="index 20 is out of range") as err:
        step(rt, s, nodes, {"idx": np.array([1, 20, 2], np.int32)})
    assert err.value.node == "X"


def test_array_literals_are_planned_each_time(rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    X, Y = data(5)
    w0 = np.zeros((3, 2), np.float32)
    rt.put_tensor(s, "W", w0, variable=True)
    rt.create_optimizer(s, "o", "sgd", 0.05)
    nodes = [{**LINEAR[0], "args": [X.tolist(), "W"]},
             {**LINEAR[1], "args": ["p", Y.tolist()]}, *LINEAR[2:]]
    ref = Reference(w0, 0.05)
    for _ in range(2):
        step(rt, s, nodes)
        np.testing.assert_allclose(w_now(rt, s), ref.step(X, Y), rtol=1e-5, atol=1e-6)
    assert len(rt.step_plans) == 0


def test_reread_tells_changed_names_apart() -> None:
    s = Session("s", 60.0, 0.0, 0.0)
    s.values.update({1: np.zeros(2), 2: np.ones(2)})
    s.names.update({"a": Binding(tensor=1), "b": Binding(tensor=2)})
    reads = [("a", None, "in0"), ("b", None, "in1")]
    assert reread(s, reads) == {"in0": 1, "in1": 2}
    s.names["b"] = Binding(tensor=1)  # two inputs the plan told apart are one tensor now
    assert reread(s, reads) is None
    assert reread(s, [("a", None, "in0"), ("b", None, "in0")]) == {"in0": 1}
    s.names["b"] = Binding(tensor=2)  # and the reverse
    assert reread(s, [("a", None, "in0"), ("b", None, "in0")]) is None
    del s.names["a"]
    assert reread(s, reads) is None


def test_big_steps_are_not_kept(rt_s: tuple[SessionRuntime, Session],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.sessions import training

    monkeypatch.setattr(training, "MAX_KEPT_EQNS", len(LINEAR) - 1)
    rt, s = rt_s
    X, Y, ref = stepped_once(rt, s, 6, 0.2, 0.05)
    step(rt, s)
    np.testing.assert_allclose(w_now(rt, s), ref.step(X, Y), rtol=1e-5, atol=1e-6)
    assert len(rt.step_plans) == 0
