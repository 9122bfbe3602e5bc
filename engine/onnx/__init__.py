"""ONNX import: a serialized ONNX model becomes an ordinary graph of the op table.

Graph inputs become inputs; initializers become inputs with defaults (the weights stay on the
server and can be differentiated by naming them in `sources`), except those an op reads as
constants (shapes, axes, pads, slice bounds); each ONNX node maps to ops of the table through
one declaration per ONNX op type in `engine.onnx.mapping`. The `onnx` package is imported on
first use, so a server that never imports a model does not pay for it.

>>> graph = translate(model_bytes, max_elements=10**6)   # doctest: +SKIP
>>> graph["inputs"]["W"]["default"]["dtype"]             # doctest: +SKIP
'float32'
"""

from __future__ import annotations

from typing import Any

MEDIA_TYPE = "application/onnx"


def translate(blob: bytes, *, max_elements: int, max_nodes: int | None = None
              ) -> dict[str, Any]:
    """The JSON graph of a serialized ONNX `ModelProto`, or InvalidGraph (naming the ONNX
    node and its op type) when it cannot be translated."""
    from engine.onnx.translate import translate_model

    return translate_model(blob, max_elements=max_elements, max_nodes=max_nodes)


def coverage() -> list[dict[str, Any]]:
    """The ONNX op types the import maps: domain, op type, opsets covered and what they map
    to, in declaration order."""
    from engine.onnx.mapping import MAPPINGS

    return [m.describe() for m in MAPPINGS.values()]
