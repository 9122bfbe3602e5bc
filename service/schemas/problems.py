"""The one error envelope: RFC 9457 problem details, as `application/problem+json`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(description="where in the request: 'body', 'path' or "
                                 "'query', then field names and list indexes")
    msg: str


EXAMPLE: dict[str, Any] = {
    "type": "urn:gradtape:problem:invalid-graph",
    "title": "Invalid graph",
    "status": 422,
    "detail": "node 'z': op 'multiply' takes 2 arguments, got 1",
    "errors": [{"loc": ["body", "graph", "nodes", 1, "args"],
                "msg": "op 'multiply' takes 2 arguments, got 1"}],
    "node": "z",
}


class Problem(BaseModel):
    """What went wrong, and how to fix it. Some problem types add fields of their own (a
    `non-finite` problem has `phase`, `nan_count` and `inf_count`), so clients should keep
    fields they do not know."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE]})

    type: str = Field(pattern=r"^urn:gradtape:problem:[a-z0-9-]+$",
                      description="urn:gradtape:problem:<slug>")
    title: str = Field(description="a short summary of the problem type")
    status: int = Field(ge=400, le=599, description="the HTTP status code")
    detail: str = Field(description="what went wrong in this request, and how to fix it")
    errors: list[FieldProblem] | None = Field(None, description="one entry per request field "
                                              "at fault")
    node: str | None = Field(None, description="the id of the graph node at fault")
