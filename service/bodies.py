"""Request bodies: JSON, or a JSON header followed by tensors as raw bytes.

The second form is the Open Inference Protocol's binary tensor extension: the request carries
`Inference-Header-Content-Length: N`, its first N bytes are the JSON header, and each tensor
written there as `{"dtype", "shape", "parameters": {"binary_data_size": n}}` takes the next n
bytes that follow it (little-endian, row-major). A 128x784 float32 batch is then 401,408 bytes
sent as they are, instead of 535,212 characters of base64 to encode and decode. Every JSON
route takes both forms; answers are JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.exceptions import HTTPException
from starlette.types import Scope

from engine.tensors import attach_binary, encode

BINARY_HEADER = b"inference-header-content-length"


def binary_header_length(scope: Scope) -> int | None:
    """N of `Inference-Header-Content-Length: N`, or None when the body is plain JSON."""
    for name, value in scope["headers"]:
        if name == BINARY_HEADER:
            if not value.isdigit():
                raise HTTPException(400, "Inference-Header-Content-Length must be the byte "
                                    "length of the JSON header that starts the body")
            return int(value)
    return None


def as_json(tree: Any) -> Any:
    """`tree` with each array of a binary part written as a base64 tensor object: the JSON a
    client could have sent instead (for what is kept as JSON, such as a registered graph)."""
    if isinstance(tree, np.ndarray):
        return encode(tree, encoding="base64")
    if isinstance(tree, dict):
        return {k: as_json(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [as_json(v) for v in tree]
    return tree


def parse(scope: Scope, body: bytes) -> Any:
    """The request's JSON, with binary tensors (when the body has them) as arrays."""
    length = binary_header_length(scope)
    if length is None:
        return orjson.loads(body)
    if length > len(body):
        raise HTTPException(400, f"Inference-Header-Content-Length is {length}, but the body "
                            f"has only {len(body)} bytes")
    return attach_binary(orjson.loads(body[:length]), memoryview(body)[length:])
