"""Prefect flow: dataset-wide exact, URL and MinHash LSH deduplication on Ray.

Four phases of tasks, each a job of the shard runner (``flows/runner.py``) whose
work is in ``tasks.dedup.phases`` (``tasks.dedup`` has the memory bounds):

1. ``dedup-hash``, one per shard: keys of every document, bucketed;
2. ``dedup-buckets``, one per (slot, partition): groups of equal keys -> edges;
3. ``dedup-clusters``, one: connected components, the kept document of each;
4. ``dedup-write``, one per shard: kept rows + ``dup_cluster``.

Every task is retried on transient errors only and cached. Keys are chained
like output paths in Marin: a phase-1 key covers the input shard's identity
(path, size, mtime), the config and the code version; each later key covers
the keys of what it reads (``chained``). A task whose output file is missing is
recomputed even if a cached result exists. Tasks pass paths and return small
reports; a phase with a failed task stops the run before the next phase.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import file_identity, funnel_table, parameter_policy, parquet_shards, publish_markdown
from flows.runner import Shard, ShardJob, StageFailed, StageRun, stage_run
from flows.stage import Pipeline, Stage
from pretrain.config import DedupConfig, RayConfig
from pretrain.provenance import stable_hash
from tasks.dedup.hashing import stage1_outputs
from tasks.dedup.ids import check_unique_ids
from tasks.dedup.layout import REASONS, Layout, key_slots
from tasks.dedup.phases import bucket_edges, cluster_all, hash_checked_shard, write_shard

HASH = ShardJob(name="dedup-hash", work=hash_checked_shard)
BUCKETS = ShardJob(name="dedup-buckets", work=bucket_edges)
CLUSTERS = ShardJob(name="dedup-clusters", work=cluster_all)
WRITE = ShardJob(name="dedup-write", work=write_shard)
PHASES = {"hash": HASH, "buckets": BUCKETS, "clusters": CLUSTERS, "write": WRITE}  # report.json's cache_hits keys


def chained(job: ShardJob, shards: list[Shard]) -> str:
    """The key of a phase's outputs: what the next phase's keys cover."""
    return stable_hash([shard.cache_key(job) for shard in shards])


def hash_shards(inputs: list[Path], layout: Layout, config: DedupConfig) -> list[Shard]:
    """Phase 1, one per shard: keyed on the input's identity, the config and the output folder."""
    out = str(layout.output_dir)
    return [Shard(label=path.stem, args={"shard_path": str(path), "shard": path.stem, "output_dir": out,
                                         "config": config},
                  key=(file_identity(path), config.model_dump(), out),
                  outputs=tuple(stage1_outputs(layout, path.stem, config))) for path in inputs]


def bucket_shards(names: list[str], layout: Layout, config: DedupConfig, upstream: str) -> list[Shard]:
    """Phase 2, one per (slot, partition): keyed on phase 1's key, the bucket, the config and the folder."""
    out = str(layout.output_dir)
    return [Shard(label=f"{slot.name}-p{part}", args={"shards": names, "slot_index": slot_index, "part": part,
                                                       "output_dir": out, "config": config},
                  key=(upstream, slot_index, part, config.model_dump(), out), outputs=(layout.edges(slot, part),))
            for slot_index, slot in enumerate(key_slots(config)) for part in range(config.hash_partitions)]


def cluster_shard(inputs: list[Path], layout: Layout, config: DedupConfig, upstream: str) -> Shard:
    """Phase 3, once: keyed on phase 2's key and the folder. Its run keeps the name Prefect gave it
    when it was a task of its own (``dedup-clusters-0``); a failure names it ``clusters``."""
    names, out = [p.stem for p in inputs], str(layout.output_dir)
    return Shard(label="0", args={"shards": names, "inputs": [str(p) for p in inputs], "output_dir": out,
                                  "config": config},
                 key=(upstream, out), outputs=(layout.cluster_summary, *map(layout.cluster_table, names)),
                 shown_as="clusters")


def write_shards(inputs: list[Path], layout: Layout, upstream: str) -> list[Shard]:
    """Phase 4, one per shard: keyed on phase 3's key, the folder and the shard."""
    out = str(layout.output_dir)
    return [Shard(label=path.stem, args={"shard_path": str(path), "shard": path.stem, "output_dir": out},
                  key=(upstream, out, path.stem), outputs=(layout.output_shard(path.stem),)) for path in inputs]


