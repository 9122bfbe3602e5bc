"""Tensors in requests are decoded by the engine (one pass with NumPy, errors with the field at
fault), so the model accepts any JSON here and documents the three forms: its JSON schema says
exactly what the engine decodes, except what JSON Schema cannot say (a ragged array, data that
does not fill the shape, bytes that do not fit it, a value out of its dtype's range)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from typing_extensions import TypeAliasType

DType = Literal["float32", "float64", "int32", "int64", "bool"]
NonFinite = Literal["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"]
MAX_DIMS = 32
MAX_DIM = 2**31 - 1
Shape = Annotated[list[Annotated[int, Field(ge=0, le=MAX_DIM)]], Field(max_length=MAX_DIMS)]
"""At most 32 dimensions of at most 2**31 - 1 each, as the engine decodes them."""

# The aliases below only document (validation is the engine's); mypy cannot follow a
# recursive TypeAliasType, nor one named as the schema component rather than the variable.
NumberData = TypeAliasType(  # type: ignore[misc]
    "NumberData",
    Annotated[float | NonFinite | list["NumberData"],  # type: ignore[misc]
              Field(description="a number, 'NaN', 'Infinity', '-Infinity', or a (nested) "
                    "array of them")])
BoolData = TypeAliasType(  # type: ignore[misc]
    "BoolData",
    Annotated[bool | list["BoolData"],  # type: ignore[misc]
              Field(description="a boolean, or a (nested) array of booleans")])

B64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class TensorObject(BaseModel):
    """A tensor with an explicit dtype: `data` nested, or flat (row-major) with `shape`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"dtype": "float64", "shape": [2], "data": [1, 2]}]})

    dtype: DType = "float32"
    shape: Shape | None = Field(None, description="required when data is flat")
    data: NumberData | BoolData


class TensorBytes(BaseModel):
    """A tensor as raw bytes: base64 of the little-endian, row-major buffer."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"dtype": "float32", "shape": [2], "b64": "AACAPwAAAEA="}]})

    dtype: DType = "float32"
    shape: Shape
    b64: str = Field(pattern=B64, json_schema_extra={"contentEncoding": "base64"})


TensorForms = TypeAliasType(  # type: ignore[misc]
    "Tensor",
    Annotated[float | bool | NonFinite | list[NumberData] | list[BoolData] | TensorObject
              | TensorBytes,
              Field(description="A bare number, boolean or nested array (numbers become "
                    "float32, booleans bool), or {dtype, shape, data}, or {dtype, shape, "
                    "b64}. Non-finite values are the strings 'NaN', 'Infinity' and "
                    "'-Infinity'.", examples=[[[1, 1], [1, 1]]])])


def _as_sent(value: Any) -> Any:
    return value


Tensor = Annotated[Any, PlainValidator(_as_sent, json_schema_input_type=TensorForms)]
"""A request tensor: passed to the engine as sent, documented as `TensorForms`."""

Encoding = Literal["json", "base64", "none"]
"""How response tensors are written: nested `data`, raw `b64` bytes, or dtype and shape only
("none", for results kept on the server with `save_as` or bound by `run`)."""


class TensorOut(BaseModel):
    """A tensor in a response: `data` (nested lists, a bare number for a scalar) or `b64`."""

    dtype: str
    shape: list[int]
    data: Any = None
    b64: str | None = None
