"""GET /whoami: whom the request's key was issued to, so a client or the review page can tell
a personal key from one its role shares."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from service.api.deps import AnyKey
from service.config import Role

router = APIRouter(tags=["auth"])


class CallerPublic(BaseModel):
    role: Role
    name: str | None  # None: the key is shared by its role; review requests name the person


@router.get("/whoami", response_model=CallerPublic)
async def whoami(caller: AnyKey) -> CallerPublic:
    return CallerPublic(role=caller.role, name=caller.name)
