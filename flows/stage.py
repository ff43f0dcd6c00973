"""A stage of the end-to-end run, declared once: ``Stage``; and what a running stage sees: ``Pipeline``.

Each stage module (flows/ingest.py, filter.py, ...) ends with its ``STAGE = Stage(...)``;
``flows.registry.STAGES`` orders them, and ``flows.pretrain`` runs them in that order, each
reading the folder the stage before it left (``Stage.output``). A stage's cache key is
Marin-style (``Stage.key``): its name, what it reads (the previous stage's key, or for the
first stage the identity of the run's inputs), the config that changes its result, the
version of the code it runs (``Stage.code_version``, the import closure of its modules) and
its output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flows.runner import ShardJob
from pretrain.config import PipelineConfig
from pretrain.provenance import code_version, stable_hash

PREVIOUS = "previous"  # Stage.reads: the output of the stage before it in the registry
UNPLACED = Path("/unplaced")  # a stage's folder while its content-addressed folder is computed


@dataclass
class Pipeline:
    """One end-to-end run as its stages see it: the recipe, the run root and what has finished.

    ``folders`` maps every registered stage to its folder under ``root``; ``results`` holds
    each finished stage's trimmed summary with its ``key`` and ``cached``. While a stage runs,
    ``input_dir`` is the folder it reads (None for a stage that reads the run's inputs),
    ``key`` its cache key and ``config`` what ``Stage.key_config`` gave (the train stage's
    planned model, for one, is chosen once and then both keyed and trained).
    """

    recipe: PipelineConfig
    root: Path
    folders: dict[str, Path]
    results: dict[str, dict] = field(default_factory=dict)
    input_dir: Path | None = None
    key: str | None = None
    config: object = None

    def folder(self, stage: str) -> Path:
        return self.folders[stage]


@dataclass(frozen=True)
class Stage:
    """One stage: what it is called, where it writes, what it runs and how the end-to-end flow calls it.

    ``run(pipeline) -> summary`` calls the stage's flow on ``pipeline.input_dir`` into its
    folder; a summary with ``skipped`` (quality without models or reference text, a disabled pii or
    decontaminate, sources without branches) leaves a ``stage.json`` that says so (its key, no
    products), so a rerun takes it from cache, and the next stage reads what this one read.
    """

    name: str  # "tokenize": the key of summary.json's stages, PipelineConfig.until's value
    folder: str  # under the run root: "tokens"
    products: tuple[str, ...]  # globs under the folder: what stage.json records (size, mtime)
    run: Callable[[Pipeline], dict]
    section: str | None = None  # the PipelineConfig field with its config (the default key_config)
    jobs: tuple[ShardJob, ...] = ()  # its shard runner jobs
    code: tuple[str, ...] | None = None  # further root modules; None: the module of ``run``
    reasons: tuple[str, ...] = ()  # the drop reasons it counts in report.json
    reads: str | None = PREVIOUS  # None: the run's inputs, whose identity ``inputs`` gives
    inputs: Callable[[Pipeline], object] | None = None
    key_config: Callable[[Pipeline], object] | None = None  # default: the recipe's ``section``
    output: Callable[[Pipeline, dict], Path] | None = None  # what the next stage reads; default: its folder

    def __post_init__(self):
        if self.reads not in (None, PREVIOUS):  # the registry's order says what a stage reads
            raise ValueError(f"stage {self.name}: reads is None (the run's inputs) or {PREVIOUS!r}, not {self.reads!r}")

    @property
    def code_modules(self) -> tuple[str, ...]:
        """The modules whose import closure is this stage's code: its flow module, its jobs' work modules."""
        own = (self.run.__module__,) if self.code is None else self.code
        return tuple(sorted({*own, *(name for job in self.jobs for name in job.modules())}))

    def code_version(self) -> str:
        return code_version(*self.code_modules)

    def config_of(self, pipeline: Pipeline) -> object:
        if self.key_config is not None:
            return self.key_config(pipeline)
        return getattr(pipeline.recipe, self.section) if self.section else None

    def upstream(self, pipeline: Pipeline, previous: dict | None) -> object:
        """What it reads, for its key: the previous stage's key, or the run's inputs' identity."""
        if self.reads is None:
            return self.inputs(pipeline) if self.inputs else None
        return previous["key"]

    def key(self, upstream: object, config: object, folder: Path) -> str:
        dump = config.model_dump() if hasattr(config, "model_dump") else config
        return stable_hash(self.name, upstream, dump, self.code_version(), str(folder.resolve()),
                           length=24)

    def content_folder(self, pipeline: Pipeline, upstream: object, root: Path) -> Path:
        """ROOT/<folder>-<hash of its key without the folder>: named by what its result depends on (Marin's
        output paths), so two runs that agree up to this stage share its folder, and with it the cache hit."""
        pipeline.folders[self.name] = UNPLACED  # what a config that names its own folder (train's run folder) names
        return root / f"{self.folder}-{self.key(upstream, self.config_of(pipeline), UNPLACED)[:16]}"

    def next_input(self, pipeline: Pipeline, result: dict) -> Path:
        return self.output(pipeline, result) if self.output else pipeline.folder(self.name)

