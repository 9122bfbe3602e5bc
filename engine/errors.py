"""Engine exceptions. The HTTP layer maps each class to one status code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Loc = tuple[str | int, ...]


class EngineError(Exception):
    """Base class. `detail` is safe to show to a client; `node` names the graph node at fault;
    `loc` says which request field is at fault."""

    title = "Engine error"

    def __init__(self, detail: str, *, node: str | None = None, loc: Sequence[str | int] = (),
                 path: Sequence[tuple[str, str]] = ()):
        super().__init__(detail)
        self.detail = detail
        self.node = node
        self.loc: Loc = tuple(loc)
        # where inside functions it was raised: ("node" | "function", label) pairs, outermost
        # first; set, `node` joins the labels with "/" and `detail` starts with them
        self.path: tuple[tuple[str, str], ...] = ()
        self._base = detail
        if path:
            self.within(*path)

    def with_loc(self, *prefix: str | int) -> EngineError:
        self.loc = tuple(prefix) + self.loc
        return self

    def extra(self) -> dict[str, Any]:
        return {}

    def within(self, *outer: tuple[str, str]) -> EngineError:
        """This error, seen from outside the function it was raised in: `outer` are the
        ("node" | "function", label) steps that lead to it, e.g. ("node", "loop"),
        ("function", "body"). The node becomes "loop/body/h" and the message says
        "node 'loop', function 'body', node 'h': ...".
        """
        inner = self.path or ((("node", self.node),) if self.node else ())
        self.path = tuple(outer) + inner
        self.node = "/".join(label for _, label in self.path)
        where = ", ".join(f"{kind} {clip(label)}" for kind, label in self.path)
        self.detail = f"{where}: {self._base}"
        self.args = (self.detail,)
        return self


class InvalidGraph(EngineError):
    """The graph or query parses but cannot run: unknown op, undefined name, arity, attrs,
    shapes or dtypes."""

    title = "Invalid graph"


class InvalidTensor(EngineError):
    """A tensor in the request cannot be decoded."""

    title = "Invalid tensor"


class NotFound(EngineError):
    """An unknown or expired graph, session, tape or tensor."""

    title = "Not found"


class Conflict(EngineError):
    """The request conflicts with the current state (a non-persistent tape used twice)."""

    title = "Conflict"


class TooLarge(EngineError):
    """A size limit would be exceeded (elements per tensor, bytes held by a session)."""

    title = "Too large"


class NonFinite(EngineError):
    """A NaN or an infinity appeared while checking numerics: in the forward values (`phase`
    "forward") or in the cotangents a node's derivative gave its arguments ("backward")."""

    title = "Non-finite"

    def __init__(self, detail: str, *, node: str, phase: str, nan_count: int, inf_count: int):
        super().__init__(detail, node=node)
        self.phase = phase
        self.nan_count = nan_count
        self.inf_count = inf_count

    def extra(self) -> dict[str, Any]:
        return {"phase": self.phase, "nan_count": self.nan_count, "inf_count": self.inf_count}


class CapacityExceeded(EngineError):
    """A capacity limit is reached (too many sessions)."""

    title = "Capacity exceeded"


CLIP = 64


def clip(value: object, limit: int = CLIP) -> str:
    """`repr(value)` cut to a short prefix, for echoing client strings in messages (a name
    of megabytes must not make an error body of megabytes).

    >>> clip("x" * 100, 8)
    "'xxxxxxx...' (100 characters)"
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit - 1]!r}"[:-1] + f"...' ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
