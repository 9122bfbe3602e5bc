"""Tensors on the wire: decoding the three request forms, encoding responses.

Request forms: a bare JSON number/bool/nested array; `{"dtype", "shape", "data"}`;
`{"dtype", "shape", "b64"}` (little-endian, row-major bytes). Non-finite floats travel as the
strings "NaN", "Infinity" and "-Infinity" inside `data`, both ways.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pybase64

from engine.dtypes import DEFAULT_FLOAT, DTYPES, dtype_name
from engine.errors import InvalidTensor, TooLarge

_NONFINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
                 "nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_TENSOR_KEYS = {"dtype", "shape", "data", "b64"}

Loc = Sequence[str | int]


def is_tensor_object(value: Any) -> bool:
    return isinstance(value, dict) and ("data" in value or "b64" in value)


def decode(value: Any, loc: Loc = (), *, max_elements: int | None = None,
           dtype: str | None = None) -> np.ndarray:
    """Decode a request tensor into a NumPy array.

    Bare numbers become float32 (or `dtype`, the declared dtype of the placeholder they fill);
    booleans become bool.

    >>> decode([[1, 1], [1, 1]]).dtype
    dtype('float32')
    """
    if isinstance(value, dict | np.ndarray):
        array = value if isinstance(value, np.ndarray) else _decode_object(value, loc)
        if dtype is not None and array.dtype != DTYPES[dtype]:
            raise InvalidTensor(
                f"dtype {array.dtype.name} does not match the declared dtype {dtype}; send "
                f"\"dtype\": \"{dtype}\" or change the declaration", loc=loc)
    else:
        array = _decode_bare(value, loc, dtype)
    if max_elements is not None and array.size > max_elements:
        raise TooLarge(f"tensor has {array.size} elements; the limit is {max_elements} "
                       "(GRADTAPE_MAX_ELEMENTS)", loc=loc)
    return array


def _decode_bare(value: Any, loc: Loc, dtype: str | None) -> np.ndarray:
    if isinstance(value, bool):
        return np.asarray(value, dtype=np.bool_)
    if isinstance(value, int | float):
        return _scalar(value, DTYPES[dtype or DEFAULT_FLOAT], loc)
    if isinstance(value, str):
        if value in _NONFINITE_IN:
            return _scalar(_NONFINITE_IN[value], DTYPES[dtype or DEFAULT_FLOAT], loc)
        raise InvalidTensor(f"expected a tensor, got the string {value!r}; strings are only "
                            "'NaN', 'Infinity' and '-Infinity'", loc=loc)
    if isinstance(value, list):
        all_bool = _all_bool(value)
        target = np.bool_ if all_bool and dtype is None else DTYPES[dtype or DEFAULT_FLOAT]
        return _from_nested(value, target, loc)
    raise InvalidTensor(f"expected a number, boolean, nested array or tensor object, "
                        f"got {type(value).__name__}", loc=loc)


def _scalar(value: float, dtype: np.dtype, loc: Loc) -> np.ndarray:
    if dtype.kind in "iu" and isinstance(value, float) and not math.isfinite(value):
        raise InvalidTensor(f"{value} cannot be stored as {dtype.name}; use a float dtype",
                            loc=loc)
    if dtype.kind in "iu" and not np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
        raise InvalidTensor(f"{value} is out of range for {dtype.name}", loc=loc)
    return np.asarray(value, dtype=dtype)


def _all_bool(value: Any) -> bool:
    stack = [value]
    seen_any = False
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool):
            seen_any = True
        else:
            return False
    return seen_any


def _from_nested(data: Any, dtype: Any, loc: Loc) -> np.ndarray:
    try:
        array = np.array(data, dtype=dtype)
    except OverflowError:
        raise InvalidTensor(f"a value is out of range for {np.dtype(dtype).name}",
                            loc=loc) from None
    except ValueError as exc:
        text = str(exc)
        if "maximum" in text and "dimension" in text:
            raise InvalidTensor("too many nested levels: a tensor has at most 64 dimensions",
                                loc=loc) from None
        if "inhomogeneous" in text or "setting an array element with a sequence" in text:
            raise InvalidTensor("ragged nested array: every row must have the same length",
                                loc=loc) from None
        return _from_nested_with_strings(data, dtype, loc)
    except TypeError:
        raise InvalidTensor("nested array holds something that is not a number", loc=loc) from None
    if array.dtype == object:
        raise InvalidTensor("nested array holds something that is not a number", loc=loc)
    return array


def _from_nested_with_strings(data: Any, dtype: Any, loc: Loc) -> np.ndarray:
    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(v) for v in item]
        if isinstance(item, str):
            if item not in _NONFINITE_IN:
                raise InvalidTensor(f"unexpected string {item!r} in data; only 'NaN', "
                                    "'Infinity' and '-Infinity' are allowed", loc=loc)
            return _NONFINITE_IN[item]
        if item is None:
            raise InvalidTensor("null in data; write NaN as the string 'NaN'", loc=loc)
        return item

    converted = convert(data)
    if not np.issubdtype(np.dtype(dtype), np.floating) and _has_nonfinite(converted):
        raise InvalidTensor(f"non-finite values need a float dtype, not {np.dtype(dtype).name}",
                            loc=loc)
    try:
        return np.array(converted, dtype=dtype)
    except OverflowError:
        raise InvalidTensor(f"a value is out of range for {np.dtype(dtype).name}",
                            loc=loc) from None
    except (ValueError, TypeError):
        raise InvalidTensor("ragged nested array: every row must have the same length",
                            loc=loc) from None


def _has_nonfinite(data: Any) -> bool:
    if isinstance(data, list):
        return any(_has_nonfinite(v) for v in data)
    return isinstance(data, float) and not math.isfinite(data)


def _decode_object(obj: dict[str, Any], loc: Loc) -> np.ndarray:
    unknown = set(obj) - _TENSOR_KEYS
    if unknown:
        raise InvalidTensor(f"unknown tensor field(s) {sorted(unknown)}; a tensor object has "
                            "dtype, shape and data (or b64)", loc=loc)
    dtype_name = obj.get("dtype", DEFAULT_FLOAT)
    if dtype_name not in DTYPES:
        raise InvalidTensor(f"unknown dtype {dtype_name!r}; use one of {', '.join(DTYPES)}",
                            loc=(*loc, "dtype"))
    dtype = DTYPES[dtype_name]
    shape = _check_shape(obj.get("shape"), loc)
    if ("data" in obj) == ("b64" in obj):
        raise InvalidTensor("a tensor object needs exactly one of 'data' and 'b64'", loc=loc)
    if "b64" in obj:
        return _decode_b64(obj["b64"], dtype, shape, loc)
    data = obj["data"]
    if isinstance(data, list):
        array = _from_nested(data, dtype, (*loc, "data"))
    elif isinstance(data, bool | int | float | str):
        array = _decode_bare(data, (*loc, "data"), dtype_name)
    else:
        raise InvalidTensor("'data' must be a number or a (nested) array", loc=(*loc, "data"))
    if shape is None:
        return array
    if array.shape == shape:
        return array
    if array.ndim <= 1 and array.size == math.prod(shape):
        return array.reshape(shape)
    raise InvalidTensor(f"data has shape {list(array.shape)} ({array.size} elements) but shape "
                        f"is {list(shape)} ({math.prod(shape)} elements)", loc=(*loc, "shape"))


def _check_shape(shape: Any, loc: Loc) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidTensor("shape must be a list of non-negative integers",
                            loc=(*loc, "shape"))
    return tuple(shape)


def _decode_b64(text: Any, dtype: np.dtype, shape: tuple[int, ...] | None,
                loc: Loc) -> np.ndarray:
    if shape is None:
        raise InvalidTensor("'shape' is required with 'b64'", loc=(*loc, "shape"))
    if not isinstance(text, str):
        raise InvalidTensor("'b64' must be a base64 string", loc=(*loc, "b64"))
    try:
        raw = pybase64.b64decode(text, validate=True)  # SIMD; strict like the standard one
    except (binascii.Error, ValueError):
        raise InvalidTensor("'b64' is not valid base64", loc=(*loc, "b64")) from None
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidTensor(f"'b64' holds {len(raw)} bytes; shape {list(shape)} of "
                            f"{dtype.name} needs {expected}", loc=(*loc, "b64"))
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def encode(array: Any, *, encoding: str = "json") -> dict[str, Any]:
    """Encode an array as a response tensor object.

    `encoding` is "json" (`data`: NumPy values, which the service's orjson serialiser writes
    natively), "base64" (`b64`: the raw bytes) or "none" (dtype and shape only, for results
    a client keeps on the server and does not need to see).

    >>> encode(np.float32(8.0))["shape"]
    []
    """
    array = np.asarray(array)
    name = dtype_name(array.dtype)
    if name not in DTYPES:
        array = array.astype(np.float32 if array.dtype.kind == "f" else np.int64)
        name = dtype_name(array.dtype)
    out: dict[str, Any] = {"dtype": name, "shape": list(array.shape)}
    if encoding == "none":
        return out
    if encoding == "base64":
        out["b64"] = pybase64.b64encode(
            np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        ).decode("ascii")
        return out
    out["data"] = _to_data(array)
    return out


def _to_data(array: np.ndarray) -> Any:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        obj = array.astype(object)
        obj[np.isnan(array)] = "NaN"
        obj[np.isposinf(array)] = "Infinity"
        obj[np.isneginf(array)] = "-Infinity"
        finite = np.isfinite(array)
        # str() of a float32 is its shortest round-tripping decimal, not the widened double
        obj[finite] = [float(str(v)) for v in array[finite]]
        return obj.tolist()
    # NumPy data is serialised natively (and float32 as its shortest decimal) by orjson
    if array.ndim == 0:
        return array[()]
    return np.ascontiguousarray(array)
