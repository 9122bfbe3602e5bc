"""Tensors: handles to values a builder (a session, or a trace of `gt.function`) computes.

A tensor is a name and, once known, its value as a NumPy array. Ops on tensors do not compute
anything here: `apply` hands them to the tensor's builder, which queues them (a session) or
writes them into a graph (a trace). Python's operators, NumPy's `np.asarray`, `float()`,
`int()` and `bool()` work as they do on TensorFlow's eager tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from gradtape import _codec


class Builder:
    """What tensors are made by: it names results, resolves arguments and knows values."""

    def _ref(self, tensor: Tensor) -> str:
        """The name `tensor` has for this builder (binding it first if needed)."""
        raise NotImplementedError

    def _add(self, op: str, args: list[Any], attrs: dict[str, Any], n_out: int) -> list[Tensor]:
        """Record one node; the tensors it results in."""
        raise NotImplementedError

    def _value(self, tensor: Tensor) -> np.ndarray:
        """The value of `tensor` (computing what it needs)."""
        raise NotImplementedError

    def _release(self, tensor: Tensor) -> None:
        """`tensor` is no longer referenced (its name may be reused)."""

    def constant(self, value: Any, dtype: Any = None) -> Tensor:
        raise NotImplementedError


_current: ContextVar[tuple[Builder, ...]] = ContextVar("gradtape_builders", default=())


def current_builder() -> Builder | None:
    """The innermost session or trace whose `with` block (or tracing) is running."""
    stack = _current.get()
    return stack[-1] if stack else None


@contextmanager
def building(builder: Builder) -> Iterator[None]:
    """Make `builder` the current one (for ops whose arguments hold no tensor)."""
    token = _current.set((*_current.get(), builder))
    try:
        yield
    finally:
        _current.reset(token)


def literal(value: Any) -> Any:
    """The wire form of a constant argument: Python numbers and booleans stay bare (weakly
    typed, so `x * 2.0` keeps the dtype of x); anything else becomes a tensor object."""
    if isinstance(value, bool | int | float):
        return value
    return _codec.encode(_codec.as_array(value))


def clean_attr(value: Any) -> Any:
    """An attribute as JSON: tuples as lists, NumPy scalars as Python ones, dtypes as
    names."""
    if isinstance(value, tuple | list):
        return [clean_attr(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if (isinstance(value, type) and issubclass(value, np.generic)) or isinstance(value, np.dtype):
        return _codec.dtype_name(value)
    return value


def apply(op: str, args: Sequence[Any], attrs: dict[str, Any] | None = None,
          n_out: int = 1) -> list[Tensor]:
    """Apply `op` to `args`: the builder of the tensors among them (or the current session
    or trace) records it. Returns the result tensors."""
    builders = {id(a._builder): a._builder for a in args if isinstance(a, Tensor)}
    if len(builders) > 1:
        raise ValueError(f"{op}: the tensors come from different sessions or traces; a tensor "
                         "is used where it was made")
    builder = next(iter(builders.values()), None) or current_builder()
    if builder is None:
        raise ValueError(f"{op}: no tensor among the arguments and no session open; use "
                         "`with client.session() as s:` and s.constant(...) first")
    wire = [builder._ref(a) if isinstance(a, Tensor) else literal(a) for a in args]
    clean = {k: clean_attr(v) for k, v in (attrs or {}).items()}
    return builder._add(op, wire, clean, n_out)


def _one(op: str, *args: Any, **attrs: Any) -> Tensor:
    return apply(op, args, attrs)[0]


class Tensor:
    """A value computed by a session (or a symbolic value in a `gt.function` trace).

    Values are fetched when needed: `.numpy()`, `np.asarray(t)`, `float(t)`, `int(t)`,
    `bool(t)` (an `if`), `.shape` and `.dtype`.
    """

    __array_ufunc__ = None  # `ndarray * tensor` calls Tensor.__rmul__, not NumPy
    __array_priority__ = 100

    def __init__(self, builder: Builder, name: str, value: np.ndarray | None = None,
                 *, bound: bool = True):
        self._builder = builder
        self._name = name
        self._value = value
        self._bound = bound  # the builder knows the name (else only the value is known)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown, or a builder gone
            self._builder._release(self)

    @property
    def name(self) -> str:
        """The tensor's name in its session or graph."""
        return self._name

    def numpy(self) -> np.ndarray:
        """The value, as a NumPy array (computed by the server if it is not known yet)."""
        return self._builder._value(self)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        value = self.numpy()
        return value.astype(dtype) if dtype is not None else value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.numpy().shape)

    @property
    def dtype(self) -> str:
        """The dtype's name (`float32`, ...)."""
        return str(self.numpy().dtype.name)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        shape = self.shape
        if not shape:
            raise TypeError("len() of a scalar tensor")
        return shape[0]

    def __float__(self) -> float:
        return float(self.numpy())

    def __int__(self) -> int:
        return int(self.numpy())

    def __bool__(self) -> bool:
        return bool(self.numpy())

    def __repr__(self) -> str:
        if self._value is None:
            return f"<gt.Tensor {self._name!r} (not computed yet)>"
        v = self._value
        return f"<gt.Tensor {self._name!r} shape={list(v.shape)} dtype={v.dtype.name} {v!r}>"

    def __str__(self) -> str:
        return str(self.numpy())

    __hash__ = object.__hash__  # identity, as the handle it is (== is elementwise)

    # ----- operators (each one op of the catalogue) -----

    def __add__(self, other: Any) -> Tensor:
        return _one("add", self, other)

    def __radd__(self, other: Any) -> Tensor:
        return _one("add", other, self)

    def __sub__(self, other: Any) -> Tensor:
        return _one("subtract", self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return _one("subtract", other, self)

    def __mul__(self, other: Any) -> Tensor:
        return _one("multiply", self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return _one("multiply", other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return _one("divide", self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return _one("divide", other, self)

    def __floordiv__(self, other: Any) -> Tensor:
        return _one("floor_divide", self, other)

    def __rfloordiv__(self, other: Any) -> Tensor:
        return _one("floor_divide", other, self)

    def __mod__(self, other: Any) -> Tensor:
        return _one("mod", self, other)

    def __rmod__(self, other: Any) -> Tensor:
        return _one("mod", other, self)

    def __pow__(self, other: Any) -> Tensor:
        return _one("power", self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return _one("power", other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return _one("matmul", self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return _one("matmul", other, self)

    def __neg__(self) -> Tensor:
        return _one("negative", self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return _one("abs", self)

    def __invert__(self) -> Tensor:
        return _one("logical_not", self)

    def __and__(self, other: Any) -> Tensor:
        return _one("logical_and", self, other)

    def __rand__(self, other: Any) -> Tensor:
        return _one("logical_and", other, self)

    def __or__(self, other: Any) -> Tensor:
        return _one("logical_or", self, other)

    def __ror__(self, other: Any) -> Tensor:
        return _one("logical_or", other, self)

    def __xor__(self, other: Any) -> Tensor:
        return _one("logical_xor", self, other)

    def __rxor__(self, other: Any) -> Tensor:
        return _one("logical_xor", other, self)

    def __lt__(self, other: Any) -> Tensor:
        return _one("less", self, other)

    def __le__(self, other: Any) -> Tensor:
        return _one("less_equal", self, other)

    def __gt__(self, other: Any) -> Tensor:
        return _one("greater", self, other)

    def __ge__(self, other: Any) -> Tensor:
        return _one("greater_equal", self, other)

    def __eq__(self, other: object) -> Tensor:  # type: ignore[override]
        return _one("equal", self, other)

    def __ne__(self, other: object) -> Tensor:  # type: ignore[override]
        return _one("not_equal", self, other)

    def __getitem__(self, key: Any) -> Tensor:
        """Indexing with integers and slices, as `take` along each axis (`...` and None are
        not supported)."""
        keys = key if isinstance(key, tuple) else (key,)
        result: Tensor = self
        axis = 0
        for k in keys:
            if isinstance(k, bool) or k is None or k is Ellipsis:
                raise TypeError("tensor indexing takes integers and slices")
            if isinstance(k, int | np.integer):
                result = _one("take", result, int(k), axis=axis)  # the axis goes away
            elif isinstance(k, slice):
                if k == slice(None):
                    axis += 1
                    continue
                start, stop, step = k.start, k.stop, k.step
                if stop is None or (start or 0) < 0 or stop < 0:
                    start, stop, step = k.indices(result.shape[axis])
                index = np.arange(start or 0, stop, step or 1, dtype=np.int32)
                result = _one("take", result, index, axis=axis)
                axis += 1
            elif isinstance(k, Tensor | np.ndarray | list):
                result = _one("take", result, k, axis=axis)
                axis += 1
            else:
                raise TypeError(f"cannot index a tensor with {type(k).__name__}")
        return result
