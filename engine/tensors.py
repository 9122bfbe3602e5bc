"""Tensors on the wire: decoding the three request forms, encoding responses.

Request forms: a bare JSON number/bool/nested array; `{"dtype", "shape", "data"}`;
`{"dtype", "shape", "b64"}` (little-endian, row-major bytes). Non-finite floats travel as the
strings "NaN", "Infinity" and "-Infinity" inside `data`, both ways.

Decoding is strict: a value its dtype cannot hold exactly (a boolean in a numeric tensor, a
number in a bool one, a fraction or an out-of-range number in an integer tensor, a finite
number that overflows a float dtype, null) is an `InvalidTensor` naming the field and, inside
an array, the index. A nested array of numbers is read in one strict pass by `struct` (NumPy
would parse strings and read null as NaN); the checks after it are vectorised, and only the
elements equal to 0 or 1, which is what a boolean reads as, have their type looked at.
Anything else is read by NumPy, and what NumPy made of it says what is wrong.
"""

from __future__ import annotations

import binascii
import math
import operator
import struct
from collections.abc import Iterator, Sequence
from itertools import chain, islice
from typing import Any

import numpy as np
import pybase64

from engine.dtypes import DEFAULT_FLOAT, DTYPES, dtype_name
from engine.errors import InvalidTensor, TooLarge, clip

_NONFINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
                 "nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_TENSOR_KEYS = {"dtype", "shape", "data", "b64"}

MAX_DIMS = 32
"""The most dimensions a request tensor may have (nesting levels, or entries of `shape`)."""
MAX_DIM = 2**31 - 1
"""The largest entry of a `shape`."""
_MAX_EXTENT = 2**48
"""Without an element limit, the most a shape's non-zero dimensions may multiply to (NumPy
needs the byte count of even an empty array's shape to fit in 64 bits)."""

_FLOAT32 = DTYPES[DEFAULT_FLOAT]
_BOOL_TYPES = frozenset({bool, np.bool_})
_NUMBER_TYPES = frozenset({int, float})
_EXACT = 2**53
"""Integers above this are not all exact as float64."""
_SMALL = 256
"""Up to this many elements, looking at every element's type is cheaper than NumPy calls."""
_CHUNK = 1 << 14
"""Elements packed per `struct` call (a bounded argument tuple, still warm in cache)."""
_PACKERS = {code: struct.Struct(f"={_CHUNK}{code}") for code in "dq"}

Loc = Sequence[str | int]


def is_tensor_object(value: Any) -> bool:
    return isinstance(value, dict) and ("data" in value or "b64" in value)


def decode(value: Any, loc: Loc = (), *, max_elements: int | None = None,
           dtype: str | None = None) -> np.ndarray:
    """Decode a request tensor into a NumPy array.

    Bare numbers become float32 (or `dtype`, the declared dtype of the placeholder they fill);
    booleans become bool. Every value must fit its dtype exactly: an `InvalidTensor` says
    which value does not (and where), a `TooLarge` that the tensor has over `max_elements`.

    >>> decode([[1, 1], [1, 1]]).dtype
    dtype('float32')
    >>> decode([True, 1.5])
    Traceback (most recent call last):
    ...
    engine.errors.InvalidTensor: boolean in a float32 tensor at index [0]; send numbers, or dtype bool
    """
    if isinstance(value, dict | np.ndarray):
        array = (value if isinstance(value, np.ndarray)
                 else _decode_object(value, loc, max_elements))
        if dtype is not None and array.dtype != _dtype(dtype):
            raise InvalidTensor(
                f"dtype {array.dtype.name} does not match the declared dtype {dtype}; send "
                f"\"dtype\": \"{dtype}\" or change the declaration", loc=loc)
    else:
        array = _decode_bare(value, loc, dtype)
    if max_elements is not None and array.size > max_elements:
        raise TooLarge(f"tensor has {array.size} elements; the limit is {max_elements} "
                       "(GRADTAPE_MAX_ELEMENTS)", loc=loc)
    return array


