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

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import file_identity, funnel_table, parameter_policy, parquet_shards, publish_markdown
from flows.runner import Shard, ShardJob, StageRun, stage_run
from flows.stage import Pipeline, Stage
from pretrain.config import FilterConfig, RayConfig
from pretrain.paths import PathPolicy
from tasks.filter_runner import filter_checked_shard


FILTER = ShardJob(name="filter-shard", work=filter_checked_shard, run_name="filter-{label}", progress="filter")


def list_identities(config: FilterConfig) -> list[str]:
    """The URL filter's given list files as they are now (path, size, mtime): an edited list reruns the
    shards, as an edited shipped list does through the code version. A URL stands for itself."""
    url = config.url
    entries = [*url.blocklist_paths, *url.banned_words_paths, *url.soft_banned_words_paths]
    return [file_identity(entry) if Path(entry).is_file() else entry for entry in entries]


def filter_key(config: FilterConfig) -> dict:
    """What a filtered shard depends on besides its input and the code: the config and its list files."""
    return {"config": config.model_dump(), "lists": list_identities(config)}


def filter_shards(shards: list[Path], out: Path, config: FilterConfig) -> list[Shard]:
    """One task per input shard, keyed on its identity, the filter config with its list files, its output path."""
    removed = out / "removed"
    return [Shard(label=shard.stem, args={"in_path": shard, "out_path": out / shard.name, "cfg": config,
                                          "removed_dir": removed},
                  key=(file_identity(shard), filter_key(config), str(out / shard.name)),
                  outputs=(out / shard.name,), shown_as=str(shard)) for shard in shards]


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
    with stage_run("filter", output_dir, ray_config) as run:
        return _filter(config, shards, input_dir, run)


def _filter(config: FilterConfig, shards: list[Path], input_dir: str, run: StageRun) -> dict:
    started = time.perf_counter()
    run.logger.info("filtering %d shard(s) from %s into %s (chain: %s)", len(shards), input_dir, run.out, config.order)
    run.claim([shard.stem for shard in shards], ("*.parquet", "removed/*/*.parquet"))
    reports = sorted(run.map(FILTER, filter_shards(shards, run.out, config)), key=lambda r: r["shard"])
    summary = summarize(reports, run.failures, time.perf_counter() - started)
    summary["cache_hits"] = run.hits()
    run.logger.info("filter: kept %d of %d documents", summary.get("documents_kept", 0),
                    summary.get("documents_in", 0))
    return run.finish(summary, config=config.model_dump(), inputs=[str(s) for s in shards],
                      code=FILTER.code_version(), total=len(shards), publish=publish)


# ---------------------------------------------------------------- the filter stage of the end-to-end run


def run_in_pipeline(pipeline: Pipeline) -> dict:
    recipe = pipeline.recipe
    return filter_flow(config=recipe.filter, input_dir=str(pipeline.input_dir),
                       output_dir=str(pipeline.folder("filter")), ray_config=recipe.ray)


STAGE = Stage(
    name="filter", folder="filter", section="filter", run=run_in_pipeline, jobs=(FILTER,), products=("*.parquet",),
    key_config=lambda pipeline: filter_key(pipeline.recipe.filter),
    reasons=(  # each filter's verdicts (tasks/filters/*.py); the n-gram ones for the default n
        "url_blocked_domain", "url_banned_word", "url_soft_banned_words", "gopher_repetition_empty",
        "dup_line_frac", "dup_line_char_frac", "dup_para_frac", "dup_para_char_frac", "top_2_gram", "top_3_gram",
        "top_4_gram", *(f"duplicated_{n}_n_grams" for n in range(5, 11)), "gopher_short_doc", "gopher_long_doc",
        "gopher_below_avg_word_length", "gopher_above_avg_word_length", "gopher_too_many_hashes",
        "gopher_too_many_ellipsis", "gopher_too_many_bullets", "gopher_too_many_end_ellipsis",
        "gopher_below_alpha_threshold", "gopher_too_few_stop_words", "c4_too_few_sentences", "c4_lorem_ipsum",
        "c4_curly_bracket", "c4_no_lines_left", "fineweb_empty", "fineweb_line_punct_ratio",
        "fineweb_short_line_ratio", "fineweb_char_dup_ratio", "fineweb_list_ratio"),
)
