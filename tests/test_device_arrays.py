"""Tensors that compiled calls read again and again are not copied on each call.

XLA's CPU client reads a NumPy array in place when it is 64-byte aligned and writable; a
session keeps what compiled calls produced as their own arrays (`Session.device`), and decodes
what clients send into aligned memory. Checked by where the data lives: a device array made
from an array read in place points at the array's own bytes.
"""

from __future__ import annotations

import base64
from typing import Any

import jax
import numpy as np
import pytest

from engine.compute import Engine
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import Session
from engine.tensors import aligned, decode, from_little_endian

ON_CPU = jax.default_backend() == "cpu"


def b64(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": a.dtype.name, "shape": list(a.shape),
            "b64": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode()}


def read_in_place(a: np.ndarray) -> bool:
    return bool(jax.device_put(a).unsafe_buffer_pointer() == a.ctypes.data)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "bool"])
def test_decoded_tensors_are_aligned_and_equal(dtype: str) -> None:
    a = (np.random.default_rng(0).random((37, 129)) * 100).astype(dtype)
    got = decode(b64(a))
    assert got.ctypes.data % 64 == 0 and got.flags.writeable
    np.testing.assert_array_equal(got, a)
    assert got.dtype == a.dtype
    # big-endian bytes come back in the machine's order
    raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
    np.testing.assert_array_equal(from_little_endian(raw, a.dtype, a.shape), a)


def test_aligned_copies_only_what_a_call_would_copy() -> None:
    a = np.arange(4096, dtype=np.float32)
    offset = a[(-a.ctypes.data % 64) // 4:][:4000]  # aligned view: kept as it is
    assert aligned(offset) is offset
    shifted = offset[1:]  # 4 bytes off: copied
    moved = aligned(shifted)
    assert moved is not shifted and moved.ctypes.data % 64 == 0
    np.testing.assert_array_equal(moved, shifted)
    frozen = offset.copy()
    frozen.flags.writeable = False
    assert aligned(frozen) is not frozen


@pytest.mark.skipif(not ON_CPU, reason="reading in place is what XLA's CPU client does; an "
                    "accelerator copies to its own memory once, into Session.device")
def test_session_tensors_are_read_in_place() -> None:
    rt = SessionRuntime(Engine(), lambda s, n: None)
    s = Session("s", 60.0, 0.0, 0.0)
    data = np.random.default_rng(1).random((300, 100)).astype(np.float32)
    rt.put_tensor(s, "D", b64(data))
    rt.put_tensor(s, "L", data.tolist())  # a JSON list: aligned when stored
    for name in ("D", "L"):
        value = rt.get_tensor(s, name)
        assert read_in_place(value), name
        np.testing.assert_allclose(value, data)
    # what a run computes stays the call's array, and the next call reads that array
    rt.put_tensor(s, "w", np.ones((300, 100), np.float32), variable=True)
    rt.run(s, [{"id": "w", "op": "assign_add", "args": ["w", "D"]}], [], 100)
    tid = s.variables[s.names["w"].variable].current  # type: ignore[index]
    assert tid in s.device and s.array(tid) is s.device[tid]
    np.testing.assert_allclose(rt.get_tensor(s, "w"), 1 + data)
    # dropped with the value: nothing keeps a device array the session no longer holds
    rt.run(s, [{"id": "w", "op": "assign_add", "args": ["w", "D"]}], [], 100)
    assert tid not in s.device and tid not in s.values
    np.testing.assert_allclose(rt.get_tensor(s, "w"), 1 + 2 * data, rtol=1e-6)