def _dtype(name: str) -> np.dtype:
    found = DTYPES.get(name)
    return found if found is not None else np.dtype(name)


# ----- bare values and scalars -----

def _decode_bare(value: Any, loc: Loc, dtype: str | None) -> np.ndarray:
    kind = type(value)
    if kind is float or kind is int:
        return _number(value, _FLOAT32 if dtype is None else _dtype(dtype), loc)
    if kind is list:
        return _from_nested(value, None if dtype is None else _dtype(dtype), loc)
    if kind is bool or kind is np.bool_:
        if dtype is None or dtype == "bool":
            return np.asarray(value, dtype=np.bool_)
        raise InvalidTensor(_boolean_in(_dtype(dtype)), loc=loc)
    if kind is str:
        nonfinite = _NONFINITE_IN.get(value)
        if nonfinite is None:
            raise InvalidTensor(f"expected a tensor, got the string {clip(value)}; the only "
                                f"strings allowed are {_NONFINITE_NAMES}", loc=loc)
        return _number(nonfinite, _FLOAT32 if dtype is None else _dtype(dtype), loc)
    if value is None:
        raise InvalidTensor(f"null is not a tensor; {_WRITE_NAN}", loc=loc)
    if isinstance(value, int | float | np.integer | np.floating):
        number = int(value) if isinstance(value, int | np.integer) else float(value)
        return _number(number, _FLOAT32 if dtype is None else _dtype(dtype), loc)
    raise InvalidTensor(f"expected a number, boolean, nested array or tensor object, "
                        f"got {_json_type(value)}", loc=loc)


def _number(value: float, target: np.dtype, loc: Loc) -> np.ndarray:
    """A scalar of `target` from a Python int or float, which it must hold exactly."""
    kind = target.kind
    if kind == "f":
        if type(value) is not float:
            try:
                value = float(value)
            except OverflowError:
                raise InvalidTensor(_float_out_of_range(value, target, ""), loc=loc) from None
        limit = _float_limit(target)
        if not -limit < value < limit and math.isfinite(value):
            raise InvalidTensor(_float_out_of_range(value, target, ""), loc=loc)
        return np.asarray(value, dtype=target)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidTensor(_nonfinite_in(value, target, ""), loc=loc)
    if kind in "iu":
        if isinstance(value, float) and not value.is_integer():
            raise InvalidTensor(_not_whole(value, target, ""), loc=loc)
        low, high = _int_range(target)
        if not low <= value <= high:
            raise InvalidTensor(_int_out_of_range(value, target, ""), loc=loc)
        return np.asarray(int(value), dtype=target)
    if kind == "b":
        raise InvalidTensor(_number_in_bool(""), loc=loc)
    return np.asarray(value, dtype=target)


# ----- nested arrays -----

def _from_nested(data: list[Any], target: np.dtype | None, loc: Loc) -> np.ndarray:
    """A nested list of `target` (None: bool if all booleans, else float32)."""
    shape, first = _outline(data, loc)
    code = _pack_code(first, target)
    if code is not None:
        size = math.prod(shape)
        if size <= _SMALL:
            small = _small(data, shape, _FLOAT32 if target is None else target)
            if small is not None:
                return small
        elif _even(data, shape):
            values = _pack(_leaves(data, len(shape)), size, code)
            if values is not None:
                values = values.reshape(shape)
                if _has_bool(values, data):
                    raise _mixed(list(_leaves(data, len(shape))), shape, target, loc)
                return _cast(values, _FLOAT32 if target is None else target, loc, data)
    # booleans, strings, null, fractions for an integer dtype, ragged arrays: NumPy reads
    # anything, and what it made of the data says what is wrong with it
    try:
        array = np.array(data)
    except (ValueError, TypeError):
        raise InvalidTensor("ragged nested array: every row must have the same length",
                            loc=loc) from None
    if array.size == 0:
        return np.empty(array.shape, dtype=_FLOAT32 if target is None else target)
    kind = array.dtype.kind
    if kind in "fiu":
        if _has_bool(array, data):
            raise _mixed(list(_leaves(data, array.ndim)), array.shape, target, loc)
        if target is not None and target.kind == "b":
            raise InvalidTensor(_number_in_bool(_at(0, array.shape)), loc=loc)
        return _cast(array, _FLOAT32 if target is None else target, loc, data)
    if kind == "b":
        if target is None or target.kind == "b":
            return array
        raise InvalidTensor(_boolean_in(target, _at(0, array.shape)), loc=loc)
    return _from_objects(data, array, target, loc)


