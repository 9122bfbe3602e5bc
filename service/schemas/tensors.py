"""Tensors in requests are decoded by the engine (one pass with NumPy, errors with the field at
fault), so the model accepts any JSON here and documents the three forms."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, WithJsonSchema

_DTYPES = ["float32", "float64", "int32", "int64", "bool"]

TENSOR_SCHEMA: dict[str, Any] = {
    "title": "Tensor",
    "description": "A bare number, boolean or nested array (numbers become float32), or "
                   "{dtype, shape, data} with nested or flat row-major data, or "
                   "{dtype, shape, b64} with the little-endian bytes in base64. Non-finite "
                   "values are the strings 'NaN', 'Infinity', '-Infinity'.",
    "anyOf": [
        {"type": "number"},
        {"type": "boolean"},
        {"type": "array", "items": {}},
        {"type": "object", "required": ["data"],
         "properties": {"dtype": {"enum": _DTYPES}, "shape": {"type": "array",
                                                             "items": {"type": "integer"}},
                        "data": {}}},
        {"type": "object", "required": ["shape", "b64"],
         "properties": {"dtype": {"enum": _DTYPES}, "shape": {"type": "array",
                                                             "items": {"type": "integer"}},
                        "b64": {"type": "string", "contentEncoding": "base64"}}},
    ],
    "examples": [[[1, 1], [1, 1]], {"dtype": "float64", "shape": [2], "data": [1, 2]}],
}

Tensor = Annotated[Any, WithJsonSchema(TENSOR_SCHEMA)]

Encoding = Literal["json", "base64", "none"]
"""How response tensors are written: nested `data`, raw `b64` bytes, or dtype and shape only
("none", for results kept on the server with `save_as` or bound by `run`)."""


class TensorOut(BaseModel):
    """A tensor in a response: `data` (nested lists, a bare number for a scalar) or `b64`."""

    dtype: str
    shape: list[int]
    data: Any = None
    b64: str | None = None
