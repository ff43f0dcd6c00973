"""Prefect flow ``cc-refresh``: append the newest Common Crawl's unprocessed files to a dataset.

One run: take the lock on the dataset, find the newest crawl in ``collinfo.json``
(or the configured one), list its ``warc.paths.gz``, skip the files the ledger
already has, then ingest (``ingest`` subflow) and filter (``filter`` subflow) at
most ``max_files_per_run`` new ones in a staging folder, move each file's shards
into ``filtered/<crawl>/`` (and ``ingest/``, ``removed/``) and record it in the
ledger. Existing shards are never rewritten; a rerun with nothing new downloads
nothing. Layout and guarantees: ``tasks/refresh.py``.

Overlapping runs: the deployment allows one run at a time (``concurrency_limit``),
and the flow itself holds an exclusive lock on the dataset, so a second run that
starts anyway (CLI, another deployment) fails at once with ``RefreshLocked``,
having done nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.common import funnel_table, parameter_policy, publish_markdown
from flows.filter import filter_flow
from flows.ingest import ingest_flow
from flows.runner import StageFailed
from pretrain.config import RefreshConfig
from pretrain.paths import PathPolicy, redact_url
from pretrain.provenance import atomic_write_text
from tasks.refresh import Layout, Ledger, Plan, clear_work, commit_file, manifest, plan_refresh, refresh_lock, relative_path
from tasks.sources import InputFile, newest_crawl, resolve_inputs


class RefreshFailed(RuntimeError):
    """Some new files failed; the others were committed. The run report lists them."""


@task(name="find-newest-crawl", cache_policy=NO_CACHE)
def find_crawl(config: RefreshConfig) -> str:
    return config.crawl or newest_crawl(config.index_url, config.ingest.download)


@task(name="list-crawl-files", cache_policy=NO_CACHE)
def list_crawl_files(crawl: str, config: RefreshConfig) -> list[InputFile]:
    return resolve_inputs(config.ingest.model_copy(update={"inputs": [crawl]}))


def confine_parameters(policy: PathPolicy, config: RefreshConfig) -> RefreshConfig:
    """A deployment run's dataset folder must stay under the data root, its URLs use allowed schemes."""
    policy.url(config.index_url, "index_url")
    policy.url(config.ingest.cc_base_url, "ingest.cc_base_url")
    return config.model_copy(update={"dataset_dir": str(policy.path(config.dataset_dir, "dataset_dir"))})


def _read_report(folder: Path) -> dict:
    path = folder / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_stages(plan: Plan, config: RefreshConfig, work: Path) -> tuple[dict, dict]:
    """Ingest then filter the plan's new files in ``work``; (ingest report, filter report).

    A stage that fails for some files still writes its report, which says which.
    """
    ingest_cfg = config.ingest.model_copy(update={"inputs": [item.uri for item in plan.new]})
    try:
        ingest_flow(config=ingest_cfg, output_dir=str(work / "ingest"), ray_config=config.ray)
    except StageFailed:
        pass
    ingested = _read_report(work / "ingest")
    if not ingested.get("shards"):
        return ingested, {}
    try:
        filter_flow(config=config.filter, input_dir=str(work / "ingest"), output_dir=str(work / "filter"),
                    ray_config=config.ray)
    except StageFailed:
        pass
    return ingested, _read_report(work / "filter")