def _outline(data: list[Any], loc: Loc) -> tuple[tuple[int, ...], type | None]:
    """The shape along the first path of a nested list (at most MAX_DIMS levels; a path that
    is deeper or shallower elsewhere is ragged), and the type of its first element (None
    when empty)."""
    shape: list[int] = []
    item: Any = data
    while type(item) is list:
        if len(shape) == MAX_DIMS:
            raise InvalidTensor(_TOO_DEEP, loc=loc)
        shape.append(len(item))
        if not item:
            return tuple(shape), None
        item = item[0]
    return tuple(shape), type(item)


def _even(data: list[Any], shape: tuple[int, ...]) -> bool:
    """Whether the lists at each level of `data` all have the length `shape` gives them."""
    items = data
    try:
        for level, length in enumerate(shape[1:], 2):
            if set(map(len, items)) != {length}:
                return False
            if level < len(shape):
                items = list(chain.from_iterable(items))
    except TypeError:  # a number where a list belongs
        return False
    return True


def _pack_code(first: type | None, target: np.dtype | None) -> str | None:
    """The struct code that reads data starting with a `first` for `target`: "d" (float64)
    for a float dtype, "q" (int64) for an integer one; None for NumPy to read it."""
    if first is float or first is int:
        if target is None or target.kind == "f":
            return "d"
        if first is int and target.kind in "iu":
            return "q"
    return None


def _small(data: list[Any], shape: tuple[int, ...], target: np.dtype) -> np.ndarray | None:
    """A few numbers for a numeric `target`, checked with a C loop over each element (cheaper
    than NumPy calls at this size); None when the general path has to say what is wrong."""
    try:
        leaves = list(_leaves(data, len(shape)))
    except TypeError:  # a number where a list belongs
        return None
    types = set(map(type, leaves))
    if not types <= _NUMBER_TYPES:
        return None
    if target.kind == "f":
        # a NaN makes the largest magnitude NaN (or is skipped): either way, safe
        if not max(map(abs, leaves)) < _float_limit(target):
            return None
    elif target.kind in "iu" and int in types and float not in types:
        low, high = _int_range(target)
        if not (low <= min(leaves) and max(leaves) <= high):
            return None
    else:
        return None
    try:
        return np.array(data, dtype=target)
    except (ValueError, OverflowError):  # ragged, or an integer beyond float64
        return None


