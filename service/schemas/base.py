"""What every request model shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A request body: unknown fields are an error, and values are not coerced (`"3"` is not
    an integer, `true` is not a number), so the server accepts exactly what the schema
    says."""

    model_config = ConfigDict(extra="forbid", strict=True)


Name = Annotated[str, Field(min_length=1)]
"""A tensor, input or node name."""
