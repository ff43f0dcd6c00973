"""The stages of the end-to-end run, in the order they run: each reads what the one before it wrote.

Adding a stage is one module that ends with its ``STAGE = Stage(...)`` (``flows.stage``) and
one line here (and its name in ``PipelineConfig.until``, which ``tests/test_stage_registry.py``
checks against this list).
"""

from __future__ import annotations

from flows import decontaminate, dedup, eval, filter, ingest, pii, quality, sources, tokenize, train
from flows.stage import Stage

STAGES: tuple[Stage, ...] = (
    ingest.STAGE,
    filter.STAGE,
    pii.STAGE,
    dedup.STAGE,
    quality.STAGE,
    sources.STAGE,
    decontaminate.STAGE,
    tokenize.STAGE,
    train.STAGE,
    eval.STAGE,
)


def names() -> tuple[str, ...]:
    return tuple(stage.name for stage in STAGES)


def stage(name: str) -> Stage:
    """The registered stage called ``name``; an unknown name is an error listing the stages."""
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(names())}")


def until(name: str) -> tuple[Stage, ...]:
    """The stages that run for ``PipelineConfig.until == name``: the first through ``name``."""
    return STAGES[: STAGES.index(stage(name)) + 1]
