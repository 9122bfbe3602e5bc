"""A session's bookkeeping after each request (which values stay, how many bytes it holds)
reads each tape's records incrementally (engine/sessions/state.py: `TapeSummary`). Here it
is checked, after every step of a long sequence of requests, against the same accounting
recomputed from scratch over every record, as it was before it was incremental."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from engine.compute import Engine
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import (
    ARG_OVERHEAD,
    NAME_OVERHEAD,
    RECORD_OVERHEAD,
    TENSOR_OVERHEAD,
    VARIABLE_OVERHEAD,
    Session,
    record_bytes,
)
from engine.sessions.store import InMemorySessionStore


def footprint_from_scratch(s: Session) -> int:
    size = sum(v.nbytes + TENSOR_OVERHEAD for v in s.values.values())
    size += sum(NAME_OVERHEAD + len(n) for n in s.names)
    size += VARIABLE_OVERHEAD * len(s.variables) + ARG_OVERHEAD * len(s.version_of)
    for tape in s.tapes.values():
        size += RECORD_OVERHEAD + ARG_OVERHEAD * (
            len(tape.tracked) + len(tape.watched_tensors) + len(tape.watched_variables))
        size += sum(record_bytes(rec) for rec in tape.records)
    size += sum(NAME_OVERHEAD + len(k) + len(v[2]) for k, v in s.applied.items())
    size += sum(RECORD_OVERHEAD + ARG_OVERHEAD * sum(map(len, o.state.values()))
                for o in s.optimizers.values())
    return size


def needed_from_scratch(s: Session) -> set[int]:
    """Every value a name, variable, optimiser or tape record needs."""
    keep = {b.tensor for b in s.names.values() if b.tensor is not None}
    keep.update(v.current for v in s.variables.values())
    keep.update(t for o in s.optimizers.values() for leaves in o.state.values()
                for t in leaves)
    keep.update(a for tape in s.tapes.values() for rec in tape.records for a in rec.args
                if isinstance(a, int))
    return keep


def check(s: Session, collected: bool = True) -> None:
    """`collected`: the last request dropped what is not needed and counted the bytes (a
    watch does neither)."""
    assert s.footprint() == footprint_from_scratch(s)
    if collected:
        assert s.held_bytes == s.footprint()
        assert set(s.values) == needed_from_scratch(s)


@pytest.fixture
def rt_s() -> tuple[SessionRuntime, Session]:
    store = InMemorySessionStore()
    return SessionRuntime(Engine(), store.check_bytes), asyncio.run(store.create())


def run(rt: SessionRuntime, s: Session, nodes: list[dict[str, Any]], **kw: Any) -> Any:
    return rt.run(s, nodes, fetch=[], max_nodes=1000, **kw)


def test_accounting_matches_a_recount_through_a_tapes_life(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    rt, s = rt_s
    rt.put_tensor(s, "w", [1.0, 2.0, 3.0], variable=True)
    rt.put_tensor(s, "x", [0.5, -1.0, 2.0])
    persistent = rt.open_tape(s, True, True)
    once = rt.open_tape(s, False, True)
    rt.watch(s, persistent, ["x"])
    check(s, collected=False)
    for i in range(6):  # records grow request by request; some names are rebound
        run(rt, s, [{"id": f"h{i}", "op": "multiply", "args": ["w", "x"]},
                    {"id": "y", "op": "reduce_sum", "args": [f"h{i}"]}])
        check(s)
    rt.gradient(s, persistent, "y", ["w", "x"])  # persistent: kept
    check(s)
    rt.gradient(s, once, "y", ["w"])  # a used non-persistent tape lets go of its records
    assert not once.records
    check(s)
    rt.reset(s, persistent)  # a new list of records
    assert not persistent.records
    check(s)
    run(rt, s, [{"id": "z", "op": "square", "args": ["x"]}])
    rt.watch(s, persistent, ["x"])
    run(rt, s, [{"id": "z2", "op": "square", "args": ["x"]}])
    check(s)
    rt.delete_tape(s, once.tape_id)
    for i in range(6):
        rt.delete_tensor(s, f"h{i}")
        check(s)


def test_a_failed_request_leaves_the_accounting_as_it_was(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    """A request that fails after it recorded (while its answer is written, say) is rolled
    back to the snapshot taken before it, whose tapes hold copies of the records; the next
    request's bookkeeping counts the restored records, not the rolled-back ones."""
    rt, s = rt_s
    rt.put_tensor(s, "x", [1.0, 2.0])
    tape = rt.open_tape(s, True, True)
    rt.watch(s, tape, ["x"])
    run(rt, s, [{"id": "a", "op": "square", "args": ["x"]}])
    before = (s.held_bytes, len(tape.records), set(s.values))
    snap = s.snapshot()
    run(rt, s, [{"id": "a_longer_name", "op": "multiply", "args": ["a", "x"]},
                {"id": "b", "op": "add", "args": ["a_longer_name", "a"]}])
    assert len(tape.records) == 3
    s.restore(snap)
    restored = s.tapes[tape.tape_id]
    assert (s.held_bytes, len(restored.records), set(s.values)) == before
    run(rt, s, [{"id": "d", "op": "exp", "args": ["a"]}])
    check(s)
    assert len(s.tapes[tape.tape_id].records) == 2
    np.testing.assert_allclose(rt.get_tensor(s, "d"), np.exp(np.array([1.0, 4.0])),
                               rtol=1e-6)


