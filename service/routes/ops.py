"""The op catalogue, straight from the engine's table."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from engine.ops import OPS
from service.responses import FastJSONResponse, FastRoute
from service.schemas.service import OpInfo

router = APIRouter(prefix="/v1/ops", tags=["ops"], route_class=FastRoute)

_CATALOGUE = [op.describe() for op in OPS.values()]


@router.get("", responses={200: {"model": list[OpInfo]}})
async def list_ops(category: str | None = Query(None, description="only this category"),
                   differentiable: bool | None = None) -> Any:
    """Every op: name, aliases, arity, attributes, differentiable, one-line formula."""
    ops = [o for o in _CATALOGUE
           if (category is None or o["category"] == category)
           and (differentiable is None or o["differentiable"] == differentiable)]
    return FastJSONResponse(ops)
