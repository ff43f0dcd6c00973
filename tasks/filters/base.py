"""The document and the one contract every filter follows.

A filter has a class attribute ``name`` (its section name in ``FilterConfig``)
and a method ``filter(doc)`` that returns ``True`` to keep the document or
``(False, reason)`` to drop it, ``reason`` being a snake_case string unique
across filters. A filter only decides: batching, counting and writing are done
once, by the runner (``tasks/filter_runner.py``). The one exception is C4 line
cleaning, which rewrites ``doc.text`` (see ``tasks/filters/c4.py``).

Filters never raise on text: empty, whitespace only, one word or binary junk
all get a verdict.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

Verdict = bool | tuple[bool, str]


@dataclass
class Doc:
    """One document as the filters see it; ``lang`` is an ISO 639-1 code or ""."""

    text: str
    url: str = ""
    lang: str = ""
    id: str = ""


class DocFilter(ABC):
    """Base of the heuristic filters: ``filter(doc)`` -> True or (False, reason)."""

    name: ClassVar[str]

    @abstractmethod
    def filter(self, doc: Doc) -> Verdict:
        """True to keep ``doc``; (False, reason) to drop it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
