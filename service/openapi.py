"""The OpenAPI document: FastAPI's, completed with what the service does around its routes.

FastAPI documents each route's request and success answer. `complete` adds, in one place:
- the errors every operation can answer, as `application/problem+json` with one `Problem`
  schema (FastAPI's own 422 `HTTPValidationError` is not what the service sends, so it goes);
- the API-key security schemes, and the `Idempotency-Key` header of the mutating session
  operations (read by a dependency, so FastAPI does not see it);
- the tutorial as request and response examples (`service.schemas.examples`);
- links from the operations that create a session, tape, tensor or graph to the operations
  that use it, which is how clients and test generators chain them;
- limits that come from the settings (the longest `ttl_seconds`).

Which errors an operation can answer follows from its shape (a body can be malformed JSON, too
large or of the wrong type; an id in the path can be unknown; everything under /v1 except
health needs a key when keys are configured; whatever computes or needs a store can be told
to come back later), plus `SPECIFIC` for what only some routes do.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from service.config import Settings
from service.schemas import examples, problems

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _problem(slug: str, title: str, status: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": f"urn:gradtape:problem:{slug}", "title": title, "status": status,
            "detail": detail, **extra}


ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body is not valid JSON.", _problem(
        "malformed-json", "Malformed JSON", 400,
        "body: malformed JSON at character 10: unexpected end of data",
        errors=[{"loc": ["body"], "msg": "malformed JSON at character 10: unexpected end of "
                 "data"}])),
    401: ("The API key is missing or wrong (only when the server is configured with keys).",
          _problem("unauthorized", "Unauthorized", 401, "missing API key: send it as "
                   "X-API-Key or Authorization: Bearer")),
    404: ("An unknown or expired session, tape, tensor or graph.", _problem(
        "not-found", "Not found", 404, "session 's_4f0c2a9e8b7d4c1e9a3b5d7f1e2c4a6b' expired "
        "after its idle time-out; create a new one (POST /v1/sessions, optionally with a "
        "longer ttl_seconds)")),
    405: ("The path does not have this method; `Allow` lists the ones it has.", _problem(
        "method-not-allowed", "Method Not Allowed", 405,
        "PATCH is not allowed on /v1/sessions/s_4f0c2a9e8b7d4c1e9a3b5d7f1e2c4a6b; allowed: "
        "GET, DELETE")),
    409: ("A conflict with the current state: a tape that is not persistent has already "
          "answered.", _problem(
              "conflict", "Conflict", 409, "tape 't_9c1e4b7a2d5f' is not persistent and has "
              "already answered once; open the tape with \"persistent\": true to ask it more "
              "than once")),
    413: ("Over a size limit: the body, a tensor, the graph, the estimated memory or work of "
          "the computation, or the bytes a session may hold.", _problem(
              "too-large", "Too large", 413, "tensor has 60000000 elements; the limit is "
              "50000000 (GRADTAPE_MAX_ELEMENTS)",
              errors=[{"loc": ["body", "inputs", "x"], "msg": "tensor has 60000000 elements; "
                       "the limit is 50000000 (GRADTAPE_MAX_ELEMENTS)"}])),
    415: ("The body is not JSON (send `Content-Type: application/json`).", _problem(
        "unsupported-media-type", "Unsupported Media Type", 415,
        "this route takes application/json, not text/plain")),
    422: ("The request parses but is invalid: the schema, an unknown op, an undefined name, "
          "a wrong arity, a shape or dtype mismatch, an Idempotency-Key used for another "
          "request; or, with `check_numerics`, a NaN or an infinity: a problem of type "
          "`urn:gradtape:problem:non-finite` whose `node`, `phase` (`forward` or `backward`), "
          "`nan_count` and `inf_count` say where it first appeared.", problems.EXAMPLE),
    429: ("Over a capacity limit (too many sessions).", _problem(
        "capacity-exceeded", "Capacity exceeded", 429, "the server holds its maximum of 1000 "
        "sessions; delete sessions you no longer need or retry after some expire")),
    503: ("The service is saturated or its session store is unreachable; retry after "
          "`Retry-After` seconds.", _problem(
              "service-unavailable", "Service Unavailable", 503,
              "the server is busy with other computations; retry after 1 second")),
}
"""What each error status means, and an example of its problem."""

HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "required": True,
                               "schema": {"type": "string"}}},
    405: {"Allow": {"description": "the methods the path has, such as `GET, DELETE`",
                    "required": True, "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                          "schema": {"type": "integer", "minimum": 0}}},
}

TAPE_QUERY = r"/v1/sessions/\{session_id\}/tapes/\{tape_id\}/(gradient|jacobian|batch_jacobian|hvp|hessian)"
SPECIFIC: list[tuple[str, str, set[int]]] = [
    ("post", r"/v1/sessions", {429}),  # the server holds its maximum of sessions
    ("post", TAPE_QUERY, {409}),  # a tape that is not persistent answers once
    ("post", r"/v1/sessions/\{session_id\}/optimizers", {409}),  # the name is taken
]
"""Statuses only some operations answer: (method, path pattern, statuses)."""

CREATES: dict[tuple[str, str], dict[str, str]] = {
    ("post", "/v1/graphs"): {"graph_id": "$response.body#/graph_id"},
    ("post", "/v1/sessions"): {"session_id": "$response.body#/session_id"},
    ("post", "/v1/sessions/{session_id}/tapes"): {
        "session_id": "$request.path.session_id", "tape_id": "$response.body#/tape_id"},
    ("put", "/v1/sessions/{session_id}/tensors/{name}"): {
        "session_id": "$request.path.session_id", "name": "$request.path.name"},
    ("post", "/v1/sessions/{session_id}/optimizers"): {
        "session_id": "$request.path.session_id", "optimizer": "$response.body#/name"},
}
"""The operations that create something, and where the ids of what they create come from.
Each links to every other operation whose path parameters those ids fill."""

PATH_PARAMETERS = {
    "session_id": "the `session_id` that POST /v1/sessions answered",
    "tape_id": "the `tape_id` that POST /v1/sessions/{session_id}/tapes answered",
    "graph_id": "the `graph_id` that POST /v1/graphs answered",
    "name": "a tensor name",
    "optimizer": "the `name` of an optimizer POST /v1/sessions/{session_id}/optimizers made",
}

SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "one of the keys in GRADTAPE_API_KEYS"},
    "Bearer": {"type": "http", "scheme": "bearer",
               "description": "`Authorization: Bearer <key>`, the same keys"},
}

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

STORE_PATHS = ("/v1/sessions", "/v1/graphs", "/v1/health/ready")
"""Paths whose operations need the session or graph store (which may be unreachable)."""

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A key unique to this operation (a UUID, say): a retry with the same key "
                   "and the same request gets the first answer again instead of being applied "
                   "twice. The same key with another request is a 422.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255,
               "pattern": r"^[!-~]([ -~]*[!-~])?$"},
}
REPLAYED = {"Idempotent-Replayed": {
    "description": "`true` when this is the answer an earlier request with the same "
                   "Idempotency-Key got", "schema": {"type": "string", "enum": ["true"]}}}


def _idempotent(method: str, path: str) -> bool:
    """Whether the operation takes an Idempotency-Key: the mutating ones on sessions."""
    return method in ("post", "put", "delete") and path.startswith("/v1/sessions")


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the completed document at /openapi.json (and to /docs and /redoc)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            app.openapi_schema = None
            app.openapi_schema = complete(document, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Add errors, security, examples, links and configured limits to FastAPI's document."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _add_problem_schema(schemas)
    components["securitySchemes"] = SECURITY_SCHEMES
    security: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]
    if not settings.api_key_set:
        security.append({})  # keys are optional until the server is configured with some
    for path, method, operation in operations(document):
        _describe_parameters(method, path, operation)
        _document_errors(method, path, operation, schemas, security)
        _add_examples(method, path, operation)
        _add_links(method, path, operation, document)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _configured_limits(schemas, settings)
    return copy.deepcopy(document)  # shares nothing with the tables above


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, operation) for path, item in document.get("paths", {}).items()
            for method, operation in item.items() if method in METHODS]


def error_statuses(method: str, path: str, operation: dict[str, Any],
                   schemas: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer."""
    statuses = {405}
    where = {parameter["in"] for parameter in operation.get("parameters", [])}
    body = _body_schema(operation, schemas)
    if path.startswith("/v1/") and not path.startswith("/v1/health/"):
        statuses.add(401)
    if body is not None:
        statuses |= {400, 413, 415, 422}
    if "query" in where:
        statuses.add(422)
    takes_graph = body is not None and {"graph", "graph_id"} <= set(body.get("properties", {}))
    if "path" in where or takes_graph:
        statuses.add(404)  # an unknown or expired id
    if path.startswith(STORE_PATHS) or takes_graph:
        statuses.add(503)  # computes, or needs the session or graph store
    if _idempotent(method, path):
        statuses.add(422)  # an Idempotency-Key that is malformed, or was used for another request
    for specific_method, pattern, extra in SPECIFIC:
        if method == specific_method and re.fullmatch(pattern, path):
            statuses |= extra
    return statuses


