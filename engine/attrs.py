"""Typed op attributes: each checks and normalises one JSON value into what the op needs.

Attributes are static (they shape the computation), so they are normalised into hashable
values (tuples, not lists) and become part of the compile-cache key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.dtypes import DTYPES
from engine.program import Function

_MISSING: Any = object()


class AttrError(ValueError):
    """A bad attribute value; the message says what is expected."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Attr:
    """Base attribute: `default` is used when the attribute is absent; `_MISSING` makes it
    required."""

    default: Any = _MISSING
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    kind = "any"

    def check(self, value: Any) -> Any:
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "required": self.required}
        if not self.required:
            out["default"] = list(self.default) if isinstance(self.default, tuple) else self.default
        if self.doc:
            out["doc"] = self.doc
        return out


@dataclass(frozen=True)
class Int(Attr):
    minimum: int | None = None
    kind = "int"

    def check(self, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        if not _is_int(value):
            raise AttrError(f"expected an integer, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise AttrError(f"must be >= {self.minimum}, got {value}")
        return value


@dataclass(frozen=True)
class Float(Attr):
    kind = "float"

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AttrError(f"expected a number, got {value!r}")
        return float(value)


@dataclass(frozen=True)
class Bool(Attr):
    kind = "bool"

    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise AttrError(f"expected true or false, got {value!r}")
        return value


@dataclass(frozen=True)
class Str(Attr):
    choices: tuple[str, ...] = ()
    kind = "string"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise AttrError(f"expected a string, got {value!r}")
        if self.choices and value not in self.choices:
            raise AttrError(f"must be one of {', '.join(self.choices)}; got {value!r}")
        return value

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.choices:
            out["choices"] = list(self.choices)
        return out


@dataclass(frozen=True)
class IntList(Attr):
    """A list of integers (a shape, permutation or pad widths); `nested` allows a list of
    lists, as `pad_width` takes."""

    minimum: int | None = None
    nested: bool = False
    kind = "int list"

    def check(self, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        if not isinstance(value, list | tuple):
            raise AttrError(f"expected a list of integers, got {value!r}")
        return tuple(self._item(v) for v in value)

    def _item(self, v: Any) -> Any:
        if self.nested and isinstance(v, list | tuple):
            return tuple(self._item(w) for w in v)
        if not _is_int(v):
            raise AttrError(f"expected integers, got {v!r}")
        if self.minimum is not None and v < self.minimum:
            raise AttrError(f"entries must be >= {self.minimum}, got {v}")
        return v


@dataclass(frozen=True)
class Axes(Attr):
    """An axis (int), several axes (list of ints), or null for all axes (when allowed)."""

    allow_list: bool = True
    allow_none: bool = True
    kind = "axis"

    def check(self, value: Any) -> Any:
        if value is None:
            if not self.allow_none:
                raise AttrError("an axis is required here (an integer), got null")
            return None
        if _is_int(value):
            return value
        if self.allow_list and isinstance(value, list | tuple) and all(_is_int(v) for v in value):
            return tuple(value)
        expected = "an integer or a list of integers" if self.allow_list else "an integer"
        raise AttrError(f"expected {expected}, got {value!r}")


@dataclass(frozen=True)
class IntOrIntList(Attr):
    """An integer or a list of integers (split's sections, a norm's order as int)."""

    kind = "int or int list"

    def check(self, value: Any) -> Any:
        if _is_int(value):
            return value
        if isinstance(value, list | tuple) and all(_is_int(v) for v in value):
            return tuple(value)
        raise AttrError(f"expected an integer or a list of integers, got {value!r}")


@dataclass(frozen=True)
class DType(Attr):
    kind = "dtype"

    def check(self, value: Any) -> Any:
        if value not in DTYPES:
            raise AttrError(f"expected one of {', '.join(DTYPES)}, got {value!r}")
        return value


@dataclass(frozen=True)
class NormOrd(Attr):
    """A norm order: a number, or one of 'fro', 'nuc', 'inf', '-inf'."""

    kind = "norm order"

    def check(self, value: Any) -> Any:
        if value is None:
            return None
        if value in ("inf", "Infinity"):
            return "inf"
        if value in ("-inf", "-Infinity"):
            return "-inf"
        if value in ("fro", "nuc"):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise AttrError(f"expected a number, 'fro', 'nuc', 'inf' or '-inf', got {value!r}")


@dataclass(frozen=True)
class Padding(Attr):
    """Window padding: "SAME" (output size ceil(n / stride), the extra on the high side),
    "SAME_LOWER" (the extra on the low side), "VALID" (none), or explicit [[lo, hi], ...] pairs,
    one per spatial axis."""

    kind = "padding"
    choices = ("SAME", "SAME_LOWER", "VALID")

    def check(self, value: Any) -> Any:
        if isinstance(value, str):
            if value.upper() not in self.choices:
                raise AttrError(f"must be one of {', '.join(self.choices)} or a list of "
                                f"[lo, hi] pairs; got {value!r}")
            return value.upper()
        if isinstance(value, list | tuple) and all(
                isinstance(p, list | tuple) and len(p) == 2 and all(
                    _is_int(v) and v >= 0 for v in p) for p in value):
            return tuple(tuple(p) for p in value)
        raise AttrError(f"expected \"SAME\", \"SAME_LOWER\", \"VALID\" or a list of [lo, hi] "
                        f"pairs of non-negative integers, got {value!r}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "choices": list(self.choices)}


@dataclass(frozen=True)
class FunctionRef(Attr):
    """A function: the name of one of the graph's `functions`, or a function object
    `{"params", "nodes", "outputs"}` inline. The graph parser resolves it (it knows the
    graph's functions); here only an already parsed `Function` passes."""

    kind = "function"

    def check(self, value: Any) -> Any:
        if not isinstance(value, Function):
            raise AttrError("expected a function: the name of one of the graph's functions or "
                            "an object {\"params\": [...], \"nodes\": [...], \"outputs\": [...]}")
        return value
