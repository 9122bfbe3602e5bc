"""Shared fixtures: an app on test settings, and a client that runs its lifespan."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator

import pytest
import redis

warnings.filterwarnings("ignore", message=".*httpx2.*")

from fastapi.testclient import TestClient  # noqa: E402

from service.config import Settings  # noqa: E402
from service.main import create_app  # noqa: E402
from tests.runtimes import missing  # noqa: E402


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


# ----- a real Redis server, for the Redis session store -----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of its own on a free loopback port, for the whole test run."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed", "apt-get install -y redis-server")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.RedisError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["memory", "redis"])
def store_settings(request: pytest.FixtureRequest) -> Settings:
    """Settings on each session store in turn: the Redis one starts empty each time."""
    if request.param == "memory":
        return Settings(_env_file=None)
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return Settings(_env_file=None, store="redis", redis_url=url)