def _add_problem_schema(schemas: dict[str, Any]) -> None:
    _, top = models_json_schema([(problems.Problem, "validation")],
                                ref_template="#/components/schemas/{model}")
    schemas.update(top.get("$defs", {}))


def _body_schema(operation: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON request body's schema, its reference resolved (None: the route takes none)."""
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    schema: dict[str, Any] = content["application/json"].get("schema", {})
    for alternative in [schema, *schema.get("anyOf", [])]:
        ref = alternative.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            found: dict[str, Any] = schemas[ref.rsplit("/", 1)[1]]
            return found
    return schema


def _describe_parameters(method: str, path: str, operation: dict[str, Any]) -> None:
    if _idempotent(method, path):
        operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
        for response in _success(operation):
            response.setdefault("headers", {}).update(REPLAYED)
    for parameter in operation.get("parameters", []):
        name = parameter["name"]
        if parameter["in"] != "path":
            continue
        parameter.setdefault("description", PATH_PARAMETERS.get(name, ""))
        if name in examples.PATH_PARAMETERS:
            parameter["example"] = examples.PATH_PARAMETERS[name]


def _document_errors(method: str, path: str, operation: dict[str, Any],
                     schemas: dict[str, Any], security: list[dict[str, list[str]]]) -> None:
    responses = operation.setdefault("responses", {})
    statuses = error_statuses(method, path, operation, schemas)
    for code in [c for c in responses if c.isdigit() and int(c) >= 400]:
        if int(code) not in statuses:
            del responses[code]  # FastAPI's 422 where nothing can fail validation
    for status in sorted(statuses):
        description, example = ERRORS[status]
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": PROBLEM_REF, "example": example}},
        }
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        responses[str(status)] = response
    if 401 in statuses:
        operation["security"] = security


