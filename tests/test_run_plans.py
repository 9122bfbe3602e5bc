"""A session run's plan is kept and reused while the session's names mean what they meant.

`POST .../run` plans its nodes against the session (engine/sessions/runtime.py: `_RunPlan`);
the same nodes run again in the same session (a training loop's forward pass) reuse that plan
and only look their tensors up. Every way the session can change under a kept plan is run here
beside a reference session that plans every run afresh: the answers, the variables and the
tapes' gradients must be the same, and errors the ones a first run raises.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.compute import Engine
from engine.errors import InvalidGraph
from engine.sessions import runtime
from engine.sessions.runtime import SessionRuntime, _RunPlan
from engine.sessions.state import Session
from engine.sessions.store import InMemorySessionStore

FORWARD = [{"id": "z", "op": "matmul", "args": ["X", "W"]},
           {"id": "a", "op": "add", "args": ["z", "b"]},
           {"id": "h", "op": "tanh", "args": ["a"]},
           {"id": "loss", "op": "sum", "args": ["h"]}]


class Pair:
    """A runtime that keeps run plans and one that plans every run, each with a session."""

    def __init__(self) -> None:
        self.kept, self.fresh = [self._make() for _ in range(2)]

    @staticmethod
    def _make() -> tuple[SessionRuntime, Session]:
        store = InMemorySessionStore()
        return SessionRuntime(Engine(), store.check_bytes), asyncio.run(store.create())

    def both(self, fn: Any) -> tuple[Any, Any]:
        """fn(rt, s) on both; the fresh runtime forgets its plans first."""
        out = fn(*self.kept)
        self.fresh[0].run_plans = runtime.Lru(256)
        return out, fn(*self.fresh)

    def run(self, nodes: list[dict[str, Any]], fetch: list[str] | None = None) -> Any:
        kept, fresh = self.both(lambda rt, s: rt.run(s, nodes, fetch, 100))
        assert kept.keys() == fresh.keys()
        for name in kept:
            np.testing.assert_array_equal(kept[name], fresh[name], err_msg=name)
        return kept


@pytest.fixture
def pair() -> Pair:
    p = Pair()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 3)).astype(np.float32)
    W = rng.normal(size=(3, 2)).astype(np.float32)
    p.both(lambda rt, s: (rt.put_tensor(s, "X", X), rt.put_tensor(s, "W", W, variable=True),
                          rt.put_tensor(s, "b", [0.5, -0.5], variable=True)))
    return p


def planned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the nodes planned from scratch."""
    count: list[int] = []
    add = _RunPlan.add

    def counted(self: _RunPlan, node: Any, i: int) -> None:
        count.append(i)
        add(self, node, i)

    monkeypatch.setattr(_RunPlan, "add", counted)
    return count


