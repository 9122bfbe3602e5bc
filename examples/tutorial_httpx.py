"""The gradtape tutorial in Python, with httpx alone (no client library): every API call
written out. examples/tutorial.py is the same tutorial with the gradtape client.

Five parts, each in its own session. Every result is printed as
"<part> <label> = <data> <dtype> <shape>", e.g. "part3 dz/dx = 108 float32 []".

    GRADTAPE_URL=http://127.0.0.1:8000 python examples/tutorial_httpx.py
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

URL = os.environ.get("GRADTAPE_URL", "http://127.0.0.1:8000")
client = httpx.Client(base_url=f"{URL}/v1", timeout=60)


def call(method: str, path: str, body: Any = None) -> Any:
    """Send one request; on an HTTP error print the problem+json body and exit."""
    response = client.request(method, path, json=body)
    if response.is_error:
        sys.exit(f"error: {method} {path} -> HTTP {response.status_code}\n{response.text}")
    return None if response.status_code == 204 else response.json()


@contextmanager
def session() -> Iterator[str]:
    """A fresh session, deleted at the end. Yields its path, /sessions/{id}."""
    sid = call("POST", "/sessions", {})["session_id"]
    try:
        yield f"/sessions/{sid}"
    finally:
        call("DELETE", f"/sessions/{sid}")


def put(s: str, name: str, value: Any, variable: bool = False) -> None:
    call("PUT", f"{s}/tensors/{name}", {"value": value, "variable": variable, "trainable": True})


def open_tape(s: str, persistent: bool = False) -> str:
    """Start recording; returns the tape's path."""
    tape_id = call("POST", f"{s}/tapes", {"persistent": persistent})["tape_id"]
    return f"{s}/tapes/{tape_id}"


def run(s: str, *nodes: dict) -> None:
    call("POST", f"{s}/run", {"nodes": list(nodes)})


def node(id: str, op: str, *args: str) -> dict:
    return {"id": id, "op": op, "args": list(args)}


def gradient(tape: str, target: str, source: str, **extra: Any) -> dict:
    """The gradient of target with respect to one source, as a tensor object."""
    body = {"target": target, "sources": [source], **extra}
    return call("POST", f"{tape}/gradient", body)["gradients"][source]


def fmt(v: Any) -> str:
    return "[" + ",".join(fmt(x) for x in v) + "]" if isinstance(v, list) else f"{v:g}"


def show(label: str, t: dict) -> None:
    print(f"{label} = {fmt(t['data'])} {t['dtype']} {fmt(t['shape'])}")


def record_z(s: str) -> str:
    """x = [[1,1],[1,1]]; watch x; y = reduce_sum(x); z = y * y. Returns the stopped tape."""
    put(s, "x", [[1.0, 1.0], [1.0, 1.0]])
    tape = open_tape(s)
    call("POST", f"{tape}/watch", {"tensors": ["x"]})
    run(s, node("y", "reduce_sum", "x"), node("z", "multiply", "y", "y"))
    call("POST", f"{tape}/stop")
    return tape


def part1() -> None:
    with session() as s:
        tape = record_z(s)
        show("part1 dz/dx", gradient(tape, "z", "x"))


def part2() -> None:
    # The same recording; this time the source is the intermediate y.
    with session() as s:
        tape = record_z(s)
        show("part2 dz/dy", gradient(tape, "z", "y"))


def part3() -> None:
    # A persistent tape answers more than one gradient call.
    with session() as s:
        put(s, "x", 3.0)
        tape = open_tape(s, persistent=True)
        call("POST", f"{tape}/watch", {"tensors": ["x"]})
        run(s, node("y", "multiply", "x", "x"), node("z", "multiply", "y", "y"))
        call("POST", f"{tape}/stop")
        show("part3 dz/dx", gradient(tape, "z", "x"))
        show("part3 dy/dx", gradient(tape, "y", "x"))
        call("DELETE", tape)


def part4(n: int) -> None:
    # Control flow stays in the client: the tape records only the ops that ran.
    with session() as s:
        put(s, "x", 2.0)
        put(s, "output", 1.0)
        tape = open_tape(s)
        call("POST", f"{tape}/watch", {"tensors": ["x"]})
        for i in range(1, n + 1):
            if 2 < i <= 5:
                run(s, node("output", "multiply", "output", "x"))
        call("POST", f"{tape}/stop")
        show(f"part4 n={n} doutput/dx", gradient(tape, "output", "x"))


def part5() -> None:
    # Higher order: t2's gradient is computed while t records, so t can differentiate it.
    with session() as s:
        put(s, "x", 1.0, variable=True)  # trainable variables are watched automatically
        t = open_tape(s)
        t2 = open_tape(s)
        run(s, node("x2", "multiply", "x", "x"), node("y", "multiply", "x2", "x"))
        call("POST", f"{t2}/stop")
        show("part5 dy/dx", gradient(t2, "y", "x", save_as={"x": "dy_dx"}))
        call("POST", f"{t}/stop")
        show("part5 d2y/dx2", gradient(t, "dy_dx", "x"))


def main() -> None:
    try:
        part1()
        part2()
        part3()
        for n in (6, 5, 4):
            part4(n)
        part5()
    except httpx.HTTPError as e:
        sys.exit(f"error: cannot reach {URL}: {e!r}")


if __name__ == "__main__":
    main()