def tape_state(tape: Any) -> tuple[Any, ...]:
    return (tape.stopped, tape.paused, tape.used, list(tape.records), set(tape.tracked),
            set(tape.watched_tensors), set(tape.watched_variables))


def test_a_snapshot_copies_a_finished_tape_only_when_a_request_names_it(
        rt_s: tuple[SessionRuntime, Session]) -> None:
    """A snapshot copies the recording tapes; a tape that is not recording is copied when a
    request names it (`SessionRuntime.tape`, a run's `watch`), before it changes. Either
    way, a failed request leaves every tape as it was."""
    rt, s = rt_s
    rt.put_tensor(s, "x", [1.0, 2.0])
    rt.put_tensor(s, "w", [0.5, 0.25], variable=True)
    done = rt.open_tape(s, True, True)
    rt.watch(s, done, ["x"])
    run(rt, s, [{"id": "a", "op": "multiply", "args": ["x", "w"]}])
    done.stopped = True
    idle = rt.open_tape(s, False, True)
    idle.stopped = True
    live = rt.open_tape(s, True, True)
    before = {t.tape_id: tape_state(t) for t in (done, idle, live)}
    snap = s.snapshot()
    assert snap.tapes[done.tape_id] is done and snap.tapes[idle.tape_id] is idle
    assert snap.tapes[live.tape_id] is not live  # recording: copied now
    # what requests naming the finished tapes do to them, then the request fails
    named = rt.tape(s, done.tape_id)
    assert snap.tapes[done.tape_id] is not done  # copied when named
    rt.reset(s, named)
    rt.run(s, [{"id": "b", "op": "sum", "args": ["w"]}], None, 100,
           watch={idle.tape_id: ["x"]})
    rt.gradient(s, rt.tape(s, live.tape_id), "b", ["w"])
    assert tape_state(done) != before[done.tape_id]
    assert tape_state(idle) != before[idle.tape_id]
    assert tape_state(live) != before[live.tape_id]
    s.restore(snap)
    assert {i: tape_state(s.tapes[i]) for i in before} == before
    check(s, collected=False)  # opening tapes does not count bytes; the snapshot came after
    # a request that succeeded: its snapshot is let go, and the next one starts afresh
    s.snapshot()
    s.drop_snapshot()
    assert s.taken is None
    rt.tape(s, done.tape_id).paused = True  # no snapshot under way: nothing to keep
    assert s.taken is None
