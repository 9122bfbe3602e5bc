"""A real `gradtape serve` process on a free loopback port, for tests that need one (clients
in other languages, the examples, the schemathesis gate)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(log_dir: Path, *args: str, clean_env: bool = False) -> Iterator[str]:
    """Start the server (extra command-line `args`; `clean_env`: none of this process's
    GRADTAPE_* settings), wait until it is ready, yield its URL, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "server.log"
    env = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("GRADTAPE_"))}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port), *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n"
                            f"{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/v1/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S} s:\n"
                            f"{log_path.read_text()[-4000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
