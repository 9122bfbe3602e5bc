"""Real processes for tests of the deployment: Redis, gradtape replicas, nginx.

A helper module, not a test module (pytest collects only ``test_*.py``)::

    from tests.cluster import Nginx, RedisServer, Replica, free_port, start_all

Every server listens on 127.0.0.1 only, keeps its files (logs, data, configuration) in a
folder the caller gives, and runs in its own process group. ``stop()`` ends one; each
class is a context manager that stops it on the way out, whatever happened; and an
``atexit`` hook ends whatever a caller left running, so no test leaves a process behind.

The programs come from Debian packages that ``scripts/test`` installs with apt-get:
``redis-server`` (package redis-server), ``nginx`` (nginx) and ``envsubst``
(gettext-base, the renderer the nginx image uses for its templates). A missing program
fails the test with the name of its package; it is never a skip.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import pytest

from tests.runtimes import missing

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "gradtape.conf.template"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
LOOPBACK = "127.0.0.1"
# nginx and redis-server live in sbin folders, which are not always on PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin",
                                "/sbin"])


def require(program: str, package: str) -> str:
    """The path of `program`, or a test failure naming the Debian package that has it."""
    found = shutil.which(program, path=_SEARCH_PATH)
    if found is None:
        missing(f"{program} not found (Debian package {package})",
                f"apt-get install --no-install-recommends {package}")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def bytes_waiting(port: int) -> int:
    """Bytes received on 127.0.0.1:`port` that the listening program has not read yet (the
    receive queues of its connections, accepted or still in the backlog), from
    /proc/net/tcp. Above zero while a request waits on a server that is not reading, such
    as a stopped (SIGSTOP) one."""
    total = 0
    wanted = f"{socket.htonl(0x7F000001):08X}:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == wanted:
                total += int(fields[4].split(":")[1], 16)
    return total


# ----- processes -----

_running: set[Server] = set()


class Server:
    """A server process in its own process group, with its output in `directory`."""

    name = "server"

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / f"{self.name}.log"
        self._log: IO[bytes] | None = None

    # to override
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def is_ready(self) -> bool:
        return port_accepts(self.port)

    # running
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def launch(self) -> None:
        """Start the process without waiting for it to be ready (see `wait_ready`)."""
        if self.running:
            raise RuntimeError(f"{self.name} on port {self.port} is already running")
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            self.command(), cwd=self.directory, env=self.environment(),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        _running.add(self)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                pytest.fail(f"{self.name} on port {self.port} exited with status "
                            f"{self.process.returncode if self.process else None}:\n"
                            f"{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"{self.name} on port {self.port} was not ready after {timeout} s:\n"
                    f"{self.log_tail()}")

    def start(self, timeout: float = 30) -> Self:
        self.launch()
        self.wait_ready(timeout)
        return self

    def restart(self, timeout: float = 30) -> Self:
        """Stop it if it runs, then start it again on the same port, with the same folder."""
        self.stop()
        return self.start(timeout)

    def send(self, sig: signal.Signals) -> None:
        if self.running:
            os.kill(self.pid, sig)

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but reads nothing, until `resume`."""
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        self.send(signal.SIGCONT)

    def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM (after SIGCONT, in case it was paused), then wait for it to exit; SIGKILL
        to the process group if it has not after `timeout` seconds."""
        if self.running:
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
        return self._reap(timeout)

    def kill(self) -> int | None:
        """SIGKILL to its process group (the process and any children), at once."""
        self._kill_group()
        return self._reap(15)

    def stop(self) -> None:
        """End it (gracefully when it can) and close its log. Safe to call at any time."""
        with contextlib.suppress(Exception):
            self.terminate()
        self._kill_group()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        self._close_log()
        _running.discard(self)

    def _kill_group(self) -> None:
        # Only while the group leader has not been reaped: until then its id, and so the
        # group's, cannot belong to another process.
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def _reap(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            return self.process.wait(timeout=15)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.address} {state}>"


def start_all(servers: Iterable[Server], timeout: float = 120) -> None:
    """Launch every server, then wait for all of them (they start side by side)."""
    servers = list(servers)
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        for server in servers:
            server.stop()
        raise


@atexit.register
def _stop_everything() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


# ----- Redis -----


class RedisServer(Server):
    """`redis-server` with AOF on and RDB snapshots off, its data in `directory`: stop,
    kill or restart it, and a restart on the same folder replays the append-only file.
    The AOF is synced on every write by default (`appendfsync="always"`), so that even a
    SIGKILL loses nothing Redis acknowledged; docker-compose.yml syncs every second."""

    name = "redis"

    def __init__(self, directory: Path, port: int | None = None, *,
                 appendfsync: str = "always", extra_args: Sequence[str] = ()):
        super().__init__(directory, port)
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def command(self) -> list[str]:
        return [require("redis-server", "redis-server"),
                "--port", str(self.port), "--bind", LOOPBACK, "--protected-mode", "yes",
                "--daemonize", "no", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                "--logfile", "", *self.extra_args]

    def is_ready(self) -> bool:
        return self.ping()

    def ping(self, timeout: float = 1) -> bool:
        """PING answered by PONG (not LOADING, while the AOF is replayed)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM: Redis writes and syncs the append-only file, then exits."""
        return super().terminate(timeout)


# ----- gradtape replicas -----


class Replica(Server):
    """A gradtape API process (`python -m service.cli serve`) on a loopback port, with
    the settings in `env` (GRADTAPE_* variables of the test process itself do not leak
    in, and neither does a .env file: it runs in `directory`). Ready once
    /v1/health/live answers."""

    name = "gradtape"

    def __init__(self, directory: Path, port: int | None = None, *,
                 env: Mapping[str, str] | None = None):
        super().__init__(directory, port)
        self.env = dict(env or {})

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "service.cli", "serve", "--host", LOOPBACK,
                "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRADTAPE_")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["GRADTAPE_LOG_LEVEL"] = "warning"
        env.update(self.env)
        return env

    def is_ready(self) -> bool:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"{self.url}/v1/health/live", timeout=2) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self, timeout: float = 120) -> Self:
        return super().start(timeout)

    def restart(self, timeout: float = 120) -> Self:
        return super().restart(timeout)

    def request_count(self, method: str, route: str, status: int | None = None) -> float:
        """Requests this replica has answered on `route` (a route template, such as
        /v1/gradient), from its /metrics, asked directly (not through nginx)."""
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"{self.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        total = 0.0
        # labels may hold braces themselves (route="/v1/sessions/{session_id}")
        pattern = re.compile(r'^gradtape_http_requests_total\{(?P<labels>.*)\} (?P<n>\S+)$')
        for line in text.splitlines():
            match = pattern.match(line)
            if not match:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            if labels.get("method") == method and labels.get("route") == route and (
                    status is None or labels.get("status") == str(status)):
                total += float(match["n"])
        return total


# ----- nginx -----


def render_template(values: Mapping[str, str], template: Path = NGINX_TEMPLATE) -> str:
    """The template as the nginx image renders it: `envsubst` with only the names in
    `values` (the image's NGINX_ENVSUBST_FILTER), so nginx's own variables stay."""
    shell_format = " ".join(f"${{{name}}}" for name in values)
    result = subprocess.run(
        [require("envsubst", "gettext-base"), shell_format],
        input=template.read_text(), env={"PATH": _SEARCH_PATH, **values},
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"envsubst failed:\n{result.stderr}"
    return result.stdout


def upstream_servers(ports: Iterable[int], parameters: str = "") -> str:
    """`server` lines for GRADTAPE_UPSTREAM_SERVERS, one per loopback port."""
    suffix = f" {parameters}" if parameters else ""
    return "\n    ".join(f"server {LOOPBACK}:{port}{suffix};" for port in ports)


@dataclass(frozen=True)
class AccessEntry:
    """One line of the template's access log format (`gradtape`)."""

    request: str
    status: int
    request_id: str
    upstreams: list[str]
    upstream_statuses: list[str]


_ACCESS_LINE = re.compile(
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) \d+ \S+ request_id=(?P<rid>\S+) '
    r'upstream=(?P<up>.*) upstream_status=(?P<ups>.*) upstream_time=.*$')


