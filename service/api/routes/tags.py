"""GET /tags: the approved tag list."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from service.api.deps import AnyKey, TagsDep

router = APIRouter(tags=["tags"])


class TagPublic(BaseModel):
    name: str
    description: str


class TagList(BaseModel):
    tags: list[TagPublic]


@router.get("/tags", response_model=TagList)
def list_tags(tags: TagsDep, _caller: AnyKey) -> TagList:
    return TagList(tags=[TagPublic(name=t.name, description=t.description) for t in tags.tags])
