"""The baseline for benchmarks/http_overhead.py: the most trivial FastAPI JSON endpoint.

`POST /echo` parses the JSON body and returns it. Served by http_overhead.py exactly as
`gradtape serve` is served (same uvicorn, one worker, same host, access log off):

    python -m uvicorn echo_app:app --app-dir benchmarks --host 127.0.0.1 --port 8001 \
        --workers 1 --no-access-log
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI(title="echo")


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON object that was sent."""
    return body