def run_phase(run: StageRun, job: ShardJob, shards: list[Shard]) -> list[dict]:
    """Every task of one phase; raise StageFailed (after all finished) if any failed: later phases need them all."""
    reports = run.map(job, shards)
    if run.failed:
        raise StageFailed(run.stage, run.failures, len(shards), what="task(s)", prefix=f"{job.name}: ",
                          entry="{input}: {error}")
    return reports


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
        "cluster_tasks": clusters.get("cluster_tasks", 1),
        "cluster_rounds": clusters.get("cluster_rounds", 0),
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


@flow(name="dedup", task_runner=ThreadPoolTaskRunner(max_workers=16))
def dedup_flow(config: DedupConfig, input_dir: str, output_dir: str, ray_config: RayConfig = RayConfig()) -> dict:
    """Deduplicate the Parquet shards of ``input_dir`` into ``output_dir`` (same shard names).

    Also writes ``dedup/clusters/<shard>.parquet``, ``info.json`` and ``report.json``;
    raises StageFailed if a phase's tasks fail after their retries (the later phases do
    not run), and DuplicateIds (a ValueError naming shards and ids) if document ids
    repeat. A run from a deployment has its paths confined to the data root
    (``pretrain.paths``); a second run on the same output folder fails at once (``OutputInUse``).
    """
    policy = parameter_policy()
    if policy is not None:
        input_dir, output_dir = str(policy.path(input_dir, "input_dir")), str(policy.path(output_dir, "output_dir"))
    inputs = parquet_shards(input_dir)
    out = Path(output_dir).resolve()
    if out == Path(input_dir).resolve():
        raise ValueError(f"output_dir must differ from input_dir ({out}): shards keep their names")
    with stage_run("dedup", out, ray_config) as run:
        return _dedup(config, inputs, input_dir, run)


def _dedup(config: DedupConfig, inputs: list[Path], input_dir: str, run: StageRun) -> dict:
    started = time.perf_counter()
    layout, names = Layout(run.out), [p.stem for p in inputs]
    run.logger.info("dedup: %d shard(s) from %s into %s, %d key slot(s) x %d partition(s)",
                    len(inputs), input_dir, run.out, len(key_slots(config)), config.hash_partitions)
    run.claim(names, ("*.parquet", "dedup/clusters/*.parquet"))

    shards = hash_shards(inputs, layout, config)
    run_phase(run, HASH, shards)
    check_unique_ids(layout, names, inputs, config.hash_partitions)
    shards = bucket_shards(names, layout, config, chained(HASH, shards))
    buckets = run_phase(run, BUCKETS, shards)
    shards = [cluster_shard(inputs, layout, config, chained(BUCKETS, shards))]
    (clusters,) = run_phase(run, CLUSTERS, shards)
    writes = run_phase(run, WRITE, write_shards(inputs, layout, chained(CLUSTERS, shards)))

    hits = {phase: run.cache_hits[job.name] for phase, job in PHASES.items()}
    summary = summarize(writes, clusters, buckets, hits, time.perf_counter() - started)
    run.finish(summary, config=config.model_dump(), inputs=[str(p) for p in inputs],
               code=HASH.code_version(),  # the four phases run one module (tasks.dedup.phases): one version
               total=len(inputs), publish=publish)
    run.logger.info("dedup: kept %d of %d documents; dropped %s; %d clusters", summary["documents_kept"],
                    summary["documents_in"], summary["dropped"], summary["clusters"])
    return summary


# ---------------------------------------------------------------- the dedup stage of the end-to-end run


def run_in_pipeline(pipeline: Pipeline) -> dict:
    recipe = pipeline.recipe
    return dedup_flow(config=recipe.dedup, input_dir=str(pipeline.input_dir),
                      output_dir=str(pipeline.folder("dedup")), ray_config=recipe.ray)


STAGE = Stage(name="dedup", folder="dedup", section="dedup", run=run_in_pipeline, jobs=tuple(PHASES.values()),
              products=("*.parquet",), reasons=REASONS)
