"""Tensors on the wire: NumPy arrays to the API's tensor objects and back.

Small arrays travel as `{"dtype", "shape", "data"}` (readable), larger ones, and any with a
NaN or an infinity, as their little-endian, row-major bytes: by default after the JSON of the
request (the Open Inference Protocol's binary tensor extension, which the server takes on
every JSON route), else as `{"dtype", "shape", "b64"}` inside it. Which of the two is chosen
when the request is written (`write`), so an encoded tensor is a `Raw` until then.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # optional: the standard library writes the same JSON, several times slower
    orjson = None  # type: ignore[assignment]

DTYPES = ("float32", "float64", "int32", "int64", "bool")
B64_MIN_ELEMENTS = 64
"""Arrays of at least this many elements are sent as bytes (after the JSON, or base64)."""

_NON_FINITE = {"NaN": np.nan, "nan": np.nan, "Infinity": np.inf, "inf": np.inf,
               "-Infinity": -np.inf, "-inf": -np.inf}


def dtype_name(dtype: Any) -> str:
    """The API's name of a dtype given as a string, a NumPy dtype or a type (np.float32)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise TypeError(f"dtype {name!r} is not one the API has; use one of {', '.join(DTYPES)}")
    return name


def as_array(value: Any, dtype: Any = None) -> np.ndarray:
    """`value` as an array of an API dtype, with TensorFlow's defaults for Python values:
    floats become float32, ints int32, bools bool; NumPy arrays keep their dtype."""
    if dtype is not None:
        return np.asarray(value, dtype=dtype_name(dtype))
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
    else:
        array = np.asarray(value)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int32)
    if array.dtype.name not in DTYPES:
        kind = array.dtype.kind
        target = {"f": np.float32, "i": np.int64, "u": np.int64, "b": np.bool_}.get(kind)
        if target is None:
            raise TypeError(f"cannot send an array of dtype {array.dtype}; the API has "
                            f"{', '.join(DTYPES)}")
        array = array.astype(target)
    return array


class Raw:
    """A tensor sent as its bytes: after the JSON header of its request, or as base64 in it.

    The bytes are taken when the tensor is encoded, so an array changed later (before a
    session's queue is sent) is sent as it was."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, array: np.ndarray):
        self.dtype = array.dtype.name
        self.shape = list(array.shape)
        self.data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()

    def reference(self) -> dict[str, Any]:
        """The tensor object in a JSON header whose binary part holds `data`."""
        return {"dtype": self.dtype, "shape": self.shape,
                "parameters": {"binary_data_size": len(self.data)}}

    def b64(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": self.shape,
                "b64": base64.b64encode(self.data).decode("ascii")}


def encode(array: np.ndarray, b64_min_elements: int = B64_MIN_ELEMENTS) -> dict[str, Any] | Raw:
    """A request tensor object for `array` (already of an API dtype): JSON numbers when it is
    small and finite, else its bytes (JSON has no NaN, and a float's text is longer than its
    bytes)."""
    finite = array.dtype.kind != "f" or bool(np.isfinite(array).all())
    if array.size >= b64_min_elements or not finite:
        return Raw(array)
    return {"dtype": array.dtype.name, "shape": list(array.shape),
            "data": array.reshape(-1).tolist()}


def as_json(tree: Any) -> Any:
    """`tree` (dicts, lists, tuples) with every `Raw` tensor written as base64: pure JSON."""
    if isinstance(tree, Raw):
        return tree.b64()
    if isinstance(tree, dict):
        return {k: as_json(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [as_json(v) for v in tree]
    return tree


JSON_HEADERS = {"Content-Type": "application/json"}


def write(body: Any, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """A request's body and the headers that say its form. With `binary`, the `Raw` tensors'
    bytes follow the JSON, in the order their tensor objects appear in it (the order the
    server reads them in); without, or when the body has none, the body is JSON alone."""
    parts: list[bytes] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, Raw):
            if not binary:
                return obj.b64()
            parts.append(obj.data)
            return obj.reference()
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    head = _dumps(body, default, parts)
    if not parts:
        return head, JSON_HEADERS
    # any media type goes with the header; this one says the body is not JSON alone
    return b"".join([head, *parts]), {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(head))}


def _dumps(body: Any, default: Callable[[Any], Any], parts: list[bytes]) -> bytes:
    """`body` as JSON written in order (so `default` meets the tensors in order). orjson
    when it is installed; the standard library otherwise, and where orjson would differ:
    where it refuses (keys that are not strings, very deep or very large values), and where
    it may have written a NaN or an infinity as null (the server refuses them as JSON)."""
    if orjson is not None:
        try:
            head = orjson.dumps(body, default=default)
        except TypeError:  # orjson.JSONEncodeError included
            head = None
        if head is not None and b"null" not in head:
            return head
        parts.clear()
    return json.dumps(body, default=default, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def decode(obj: Any) -> np.ndarray:
    """A response tensor object (or a bare number) as an array."""
    if not isinstance(obj, dict):
        return np.asarray(obj)
    dtype = np.dtype(obj.get("dtype", "float32"))
    shape = tuple(obj.get("shape") or ())
    if "b64" in obj and obj["b64"] is not None:
        raw = base64.b64decode(obj["b64"])
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
        return array.reshape(shape)
    data = obj.get("data")
    if dtype.kind == "f":
        data = _finite(data)
    return np.asarray(data, dtype=dtype).reshape(shape)


def _finite(data: Any) -> Any:
    if isinstance(data, list):
        return [_finite(x) for x in data]
    if isinstance(data, str):
        return _NON_FINITE.get(data, data)
    return data


def decode_tree(tree: Any) -> Any:
    """Every tensor object in a decoded JSON answer (maps of tensors, nulls) as arrays."""
    if tree is None:
        return None
    if isinstance(tree, dict) and "dtype" in tree and "shape" in tree:
        return decode(tree)
    if isinstance(tree, dict):
        return {k: decode_tree(v) for k, v in tree.items()}
    return decode(tree)
