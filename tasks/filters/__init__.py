"""Heuristic quality filters: plain Python, one small class per rule set.

``build_chain(cfg)`` turns a ``FilterConfig`` into the filters to apply, in
``cfg.order``, leaving out disabled ones. Each filter returns ``True`` to keep a
``Doc`` or ``(False, reason)`` to drop it (see ``tasks/filters/base.py``).
"""

from __future__ import annotations

from pretrain.config import DownloadConfig, FilterConfig
from tasks.filters.base import Doc, DocFilter, Verdict
from tasks.filters.c4 import C4QualityFilter
from tasks.filters.fineweb import FineWebQualityFilter
from tasks.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from tasks.filters.url import FilterListError, UrlFilter

__all__ = [
    "FILTERS",
    "C4QualityFilter",
    "Doc",
    "DocFilter",
    "FilterListError",
    "FineWebQualityFilter",
    "GopherQualityFilter",
    "GopherRepetitionFilter",
    "UrlFilter",
    "Verdict",
    "build_chain",
]

FILTERS: dict[str, type[DocFilter]] = {
    cls.name: cls
    for cls in (UrlFilter, GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter, FineWebQualityFilter)
}


def build_chain(cfg: FilterConfig, download: DownloadConfig | None = None) -> list[DocFilter]:
    """The enabled filters of ``cfg``, in ``cfg.order``; ``download`` is for remote URL lists."""
    chain: list[DocFilter] = []
    for name in cfg.order:
        section = getattr(cfg, name)
        if not section.enabled:
            continue
        chain.append(UrlFilter(section, download) if name == "url" else FILTERS[name](section))
    return chain
