"""Prefect flow: dataset-wide exact, URL and MinHash LSH deduplication on Ray.

Four stages of Prefect tasks, each running its work as a Ray task
(``tasks.dedup`` has the work and the memory bounds):

1. ``dedup-hash``, one per shard: keys of every document, bucketed;
2. ``dedup-buckets``, one per (slot, partition): groups of equal keys -> edges;
3. ``dedup-clusters``, one: connected components, the kept document of each;
4. ``dedup-write``, one per shard: kept rows + ``dup_cluster``.

Every task is retried on transient errors only and cached. Keys are chained
like output paths in Marin: a stage-1 key covers the input shard's identity
(path, size, mtime), the config and the code version; each later key covers
the keys of what it reads. A task whose output file is missing is recomputed
even if a cached result exists. Tasks pass paths and return small reports.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import ray
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import (
    SHARD_TASK_OPTIONS, claim_output, file_identity, funnel_table, gather, output_lock, parameter_policy,
    parquet_shards, publish_markdown, write_report,
)
from pretrain.config import DedupConfig, RayConfig
from pretrain.provenance import code_version, stable_hash, write_info_json
from tasks.dedup import DEDUP_MODULES
from tasks.dedup.apply import write_deduped_shard
from tasks.dedup.buckets import find_edges
from tasks.dedup.clusters import build_clusters
from tasks.dedup.hashing import hash_shard, stage1_outputs
from tasks.dedup.ids import check_unique_ids
from tasks.dedup.layout import REASONS, Layout, key_slots
from tasks.ray_runtime import ensure_ray
from tasks.shards import check_document_shard



class DedupFailed(RuntimeError):
    """A stage had tasks that failed after their retries; later stages cannot run."""


# Cache keys: plain functions of the task parameters, so the flow can chain them.

def hash_key(shard_path: str, output_dir: str, config: DedupConfig) -> str:
    return stable_hash("dedup-hash", file_identity(shard_path), config.model_dump(),
                       code_version(*DEDUP_MODULES), output_dir)


def bucket_key(upstream: str, slot_index: int, part: int, output_dir: str, config: DedupConfig) -> str:
    return stable_hash("dedup-buckets", upstream, slot_index, part, config.model_dump(),
                       code_version(*DEDUP_MODULES), output_dir)


def stage_key(stage: str, upstream: str, output_dir: str, *extra) -> str:
    return stable_hash(stage, upstream, code_version(*DEDUP_MODULES), output_dir, *extra)


@ray.remote(num_cpus=1, max_retries=3)
def _hash_on_ray(shard_path: str, shard: str, output_dir: str, config: DedupConfig) -> dict:
    check_document_shard(Path(shard_path), required=("id", "text"))
    return hash_shard(Path(shard_path), shard, Layout(Path(output_dir)), config)


@ray.remote(num_cpus=1, max_retries=3)
def _buckets_on_ray(shards: list[str], slot_index: int, part: int, output_dir: str, config: DedupConfig) -> dict:
    slot = key_slots(config)[slot_index]
    return find_edges(Layout(Path(output_dir)), shards, slot_index, slot, part, config)


@ray.remote(num_cpus=1, max_retries=3)
def _clusters_on_ray(shards: list[str], inputs: list[str], output_dir: str, config: DedupConfig) -> dict:
    return build_clusters(Layout(Path(output_dir)), shards, [Path(p) for p in inputs], config)


@ray.remote(num_cpus=1, max_retries=3)
def _write_on_ray(shard_path: str, shard: str, output_dir: str) -> dict:
    layout = Layout(Path(output_dir))
    return write_deduped_shard(Path(shard_path), layout.cluster_table(shard), layout.output_shard(shard))


@task(name="dedup-hash", task_run_name="dedup-hash-{shard}", **SHARD_TASK_OPTIONS,
      cache_key_fn=lambda ctx, p: hash_key(p["shard_path"], p["output_dir"], p["config"]))
def hash_task(shard_path: str, shard: str, output_dir: str, config: DedupConfig) -> dict:
    """Stage 1: the bucketed keys of one shard."""
    return ray.get(_hash_on_ray.remote(shard_path, shard, output_dir, config))


@task(name="dedup-buckets", task_run_name="dedup-buckets-{slot_name}-p{part}", **SHARD_TASK_OPTIONS,
      cache_key_fn=lambda ctx, p: bucket_key(p["upstream"], p["slot_index"], p["part"], p["output_dir"], p["config"]))
def buckets_task(shards: list[str], slot_index: int, slot_name: str, part: int, output_dir: str,
                 config: DedupConfig, upstream: str) -> dict:
    """Stage 2: the duplicate edges of one (slot, partition) bucket across all shards."""
    return ray.get(_buckets_on_ray.remote(shards, slot_index, part, output_dir, config))


@task(name="dedup-clusters", **SHARD_TASK_OPTIONS,
      cache_key_fn=lambda ctx, p: stage_key("dedup-clusters", p["upstream"], p["output_dir"]))
def clusters_task(shards: list[str], inputs: list[str], output_dir: str, config: DedupConfig, upstream: str) -> dict:
    """Stage 3: clusters, kept documents and the per-shard cluster tables."""
    return ray.get(_clusters_on_ray.remote(shards, inputs, output_dir, config))


@task(name="dedup-write", task_run_name="dedup-write-{shard}", **SHARD_TASK_OPTIONS,
      cache_key_fn=lambda ctx, p: stage_key("dedup-write", p["upstream"], p["output_dir"], p["shard"]))
def write_task(shard_path: str, shard: str, output_dir: str, upstream: str) -> dict:
    """Stage 4: the kept rows of one shard with their dup_cluster."""
    return ray.get(_write_on_ray.remote(shard_path, shard, output_dir))


def collect(stage: str, futures: dict) -> tuple[list[dict], int]:
    """Wait for every future of a stage; raise DedupFailed (after all finished) if any failed."""
    results, failures, hits = gather(stage, futures)
    if failures:
        raise DedupFailed(f"{stage}: {len(failures)} of {len(futures)} task(s) failed: "
                          + "; ".join(f"{f['input']}: {f['error']}" for f in failures))
    return results, hits


def summarize(writes: list[dict], clusters: dict, buckets: list[dict], hits: dict, seconds: float) -> dict:
    dropped = Counter({reason: 0 for reason in REASONS})
    for report in writes:
        dropped.update(report["dropped"])
    documents_in = sum(r["documents"] for r in writes)
    return {
        "shards": len(writes),
        "documents_in": documents_in,
        "documents_kept": sum(r["kept"] for r in writes),
        "dropped": dict(sorted(dropped.items())),
        "clusters": clusters["clusters"],
        "clustered_documents": clusters["clustered_documents"],
        "candidate_edges": sum(b["candidates"] for b in buckets),
        "verified_edges": sum(b["edges"] for b in buckets),
        "distinct_edges": clusters["edges"],
        "largest_clusters": clusters["largest"],
        "cache_hits": hits,
        "seconds": round(seconds, 2),
        "docs_per_s": round(documents_in / seconds, 1) if seconds > 0 else None,
        "reports": sorted(writes, key=lambda r: r["shard"]),
    }


def publish(summary: dict) -> None:
    rows = [("documents in", summary["documents_in"]), ("documents kept", summary["documents_kept"]),
            ("clusters", summary["clusters"]), ("documents in clusters", summary["clustered_documents"])]
    drops = funnel_table(list(summary["dropped"].items()), ("dropped, by reason", "documents"))
    lines = funnel_table(rows) + ["", *drops]
    lines += ["", f"{summary['seconds']} s, {summary['docs_per_s']} documents/s"]
    publish_markdown("dedup-funnel", "Deduplication funnel", lines)
    if summary["largest_clusters"]:
        create_table_artifact(key="dedup-largest-clusters", table=summary["largest_clusters"],
                              description="Largest duplicate clusters (dup_cluster = id of the kept document)")


def run_hash_stage(inputs: list[Path], layout: Layout, config: DedupConfig) -> tuple[int, str]:
    """Stage 1; returns (cache hits, the key of its outputs)."""
    futures = {}
    for path in inputs:
        missing = any(not p.exists() for p in stage1_outputs(layout, path.stem, config))
        runner = hash_task.with_options(refresh_cache=missing)
        futures[runner.submit(str(path), path.stem, str(layout.output_dir), config)] = path.stem
    _, hits = collect("dedup-hash", futures)
    return hits, stable_hash([hash_key(str(path), str(layout.output_dir), config) for path in inputs])


def run_bucket_stage(names: list[str], layout: Layout, config: DedupConfig, upstream: str) -> tuple[list, int, str]:
    """Stage 2; returns (bucket reports, cache hits, the key of its outputs)."""
    futures, keys, output = {}, [], str(layout.output_dir)
    for slot_index, slot in enumerate(key_slots(config)):
        for part in range(config.hash_partitions):
            runner = buckets_task.with_options(refresh_cache=not layout.edges(slot, part).exists())
            future = runner.submit(names, slot_index, slot.name, part, output, config, upstream)
            futures[future] = f"{slot.name}-p{part}"
            keys.append(bucket_key(upstream, slot_index, part, output, config))
    reports, hits = collect("dedup-buckets", futures)
    return reports, hits, stable_hash(keys)


def run_cluster_stage(inputs: list[Path], layout: Layout, config: DedupConfig, upstream: str) -> tuple[dict, int, str]:
    """Stage 3; returns (cluster summary, cache hits, the key of its outputs)."""
    names, output = [p.stem for p in inputs], str(layout.output_dir)
    missing = not layout.cluster_summary.exists() or any(not layout.cluster_table(n).exists() for n in names)
    runner = clusters_task.with_options(refresh_cache=missing)
    future = runner.submit(names, [str(p) for p in inputs], output, config, upstream)
    (summary,), hits = collect("dedup-clusters", {future: "clusters"})
    return summary, hits, stage_key("dedup-clusters", upstream, output)


def run_write_stage(inputs: list[Path], layout: Layout, upstream: str) -> tuple[list, int]:
    """Stage 4; returns (per-shard reports, cache hits)."""
    futures = {}
    for path in inputs:
        runner = write_task.with_options(refresh_cache=not layout.output_shard(path.stem).exists())
        futures[runner.submit(str(path), path.stem, str(layout.output_dir), upstream)] = path.stem
    return collect("dedup-write", futures)


@flow(name="dedup", task_runner=ThreadPoolTaskRunner(max_workers=16))
def dedup_flow(config: DedupConfig, input_dir: str, output_dir: str, ray_config: RayConfig = RayConfig()) -> dict:
    """Deduplicate the Parquet shards of ``input_dir`` into ``output_dir`` (same shard names).

    Also writes ``dedup/clusters/<shard>.parquet``, ``info.json`` and ``report.json``;
    raises DedupFailed if a stage's tasks fail after their retries, and DuplicateIds (a
    ValueError naming shards and ids) if document ids repeat. A run from a
    deployment has its paths confined to the data root (``pretrain.paths``); a second
    run on the same output folder fails at once (``OutputInUse``).
    """
    policy = parameter_policy()
    if policy is not None:
        input_dir, output_dir = str(policy.path(input_dir, "input_dir")), str(policy.path(output_dir, "output_dir"))
    inputs = parquet_shards(input_dir)
    out = Path(output_dir).resolve()
    if out == Path(input_dir).resolve():
        raise ValueError(f"output_dir must differ from input_dir ({out}): shards keep their names")
    with output_lock(out, "dedup"):
        return _dedup(config, inputs, input_dir, out, ray_config)


def _dedup(config: DedupConfig, inputs: list[Path], input_dir: str, out: Path, ray_config: RayConfig) -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    layout, hits = Layout(out), {}
    ensure_ray(ray_config)
    logger.info("dedup: %d shard(s) from %s into %s, %d key slot(s) x %d partition(s)",
                len(inputs), input_dir, out, len(key_slots(config)), config.hash_partitions)
    stale = claim_output(out, "dedup", [p.stem for p in inputs], logger)

    hits["hash"], upstream = run_hash_stage(inputs, layout, config)
    check_unique_ids(layout, [p.stem for p in inputs], inputs, config.hash_partitions)
    buckets, hits["buckets"], upstream = run_bucket_stage([p.stem for p in inputs], layout, config, upstream)
    clusters, hits["clusters"], upstream = run_cluster_stage(inputs, layout, config, upstream)
    writes, hits["write"] = run_write_stage(inputs, layout, upstream)

    summary = summarize(writes, clusters, buckets, hits, time.perf_counter() - started)
    summary["stale_removed"] = stale
    write_info_json(out, stage="dedup", code=code_version(*DEDUP_MODULES), config=config.model_dump(),
                    inputs=[str(p) for p in inputs])
    write_report(out, summary)
    publish(summary)
    logger.info("dedup: kept %d of %d documents; dropped %s; %d clusters", summary["documents_kept"],
                summary["documents_in"], summary["dropped"], summary["clusters"])
    return summary
