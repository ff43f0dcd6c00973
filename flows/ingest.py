"""Prefect flow: WARC files (local, https, s3, or a crawl id) to Parquet shards on Ray.

One Prefect task per input file. The task is retried on transient failures only,
cached on (input identity, the config fields that change its output, code version,
shard path), and idempotent: a shard is written under a temporary name and renamed
when complete. The task itself runs the work as a Ray task, so the flow process only
orchestrates; large data never travels through Prefect results (tasks return reports).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import ray
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import SHARD_TASK_OPTIONS, claim_output, gather, output_lock, parameter_policy, write_report
from pretrain.config import IngestConfig, RayConfig
from pretrain.paths import PathPolicy, redact_url
from pretrain.provenance import code_version, stable_hash, write_info_json
from tasks.ingest import INGEST_MODULES, ingest_input
from tasks.ray_runtime import ensure_ray
from tasks.sources import CRAWL_ID, InputFile, input_identity, resolve_inputs

# Fields of IngestConfig that change a shard's content (inputs/selection and fetch
# settings do not).
OUTPUT_FIELDS = ("source", "extractor", "languages", "min_lang_score", "min_text_chars", "max_html_bytes",
                 "max_html_depth")


class IngestFailed(RuntimeError):
    """Some shards failed after their retries; the run report lists them."""


def output_fingerprint(config: IngestConfig) -> dict:
    return config.model_dump(include=set(OUTPUT_FIELDS))


def shard_cache_key(context, parameters: dict) -> str:
    item: InputFile = parameters["item"]
    return stable_hash(
        "ingest-shard",
        input_identity(item),
        output_fingerprint(parameters["config"]),
        code_version(*INGEST_MODULES),
        parameters["shard_path"],
    )


@ray.remote(num_cpus=1, max_retries=3)
def _ingest_on_ray(item: InputFile, shard_path: str, config: IngestConfig) -> dict:
    return ingest_input(item, Path(shard_path), config)


@task(name="ingest-shard", task_run_name="ingest-{shard_name}", cache_key_fn=shard_cache_key, **SHARD_TASK_OPTIONS)
def ingest_shard(item: InputFile, shard_path: str, config: IngestConfig, shard_name: str) -> dict:
    """Ingest one input file into one shard (on a Ray worker); returns its report."""
    return ray.get(_ingest_on_ray.remote(item, shard_path, config))


def shard_names(files: list[InputFile]) -> list[str]:
    """Shards are named after their input; inputs sharing a name get a hash suffix."""
    counts = Counter(item.shard_name for item in files)
    return [
        item.shard_name if counts[item.shard_name] == 1 else f"{item.shard_name}-{stable_hash(item.uri, length=8)}"
        for item in files
    ]


def summarize(reports: list[dict], failures: list[dict], seconds: float) -> dict:
    totals = Counter()
    dropped = Counter()
    for report in reports:
        for key in ("records_read", "responses", "html_responses", "documents", "html_bytes", "text_bytes", "input_bytes"):
            totals[key] += report.get(key, 0)
        dropped.update(report.get("dropped", {}))
    return {
        "files": len(reports) + len(failures),
        "shards_written": len(reports),
        "failed": failures,
        **dict(totals),
        "dropped": dict(sorted(dropped.items())),
        "seconds": round(seconds, 2),
        "docs_per_s": round(totals["documents"] / seconds, 1) if seconds > 0 else None,
        "shards": reports,
    }


def funnel_markdown(summary: dict) -> str:
    lines = [
        "# Ingestion funnel",
        "",
        "| stage | count |",
        "| --- | ---: |",
        f"| input files | {summary['files']} |",
        f"| WARC records read | {summary.get('records_read', 0)} |",
        f"| responses | {summary.get('responses', 0)} |",
        f"| HTML 200 responses | {summary.get('html_responses', 0)} |",
        f"| documents kept | {summary.get('documents', 0)} |",
        "",
        "| skipped or dropped, by reason | count |",
        "| --- | ---: |",
    ]
    lines += [f"| {reason} | {n} |" for reason, n in summary["dropped"].items()]
    if summary["failed"]:
        lines += ["", "## Failed files", ""] + [f"- {f['input']}: {f['error']}" for f in summary["failed"]]
    lines += ["", f"{summary['seconds']} s, {summary['docs_per_s']} documents/s, "
              f"{summary.get('cache_hits', 0)} shard(s) reused from cache"]
    return "\n".join(lines)


def publish(summary: dict, output_dir: Path) -> None:
    write_report(output_dir, summary)
    create_markdown_artifact(key="ingest-funnel", markdown=funnel_markdown(summary), description="Ingestion funnel")
    rows = [
        {"input": r["input"], "documents": r["documents"], "html_responses": r["html_responses"],
         "dropped": sum(r["dropped"].values()), "seconds": r["seconds"]}
        for r in summary["shards"]
    ]
    if rows:
        create_table_artifact(key="ingest-shards", table=rows, description="Per-shard ingestion report")


def confine_parameters(policy: PathPolicy, config: IngestConfig, output_dir: str) -> tuple[IngestConfig, str]:
    """Check an untrusted run's paths and URLs before anything is read or written.

    Returns the config with local inputs made absolute under the data root, and the output folder.
    """
    inputs = [entry if CRAWL_ID.match(entry.strip()) else policy.location(entry.strip(), f"ingest.inputs[{i}]")
              for i, entry in enumerate(config.inputs)]
    policy.url(config.cc_base_url, "ingest.cc_base_url")
    download = config.download
    if download.download_dir:
        download = download.model_copy(update={
            "download_dir": str(policy.path(download.download_dir, "ingest.download.download_dir"))})
    confined = config.model_copy(update={"inputs": inputs, "download": download})
    return confined, str(policy.path(output_dir, "output_dir"))


def confine_files(policy: PathPolicy, files: list[InputFile]) -> None:
    """After expansion: globs and listings may have led elsewhere (a symlink, a listed URL)."""
    for item in files:
        if item.kind == "local":
            policy.path(item.uri, "ingest.inputs (expanded)")
        else:
            policy.url(item.uri, "ingest.inputs (expanded)")


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=16))
def ingest_flow(config: IngestConfig, output_dir: str = "runs/local/ingest", ray_config: RayConfig = RayConfig()) -> dict:
    """Ingest WARC inputs into one Parquet shard per file under ``output_dir``.

    Writes ``report.json`` (counts per stage and per drop reason) and ``info.json``;
    raises IngestFailed, after every other shard is done, if any file failed.
    A run from a deployment has its paths confined to the data root (``pretrain.paths``);
    a second run on the same output folder fails at once (``OutputInUse``).
    """
    policy = parameter_policy()
    if policy is not None:
        config, output_dir = confine_parameters(policy, config, output_dir)
    with output_lock(Path(output_dir), "ingest") as out:
        return _ingest(config, out, ray_config, policy)


def _ingest(config: IngestConfig, out: Path, ray_config: RayConfig, policy: PathPolicy | None) -> dict:
    logger = get_run_logger()
    started = time.perf_counter()
    files = resolve_inputs(config)
    if policy is not None:
        confine_files(policy, files)
    logger.info("ingesting %d input file(s) into %s", len(files), out)
    stale = claim_output(out, "ingest", shard_names(files), logger)  # the folder holds this run's shards only
    ensure_ray(ray_config)

    futures = {}
    for item, name in zip(files, shard_names(files)):
        shard = out / f"{name}.parquet"
        # A missing shard must be rewritten even if a cached result claims it exists.
        runner = ingest_shard.with_options(refresh_cache=not shard.exists())
        futures[runner.submit(item, str(shard), config, name)] = item

    labels = {future: redact_url(item.uri) for future, item in futures.items()}
    reports, failures, cache_hits = gather("ingest", labels, logger)
    reports.sort(key=lambda r: r["shard"])

    summary = summarize(reports, failures, time.perf_counter() - started)
    summary["cache_hits"], summary["stale_removed"] = cache_hits, stale
    write_info_json(
        out, stage="ingest", code=code_version(*INGEST_MODULES), config=redacted(config),
        inputs=[redact_url(item.uri) for item in files],
    )
    publish(summary, out)
    logger.info(
        "ingest: %d documents from %d HTML responses in %d files (%d failed)",
        summary.get("documents", 0), summary.get("html_responses", 0), summary["files"], len(failures),
    )
    if failures:
        raise IngestFailed(f"{len(failures)} of {len(files)} input files failed: " + "; ".join(
            f"{f['input']} ({f['error']})" for f in failures))
    return summary


def redacted(config: IngestConfig) -> dict:
    """The config for info.json, without credentials in its URLs."""
    dump = config.model_dump()
    dump["inputs"] = [redact_url(entry) for entry in dump["inputs"]]
    dump["cc_base_url"] = redact_url(dump["cc_base_url"])
    return dump
