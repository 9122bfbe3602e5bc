"""The command line and the settings read from the environment."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import cli
from service.config import Settings
from service.main import create_app


def test_serve_passes_host_port_and_workers_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert cli.main(["serve", "--host", "127.0.0.2", "--port", "9123", "--workers", "1"]) == 0
    assert seen["app"] == "service.main:create_app" and seen["factory"] is True
    assert (seen["host"], seen["port"], seen["workers"]) == ("127.0.0.2", 9123, 1)


def test_several_workers_warn_about_sessions(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    cli.main(["serve", "--workers", "2"])
    assert "worker" in capsys.readouterr().err


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--port" in out.stdout


def test_settings_come_from_gradtape_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADTAPE_MAX_NODES", "1")
    monkeypatch.setenv("GRADTAPE_API_KEYS", " a, b ,")
    settings = Settings(_env_file=None)
    assert settings.max_nodes == 1 and settings.api_key_set == frozenset({"a", "b"})
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/evaluate", headers={"X-API-Key": "b"}, json={
            "graph": {"nodes": [{"id": "y", "op": "sin", "args": ["x"]},
                                {"id": "z", "op": "cos", "args": ["y"]}]},
            "inputs": {"x": 1.0}})
        assert r.status_code == 413 and "GRADTAPE_MAX_NODES" in r.json()["detail"]
        assert client.get("/v1/info", headers={"X-API-Key": "a"}).json()["limits"][
            "max_nodes"] == 1


def test_bad_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADTAPE_MAX_NODES", "0")
    with pytest.raises(ValueError, match="max_nodes"):
        Settings(_env_file=None)
