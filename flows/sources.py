"""The sources stage of the end-to-end run: more source branches, joined with the crawl's documents.

``PipelineConfig.sources`` names the branches. Each is either a curated source ingested by the readers
(a Wikipedia dump, an arXiv tarball, JSONL/Parquet/HF data: ``flows.ingest.ingest_flow``) or a synthetic
one, the crawl's documents as an earlier stage left them rephrased by a model
(``flows.synthesize.synthesize_flow``). Each branch writes under ``sources/branches/<name>/``; the stage
folder then holds every document shard the next stage reads: the crawl's, under their own names, and
each branch's as ``<name>-<shard>.parquet``, hard links where the disk allows (copies where not), so
decontamination and tokenize (with its ``mixture``) see all sources in one folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefect import flow, get_run_logger

from flows.common import file_identity, output_lock
from flows.ingest import ingest_flow
from flows.stage import Pipeline, Stage
from pretrain.config import RayConfig, SourceBranch
from pretrain.paths import parquet_files
from tasks.sources import input_identity, resolve_inputs

BRANCHES = "branches"


def branch_folder(out: Path, name: str) -> Path:
    return out / BRANCHES / name


def run_branch(name: str, branch: SourceBranch, folder: Path, stage_folders: dict[str, str],
               ray_config: RayConfig) -> dict:
    """Ingest or synthesize one branch into ``folder``; its summary."""
    from flows.synthesize import synthesize_flow

    if branch.ingest is not None:
        return ingest_flow(config=branch.ingest, output_dir=str(folder), ray_config=ray_config)
    reading = Path(stage_folders[branch.from_stage])
    try:
        parquet_files(reading)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"sources.{name}: synthesize reads the {branch.from_stage} stage's documents: {error} "
                         f"(is that stage skipped, or after `until`?)") from None
    return synthesize_flow(config=branch.synthesize, input_dir=str(reading), output_dir=str(folder),
                           ray_config=ray_config)


def link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across file systems), replacing what was there."""
    temporary = target.with_name(f".{target.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    os.replace(temporary, target)


def join(out: Path, crawl: Path, branches: dict[str, Path]) -> dict[str, int]:
    """Make ``out/*.parquet`` exactly the crawl's shards and every branch's (``<branch>-<stem>``); shards per source."""
    wanted = {shard.name: shard for shard in parquet_files(crawl)}
    counts = {"crawl": len(wanted)}
    for name, folder in branches.items():
        shards = parquet_files(folder)
        counts[name] = len(shards)
        for shard in shards:
            joined = f"{name}-{shard.name}"
            if joined in wanted:
                raise ValueError(f"sources: the crawl already has a shard named {joined}; rename branch {name!r}")
            wanted[joined] = shard
    for stale in out.glob("*.parquet"):
        if stale.name not in wanted:
            stale.unlink()
    for joined, shard in wanted.items():
        link(shard, out / joined)
    return counts


@flow(name="sources")
def sources_flow(sources: dict[str, SourceBranch], crawl_dir: str, output_dir: str, stage_folders: dict[str, str],
                 ray_config: RayConfig = RayConfig()) -> dict:
    """Run every branch of ``sources`` (each into OUTPUT/branches/<name>), then join them with the crawl's
    shards in ``crawl_dir`` as OUTPUT/*.parquet. ``stage_folders`` maps a stage name to its folder (what a
    synthetic branch's ``from_stage`` reads)."""
    logger = get_run_logger()
    out = Path(output_dir)
    with output_lock(out, "sources"):
        branches, summaries = {}, {}
        for name, branch in sources.items():
            logger.info("sources: branch %s", name)
            summary = run_branch(name, branch, branch_folder(out, name), stage_folders, ray_config)
            summaries[name] = {key: summary[key] for key in ("documents", "documents_in", "records_read", "dropped",
                                                              "cache_hits", "seconds") if key in summary}
            branches[name] = branch_folder(out, name)
        shards = join(out, Path(crawl_dir), branches)
    documents = documents_in(out)
    logger.info("sources: %d documents in %d shards (%s)", sum(documents.values()), sum(shards.values()),
                ", ".join(f"{source} {n}" for source, n in documents.items()))
    return {"documents": sum(documents.values()), "sources": documents, "shards": shards, "branches": summaries}


def documents_in(folder: Path) -> dict[str, int]:
    """Documents per ``source`` tag over the folder's shards."""
    from tasks.tokenize import shard_sources

    totals: dict[str, int] = {}
    for shard in parquet_files(folder):
        for source, n in shard_sources(shard).items():
            totals[source] = totals.get(source, 0) + n
    return dict(sorted(totals.items()))


# ---------------------------------------------------------------- the sources stage of the end-to-end run


def run_in_pipeline(pipeline: Pipeline) -> dict:
    if not pipeline.recipe.sources:
        get_run_logger().info("sources: skipped (the recipe has no `sources`)")
        return {"skipped": "the recipe names no further sources"}
    return sources_flow(sources=pipeline.recipe.sources, crawl_dir=str(pipeline.input_dir),
                        output_dir=str(pipeline.folder("sources")),
                        stage_folders={name: str(folder) for name, folder in pipeline.folders.items()},
                        ray_config=pipeline.recipe.ray)


def key_config(pipeline: Pipeline) -> dict:
    """The branches' config, the identity of their input files and of the synthesizing models."""
    keyed = {}
    for name, branch in pipeline.recipe.sources.items():
        if branch.ingest is not None:
            keyed[name] = {"branch": branch, "inputs": [input_identity(item) for item in resolve_inputs(branch.ingest)]}
        else:
            model = branch.synthesize.model
            keyed[name] = {"branch": branch, "model": file_identity(model) if model and Path(model).is_file()
                           else model_identity(model)}
    return keyed


def model_identity(model: str | None) -> list[str] | None:
    """A model folder by its files' identities (path, size, mtime)."""
    if not model or not Path(model).is_dir():
        return None
    return [file_identity(path) for path in sorted(Path(model).rglob("*")) if path.is_file()]


def joined_or_input(pipeline: Pipeline, result: dict) -> Path:
    return pipeline.input_dir if result.get("skipped") else pipeline.folder("sources")


STAGE = Stage(name="sources", folder="sources", section="sources", run=run_in_pipeline, key_config=key_config,
              output=joined_or_input, products=("*.parquet",))