def _commit(plan: Plan, layout: Layout, work: Path, ingested: dict, filtered: dict, run: str) -> tuple[list, list]:
    """Move each fully processed file into the dataset and record it; (ledger entries, failures)."""
    by_uri = {report["input"]: report for report in ingested.get("shards", [])}  # URLs as redact_url wrote them
    by_shard = {Path(report["input"]).name: report for report in filtered.get("reports", [])}
    errors = {f["input"]: f["error"] for f in ingested.get("failed", []) + filtered.get("failed", [])}
    ledger, entries, failures = Ledger(layout), [], []
    for item in plan.new:
        name = f"{item.shard_name}.parquet"
        ingest_report, filter_report = by_uri.get(redact_url(item.uri)), by_shard.get(name)
        if ingest_report is None or filter_report is None:
            cause = errors.get(redact_url(item.uri)) or errors.get(str(work / "ingest" / name)) or "no shard written"
            failures.append({"input": redact_url(item.uri), "error": cause})
            continue
        commit_file(layout, plan.crawl, item.shard_name, work / "ingest", work / "filter")
        entry = {
            "path": relative_path(item.uri), "uri": redact_url(item.uri), "crawl": plan.crawl, "run": run,
            "shard": str((layout.filtered(plan.crawl) / name).relative_to(layout.root)),
            "records_read": ingest_report["records_read"], "html_responses": ingest_report["html_responses"],
            "documents_ingested": ingest_report["documents"], "documents_kept": filter_report["documents_kept"],
            "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        ledger.record(plan.crawl, item.shard_name, entry)
        entries.append(entry)
    return entries, failures


def _summary(config: RefreshConfig, plan: Plan, listed: int, entries: list, failures: list, filtered: dict) -> dict:
    return {
        "crawl": plan.crawl,
        "index_url": redact_url(config.index_url),
        "dataset_dir": config.dataset_dir,
        "files_listed": listed,
        "files_new": len(entries),
        "files_skipped": len(plan.done),
        "files_deferred": len(plan.deferred),
        "files_failed": failures,
        "documents_ingested": sum(e["documents_ingested"] for e in entries),
        "documents_kept": sum(e["documents_kept"] for e in entries),
        "dropped": filtered.get("dropped", {}),
        "shards": [e["shard"] for e in entries],
    }


def _publish(summary: dict, layout: Layout, run_dir: Path, work: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("ingest", "filter"):
        if (work / stage / "report.json").is_file():
            (work / stage / "report.json").replace(run_dir / f"{stage}-report.json")
    atomic_write_text(run_dir / "report.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    dataset = manifest(layout, Ledger(layout).entries())
    atomic_write_text(layout.root / "manifest.json", json.dumps(dataset, indent=2, sort_keys=True) + "\n")
    rows = [(key, summary[key]) for key in ("crawl", "files_listed", "files_new", "files_skipped", "files_deferred",
                                             "documents_ingested", "documents_kept")]
    rows += [("files failed", len(summary["files_failed"])), ("dataset documents (all crawls)", dataset["documents_kept"])]
    publish_markdown("cc-refresh", "Common Crawl refresh", funnel_table(rows, header=("", "value")))


@flow(name="cc-refresh")
def cc_refresh_flow(config: RefreshConfig = RefreshConfig()) -> dict:
    """Ingest and filter the newest crawl's WARC files that the dataset does not have yet."""
    policy = parameter_policy()
    if policy is not None:
        config = confine_parameters(policy, config)
    logger = get_run_logger()
    started = time.perf_counter()
    layout = Layout(Path(config.dataset_dir))
    run = str(flow_run.id or uuid.uuid4())
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with refresh_lock(layout.root, run):
        clear_work(layout)  # staging left by killed runs: with the lock held, nobody else uses it
        crawl = find_crawl(config)
        listing = list_crawl_files(crawl, config)
        plan = plan_refresh(crawl, listing, Ledger(layout), config.max_files_per_run)
        logger.info("%s: %d files listed, %d already processed, %d new this run, %d deferred",
                    crawl, len(listing), len(plan.done), len(plan.new), len(plan.deferred))
        work = layout.work / run
        ingested, filtered = _run_stages(plan, config, work) if plan.new else ({}, {})
        entries, failures = _commit(plan, layout, work, ingested, filtered, run)
        summary = _summary(config, plan, len(listing), entries, failures, filtered)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        _publish(summary, layout, layout.runs / f"{stamp}-{run[:8]}", work)
        clear_work(layout)
    logger.info("cc-refresh %s: %d new files, %d documents kept of %d", crawl, summary["files_new"],
                summary["documents_kept"], summary["documents_ingested"])
    if failures:
        raise RefreshFailed(f"{len(failures)} of {len(plan.new)} new files failed (the others were committed): "
                            + "; ".join(f"{f['input']} ({f['error']})" for f in failures))
    return summary
