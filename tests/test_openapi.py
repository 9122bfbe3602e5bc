"""The OpenAPI document tells the truth.

Unit tests check what the document says (errors, security, examples, links) and that the
examples are real: replayed in order against the app, each request gets the documented
answer. The gate at the end runs schemathesis against a live server: every check, stateful
sequences through the document's links, a bounded number of cases and a bounded time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from service.schemas import examples
from tests.live import live_server as start_server

ROOT = Path(__file__).resolve().parent.parent
PROBLEM_JSON = "application/problem+json"
METHODS = {"get", "put", "post", "delete", "patch"}

STATELESS = ["/v1/evaluate", "/v1/gradient", "/v1/jacobian", "/v1/hvp", "/v1/hessian", "/v1/jvp",
             "/v1/minimize"]
TAPE_QUERIES = ["gradient", "jacobian", "batch_jacobian", "hvp", "hessian"]

WALK: list[tuple[str, str]] = [
    ("get", "/v1/health/live"),
    ("get", "/v1/health/ready"),
    ("get", "/v1/info"),
    ("get", "/v1/ops"),
    ("post", "/v1/graphs"),
    ("get", "/v1/graphs/{graph_id}"),
    *[("post", path) for path in STATELESS],
    *examples.SESSION_WALK,
]
"""Every operation, in an order in which the documented examples succeed."""

VOLATILE = {"session_id", "tape_id", "expires_at", "bytes"}
"""Fields whose values differ from one run to the next (ids, times, object overheads)."""


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    with TestClient(create_app(Settings(_env_file=None))) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in the spec."""
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def error_statuses(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"] if int(code) >= 400}


# ----- errors


def test_every_error_is_a_problem(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        for code, response in operation["responses"].items():
            if int(code) < 400:
                continue
            where = f"{method.upper()} {path} {code}"
            assert list(response["content"]) == [PROBLEM_JSON], where
            media = response["content"][PROBLEM_JSON]
            assert media["schema"] == {"$ref": "#/components/schemas/Problem"}, where
            assert media["example"]["status"] == int(code), where
            validator(spec, media["schema"]).validate(media["example"])
    assert "HTTPValidationError" not in str(spec)
    assert "ValidationError" not in spec["components"]["schemas"]


def test_problem_schema(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert {"type", "title", "status", "detail", "errors", "node"} <= set(problem["properties"])
    assert problem["additionalProperties"] is True, "problem types add fields (non-finite)"
    check = validator(spec, {"$ref": "#/components/schemas/Problem"})
    check.validate({"type": "urn:gradtape:problem:non-finite", "title": "Non-finite value",
                    "status": 422, "detail": "NaN", "node": "y", "phase": "forward",
                    "nan_count": 1, "inf_count": 0})
    with pytest.raises(jsonschema.ValidationError):
        check.validate({"type": "urn:gradtape:problem:x", "title": "X", "status": 422})


def test_each_operation_lists_the_errors_it_can_answer(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    for method, path, operation in operations(spec):
        statuses = error_statuses(operation)
        where = f"{method.upper()} {path}: {sorted(statuses)}"
        assert 405 in statuses, where
        assert (401 in statuses) == (not path.startswith("/v1/health/")), where
        if "requestBody" in operation:
            assert {400, 413, 415, 422} <= statuses, where
        if "{" in path:
            assert 404 in statuses, where
        if path.startswith(("/v1/sessions", "/v1/graphs")) or path in STATELESS:
            assert 503 in statuses, where
            assert operation["responses"]["503"]["headers"]["Retry-After"]["required"], where
    assert 429 in error_statuses(paths["/v1/sessions"]["post"])
    for query in TAPE_QUERIES:
        operation = paths[f"/v1/sessions/{{session_id}}/tapes/{{tape_id}}/{query}"]["post"]
        assert 409 in error_statuses(operation), query
    for path in STATELESS:
        assert {404, 503} <= error_statuses(paths[path]["post"]), path
    assert error_statuses(paths["/v1/health/live"]["get"]) == {405}
    assert error_statuses(paths["/v1/graphs/{graph_id}"]["get"]) == {401, 404, 405, 503}


def test_malformed_json_is_400(spec: dict[str, Any]) -> None:
    with TestClient(create_app(Settings(_env_file=None))) as client:
        for path in ["/v1/sessions", "/v1/gradient"]:
            r = client.post(path, content=b'{"ttl_seconds": ',
                            headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.headers["content-type"] == PROBLEM_JSON
            body = r.json()
            assert body["type"] == "urn:gradtape:problem:malformed-json"
            assert body["errors"] == [{"loc": ["body"], "msg": body["detail"][len("body: "):]}]
            validator(spec, {"$ref": "#/components/schemas/Problem"}).validate(body)
        # valid JSON that the schema rejects is still a 422
        r = client.post("/v1/sessions", json={"ttl_seconds": "long"})
        assert r.status_code == 422, r.text


def test_a_body_that_is_not_json_is_415() -> None:
    with TestClient(create_app(Settings(_env_file=None))) as client:
        r = client.post("/v1/sessions", content=b"ttl=5",
                        headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415, r.text
        assert r.headers["content-type"] == PROBLEM_JSON
        assert "application/json" in r.json()["detail"]
        r = client.post("/v1/sessions", content=b'{"ttl_seconds": 60}',
                        headers={"content-type": "application/json; charset=utf-8"})
        assert r.status_code == 201, r.text


def test_405_allows_every_method_of_the_path(spec: dict[str, Any]) -> None:
    with TestClient(create_app(Settings(_env_file=None))) as client:
        sid = client.post("/v1/sessions").json()["session_id"]
        tid = client.post(f"/v1/sessions/{sid}/tapes").json()["tape_id"]
        for method, url, path in [
            ("PATCH", f"/v1/sessions/{sid}", "/v1/sessions/{session_id}"),
            ("OPTIONS", f"/v1/sessions/{sid}/tensors/x",
             "/v1/sessions/{session_id}/tensors/{name}"),
            ("PUT", f"/v1/sessions/{sid}/tapes/{tid}",
             "/v1/sessions/{session_id}/tapes/{tape_id}"),
            ("GET", "/v1/sessions", "/v1/sessions"),
        ]:
            r = client.request(method, url)
            assert r.status_code == 405, r.text
            assert r.headers["content-type"] == PROBLEM_JSON
            allowed = r.headers["allow"].split(", ")
            assert sorted(allowed) == sorted(m.upper() for m in spec["paths"][path]), (url, allowed)
            assert r.headers["allow"] in r.json()["detail"]
        assert client.request("PATCH", f"/v1/sessions/{sid}").headers["allow"] == "GET, DELETE"


# ----- security


def test_security_schemes(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header",
                                 "name": "X-API-Key"}
    assert schemes["Bearer"] == {**schemes["Bearer"], "type": "http", "scheme": "bearer"}
    for _, path, operation in operations(spec):
        if path.startswith("/v1/health/"):
            assert "security" not in operation, path
        else:
            # no keys configured: a key is optional, so anonymous access ({}) is listed too
            assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}, {}], path


def test_security_with_keys_configured() -> None:
    settings = Settings(_env_file=None, api_keys="k1,k2")
    with TestClient(create_app(settings)) as client:
        document = client.get("/openapi.json").json()
        for _, path, operation in operations(document):
            if not path.startswith("/v1/health/"):
                assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}], path
        r = client.get("/v1/info")
        assert r.status_code == 401
        assert r.headers["content-type"] == PROBLEM_JSON
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/info", headers={"X-API-Key": "k1"}).status_code == 200
        assert client.get("/v1/info", headers={"Authorization": "Bearer k2"}).status_code == 200


# ----- examples and links


def test_every_request_body_has_a_valid_example(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        if "requestBody" not in operation:
            continue
        media = operation["requestBody"]["content"]["application/json"]
        assert media.get("examples"), f"{method.upper()} {path} has no request example"
        for example in media["examples"].values():
            validator(spec, media["schema"]).validate(example["value"])


def test_every_response_example_matches_its_schema(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        documented = False
        for code, response in operation["responses"].items():
            for media in response.get("content", {}).values():
                if "example" in media:
                    documented |= code.startswith("2")
                    validator(spec, media["schema"]).validate(media["example"])
        has_body = any("content" in r for c, r in operation["responses"].items()
                       if c.startswith("2"))
        assert documented or not has_body, f"{method.upper()} {path} has no answer example"


def test_examples_succeed_when_replayed_in_order(spec: dict[str, Any]) -> None:
    """Send each operation's documented example, in the tutorial's order, with ids from the
    earlier answers; each gets its documented success status and answer."""
    assert sorted(WALK) == sorted((m, p) for m, p, _ in operations(spec)), \
        "add new operations to WALK, with examples that succeed in that order"
    ids: dict[str, str] = {}
    with TestClient(create_app(Settings(_env_file=None))) as client:
        for method, path in WALK:
            operation = spec["paths"][path][method]
            params = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
            values = {name: ids.get(name, p.get("example")) for name, p in params.items()}
            assert None not in values.values(), (path, values)
            url = path.format(**values)
            body = None
            if "requestBody" in operation:
                media = operation["requestBody"]["content"]["application/json"]
                body = next(iter(media["examples"].values()))["value"]
            r = client.request(method.upper(), url, json=body)
            success = [c for c in operation["responses"] if c.startswith("2")]
            assert str(r.status_code) in success, f"{method.upper()} {url}: {r.text}"
            content = operation["responses"][str(r.status_code)].get("content")
            if content is None:
                assert not r.content
                continue
            media = content["application/json"]
            answer = r.json()
            validator(spec, media["schema"]).validate(answer)
            ids.update({k: v for k, v in answer.items() if k in ("session_id", "tape_id")}
                       if isinstance(answer, dict) else {})
            if (method, path) not in examples.VARIES:
                assert normal(answer) == normal(media["example"]), f"{method.upper()} {path}"


def normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "..." if k in VOLATILE else normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    return value


def test_tutorial_numbers_are_in_the_document(spec: dict[str, Any]) -> None:
    gradient = spec["paths"]["/v1/sessions/{session_id}/tapes/{tape_id}/gradient"]["post"]
    answer = gradient["responses"]["200"]["content"]["application/json"]["example"]
    assert answer == {"gradients": {"x": {"dtype": "float32", "shape": [2, 2],
                                          "data": [[8.0, 8.0], [8.0, 8.0]]}}}
    put = spec["paths"]["/v1/sessions/{session_id}/tensors/{name}"]["put"]
    assert put["requestBody"]["content"]["application/json"]["examples"]["tutorial"][
        "value"]["value"] == [[1, 1], [1, 1]]


def test_links_chain_created_resources(spec: dict[str, Any]) -> None:
    operation_ids = {op["operationId"]: (m, p) for m, p, op in operations(spec)}

    def links(method: str, path: str, code: str) -> dict[str, Any]:
        found: dict[str, Any] = spec["paths"][path][method]["responses"][code]["links"]
        for link in found.values():
            target = operation_ids[link["operationId"]][1]
            assert set(link["parameters"]) == set(re.findall(r"\{(\w+)\}", target)), link
        return found

    session = links("post", "/v1/sessions", "201")
    assert {operation_ids[v["operationId"]] for v in session.values()} >= {
        ("get", "/v1/sessions/{session_id}"), ("delete", "/v1/sessions/{session_id}"),
        ("post", "/v1/sessions/{session_id}/run"), ("post", "/v1/sessions/{session_id}/tapes")}
    assert session["GetSession"]["parameters"] == {"session_id": "$response.body#/session_id"}
    tape = links("post", "/v1/sessions/{session_id}/tapes", "201")
    assert {operation_ids[v["operationId"]][1].rsplit("/", 1)[-1] for v in tape.values()} >= {
        "{tape_id}", "watch", "stop", *TAPE_QUERIES}
    assert tape["Gradient"]["parameters"] == {"session_id": "$request.path.session_id",
                                              "tape_id": "$response.body#/tape_id"}
    for code in ("200", "201"):
        graph = links("post", "/v1/graphs", code)
        assert graph["GetGraph"]["parameters"] == {"graph_id": "$response.body#/graph_id"}
    tensor = links("put", "/v1/sessions/{session_id}/tensors/{name}", "200")
    assert {operation_ids[v["operationId"]][0] for v in tensor.values()} == {"get", "delete"}


def test_schemas_say_what_the_server_rejects(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert {"required": ["nodes"], "properties": {"nodes": {"minItems": 1}}} in \
        schemas["RunRequest"]["anyOf"]
    assert schemas["Graph"]["properties"]["nodes"]["minItems"] == 1
    assert schemas["Watch"]["properties"]["tensors"]["minItems"] == 1
    assert schemas["TapeQuery"]["properties"]["sources"]["minItems"] == 1
    ttl = schemas["CreateSession"]["properties"]["ttl_seconds"]["anyOf"][0]
    assert ttl == {"type": "number", "minimum": 1, "maximum": 86400.0}
    target = schemas["TapeGradient"]["properties"]["target"]["anyOf"]
    assert [t["type"] for t in target] == ["string", "array"]
    with TestClient(create_app(Settings(_env_file=None))) as client:
        for ttl_seconds in (0.5, True, "60", 86401):
            r = client.post("/v1/sessions", json={"ttl_seconds": ttl_seconds})
            assert r.status_code == 422, (ttl_seconds, r.text)
        assert client.post("/v1/sessions", json={"ttl_seconds": 1}).status_code == 201
        sid = client.post("/v1/sessions").json()["session_id"]
        for nothing in ({"nodes": []}, {}, {"nodes": [], "inputs": {}, "watch": {}}):
            r = client.post(f"/v1/sessions/{sid}/run", json=nothing)
            assert r.status_code == 422 and "nothing to do" in r.json()["detail"], r.text


# ----- the gate: schemathesis against a live server

SCHEMATHESIS_MAX_EXAMPLES = 20
SCHEMATHESIS_MAX_TIME_S = 120
GATE_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("server"), "--log-level", "warning",
                      clean_env=True) as url:
        yield url


def test_schemathesis(live_server: str, tmp_path: Path) -> None:
    """Every schemathesis check, stateful sequences included, finds nothing. What the
    document cannot say is in schemathesis.toml, each with its reason."""
    program = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or \
        shutil.which("schemathesis")
    if program is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    command = [
        program, "--config-file", str(ROOT / "schemathesis.toml"), "--no-color",
        "run", f"{live_server}/openapi.json", "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(SCHEMATHESIS_MAX_EXAMPLES),
        "--max-time", str(SCHEMATHESIS_MAX_TIME_S),
        "--generation-database", "none",
    ]
    # from the repository root (schemathesis.toml names its hooks file from there), with
    # hypothesis' files in a scratch directory
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=GATE_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-30000:]
    assert re.search(r"\d+ passed", output), output[-5000:]
    assert re.search(r"Stateful \(in [\d.]+s\)", output), output[-5000:]
