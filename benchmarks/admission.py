"""What admission by estimated cost adds to the hot path: the tutorial gradient with a
registered graph, through the whole app in process (ASGI, no sockets), with the cost estimate
and the limit checks as they are, and with both replaced by no-ops. Rounds alternate between
the two so that drift in the machine's speed falls on both alike.

    python benchmarks/admission.py            # ~20 s
    python benchmarks/admission.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx

from service.config import Settings
from service.main import create_app
from service.schemas.examples import TUTORIAL_GRAPH

INPUTS = {"x": [[1, 1], [1, 1]]}


async def main(rounds: int, calls: int) -> dict[str, Any]:
    app = create_app(Settings(_env_file=None, access_log=False))
    services = app.state.services
    engine = services.engine
    real_cost, real_admit = engine.cost, engine.admit
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            gid = (await client.post("/v1/graphs", json=TUTORIAL_GRAPH)).json()["graph_id"]
            body = {"graph_id": gid, "inputs": INPUTS, "target": "z", "sources": ["x"]}
            for _ in range(50):  # compile, and warm every cache
                assert (await client.post("/v1/gradient", json=body)).status_code == 200
            engine.cache.wait()
            fixed = real_cost(*_bound_and_query(engine, services, gid))

            async def timed() -> float:
                start = time.perf_counter()
                for _ in range(calls):
                    r = await client.post("/v1/gradient", json=body)
                    assert r.status_code == 200, r.text
                return (time.perf_counter() - start) / calls * 1e6

            with_admission, without = [], []
            for _ in range(rounds):
                engine.cost, engine.admit = real_cost, real_admit
                with_admission.append(await timed())
                engine.cost = lambda *a, **k: fixed
                engine.admit = lambda *a, **k: None
                without.append(await timed())
            engine.cost, engine.admit = real_cost, real_admit
    on, off = statistics.median(with_admission), statistics.median(without)
    return {"with_us": on, "without_us": off, "overhead_pct": (on / off - 1) * 100}


def _bound_and_query(engine: Any, services: Any, gid: str) -> tuple[Any, Any]:
    from engine.transforms import Query

    program = services.registry.get(gid).program
    bound = engine.bind(program, INPUTS)
    return bound, Query("gradient", ("z",), ("x",))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    rounds, calls = (3, 50) if args.smoke else (args.rounds, args.calls)
    out = asyncio.run(main(rounds, calls))
    print("| tutorial gradient, in process | median per request |")
    print("| --- | ---: |")
    print(f"| with admission | {out['with_us']:.1f} us |")
    print(f"| admission replaced by no-ops | {out['without_us']:.1f} us |")
    print(f"| overhead | {out['overhead_pct']:+.1f} % |")
