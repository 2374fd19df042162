"""What a job needs (settings, database, tags, encoder), built once per worker process.

RQ calls plain module-level functions, so the worker process builds this context from its
environment on first use and keeps it; tests build their own with `use_context`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.engine import Engine

from service.config import Settings
from service.db import init_db, make_engine
from service.ml.encoder import Encoder, load_encoder
from service.tags import TagSet, load_tags


@dataclass
class JobContext:
    settings: Settings
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = make_engine(self.settings.resolved_database_url)
        try:
            init_db(self.engine)
        except Exception:
            self.engine.dispose()  # the worker builds it again once the database answers
            raise

    @cached_property
    def tags(self) -> TagSet:
        return load_tags(self.settings.tags_file)

    @cached_property
    def encoder(self) -> Encoder:
        return load_encoder(
            self.settings.resolved_encoder_dir,
            self.settings.encoder,
            threads=self.settings.worker_threads,
        )


_context: JobContext | None = None


def get_context() -> JobContext:
    """This process's context, built from TAGFLOW_* on first use."""
    global _context
    if _context is None:
        _context = JobContext(Settings())
    return _context


def use_context(context: JobContext | None) -> None:
    """Install an explicit context (the worker entry point and tests do this)."""
    global _context
    _context = context
