"""Exceptions: every problem+json answer of the server becomes one of these.

The class is chosen by the problem's type (`urn:gradtape:problem:<slug>`) and, for types this
client does not know, by the HTTP status. Every error keeps the whole problem in `problem`.
"""

from __future__ import annotations

from typing import Any

PROBLEM_PREFIX = "urn:gradtape:problem:"


class GradtapeError(Exception):
    """Base class of every error the client raises.

    `status` is the HTTP status (None when no answer came), `type` the problem's slug
    (`invalid-graph`, `not-found`, ...), `detail` what went wrong and how to fix it, `node` the
    graph node at fault, `loc` the request field at fault (the first of `errors`).
    """

    def __init__(self, detail: str, *, status: int | None = None, type: str | None = None,
                 title: str | None = None, node: str | None = None,
                 loc: list[str | int] | None = None,
                 errors: list[dict[str, Any]] | None = None,
                 problem: dict[str, Any] | None = None, retry_after: float | None = None):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.title = title
        self.node = node
        self.loc = loc
        self.errors = errors or []
        self.problem = problem or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.detail if self.status is None else f"HTTP {self.status}: {self.detail}"


class TransportError(GradtapeError):
    """The server could not be reached, or the connection broke (no HTTP answer)."""


class MalformedRequestError(GradtapeError):
    """400: the body was not valid JSON."""


class AuthenticationError(GradtapeError):
    """401: a missing or wrong API key (pass api_key=, or set GRADTAPE_API_KEY)."""


class NotFoundError(GradtapeError):
    """404: an unknown or expired graph, session, tape or tensor (or a wrong base URL)."""


class MethodNotAllowedError(GradtapeError):
    """405: the route exists but not with this method."""


class ConflictError(GradtapeError):
    """409: the request conflicts with the state (a non-persistent tape asked twice)."""


class TooLargeError(GradtapeError):
    """413: over a size limit (body, elements, session bytes, estimated cost)."""


class UnsupportedMediaTypeError(GradtapeError):
    """415: a body of a content type the route does not take."""


class InvalidRequestError(GradtapeError):
    """422: the request parses but is invalid (schema, unknown op, shapes, dtypes)."""


class InvalidGraphError(InvalidRequestError):
    """422 `invalid-graph`: a node cannot run (unknown op, undefined name, arity, shape)."""


class InvalidTensorError(InvalidRequestError):
    """422 `invalid-tensor`: a tensor in the request cannot be decoded."""


class NonFiniteError(InvalidRequestError):
    """422 `non-finite`: check_numerics found a NaN or an infinity (`phase`, counts in
    `problem`)."""


class CapacityError(GradtapeError):
    """429: a capacity limit is reached (too many sessions); retried before it is raised."""


class UnavailableError(GradtapeError):
    """503: the service is saturated or its store unreachable; retried before it is
    raised."""


class ServerError(GradtapeError):
    """5xx: the server failed (its log has the details)."""


BY_TYPE: dict[str, type[GradtapeError]] = {
    "malformed-json": MalformedRequestError,
    "unauthorized": AuthenticationError,
    "not-found": NotFoundError,
    "method-not-allowed": MethodNotAllowedError,
    "conflict": ConflictError,
    "too-large": TooLargeError,
    "unsupported-media-type": UnsupportedMediaTypeError,
    "invalid-request": InvalidRequestError,
    "invalid-graph": InvalidGraphError,
    "invalid-tensor": InvalidTensorError,
    "non-finite": NonFiniteError,
    "capacity-exceeded": CapacityError,
    "too-many-requests": CapacityError,
    "store-unavailable": UnavailableError,
    "service-unavailable": UnavailableError,
    "shutting-down": UnavailableError,
}

BY_STATUS: dict[int, type[GradtapeError]] = {
    400: MalformedRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    413: TooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidRequestError,
    429: CapacityError,
    503: UnavailableError,
}


def from_problem(status: int, body: Any, retry_after: float | None = None) -> GradtapeError:
    """The exception for an error answer: `body` is the decoded problem+json (or whatever
    the answer held, for a server that did not send a problem)."""
    problem = body if isinstance(body, dict) else {}
    raw_type = problem.get("type")
    slug = raw_type.removeprefix(PROBLEM_PREFIX) if isinstance(raw_type, str) else None
    cls = BY_TYPE.get(slug or "") or BY_STATUS.get(status) or \
        (ServerError if status >= 500 else GradtapeError)
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = body if isinstance(body, str) and body else f"HTTP {status}"
    errors = problem.get("errors") if isinstance(problem.get("errors"), list) else None
    loc = None
    if errors and isinstance(errors[0], dict) and isinstance(errors[0].get("loc"), list):
        loc = list(errors[0]["loc"])
    node = problem.get("node")
    return cls(detail, status=status, type=slug, title=problem.get("title"),
               node=node if isinstance(node, str) else None, loc=loc, errors=errors,
               problem=problem, retry_after=retry_after)
