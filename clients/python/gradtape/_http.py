"""The HTTP layer: `Client` and `AsyncClient`, retries, and problem+json as exceptions.

Work that takes several requests is written once, as a generator of `Call`s (a *flow*) that
receives each answer and returns the result; `Client.run` drives a flow with blocking I/O and
`AsyncClient.run` with `await`, so both clients share every request and every decision.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from gradtape import _codec
from gradtape import function as _fn
from gradtape._flow import Call, Flow
from gradtape.errors import GradtapeError, TransportError, from_problem

if TYPE_CHECKING:
    from gradtape.function import (
        Function,
        GradientResult,
        HessianResult,
        HvpResult,
        JacobianResult,
        JvpResult,
        MinimizeResult,
    )
    from gradtape.session import Session

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_STATUSES = frozenset({429, 503})


class _Settings:
    """What both clients share: where the server is, the key, the retry policy."""

    def __init__(self, url: str | None, api_key: str | None, timeout: float,
                 max_retries: int, backoff: float, max_backoff: float, binary: bool):
        self.url = (url or os.environ.get("GRADTAPE_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("GRADTAPE_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.binary = binary

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return headers

    def prepare(self, call: Call) -> tuple[bytes | None, dict[str, str]]:
        """The body and headers of `call`, written once and sent as they are by each retry:
        the server checks that a retry with the same Idempotency-Key has the same bytes."""
        headers: dict[str, str] = {}
        content = None
        if call.body is not None:
            content, form = _codec.write(call.body, self.binary)
            headers.update(form)
        if call.method in MUTATING:
            # one key per logical request, kept across its retries: a retry is answered, not
            # applied twice
            headers["Idempotency-Key"] = uuid.uuid4().hex
        return content, headers

    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None to give up: 429 and 503 are retried,
        after `Retry-After` when the server sends one, else with exponential backoff."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        given = _retry_after(response)
        if given is not None:
            return given
        return float(min(self.backoff * 2**attempt, self.max_backoff))

    @staticmethod
    def answer(response: httpx.Response) -> Any:
        """The decoded answer, or the error it holds, raised."""
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return None
            return response.json()
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise from_problem(response.status_code, body, _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to backoff


class Client:
    """A blocking client of a gradtape server.

    >>> client = gt.Client("http://127.0.0.1:8000")      # or GRADTAPE_URL, GRADTAPE_API_KEY
    >>> with client.session() as s:
    ...     x = s.constant(3.0)

    Arrays of 64 elements or more, and any with a NaN or an infinity, are sent as their raw
    bytes after the JSON of the request (the Open Inference Protocol's binary tensor
    extension); `binary=False` sends them as base64 inside the JSON instead, for a proxy that
    does not pass such bodies through unchanged. `transport` and `event_hooks` go to the
    underlying `httpx.Client` (tests, counting).
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 0.25,
                 max_backoff: float = 8.0, binary: bool = True,
                 transport: httpx.BaseTransport | None = None,
                 event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None):
        self._settings = _Settings(url, api_key, timeout, max_retries, backoff, max_backoff,
                                   binary)
        self._http = httpx.Client(base_url=f"{self.url}/v1", timeout=timeout,
                                  headers=self._settings.headers(), transport=transport,
                                  event_hooks=dict(event_hooks or {}))

    @property
    def url(self) -> str:
        """The server's base URL (without /v1)."""
        return self._settings.url

    # ----- requests -----

    def request(self, method: str, route: str, body: Any = None,
                params: Mapping[str, str] | None = None) -> Any:
        """One request to `route` (a path under /v1): its decoded JSON answer, retried on
        429 and 503; an error answer is raised as a `GradtapeError`."""
        content, headers = self._settings.prepare(Call(method, route, body, params))
        attempt = 0
        while True:
            try:
                response = self._http.request(method, route, content=content, params=params,
                                              headers=headers)
            except httpx.TransportError as exc:
                raise TransportError(f"cannot reach {self.url}: {exc!r}") from exc
            delay = self._settings.retry_delay(response, attempt)
            if delay is None:
                return self._settings.answer(response)
            attempt += 1
            time.sleep(delay)

    def run(self, flow: Flow[T]) -> T:
        """Drive a flow to its result."""
        try:
            call = next(flow)
            while True:
                try:
                    answer = self.request(call.method, call.path, call.body, call.params)
                except GradtapeError as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- sessions -----

    def session(self, ttl_seconds: float | None = None) -> Session:
        """A session (an eager workspace with tapes), created on the server when it is first
        needed and deleted when its `with` block ends."""
        from gradtape.session import Session

        return Session(self, ttl_seconds)

    # ----- service -----

    def ops(self) -> list[dict[str, Any]]:
        """The server's op catalogue (GET /v1/ops)."""
        found: list[dict[str, Any]] = self.request("GET", "/ops")
        return found

    def info(self) -> dict[str, Any]:
        """Version, backend, devices, limits (GET /v1/info)."""
        found: dict[str, Any] = self.request("GET", "/info")
        return found

    # ----- stateless differentiation of gt.function graphs -----

    def register(self, fn: Function, *args: Any, **kwargs: Any) -> str:
        """Register the graph `fn` traces for these inputs; its graph_id (cached)."""
        return self.run(_fn.register_flow(self.url, fn, args, kwargs))

    def evaluate(self, fn: Function, *args: Any, **kwargs: Any) -> Any:
        """`fn`'s outputs for these NumPy inputs, in the structure `fn` returns."""
        return self.run(_fn.evaluate_flow(self.url, fn, args, kwargs))

    def gradient(self, fn: Function, *args: Any, sources: list[str] | None = None,
                 target: str | list[str] | None = None, output_gradients: Any = None,
                 unconnected_gradients: str = "none", **kwargs: Any) -> GradientResult:
        """The value of `fn` and its gradients with respect to `sources` (parameter names;
        default: every floating-point input)."""
        return self.run(_fn.gradient_flow(self.url, fn, args, kwargs, sources, target,
                                          output_gradients, unconnected_gradients))

    def jacobian(self, fn: Function, *args: Any, sources: list[str] | None = None,
                 target: str | None = None, unconnected_gradients: str = "none",
                 **kwargs: Any) -> JacobianResult:
        """Full Jacobians, shaped target.shape + source.shape."""
        return self.run(_fn.jacobian_flow(self.url, fn, args, kwargs, sources, target,
                                          unconnected_gradients))

    def hvp(self, fn: Function, *args: Any, vectors: Mapping[str, Any],
            sources: list[str] | None = None, target: str | None = None,
            include: list[str] | None = None, **kwargs: Any) -> HvpResult:
        """Hessian-vector products of a scalar `fn` with `vectors` ({parameter: array})."""
        return self.run(_fn.hvp_flow(self.url, fn, args, kwargs, vectors, sources, target,
                                     include))

    def hessian(self, fn: Function, *args: Any, sources: list[str] | None = None,
                target: str | None = None, **kwargs: Any) -> HessianResult:
        """Hessian blocks {a: {b: d2f/da db}} of a scalar `fn`."""
        return self.run(_fn.hessian_flow(self.url, fn, args, kwargs, sources, target))

    def jvp(self, fn: Function, *args: Any, tangents: Mapping[str, Any],
            **kwargs: Any) -> JvpResult:
        """Forward mode: the outputs and their tangents along `tangents` ({parameter:
        array})."""
        return self.run(_fn.jvp_flow(self.url, fn, args, kwargs, tangents))

    def minimize(self, fn: Function, *args: Any, variables: list[str] | None = None,
                 method: str = "lbfgs", learning_rate: float | None = None,
                 options: Mapping[str, Any] | None = None, max_iterations: int = 100,
                 tolerance: float = 1e-6, history: bool = False, target: str | None = None,
                 **kwargs: Any) -> MinimizeResult:
        """Minimize the scalar `fn` over `variables` (default: every floating-point input),
        starting from the values given, in one loop on the server."""
        return self.run(_fn.minimize_flow(
            self.url, fn, args, kwargs, variables, method, learning_rate, options,
            max_iterations, tolerance, history, target))