def test_the_same_nodes_run_again_reuse_their_plan(pair: Pair,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rt, s = pair.kept
    count = planned(monkeypatch)
    first = rt.run(s, FORWARD, None, 100)
    assert len(count) == len(FORWARD)
    for _ in range(3):  # new X each time: the plan holds names, not values
        rt.put_tensor(s, "X", np.full((4, 3), len(count), np.float32))
        again = rt.run(s, FORWARD, None, 100)
    assert len(count) == len(FORWARD)
    x = np.full((4, 3), len(FORWARD), np.float32)
    W = np.asarray(rt.get_tensor(s, "W"))
    np.testing.assert_allclose(again["loss"], np.tanh(x @ W + [0.5, -0.5]).sum(), rtol=1e-6)
    assert set(first) == set(again)
    # fetch is checked on every run: a name neither in the session nor among the nodes
    with pytest.raises(InvalidGraph) as err:
        rt.run(s, FORWARD, ["nope"], 100)
    assert err.value.loc == ("fetch", 0)


def test_a_name_changing_meaning_plans_again(pair: Pair) -> None:
    pair.run(FORWARD)
    # W a plain tensor now, of another shape: the same nodes, a different program
    pair.both(lambda rt, s: (rt.delete_tensor(s, "W"),
                             rt.put_tensor(s, "W", np.ones((3, 5), np.float32))))
    pair.both(lambda rt, s: rt.put_tensor(s, "b", np.zeros(5, np.float32), variable=True))
    out = pair.run(FORWARD)
    assert out["z"].shape == (4, 5)
    # X and W one tensor under two names: one program input where there were two
    pair.both(lambda rt, s: rt.put_tensor(s, "sq", np.eye(3, dtype=np.float32)))
    square = [{"id": "p", "op": "matmul", "args": ["sq", "sq2"]}]
    pair.both(lambda rt, s: rt.put_tensor(s, "sq2", 2 * np.eye(3, dtype=np.float32)))
    pair.run(square)
    pair.both(lambda rt, s: s.names.__setitem__("sq2", s.names["sq"]))
    np.testing.assert_array_equal(pair.run(square)["p"], np.eye(3))
    # a name gone: the error a first run gives
    pair.both(lambda rt, s: rt.delete_tensor(s, "b"))
    for rt, s in (pair.kept, pair.fresh):
        with pytest.raises(InvalidGraph) as err:
            rt.run(s, FORWARD, None, 100)
        assert "undefined name 'b'" in err.value.detail and err.value.loc == ("nodes", 1,
                                                                            "args", 1)


def test_assigns_and_tapes_under_a_kept_plan(pair: Pair) -> None:
    """A counter assigned by the same nodes each run, and a tape recording every run: the
    variables and the gradient are those of planning afresh, and JAX's."""
    step = [{"id": "W", "op": "assign_add", "args": ["W", 0.25]},
            {"id": "z", "op": "matmul", "args": ["X", "W"]},
            {"id": "loss", "op": "sum", "args": ["z"]}]
    tapes = pair.both(lambda rt, s: rt.open_tape(s, persistent=True,
                                                 watch_accessed_variables=True))
    for (rt, s), tape in zip((pair.kept, pair.fresh), tapes, strict=True):
        rt.watch(s, tape, ["X"])
    for _ in range(3):
        pair.run(step, [])
    grads = []
    for (rt, s), tape in zip((pair.kept, pair.fresh), tapes, strict=True):
        grads.append(rt.gradient(s, tape, "loss", ["W", "X"])["gradients"])
    for name in ("W", "X"):
        np.testing.assert_array_equal(grads[0][name], grads[1][name])
    rt, s = pair.kept
    X, W = np.asarray(rt.get_tensor(s, "X")), np.asarray(rt.get_tensor(s, "W"))
    W0 = W - 0.75
    np.testing.assert_allclose(W0, np.asarray(pair.fresh[0].get_tensor(pair.fresh[1], "W"))
                               - 0.75)
    # the last run's loss, sum(X @ W), reads the last version of W
    gx, gw = jax.grad(lambda x, w: jnp.sum(x @ w), argnums=(0, 1))(X, W)
    np.testing.assert_allclose(grads[0]["X"], gx, rtol=1e-6)
    np.testing.assert_allclose(grads[0]["W"], gw, rtol=1e-6)


def test_array_literals_are_planned_each_time(pair: Pair,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rt, s = pair.kept
    count = planned(monkeypatch)
    nodes = [{"id": "c", "op": "add", "args": ["b", {"dtype": "float32", "data": [1, 2]}]}]
    for i in range(3):
        out = rt.run(s, nodes, None, 100)
        np.testing.assert_array_equal(out["c"], [1.5, 1.5])
        assert len(count) == i + 1


def test_big_runs_are_not_kept(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "MAX_KEPT_EQNS", len(FORWARD) - 1)
    rt, s = pair.kept
    count = planned(monkeypatch)
    rt.run(s, FORWARD, [], 100)
    rt.run(s, FORWARD, [], 100)
    assert len(count) == 2 * len(FORWARD) and len(rt.run_plans) == 0


def test_kept_plans_are_bounded_in_equations(pair: Pair,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans of sessions long gone stay until pushed out: the runtime keeps at most
    KEPT_PLAN_EQNS equations of run plans (and of step plans), oldest out first."""
    monkeypatch.setattr(runtime, "KEPT_PLAN_EQNS", 2 * len(FORWARD) + 1)
    rt = SessionRuntime(Engine(), InMemorySessionStore().check_bytes)
    s = pair.kept[1]
    variants = [[*FORWARD, {"id": f"extra{i}", "op": "negative", "args": ["loss"]}]
                for i in range(3)]
    for nodes in variants:
        rt.run(s, nodes, [], 100)
    assert len(rt.run_plans) == 1 and rt.run_plans.weight == len(FORWARD) + 1
    assert rt.run_plans.get((s.session_id, runtime.digest(variants[-1]))) is not None
    assert rt.step_plans.max_weight == 2 * len(FORWARD) + 1


def test_lru_bounds_count_and_weight() -> None:
    lru: runtime.Lru[str] = runtime.Lru(3, max_weight=10, weight=len)
    for key, value in (("a", "xxxx"), ("b", "yyyy"), ("c", "z")):
        lru.put(key, value)
    assert len(lru) == 3 and lru.weight == 9
    assert lru.get("a") == "xxxx"  # a is now the most recently used
    lru.put("d", "ww")  # 11 > 10: b, the least recently used, goes
    assert lru.get("b") is None and lru.weight == 7 and len(lru) == 3
    lru.put("a", "x")  # replacing an item replaces its weight
    assert lru.weight == 4
    lru.put("e", "v")  # four items > 3: c goes
    assert lru.get("c") is None and [lru.get(k) for k in "ade"] == ["x", "ww", "v"]
    lru.put("big", "u" * 11)  # heavier than the bound alone: not kept, nothing else lost
    assert lru.get("big") is None and lru.weight == 4 and len(lru) == 3


def test_nodes_json_cannot_hold_are_planned_each_time(pair: Pair) -> None:
    """An integer past 64 bits (the service's parser makes it a float; another caller of the
    engine may not) has no digest: the run is planned each time, not kept, and says what is
    wrong with the node each time."""
    rt, s = pair.kept
    nodes = [{"id": "big", "op": "add", "args": ["b", 10**30]}]
    assert runtime.digest(nodes) is None
    for _ in range(2):
        with pytest.raises(InvalidGraph) as err:
            rt.run(s, nodes, None, 100)
        assert "op 'add' cannot take arguments" in err.value.detail
    assert len(rt.run_plans) == 0
    rt.run(s, FORWARD, None, 100)  # the same session keeps other runs' plans
    assert len(rt.run_plans) == 1
