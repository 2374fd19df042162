"""Reviewers as people: one row per name as a person reads it (`name_key`), holding the
spelling the person first acted under with a key the role shares.

"Ann", "ann", "ANN", fullwidth "ａｎｎ" and Cyrillic "Аnn" read the same, so they are one
reviewer: a request under any of them is recorded under the first one seen. Otherwise one
person could give a label, its second opinion and the decision between the two under three
spellings, and the overlap's independence and the reviewer figures would count them as three.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class Reviewer(SQLModel, table=True):
    # `service.api_keys.name_key` of the name: the primary key makes two first requests at
    # once, under two spellings, one row.
    name_key: str = Field(primary_key=True)
    name: str  # the spelling every review action of this person is recorded under
    first_seen: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