class AsyncClient:
    """The asynchronous client: the same requests and options as `Client`, awaited.

    >>> async with gt.AsyncClient() as client:
    ...     result = await client.gradient(f, x)
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 0.25,
                 max_backoff: float = 8.0, binary: bool = True,
                 transport: httpx.AsyncBaseTransport | None = None,
                 event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None):
        self._settings = _Settings(url, api_key, timeout, max_retries, backoff, max_backoff,
                                   binary)
        self._http = httpx.AsyncClient(base_url=f"{self.url}/v1", timeout=timeout,
                                       headers=self._settings.headers(), transport=transport,
                                       event_hooks=dict(event_hooks or {}))

    @property
    def url(self) -> str:
        return self._settings.url

    async def request(self, method: str, route: str, body: Any = None,
                      params: Mapping[str, str] | None = None) -> Any:
        """As `Client.request`, awaited."""
        content, headers = self._settings.prepare(Call(method, route, body, params))
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, route, content=content,
                                                    params=params, headers=headers)
            except httpx.TransportError as exc:
                raise TransportError(f"cannot reach {self.url}: {exc!r}") from exc
            delay = self._settings.retry_delay(response, attempt)
            if delay is None:
                return self._settings.answer(response)
            attempt += 1
            await asyncio.sleep(delay)

    async def run(self, flow: Flow[T]) -> T:
        """Drive a flow to its result."""
        try:
            call = next(flow)
            while True:
                try:
                    answer = await self.request(call.method, call.path, call.body, call.params)
                except GradtapeError as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def ops(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.request("GET", "/ops")
        return found

    async def info(self) -> dict[str, Any]:
        found: dict[str, Any] = await self.request("GET", "/info")
        return found

    async def register(self, fn: Function, *args: Any, **kwargs: Any) -> str:
        return await self.run(_fn.register_flow(self.url, fn, args, kwargs))

    async def evaluate(self, fn: Function, *args: Any, **kwargs: Any) -> Any:
        return await self.run(_fn.evaluate_flow(self.url, fn, args, kwargs))

    async def gradient(self, fn: Function, *args: Any, sources: list[str] | None = None,
                       target: str | list[str] | None = None, output_gradients: Any = None,
                       unconnected_gradients: str = "none", **kwargs: Any) -> GradientResult:
        return await self.run(_fn.gradient_flow(self.url, fn, args, kwargs, sources, target,
                                                output_gradients, unconnected_gradients))

    async def jacobian(self, fn: Function, *args: Any, sources: list[str] | None = None,
                       target: str | None = None, unconnected_gradients: str = "none",
                       **kwargs: Any) -> JacobianResult:
        return await self.run(_fn.jacobian_flow(self.url, fn, args, kwargs, sources, target,
                                                unconnected_gradients))

    async def hvp(self, fn: Function, *args: Any, vectors: Mapping[str, Any],
                  sources: list[str] | None = None, target: str | None = None,
                  include: list[str] | None = None, **kwargs: Any) -> HvpResult:
        return await self.run(_fn.hvp_flow(self.url, fn, args, kwargs, vectors, sources,
                                           target, include))

    async def hessian(self, fn: Function, *args: Any, sources: list[str] | None = None,
                      target: str | None = None, **kwargs: Any) -> HessianResult:
        return await self.run(_fn.hessian_flow(self.url, fn, args, kwargs, sources, target))

    async def jvp(self, fn: Function, *args: Any, tangents: Mapping[str, Any],
                  **kwargs: Any) -> JvpResult:
        return await self.run(_fn.jvp_flow(self.url, fn, args, kwargs, tangents))

    async def minimize(self, fn: Function, *args: Any, variables: list[str] | None = None,
                       method: str = "lbfgs", learning_rate: float | None = None,
                       options: Mapping[str, Any] | None = None, max_iterations: int = 100,
                       tolerance: float = 1e-6, history: bool = False,
                       target: str | None = None, **kwargs: Any) -> MinimizeResult:
        return await self.run(_fn.minimize_flow(
            self.url, fn, args, kwargs, variables, method, learning_rate, options,
            max_iterations, tolerance, history, target))
