"""Prefect flow: heuristic filters over Parquet shards, one cached Ray-backed task per shard.

Output: the kept rows under the same shard names (C4 line cleaning may rewrite
text), dropped rows with their reason under ``removed/<filter>/`` (audit),
``report.json`` (funnel, drops per reason, per-filter counts and timing) and
``info.json``; artifacts: the funnel and one table per filter.
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
from pretrain.config import FilterConfig, RayConfig
from pretrain.paths import PathPolicy
from pretrain.provenance import code_version, stable_hash, write_info_json
from tasks.filter_runner import FILTER_MODULES, filter_shard
from tasks.ray_runtime import ensure_ray
from tasks.shards import check_document_shard


class FilterFailed(RuntimeError):
    """Some shards failed after their retries; report.json lists them."""


def filter_cache_key(context, parameters: dict) -> str:
    return stable_hash(
        "filter-shard",
        file_identity(parameters["in_path"]),
        parameters["config"].model_dump(),
        code_version(*FILTER_MODULES),
        parameters["out_path"],
    )


@ray.remote(num_cpus=1, max_retries=3)
def _filter_on_ray(in_path: str, out_path: str, config: FilterConfig, removed_dir: str) -> dict:
    check_document_shard(Path(in_path), required=("text",))
    return filter_shard(Path(in_path), Path(out_path), config, Path(removed_dir))


@task(name="filter-shard", task_run_name="filter-{shard_name}", cache_key_fn=filter_cache_key, **SHARD_TASK_OPTIONS)
def filter_shard_task(in_path: str, out_path: str, config: FilterConfig, removed_dir: str, shard_name: str) -> dict:
    return ray.get(_filter_on_ray.remote(in_path, out_path, config, removed_dir))


def summarize(reports: list[dict], failures: list[dict], seconds: float) -> dict:
    totals, dropped = Counter(), Counter()
    filters: dict[str, dict] = {}
    for report in reports:
        for key in ("documents_in", "documents_kept", "bytes_in", "bytes_kept"):
            totals[key] += report[key]
        dropped.update(report["dropped"])
        for name, entry in report["filters"].items():
            merged = filters.setdefault(name, {"in": 0, "kept": 0, "dropped": Counter(), "seconds": 0.0})
            merged["in"] += entry["in"]
            merged["kept"] += entry["kept"]
            merged["dropped"].update(entry["dropped"])
            merged["seconds"] += entry["seconds"]
    for entry in filters.values():
        entry["dropped"] = dict(sorted(entry["dropped"].items()))
        entry["seconds"] = round(entry["seconds"], 3)
        entry["docs_per_s"] = round(entry["in"] / entry["seconds"], 1) if entry["seconds"] else None
    return {
        "shards": len(reports) + len(failures),
        "shards_written": len(reports),
        "failed": failures,
        **dict(totals),
        "dropped": dict(sorted(dropped.items())),
        "filters": filters,
        "seconds": round(seconds, 2),
        "docs_per_s": round(totals["documents_in"] / seconds, 1) if seconds > 0 else None,
        "reports": reports,
    }


def publish(summary: dict) -> None:
    rows = [("documents in", summary.get("documents_in", 0)), ("bytes in", summary.get("bytes_in", 0)),
            ("documents kept", summary.get("documents_kept", 0)), ("bytes kept", summary.get("bytes_kept", 0))]
    lines = funnel_table(rows) + ["", *funnel_table(list(summary["dropped"].items()), ("dropped, by reason", "documents"))]
    if summary["failed"]:
        lines += ["", "## Failed shards", ""] + [f"- {f['input']}: {f['error']}" for f in summary["failed"]]
    publish_markdown("filter-funnel", "Heuristic filter funnel", lines)
    for name, entry in summary["filters"].items():
        table = [{"reason": reason, "documents": n} for reason, n in entry["dropped"].items()]
        table.append({"reason": "(kept)", "documents": entry["kept"]})
        create_table_artifact(key=f"filter-{name.replace('_', '-')}", table=table,
                              description=f"{name}: {entry['in']} in, {entry['seconds']} s")


def confine_parameters(policy: PathPolicy, config: FilterConfig, input_dir: str,
                       output_dir: str) -> tuple[FilterConfig, str, str]:
    """Check an untrusted run's folders and list locations; the config with confined lists, the folders."""
    url = config.url
    lists = {name: [policy.location(entry, f"filter.url.{name}[{i}]") for i, entry in enumerate(getattr(url, name))]
             for name in ("blocklist_paths", "banned_words_paths", "soft_banned_words_paths")}
    confined = config.model_copy(update={"url": url.model_copy(update=lists)})
    return confined, str(policy.path(input_dir, "input_dir")), str(policy.path(output_dir, "output_dir"))


@flow(name="filter", task_runner=ThreadPoolTaskRunner(max_workers=16))
def filter_flow(config: FilterConfig, input_dir: str, output_dir: str, ray_config: RayConfig = RayConfig()) -> dict:
    """Apply the heuristic filter chain to every shard of ``input_dir``.

    A run from a deployment has its paths confined to the data root (``pretrain.paths``);
    a second run on the same output folder fails at once (``OutputInUse``).
    """
    policy = parameter_policy()
    if policy is not None:
        config, input_dir, output_dir = confine_parameters(policy, config, input_dir, output_dir)
    shards = parquet_shards(input_dir)
    with output_lock(Path(output_dir), "filter") as out:
        return _filter(config, shards, input_dir, out, ray_config)


def _filter(config: FilterConfig, shards: list[Path], input_dir: str, out: Path, ray_config: RayConfig) -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    removed_dir = out / "removed"
    ensure_ray(ray_config)
    logger.info("filtering %d shard(s) from %s into %s (chain: %s)", len(shards), input_dir, out, config.order)
    stale = claim_output(out, "filter", [shard.stem for shard in shards], logger)

    futures = {}
    for shard in shards:
        target = out / shard.name
        runner = filter_shard_task.with_options(refresh_cache=not target.exists())
        futures[runner.submit(str(shard), str(target), config, str(removed_dir), shard.stem)] = shard
    reports, failures, cache_hits = gather("filter", futures, logger)
    reports.sort(key=lambda r: r["shard"])

    summary = summarize(reports, failures, time.perf_counter() - started)
    summary["cache_hits"], summary["stale_removed"] = cache_hits, stale
    write_info_json(out, stage="filter", code=code_version(*FILTER_MODULES), config=config.model_dump(),
                    inputs=[str(s) for s in shards])
    write_report(out, summary)
    publish(summary)
    logger.info("filter: kept %d of %d documents", summary.get("documents_kept", 0), summary.get("documents_in", 0))
    if failures:
        raise FilterFailed(f"{len(failures)} of {len(shards)} shards failed: "
                           + "; ".join(f"{f['input']} ({f['error']})" for f in failures))
    return summary