def _pack(items: Iterator[Any], count: int, code: str) -> np.ndarray | None:
    """`count` items read by `struct` as float64 ("d") or int64 ("q"): in one pass, and
    strictly, unlike NumPy, which parses strings and reads null as NaN. None where an item is
    not a number of that kind (or a boolean, which has to be looked for afterwards), or is
    out of its range, or there are too few items."""
    out = np.empty(count, dtype=np.float64 if code == "d" else np.int64)
    buffer: Any = out  # written through the buffer protocol
    offset = 0
    try:
        full = _PACKERS[code]
        for _ in range(count // _CHUNK):
            full.pack_into(buffer, offset, *islice(items, _CHUNK))
            offset += full.size
        rest = count % _CHUNK
        if rest:
            struct.pack_into(f"={rest}{code}", buffer, offset, *islice(items, rest))
    except (struct.error, TypeError, OverflowError):
        return None
    return out


def _has_bool(array: np.ndarray, data: list[Any]) -> bool:
    """Whether `data`, read as the numbers `array`, holds a boolean. A boolean reads as 0 or
    1, so only the elements equal to 0 or 1 need their type looked at."""
    if array.size <= _SMALL:
        return not _BOOL_TYPES.isdisjoint(map(type, _leaves(data, array.ndim)))
    flat = array.reshape(-1)
    candidates = flat == 0
    candidates |= flat == 1
    count = int(np.count_nonzero(candidates))
    if count == 0:
        return False
    if count * 4 > flat.size:
        return not _BOOL_TYPES.isdisjoint(map(type, _leaves(data, array.ndim)))
    index = np.flatnonzero(candidates)
    items: Iterator[Any]
    if array.ndim == 1:
        items = map(data.__getitem__, index.tolist())
    else:
        rows = _rows(data, array.ndim)
        outer, inner = np.divmod(index, array.shape[-1])
        items = map(operator.getitem, map(rows.__getitem__, outer.tolist()), inner.tolist())
    return not _BOOL_TYPES.isdisjoint(map(type, items))


def _leaves(data: list[Any], ndim: int) -> Iterator[Any]:
    """The elements of an `ndim`-deep rectangular nested list, row-major."""
    items: Iterator[Any] = iter(data)
    for _ in range(ndim - 1):
        items = chain.from_iterable(items)
    return items


def _rows(data: list[Any], ndim: int) -> list[list[Any]]:
    """The innermost lists of an `ndim`-deep (ndim >= 2) rectangular nested list."""
    rows = data
    for _ in range(ndim - 2):
        rows = list(chain.from_iterable(rows))
    return rows


def _from_objects(data: list[Any], array: np.ndarray, target: np.dtype | None,
                  loc: Loc) -> np.ndarray:
    """Nested data that NumPy did not read as numbers: strings (the non-finite ones are
    fine), null, integers too large for int64, or something that is not a number."""
    if array.dtype != object:
        array = np.array(data, dtype=object)
    shape = array.shape
    leaves: list[Any] = array.ravel().tolist()
    types = set(map(type, leaves))
    if type(None) in types:
        raise InvalidTensor(f"null in data{_at(leaves.index(None), shape)}; {_WRITE_NAN}",
                            loc=loc)
    if list in types:
        raise InvalidTensor("ragged nested array: every row must have the same length",
                            loc=loc)
    odd = {t for t in types if not issubclass(t, int | float | str | np.bool_ | np.integer
                                              | np.floating)}
    if odd:
        pos = _first(leaves, odd)
        raise InvalidTensor(f"nested array holds {_json_type(leaves[pos])}"
                            f"{_at(pos, shape)}, where a number belongs", loc=loc)
    if str in types:
        sent = leaves
        leaves = list(map(_NONFINITE_IN.get, sent, sent))
        if str in set(map(type, leaves)):
            pos = _first(leaves, {str})
            raise InvalidTensor(f"unexpected string {clip(leaves[pos])} in data"
                                f"{_at(pos, shape)}; the only strings allowed are "
                                f"{_NONFINITE_NAMES}", loc=loc)
        if target is not None and target.kind != "f":
            pos = _first(sent, {str})
            raise InvalidTensor(_nonfinite_in(leaves[pos], target, _at(pos, shape)), loc=loc)
        types.discard(str)
        types.add(float)
    if not _BOOL_TYPES.isdisjoint(types):
        if types <= _BOOL_TYPES and (target is None or target.kind == "b"):
            return np.array(leaves, dtype=np.bool_).reshape(shape)
        raise _mixed(leaves, shape, target, loc)
    if target is not None and target.kind == "b":
        raise InvalidTensor(_number_in_bool(_at(0, shape)), loc=loc)
    target = _FLOAT32 if target is None else target
    try:
        values = np.array(leaves, dtype=np.float64).reshape(shape)
    except OverflowError:
        pos = next(i for i, v in enumerate(leaves) if _overflows(v))
        raise InvalidTensor(_out_of_range(leaves[pos], target, _at(pos, shape)),
                            loc=loc) from None
    return _cast(values, target, loc, leaves)


def _cast(values: np.ndarray, target: np.dtype, loc: Loc, source: list[Any]) -> np.ndarray:
    """`values` (float64, int64 or uint64, read from the nested or flat list `source`) as
    `target`, which must hold each value exactly."""
    kind = target.kind
    shape = values.shape
    if kind == "f":
        if values.dtype == target:
            return values
        if values.dtype.kind != "f" or values.dtype.itemsize <= target.itemsize:
            return values.astype(target, copy=False)
        limit = _float_limit(target)
        if values.size <= _SMALL:
            # a NaN makes the largest magnitude NaN (or is skipped): either way, safe
            fits = max(map(abs, values.ravel().tolist())) < limit
        else:
            fits = bool(-limit < np.minimum.reduce(values, axis=None)
                        and np.maximum.reduce(values, axis=None) < limit)
        if fits:
            return values.astype(target, copy=False)
        # a NaN, an infinity, or a finite value that overflows
        overflow = np.isfinite(values) & (np.abs(values) >= limit)
        if overflow.any():
            pos = int(np.argmax(overflow.reshape(-1)))
            raise InvalidTensor(_float_out_of_range(values.flat[pos].item(), target,
                                                    _at(pos, shape)), loc=loc)
        with np.errstate(over="ignore"):
            return values.astype(target, copy=False)
    if kind not in "iu":
        return values.astype(target, copy=False)
    low, high = _int_range(target)
    if values.dtype.kind != "f":
        if values.dtype != target and not _ints_within(values, low, high):
            pos = int(np.argmax(((values < low) | (values > high)).reshape(-1)))
            raise InvalidTensor(_int_out_of_range(values.flat[pos].item(), target,
                                                  _at(pos, shape)), loc=loc)
        return values.astype(target, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        pos = int(np.argmin(finite.reshape(-1)))
        raise InvalidTensor(_nonfinite_in(values.flat[pos].item(), target, _at(pos, shape)),
                            loc=loc)
    whole = values == np.trunc(values)
    if not whole.all():
        pos = int(np.argmin(whole.reshape(-1)))
        raise InvalidTensor(_not_whole(values.flat[pos].item(), target, _at(pos, shape)),
                            loc=loc)
    if high > _EXACT and float(np.abs(values).max()) >= _EXACT:
        # float64 rounds integers this large: compare and convert the values as sent
        exact = np.array(source, dtype=object).reshape(shape)
        outside = (exact < low) | (exact > high)
        if outside.any():
            pos = int(np.argmax(outside.reshape(-1)))
            raise InvalidTensor(_int_out_of_range(exact.flat[pos], target, _at(pos, shape)),
                                loc=loc)
        return exact.astype(target)
    outside = (values < float(low)) | (values >= float(high + 1))
    if outside.any():
        pos = int(np.argmax(outside.reshape(-1)))
        sent = np.array(source, dtype=object).reshape(-1)[pos]  # as sent, not as float64
        raise InvalidTensor(_int_out_of_range(sent, target, _at(pos, shape)), loc=loc)
    return values.astype(target, copy=False)


# ----- tensor objects -----

def _object_dtype(obj: dict[str, Any], loc: Loc) -> np.dtype:
    """The dtype a tensor object names (float32 when it names none)."""
    name = obj.get("dtype", DEFAULT_FLOAT)
    if type(name) is not str:
        raise InvalidTensor(f"dtype must be a string, one of {', '.join(DTYPES)}; got "
                            f"{_json_type(name)}", loc=(*loc, "dtype"))
    dtype = DTYPES.get(name)
    if dtype is None:
        raise InvalidTensor(f"unknown dtype {clip(name)}; use one of {', '.join(DTYPES)}",
                            loc=(*loc, "dtype"))
    return dtype


def _unknown(obj: dict[str, Any], known: set[str]) -> str:
    """The first few fields of `obj` that are not `known`, clipped, for a message ('' when
    there are none)."""
    return ", ".join(clip(k) for k in sorted(set(obj) - known, key=str)[:4])


def _decode_object(obj: dict[str, Any], loc: Loc, max_elements: int | None) -> np.ndarray:
    names = _unknown(obj, _TENSOR_KEYS)
    if names:
        raise InvalidTensor(f"unknown tensor field(s) {names}; a tensor object has "
                            "dtype, shape and data (or b64)", loc=loc)
    dtype = _object_dtype(obj, loc)
    shape = _check_shape(obj.get("shape"), loc, max_elements)
    if ("data" in obj) == ("b64" in obj):
        raise InvalidTensor("a tensor object needs exactly one of 'data' and 'b64'", loc=loc)
    if "b64" in obj:
        return _decode_b64(obj["b64"], dtype, shape, loc)
    data = obj["data"]
    data_loc = (*loc, "data")
    if type(data) is list:
        array = _from_nested(data, dtype, data_loc)
    elif data is None:
        raise InvalidTensor(f"'data' is null; {_WRITE_NAN}", loc=data_loc)
    elif isinstance(data, bool | int | float | str):
        array = _decode_bare(data, data_loc, dtype.name)
    else:
        raise InvalidTensor("'data' must be a number or a (nested) array", loc=data_loc)
    if shape is None:
        return array
    if array.shape == shape:
        return array
    if array.ndim <= 1 and array.size == math.prod(shape):
        return array.reshape(shape)
    raise InvalidTensor(f"data has shape {list(array.shape)} ({array.size} elements) but shape "
                        f"is {list(shape)} ({math.prod(shape)} elements)", loc=(*loc, "shape"))


def _check_shape(shape: Any, loc: Loc, max_elements: int | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    shape_loc = (*loc, "shape")
    if type(shape) is not list:
        raise InvalidTensor(f"shape must be a list of non-negative integers, got "
                            f"{_json_type(shape)}", loc=shape_loc)
    if len(shape) > MAX_DIMS:
        raise InvalidTensor(f"shape has {len(shape)} dimensions; a tensor has at most "
                            f"{MAX_DIMS}", loc=shape_loc)
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise InvalidTensor("shape must be a list of non-negative integers",
                                loc=shape_loc)
        if dim > MAX_DIM:
            raise InvalidTensor(f"shape dimension {_show(dim)} is over {MAX_DIM}, the "
                                "largest allowed", loc=shape_loc)
    size = math.prod(shape)
    extent = size or math.prod([dim for dim in shape if dim])
    limit = _MAX_EXTENT if max_elements is None else max_elements
    if extent > limit:
        what = (f"{size} elements" if size else
                f"no elements, but its non-zero dimensions multiply to {extent}")
        if max_elements is None:
            raise InvalidTensor(f"shape {shape} has {what}; the most possible is "
                                f"{_MAX_EXTENT}", loc=shape_loc)
        raise TooLarge(f"shape {shape} has {what}; the limit is {max_elements} "
                       "(GRADTAPE_MAX_ELEMENTS)", loc=shape_loc)
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
    return from_little_endian(raw, dtype, shape)


def from_little_endian(raw: bytes | memoryview, dtype: np.dtype, shape: tuple[int, ...]
                       ) -> np.ndarray:
    """An array of the little-endian `raw` bytes, in memory of its own that a compiled call
    can read in place (`aligned`)."""
    out = aligned_empty(shape, dtype)
    np.copyto(out, np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape))
    return out


# XLA's CPU client reads a NumPy array in place when its data is 64-byte aligned and
# writable, and copies it on every call otherwise; NumPy aligns to 16 bytes only
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = math.prod(shape) * dtype.itemsize
    buffer = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def aligned(array: np.ndarray) -> np.ndarray:
    """`array`, or a copy of it that a compiled call reads without copying it again (worth it
    for a tensor kept to be read call after call, such as a session's data set)."""
    if array.ctypes.data % ALIGNMENT == 0 and array.flags.writeable and \
            array.flags.c_contiguous:
        return array
    out = aligned_empty(array.shape, array.dtype)
    np.copyto(out, array)
    return out


# ----- tensors sent as bytes beside a JSON header -----

BINARY_KEYS = {"dtype", "shape", "parameters"}


def attach_binary(header: Any, blob: memoryview) -> Any:
    """Replace each binary tensor reference in a parsed JSON `header` by the array it names.

    The Open Inference Protocol's binary tensor extension: a tensor object
    `{"dtype", "shape", "parameters": {"binary_data_size": n}}` has no data of its own; its n
    bytes (little-endian, row-major) follow the JSON header, in the order the references
    appear in it. Every byte of `blob` must belong to one tensor."""
    offset = 0

    def walk(node: Any, loc: Loc) -> Any:
        nonlocal offset
        if isinstance(node, list):
            return [walk(v, (*loc, i)) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            return node
        params = node.get("parameters")
        if isinstance(params, dict) and "binary_data_size" in params:
            array, size = _binary_tensor(node, blob, offset, loc)
            offset += size
            return array
        return {k: walk(v, (*loc, k)) for k, v in node.items()}

    out = walk(header, ())
    if offset != len(blob):
        raise InvalidTensor(f"the binary part of the body has {len(blob)} bytes, but its "
                            f"tensors' binary_data_size add up to {offset}; every byte after "
                            "the JSON header must belong to one tensor")
    return out


def _binary_tensor(obj: dict[str, Any], blob: memoryview, offset: int,
                   loc: Loc) -> tuple[np.ndarray, int]:
    names = _unknown(obj, BINARY_KEYS)
    if names:
        raise InvalidTensor(f"field(s) {names} beside binary data; a binary tensor has "
                            "dtype, shape and parameters.binary_data_size only", loc=loc)
    dtype = _object_dtype(obj, loc)
    shape = _check_shape(obj.get("shape"), loc, None)
    if shape is None:
        raise InvalidTensor("'shape' is required with binary data", loc=(*loc, "shape"))
    size = obj["parameters"]["binary_data_size"]
    where = (*loc, "parameters", "binary_data_size")
    expected = math.prod(shape) * dtype.itemsize
    if type(size) is not int or size != expected:
        raise InvalidTensor(f"binary_data_size is {clip(size)}; shape {list(shape)} of "
                            f"{dtype.name} takes {expected} bytes", loc=where)
    if offset + size > len(blob):
        raise InvalidTensor(f"the binary part ends {offset + size - len(blob)} bytes before "
                            "this tensor's data does", loc=where)
    return from_little_endian(blob[offset:offset + size], dtype, shape), size


# ----- limits and messages -----

_NONFINITE_NAMES = '"NaN", "Infinity" and "-Infinity"'
_WRITE_NAN = 'write NaN as the string "NaN"'
_TOO_DEEP = f"too many nested levels: a tensor has at most {MAX_DIMS} dimensions"

_FLOAT_LIMITS: dict[np.dtype, float] = {}
_INT_RANGES: dict[np.dtype, tuple[int, int]] = {}


def _float_limit(dtype: np.dtype) -> float:
    """The magnitude from which a float64 rounds to infinity in `dtype` (the largest finite
    value plus half its spacing; infinity for float64)."""
    limit = _FLOAT_LIMITS.get(dtype)
    if limit is None:
        largest = np.finfo(dtype).max
        below = np.nextafter(largest, largest.dtype.type(0))
        limit = float(largest) + float(largest - below) / 2
        _FLOAT_LIMITS[dtype] = limit
    return limit


def _int_range(dtype: np.dtype) -> tuple[int, int]:
    found = _INT_RANGES.get(dtype)
    if found is None:
        info = np.iinfo(dtype)
        found = _INT_RANGES[dtype] = (int(info.min), int(info.max))
    return found


def _ints_within(values: np.ndarray, low: int, high: int) -> bool:
    if values.size <= _SMALL:
        flat = values.ravel().tolist()
        return bool(low <= min(flat) and max(flat) <= high)
    return bool(low <= np.minimum.reduce(values, axis=None)
                and np.maximum.reduce(values, axis=None) <= high)


for _known in DTYPES.values():
    if _known.kind == "f":
        _float_limit(_known)
    elif _known.kind in "iu":
        _int_range(_known)


def _first(items: list[Any], types: set[type]) -> int:
    """The index of the first item whose type is one of `types` (it must have one)."""
    kinds = list(map(type, items))
    return min(kinds.index(t) for t in types if t in kinds)


def _mixed(leaves: list[Any], shape: tuple[int, ...], target: np.dtype | None,
           loc: Loc) -> InvalidTensor:
    """The error for an array that mixes booleans and numbers."""
    if target is not None and target.kind == "b":
        pos = next(i for i, v in enumerate(leaves) if type(v) not in _BOOL_TYPES)
        return InvalidTensor(_number_in_bool(_at(pos, shape)), loc=loc)
    pos = _first(leaves, set(_BOOL_TYPES))
    return InvalidTensor(_boolean_in(_FLOAT32 if target is None else target,
                                     _at(pos, shape)), loc=loc)


def _overflows(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _at(pos: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return ""
    return f" at index {[int(i) for i in np.unravel_index(pos, shape)]}"


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return '"NaN"' if math.isnan(value) else '"Infinity"' if value > 0 else '"-Infinity"'
    if isinstance(value, int) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"
    return clip(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "a boolean"
    if isinstance(value, int | float | np.number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _boolean_in(target: np.dtype, at: str = "") -> str:
    name = dtype_name(target)
    article = "an" if name[0] in "aeiou" else "a"
    return f"boolean in {article} {name} tensor{at}; send numbers, or dtype bool"


def _number_in_bool(at: str) -> str:
    return f"number in a bool tensor{at}; send true and false, or a numeric dtype"


def _nonfinite_in(value: float, target: np.dtype, at: str) -> str:
    return (f"{_show(value)}{at} cannot be stored as {dtype_name(target)}; non-finite values "
            "need a float dtype")


def _not_whole(value: float, target: np.dtype, at: str) -> str:
    return (f"{_show(value)}{at} is not a whole number, which {dtype_name(target)} needs; "
            "round it, or send a float dtype")


def _int_out_of_range(value: float, target: np.dtype, at: str) -> str:
    low, high = _int_range(target)
    wider = "dtype int64, or a float dtype" if target.itemsize < 8 else "a float dtype"
    return (f"{_show(value)}{at} is out of range for {dtype_name(target)} ({low} to {high}); "
            f"send {wider}")


def _float_out_of_range(value: float, target: np.dtype, at: str) -> str:
    largest = str(np.finfo(target).max)
    wider = "; send dtype float64, or a smaller value" if target.itemsize < 8 else ""
    return (f"{_show(value)}{at} is out of range for {dtype_name(target)}, whose largest "
            f"value is {largest}{wider}")


def _out_of_range(value: float, target: np.dtype, at: str) -> str:
    if target.kind == "f":
        return _float_out_of_range(value, target, at)
    return _int_out_of_range(value, target, at)


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
    if array.ndim == 0 and array.dtype.kind == "f" and math.isfinite(array):
        return array[()]  # a scalar (a query's value, most often): no NumPy reductions
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
