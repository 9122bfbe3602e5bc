"""Operations: access logs, request ids, the command line, and stopping a busy server."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import engine
from service import cli, observability
from service.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parent.parent
HEX32 = set("0123456789abcdef")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """These tests reconfigure the `gradtape` loggers; leave them as they were."""
    gradtape = logging.getLogger("gradtape")
    level, handlers = gradtape.level, list(gradtape.handlers)
    formatters = [h.formatter for h in handlers]
    yield
    gradtape.setLevel(level)
    gradtape.handlers[:] = handlers
    for handler, formatter in zip(handlers, formatters, strict=True):
        handler.setFormatter(formatter)


def make_client(**settings: Any) -> TestClient:
    return TestClient(create_app(Settings(_env_file=None, **settings)))


def access_records(err: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [r for r in records if r["logger"] == "gradtape.access"]


def sin_run(client: TestClient, session_id: str, **headers: str) -> Any:
    return client.post(f"/v1/sessions/{session_id}/run", headers=headers,
                       json={"nodes": [{"id": "y", "op": "sin", "args": ["x"]}]})


# ----- access log lines -----

def test_json_access_line_has_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    with make_client(log_format="json") as client:
        session_id = client.post("/v1/sessions").json()["session_id"]
        assert client.put(f"/v1/sessions/{session_id}/tensors/x",
                          json={"value": [0.0, 1.0]}).status_code == 200
        capsys.readouterr()
        r = sin_run(client, session_id, **{"X-Request-ID": "trace-7"})
        assert r.status_code == 200, r.text
    [line] = [rec for rec in access_records(capsys.readouterr().err)
              if rec["request_id"] == "trace-7"]
    assert line["method"] == "POST"
    assert line["route"] == "/v1/sessions/{session_id}/run"
    assert line["status"] == 200
    assert line["session_id"] == session_id
    assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 60_000
    assert line["level"] == "INFO"
    assert line["time"].endswith("Z")
    assert datetime.fromisoformat(line["time"].replace("Z", "+00:00")).utcoffset() is not None
    assert "path" not in line  # only for requests that match no route


def test_text_access_line(capsys: pytest.CaptureFixture[str]) -> None:
    with make_client(log_format="text") as client:
        capsys.readouterr()
        r = client.get("/v1/health/live")
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        missing = client.get("/v1/nowhere")
        assert missing.status_code == 404
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " gradtape.access " in ln]
    [live] = [ln for ln in lines if f"request_id={rid}" in ln]
    stamp, level, logger, method, route, status, duration = live.split(" ")[:7]
    assert stamp.endswith("Z") and datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert (level, logger, method, route, status) == (
        "INFO", "gradtape.access", "GET", "/v1/health/live", "200")
    assert duration.endswith("ms") and float(duration[:-2]) >= 0
    [unmatched] = [ln for ln in lines if missing.headers["x-request-id"] in ln]
    assert " GET unmatched 404 " in unmatched and unmatched.endswith("path=/v1/nowhere")


def test_access_log_can_be_turned_off(capsys: pytest.CaptureFixture[str]) -> None:
    with make_client(log_format="json", access_log=False) as client:
        capsys.readouterr()
        assert client.get("/v1/health/live").status_code == 200
    assert access_records(capsys.readouterr().err) == []


def test_api_key_is_never_logged(capsys: pytest.CaptureFixture[str]) -> None:
    key = "k-9f3e1c0d5a"
    with make_client(log_format="json", api_keys=key, log_level="debug") as client:
        assert client.get("/v1/info", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/v1/info", headers={"Authorization": f"Bearer {key}"}
                          ).status_code == 200
        assert client.get("/v1/info", headers={"X-API-Key": key + "x"}).status_code == 401
    err = capsys.readouterr().err
    assert len(access_records(err)) == 3 and key not in err


def test_error_log_lines_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    app = create_app(Settings(_env_file=None, log_format="json"))

    async def fail() -> None:
        raise RuntimeError("broken on purpose")

    app.add_api_route("/v1/fail", fail)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/fail", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "req-500"
    assert r.headers["content-type"].startswith("application/problem+json")
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()
               if line.startswith("{")]
    [error] = [rec for rec in records if rec["level"] == "ERROR"]
    assert error["logger"] == "gradtape" and error["request_id"] == "req-500"
    assert "broken on purpose" in error["exception"]
    [access] = [rec for rec in records if rec["logger"] == "gradtape.access"
                and rec["route"] == "/v1/fail"]
    assert access["status"] == 500 and access["request_id"] == "req-500"


def test_request_id_is_visible_to_code_running_for_the_request() -> None:
    app = create_app(Settings(_env_file=None))
    seen: list[str | None] = []

    def handler() -> None:  # a sync route: runs in a worker thread
        seen.append(observability.request_id.get())

    app.add_api_route("/v1/peek", handler)
    with TestClient(app) as client:
        client.get("/v1/peek", headers={"X-Request-ID": "abc"})
    assert seen == ["abc"] and observability.request_id.get() is None


def test_configure_logging_keeps_one_handler() -> None:
    gradtape = logging.getLogger("gradtape")
    for fmt in ("json", "text", "json"):
        observability.configure_logging(Settings(_env_file=None, log_format=fmt))
        create_app(Settings(_env_file=None, log_format=fmt))
    ours = [h for h in gradtape.handlers if isinstance(h, observability.StderrHandler)]
    assert len(ours) == 1 and isinstance(ours[0].formatter, observability.JsonFormatter)


# ----- X-Request-ID -----

def test_request_id_is_echoed_when_given() -> None:
    with make_client() as client:
        for rid in ("abc", "0af7651916cd43dd8448eb211c80319c", "Root=1-5759e988;Parent=53",
                    "x" * 128):
            assert client.get("/v1/health/live",
                              headers={"X-Request-ID": rid}).headers["x-request-id"] == rid


def test_request_id_is_generated_when_absent() -> None:
    with make_client() as client:
        first = client.get("/v1/health/live").headers["x-request-id"]
        second = client.get("/v1/health/live").headers["x-request-id"]
    assert len(first) == 32 and set(first) <= HEX32 and first != second


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "tab\there", "",
                                 "caf\u00e9"])
def test_invalid_request_id_is_replaced(bad: str) -> None:
    with make_client() as client:
        r = client.get("/v1/health/live", headers={"X-Request-ID": bad.encode("utf-8")})
    rid = r.headers["x-request-id"]
    assert rid != bad and len(rid) == 32 and set(rid) <= HEX32


def test_request_id_on_answers_of_other_middleware() -> None:
    with make_client(api_keys="secret", max_body_bytes=1024) as client:
        unauthorized = client.post("/v1/evaluate", json={}, headers={"X-Request-ID": "r-401"})
        assert unauthorized.status_code == 401
        assert unauthorized.headers["x-request-id"] == "r-401"
        too_large = client.post("/v1/evaluate", content=b"[" + b"0," * 1000 + b"0]",
                                headers={"X-API-Key": "secret", "X-Request-ID": "r-413",
                                         "content-type": "application/json"})
        assert too_large.status_code == 413 and too_large.headers["x-request-id"] == "r-413"

        def chunks() -> Iterator[bytes]:  # no Content-Length: caught while streaming
            for _ in range(10):
                yield b" " * 500

        streamed = client.post("/v1/evaluate", content=chunks(),
                               headers={"X-API-Key": "secret", "X-Request-ID": "r-413b",
                                        "content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.headers["x-request-id"] == "r-413b"
        no_route = client.get("/nowhere", headers={"X-Request-ID": "r-404"})
        assert no_route.status_code == 404 and no_route.headers["x-request-id"] == "r-404"
        no_session = client.get("/v1/sessions/s_0000", headers={"X-API-Key": "secret"})
        assert no_session.status_code == 404 and len(no_session.headers["x-request-id"]) == 32
        assert len(no_session.headers.get_list("x-request-id")) == 1


# ----- the command line -----

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradtape {engine.__version__}"


def test_bad_log_level_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--log-level", "foo"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'foo'" in err
    assert all(level in err for level in ("critical", "error", "warning", "info", "debug"))
    assert "Traceback" not in err


def test_bad_setting_in_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    monkeypatch.setenv("GRADTAPE_LOG_FORMAT", "xml")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "log_format" in err and "Traceback" not in err


def test_serve_passes_server_settings_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    # main() sets these for the app (and its workers) to read; monkeypatch undoes that
    monkeypatch.setenv("GRADTAPE_LOG_LEVEL", "info")
    monkeypatch.setenv("GRADTAPE_LOG_FORMAT", "text")
    monkeypatch.setenv("GRADTAPE_KEEP_ALIVE_SECONDS", "7")
    monkeypatch.setenv("GRADTAPE_MAX_INCOMPLETE_EVENT_BYTES", "32768")
    monkeypatch.setenv("GRADTAPE_SHUTDOWN_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("GRADTAPE_HTTP_PARSER", "h11")
    assert cli.main(["serve", "--log-level", "debug", "--log-format", "json"]) == 0
    assert seen["timeout_keep_alive"] == 7
    assert seen["h11_max_incomplete_event_size"] == 32768
    assert seen["timeout_graceful_shutdown"] == 3
    assert seen["http"] == "h11" and seen["access_log"] is False
    assert "limit_concurrency" not in seen
    assert seen["log_level"] == "debug"
    assert seen["log_config"]["formatters"]["gradtape"]["()"].endswith(".JsonFormatter")
    assert os.environ["GRADTAPE_LOG_FORMAT"] == "json"  # what the app (and workers) read
    assert Settings(_env_file=None).log_level == "debug"


def test_serve_defaults() -> None:
    settings = Settings(_env_file=None)
    assert (settings.log_format, settings.access_log) == ("text", True)
    assert settings.keep_alive_seconds == 5
    assert settings.max_incomplete_event_bytes == 64 * 1024
    assert settings.shutdown_timeout_seconds == 8


def test_open_files_limit_is_raised_to_the_hard_limit() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 64:
        pytest.skip("needs a finite hard limit on open files")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))
        cli.raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ----- a real server, stopped while it computes -----

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited during startup"
        try:
            with urllib.request.urlopen(f"{base}/v1/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not get ready")


def long_evaluate(n: int = 100, size: int = 3000) -> bytes:
    """A chain of `n` matmuls of `size` x `size` matrices: seconds of work on any CPU."""
    nodes: list[dict[str, Any]] = [
        {"id": "m", "op": "broadcast_to", "args": ["x"], "attrs": {"shape": [size, size]}},
        {"id": "y0", "op": "matmul", "args": ["m", "m"]}]
    nodes += [{"id": f"y{i}", "op": "matmul", "args": [f"y{i - 1}", "m"]} for i in range(1, n)]
    nodes.append({"id": "s", "op": "reduce_sum", "args": [f"y{n - 1}"]})
    return json.dumps({"graph": {"nodes": nodes, "outputs": ["s"]},
                       "inputs": {"x": 1e-3}}).encode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_server_busy_in_a_worker_thread(sig: signal.Signals,
                                                       tmp_path: Path) -> None:
    """The request computes in a worker thread, which cannot be cancelled: the process must
    still end within the graceful-shutdown timeout, and the client gets a 503."""
    grace = 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GRADTAPE_SHUTDOWN_TIMEOUT_SECONDS": str(grace),
           "GRADTAPE_LOG_FORMAT": "json", "JAX_PLATFORMS": "cpu",
           # let the long request through the work and memory estimates
           "GRADTAPE_MAX_REQUEST_FLOPS": "1e18", "GRADTAPE_MAX_REQUEST_BYTES": str(1 << 50)}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    outcome: dict[str, Any] = {}

    def request() -> None:
        req = urllib.request.Request(f"{base}/v1/evaluate", data=long_evaluate(), headers={
            "content-type": "application/json", "X-Request-ID": "long-one"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                outcome["status"] = r.status
        except urllib.error.HTTPError as exc:
            outcome.update(status=exc.code, headers=exc.headers, body=exc.read())
        except Exception as exc:
            outcome["error"] = exc

    try:
        wait_ready(base, proc)
        client = threading.Thread(target=request, daemon=True)
        client.start()
        time.sleep(1.5)
        assert client.is_alive(), f"the long request ended too soon: {outcome}"
        proc.send_signal(sig)
        sent = time.monotonic()
        try:
            proc.wait(timeout=grace + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {grace + 30} s after {sig.name}")
        took = time.monotonic() - sent
        assert took < grace + 5, f"exited {took:.1f} s after {sig.name}"
        assert proc.returncode == 0
        client.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    log = log_path.read_text()
    assert outcome.get("status") == 503, (outcome, log)
    assert outcome["headers"]["X-Request-ID"] == "long-one"
    assert json.loads(outcome["body"])["type"] == "urn:gradtape:problem:shutting-down"
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    loggers = {rec["logger"] for rec in records}
    assert {"uvicorn.error", "gradtape.access", "gradtape.cli"} <= loggers, log
    assert any(rec["logger"] == "gradtape.access" and rec["route"] == "/v1/health/ready"
               and rec["status"] == 200 for rec in records), log
    assert any(rec["logger"] == "gradtape.access" and rec["request_id"] == "long-one"
               and rec["status"] == 503 for rec in records), log
    assert any(rec["message"] == f"stopped ({sig.name})" for rec in records), log