def _tries(value: str) -> list[str]:
    return [] if value == "-" else [v.strip() for v in re.split(r"[,:] (?=\S)", value)
                                    if v.strip()]


class Nginx(Server):
    """nginx running the deployment's template, rendered for loopback replicas and a
    loopback listen port, inside a minimal nginx.conf that keeps every file nginx writes
    (pid, logs, temporary bodies) in `directory`, so it runs as an ordinary process.
    The template's access log (/dev/stdout) is `access_log_path`."""

    name = "nginx"

    def __init__(self, directory: Path, upstream_ports: Iterable[int] = (), *,
                 port: int | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 servers: str | None = None):
        super().__init__(directory, port)
        self.upstream_ports = list(upstream_ports)
        self.values = {
            "GRADTAPE_UPSTREAM_SERVERS": servers if servers is not None
            else upstream_servers(self.upstream_ports),
            "GRADTAPE_NGINX_LISTEN": f"{LOOPBACK}:{self.port}",
            "GRADTAPE_MAX_BODY_BYTES": str(max_body_bytes),
        }
        self.conf_path = self.directory / "nginx.conf"
        self.site_path = self.directory / "conf.d" / "gradtape.conf"
        self.error_log_path = self.directory / "error.log"
        self.access_log_path = self.log_path  # the process's stdout
        self.render()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def render(self) -> None:
        self.site_path.parent.mkdir(parents=True, exist_ok=True)
        self.site_path.write_text(render_template(self.values))
        temp = self.directory / "temp"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / sub).mkdir(parents=True, exist_ok=True)
        # As root, nginx would run its workers as "nobody", who cannot write here.
        user = ""
        if os.geteuid() == 0:
            user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                    f"{grp.getgrgid(os.getegid()).gr_name};")
        d = self.directory
        self.conf_path.write_text(f"""\
# Written by tests/cluster.py: the least around the deployment's template that runs nginx
# as an ordinary process, every file in this folder.
daemon off;
master_process on;
worker_processes 1;
{user}
pid "{d}/nginx.pid";
error_log "{self.error_log_path}" info;

events {{
    worker_connections 512;
}}

http {{
    default_type application/octet-stream;
    client_body_temp_path "{temp}/client_body";
    proxy_temp_path "{temp}/proxy";
    fastcgi_temp_path "{temp}/fastcgi";
    uwsgi_temp_path "{temp}/uwsgi";
    scgi_temp_path "{temp}/scgi";
    include "{self.site_path}";
}}
""")

    def _args(self) -> list[str]:
        return [require("nginx", "nginx"), "-c", str(self.conf_path), "-p",
                f"{self.directory}/", "-e", str(self.error_log_path)]

    def command(self) -> list[str]:
        return self._args()

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the configuration: parsed, and every file it names openable."""
        return subprocess.run([*self._args(), "-t"], capture_output=True, text=True,
                              timeout=30, cwd=self.directory)

    def wait_ready(self, timeout: float = 30) -> None:
        try:
            super().wait_ready(timeout)
        except BaseException:
            print(self.error_log(), file=sys.stderr)
            raise

    def terminate(self, timeout: float = 15) -> int | None:
        """SIGTERM: nginx's fast shutdown (the workers exit, then the master)."""
        return super().terminate(timeout)

    def quit(self, timeout: float = 15) -> int | None:
        """SIGQUIT: nginx's graceful shutdown (requests in flight finish first)."""
        self.send(signal.SIGQUIT)
        return self._reap(timeout)

    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except OSError:
            return "(no error log)"

    def access_entries(self) -> list[AccessEntry]:
        entries = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            match = _ACCESS_LINE.search(line)
            if match:
                entries.append(AccessEntry(match["request"], int(match["status"]),
                                           match["rid"], _tries(match["up"]),
                                           _tries(match["ups"])))
        return entries

    def access_entry(self, request_id: str, timeout: float = 5) -> AccessEntry:
        """The access log's line for `request_id` (nginx writes it just after it answers)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.access_entries() if e.request_id == request_id]
            if found:
                assert len(found) == 1, found
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no access log line for request id {request_id!r}:\n"
                            f"{self.access_log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
