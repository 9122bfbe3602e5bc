"""Shared helpers for the benchmarks: servers as subprocesses, timing, tables, results.

Not a benchmark itself. Every benchmark script puts this folder first on sys.path (Python
does that for `python benchmarks/<name>.py`) and imports it as `_common`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"  # every benchmark talks to this address only


# ----- numbers -----

def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile, q in [0, 1]."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ms(seconds: float) -> float:
    return seconds * 1e3


def timeit(fn: Callable[[], Any]) -> float:
    """Seconds one call of fn takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(digits - 1, 1)}f}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A Markdown table, padded so that it reads as plain text too: the first column
    left-aligned, the others right-aligned; the title, when given, above it."""
    def cell(x: Any) -> str:
        return fmt(x).replace("|", "\\|")

    heads = [cell(h) for h in headers]
    cells = [[cell(c) for c in row] for row in rows]
    widths = [max(3, len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]

    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(items, widths, strict=True))) + " |"

    rule = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":"
                             for i, w in enumerate(widths)) + " |"
    out = [title, ""] if title else []
    return "\n".join([*out, line(heads), rule, *(line(r) for r in cells)])


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# ----- environment and results -----

def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }
    for mod in ("jax", "jaxlib", "numpy", "fastapi", "uvicorn", "starlette", "pydantic"):
        with contextlib.suppress(Exception):  # not installed, or no __version__
            info[mod] = __import__(mod).__version__
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=5).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
            capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def write_result(name: str, data: Mapping[str, Any], env: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "environment": {**env, "loadavg_at_end": os.getloadavg()}, **data}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


# ----- servers -----

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def gradtape_command(port: int) -> list[str]:
    """`gradtape serve` on HOST:port with one worker, as a user starts it."""
    script = Path(sys.executable).parent / "gradtape"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    return [*base, "serve", "--host", HOST, "--port", str(port), "--workers", "1",
            "--log-level", "warning"]


def echo_command(port: int) -> list[str]:
    """The echo app under the same uvicorn, one worker, access log off (as `gradtape serve`
    runs: uvicorn's default loop and HTTP parser, i.e. uvloop and httptools when present)."""
    return [sys.executable, "-m", "uvicorn", "echo_app:app", "--app-dir", str(HERE),
            "--host", HOST, "--port", str(port), "--workers", "1", "--no-access-log",
            "--log-level", "warning"]


class Server:
    """A server subprocess on HOST:port, started and waited for, stopped on exit."""

    def __init__(self, name: str, command: list[str], port: int, ready_path: str,
                 env: Mapping[str, str] | None = None, ready_timeout: float = 120.0):
        self.name = name
        self.command = command
        self.port = port
        self.ready_path = ready_path
        self.url = f"http://{HOST}:{port}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("GRADTAPE_")}
        self.env = {**inherited, **(env or {})}  # only the settings asked for differ
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        fd, log = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop()
        if exc_type is None:  # keep the server's log only when something went wrong
            self.log_path.unlink(missing_ok=True)
        else:
            print(f"{self.name} log: {self.log_path}", file=sys.stderr)

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        import httpx

        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                r = httpx.get(self.url + self.ready_path, timeout=2)
                if r.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {self.ready_timeout}s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def binary_body(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A request body and its headers: `body` with each NumPy array as a binary tensor
    reference (the Open Inference Protocol's binary extension, service/bodies.py), its bytes
    after the JSON header in the order the references appear (orjson keeps dicts' order)."""
    blobs: list[bytes] = []

    def refs(node: Any) -> Any:
        if isinstance(node, np.ndarray):
            data = np.ascontiguousarray(node, node.dtype.newbyteorder("<")).tobytes()
            blobs.append(data)
            return {"dtype": node.dtype.name, "shape": list(node.shape),
                    "parameters": {"binary_data_size": len(data)}}
        if isinstance(node, dict):
            return {k: refs(v) for k, v in node.items()}
        return node

    header = orjson.dumps(refs(body))
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      "inference-header-content-length": str(len(header))}


class KeepAlive:
    """A minimal HTTP/1.1 keep-alive client, the standard library's `http.client`: what a
    request costs the server and the wire, with little of a client library's own (httpx
    spends 0.4-0.7 ms of Python on each request on these machines)."""

    def __init__(self, url: str, timeout: float = 600):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or HOST, parts.port,
                                               timeout=timeout)

    def request(self, method: str, path: str, content: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        self.conn.request(method, path, body=content, headers=dict(headers or {}))
        response = self.conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


@contextmanager
def gradtape_server(name: str = "gradtape", **settings: Any) -> Iterator[Server]:
    """`gradtape serve` with GRADTAPE_<KEY>=value for each keyword (e.g. jit_after=0)."""
    port = free_port()
    env = {f"GRADTAPE_{k.upper()}": str(v) for k, v in settings.items()}
    with Server(name, gradtape_command(port), port, "/v1/health/ready", env) as server:
        yield server


@contextmanager
def echo_server() -> Iterator[Server]:
    port = free_port()
    with Server("echo", echo_command(port), port, "/docs") as server:
        yield server


# ----- memory of a process -----

def reset_peak() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0), so that a later
    `ru_maxrss` shows the peak of what follows, not of what came before."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def proc_status_kib(pid: int | str, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
