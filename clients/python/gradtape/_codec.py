"""Tensors on the wire: NumPy arrays to the API's tensor objects and back.

Small arrays travel as `{"dtype", "shape", "data"}` (readable), larger ones, and any with a
NaN or an infinity, as `{"dtype", "shape", "b64"}`: the little-endian, row-major bytes.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

DTYPES = ("float32", "float64", "int32", "int64", "bool")
B64_MIN_ELEMENTS = 64
"""Arrays of at least this many elements are sent as base64."""

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


def encode(array: np.ndarray, b64_min_elements: int = B64_MIN_ELEMENTS) -> dict[str, Any]:
    """A request tensor object for `array` (already of an API dtype)."""
    out: dict[str, Any] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    finite = array.dtype.kind != "f" or bool(np.isfinite(array).all())
    if array.size >= b64_min_elements or not finite:
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        out["b64"] = base64.b64encode(data.tobytes()).decode("ascii")
    else:
        out["data"] = array.reshape(-1).tolist()
    return out


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
