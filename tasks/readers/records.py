"""What a reader reads and yields: a ``Part`` of an input file, a ``Record`` (see tasks/readers/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


@dataclass(frozen=True)
class Part:
    """The piece of an input file one task reads: all of it, or bytes [start, end) (a multistream dump)."""

    index: int = 0
    count: int = 1
    start: int | None = None
    end: int | None = None

    @property
    def whole(self) -> bool:
        return self.count == 1 and self.start is None


WHOLE = Part()


class Record(NamedTuple):
    """One document as a reader found it; ``tasks.ingest`` adds the id, source tag and language."""

    record_id: str  # stable within the source: a page id, an arXiv id, a dataset's id field
    text: str
    url: str | None = None
    fetch_time: datetime | None = None  # e.g. a Wikipedia revision's timestamp
    source: str | None = None  # a generic record's own `source` field
