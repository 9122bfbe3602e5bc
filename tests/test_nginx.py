"""nginx in front of two gradtape replicas, run from the deployment's own template.

deploy/nginx/gradtape.conf.template is what docker-compose.yml's `lb` runs. Here it is
rendered the way the nginx image renders it (envsubst on the GRADTAPE_ variables) with
loopback replicas and a loopback port, and run by the nginx of the machine (Debian
package nginx, installed by scripts/test), in front of two real replicas (`python -m
service.cli serve`) with the memory session store, which is enough for stateless routes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import Nginx, Replica, bytes_waiting, free_port, start_all

GRADIENT = {
    "graph": {"inputs": {"x": {"dtype": "float32", "shape": [2, 2]}},
              "nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"]},
                        {"id": "z", "op": "multiply", "args": ["y", "y"]}],
              "outputs": ["z"]},
    "inputs": {"x": [[1, 1], [1, 1]]},
    "target": "z",
    "sources": ["x"],
}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


# ----- fixtures -----


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    base = tmp_path_factory.mktemp("replicas")
    pair = [Replica(base / name, env={"GRADTAPE_STORE": "memory"}) for name in ("a", "b")]
    try:
        start_all(pair)
        yield pair
    finally:
        for replica in pair:
            replica.stop()


@pytest.fixture
def live(replicas: list[Replica]) -> list[Replica]:
    """Both replicas running: those an earlier test stopped are started again, and one
    it left paused goes on."""
    for replica in replicas:
        replica.resume()
    start_all(r for r in replicas if not r.running)
    return replicas


@pytest.fixture
def make_nginx(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """Starts nginx on the template (arguments as for `Nginx`); all stop after the test."""
    started: list[Nginx] = []

    def make(upstream_ports: list[int], **options: Any) -> Nginx:
        nginx = Nginx(tmp_path / f"nginx-{len(started)}", upstream_ports, **options)
        started.append(nginx)
        return nginx.start()

    try:
        yield make
    finally:
        for nginx in started:
            nginx.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=2)
    try:
        yield executor
    finally:
        # without waiting: a request still in flight ends when its nginx stops, just after
        executor.shutdown(wait=False, cancel_futures=True)


def client(nginx: Nginx) -> httpx.Client:
    return httpx.Client(base_url=nginx.url, trust_env=False, timeout=60)


def send(nginx: Nginx, method: str, path: str, **request: Any) -> httpx.Response:
    with client(nginx) as http:
        return http.request(method, path, **request)


def assert_problem(answer: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["type"] == f"urn:gradtape:problem:{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert answer.headers["x-request-id"]
    return body


def settled(measure: Callable[[], float], expected: float, timeout: float = 5) -> float:
    """`measure()` once it equals `expected`, or its last value after `timeout` seconds (a
    replica counts a request in its metrics just after it has answered it)."""
    deadline = time.monotonic() + timeout
    while (value := measure()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def land_on_paused(nginx: Nginx, paused: Replica, pool: ThreadPoolExecutor, method: str,
                   path: str, **request: Any) -> tuple[Future[httpx.Response], str]:
    """Pauses `paused` (SIGSTOP: the kernel still takes connections and requests for it,
    but it reads nothing) and sends the request through nginx until one waits on it.
    Returns that request's future and request id. Requests that nginx sent to the other
    replica meanwhile just finish."""
    headers = request.pop("headers", {})
    paused.pause()
    for attempt in range(10):
        request_id = f"{method.lower()}-{paused.port}-{attempt}"
        future = pool.submit(send, nginx, method, path,
                             headers={**headers, "X-Request-ID": request_id}, **request)
        deadline = time.monotonic() + 20
        while not future.done():
            if bytes_waiting(paused.port) > 0:
                return future, request_id
            if time.monotonic() > deadline:
                pytest.fail(f"request {request_id} neither finished nor reached {paused}")
            time.sleep(0.01)
        assert future.result().status_code == 200  # the other replica answered it
    pytest.fail(f"nginx sent none of 10 requests to {paused}")


# ----- the configuration -----


def test_rendered_template_passes_nginx_t(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path, [free_port(), free_port()])
    rendered = nginx.site_path.read_text()
    assert "${" not in rendered
    assert "client_max_body_size 67108864;" in rendered
    assert f"listen 127.0.0.1:{nginx.port} default_server;" in rendered
    assert all(f"server 127.0.0.1:{p};" in rendered for p in nginx.upstream_ports)
    result = nginx.check()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_nginx_answers_health_and_its_own_errors_as_problems(
        make_nginx: Callable[..., Nginx]) -> None:
    nginx = make_nginx([free_port()])  # nothing listens there
    with client(nginx) as http:
        health = http.get("/nginx-health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        # the error pages are internal: a client asking for one gets a 404 in the same format
        assert_problem(http.get("/.problem/502"), 404, "not-found")
        assert_problem(http.get("/v1/info", headers={"X-Big": "x" * 20_000}), 431,
                       "request-header-fields-too-large")


# ----- through nginx to the replicas -----


def test_gradient_through_nginx(live: list[Replica], make_nginx: Callable[..., Nginx]) -> None:
    nginx = make_nginx([r.port for r in live])
    answer = send(nginx, "POST", "/v1/gradient", json=GRADIENT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["gradients"]["x"]["data"] == [[8, 8], [8, 8]]
    assert answer.headers["content-type"] == "application/json"


def test_requests_reach_both_replicas(live: list[Replica],
                                      make_nginx: Callable[..., Nginx]) -> None:
    nginx = make_nginx([r.port for r in live])
    before = [r.request_count("GET", "/v1/info") for r in live]
    with client(nginx) as http:
        for _ in range(10):
            assert http.get("/v1/info").status_code == 200
    def served() -> list[float]:
        return [r.request_count("GET", "/v1/info") - n for r, n in zip(live, before, strict=True)]

    assert settled(lambda: sum(served()), 10) == 10
    per_replica = served()
    assert all(n >= 3 for n in per_replica), f"requests per replica: {per_replica}"
    seen = {e.upstreams[0] for e in nginx.access_entries()}
    assert seen == {r.address for r in live}


def test_request_id_is_passed_on_or_generated(live: list[Replica],
                                              make_nginx: Callable[..., Nginx]) -> None:
    nginx = make_nginx([r.port for r in live])
    with client(nginx) as http:
        given = http.get("/v1/info", headers={"X-Request-ID": "client-chosen.id_42"})
        assert given.status_code == 200
        assert given.headers["x-request-id"] == "client-chosen.id_42"
        entry = nginx.access_entry("client-chosen.id_42")
        assert entry.status == 200 and entry.upstreams[0] in {r.address for r in live}

        for headers in ({}, {"X-Request-ID": "has a space"}, {"X-Request-ID": "x" * 129}):
            answer = http.get("/v1/info", headers=headers)
            assert answer.status_code == 200
            rid = answer.headers["x-request-id"]
            assert GENERATED_ID.fullmatch(rid), rid
            # nginx generated it and the replica answered with it: it was passed on
            assert nginx.access_entry(rid).upstreams


def test_body_over_the_limit_is_a_413_problem_from_nginx(
        live: list[Replica], make_nginx: Callable[..., Nginx]) -> None:
    nginx = make_nginx([r.port for r in live], max_body_bytes=2048)
    posts = sum(r.request_count("POST", "/v1/gradient") for r in live)
    with client(nginx) as http:
        assert http.post("/v1/gradient", json=GRADIENT).status_code == 200  # under the limit
        big = {**GRADIENT, "padding": "x" * 4096}
        answer = http.post("/v1/gradient", json=big, headers={"X-Request-ID": "too-big"})
    body = assert_problem(answer, 413, "too-large")
    assert "2048 bytes" in body["detail"]
    assert answer.headers["x-request-id"] == "too-big"
    assert nginx.access_entry("too-big").upstreams == []  # no replica saw it
    assert settled(lambda: sum(r.request_count("POST", "/v1/gradient") for r in live),
                   posts + 1) == posts + 1


# ----- replicas that fail -----


def test_get_is_retried_on_the_other_replica_post_is_not(
        live: list[Replica], make_nginx: Callable[..., Nginx],
        pool: ThreadPoolExecutor) -> None:
    a, b = live

    # A GET waits on replica a, which is then killed: nginx sends it again, to b.
    nginx = make_nginx([a.port, b.port])
    future, rid = land_on_paused(nginx, a, pool, "GET", "/v1/info")
    a.kill()
    answer = future.result(timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == rid
    entry = nginx.access_entry(rid)
    assert entry.upstreams == [a.address, b.address]
    assert entry.upstream_statuses == ["502", "200"]

    # The same with a POST: nginx does not send it again, although b is up; the client
    # gets the 502 and may retry it itself.
    a.start()
    nginx = make_nginx([a.port, b.port])  # a fresh nginx: it has not seen a fail
    posts_on_b = b.request_count("POST", "/v1/gradient")
    future, rid = land_on_paused(nginx, a, pool, "POST", "/v1/gradient", json=GRADIENT)
    a.kill()
    answer = future.result(timeout=60)
    assert_problem(answer, 502, "bad-gateway")
    assert answer.headers["x-request-id"] == rid
    assert answer.headers["retry-after"] == "1"
    assert nginx.access_entry(rid).upstreams == [a.address]
    assert b.request_count("POST", "/v1/gradient") == posts_on_b
    retried = send(nginx, "POST", "/v1/gradient", json=GRADIENT)  # the client's own retry
    assert retried.status_code == 200
    assert retried.json()["gradients"]["x"]["data"] == [[8, 8], [8, 8]]


def test_no_replica_running_is_a_502_problem(replicas: list[Replica],
                                             make_nginx: Callable[..., Nginx]) -> None:
    nginx = make_nginx([r.port for r in replicas])
    for replica in replicas:
        replica.terminate()
    with client(nginx) as http:
        # A POST that no replica received (connection refused) may go to the next one.
        post = http.post("/v1/gradient", json=GRADIENT, headers={"X-Request-ID": "post-502"})
        get = http.get("/v1/info", headers={"X-Request-ID": "get-502"})
    for answer in (post, get):
        assert_problem(answer, 502, "bad-gateway")
        assert answer.headers["retry-after"] == "1"
    assert post.headers["x-request-id"] == "post-502"
    assert get.headers["x-request-id"] == "get-502"
    assert sorted(nginx.access_entry("post-502").upstreams) == sorted(
        r.address for r in replicas)