def _success(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [response for code, response in operation.get("responses", {}).items()
            if code.startswith("2")]


def _add_examples(method: str, path: str, operation: dict[str, Any]) -> None:
    body = examples.REQUESTS.get((method, path))
    content = operation.get("requestBody", {}).get("content", {})
    if body is not None and "application/json" in content:
        content["application/json"]["examples"] = {
            "tutorial": {"summary": "the tutorial", "value": body}}
    answer = examples.RESPONSES.get((method, path))
    if answer is None:
        return
    for response in _success(operation):
        media = response.get("content", {}).get("application/json")
        if media is not None:
            media["example"] = answer


def _add_links(method: str, path: str, operation: dict[str, Any],
               document: dict[str, Any]) -> None:
    ids = CREATES.get((method, path))
    if ids is None:
        return
    links: dict[str, Any] = {}
    for other_path, other_method, other in operations(document):
        if (other_path, other_method) == (path, method):
            continue
        needs = set(re.findall(r"\{(\w+)\}", other_path))
        created = {k for k, v in ids.items() if not v.startswith("$request.path.")}
        same_resource = other_path == path
        if needs and needs <= set(ids) and (needs & created or same_resource):
            name = re.sub(r"[^A-Za-z0-9]", "", (other.get("summary") or "").title())
            links[name or other["operationId"]] = {
                "operationId": other["operationId"],
                "parameters": {k: ids[k] for k in sorted(needs)},
            }
    for response in _success(operation):
        response["links"] = links


def _configured_limits(schemas: dict[str, Any], settings: Settings) -> None:
    ttl = schemas.get("CreateSession", {}).get("properties", {}).get("ttl_seconds", {})
    for alternative in ttl.get("anyOf", [ttl]):
        if alternative.get("type") == "number":
            alternative["maximum"] = settings.session_max_ttl_seconds
