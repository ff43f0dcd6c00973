"""Prefect flow: mask PII (e-mails, public IPs, optionally phone numbers), one cached Ray-backed task per shard.

FineWeb's last step (``tasks.pii``). Every row is kept, with only its text changed.
Output: the masked shards under the input's shard names, ``report.json`` (documents in and
changed, masked spans per kind) and ``info.json``; artifact: a table of the counts.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import confined_folders, file_identity, funnel_table, parquet_shards, publish_markdown
from flows.runner import Shard, ShardJob, StageRun, stage_run
from flows.stage import Pipeline, Stage
from pretrain.config import PiiConfig, RayConfig
from tasks.pii import KINDS, pii_shard

PII = ShardJob(name="pii-shard", work=pii_shard, run_name="pii-{label}", progress="pii")


def pii_shards(shards: list[Path], out: Path, config: PiiConfig) -> list[Shard]:
    """One task per input shard, keyed on its identity, the masking settings and its output path."""
    settings = config.model_dump(exclude={"enabled"})
    return [Shard(label=shard.stem, args={"in_path": shard, "out_path": out / shard.name, "config": config},
                  key=(file_identity(shard), settings, str(out / shard.name)), outputs=(out / shard.name,),
                  shown_as=str(shard)) for shard in shards]


def summarize(reports: list[dict], failures: list[dict], hits: int, seconds: float) -> dict:
    totals = Counter()
    for report in reports:
        totals.update({key: report[key] for key in ("documents_in", "documents_changed", *KINDS)})
    return {"shards": len(reports) + len(failures), "shards_written": len(reports), "failed": failures,
            "documents_in": totals["documents_in"], "documents": totals["documents_in"],
            "documents_kept": totals["documents_in"],  # every row is kept, only its text may change
            "documents_changed": totals["documents_changed"], "masked": {kind: totals[kind] for kind in KINDS},
            "cache_hits": hits, "seconds": round(seconds, 2),
            "docs_per_s": round(totals["documents_in"] / seconds, 1) if seconds > 0 else None,
            "reports": sorted(reports, key=lambda report: report["input"])}


def publish(summary: dict) -> None:
    rows = [("documents in", summary["documents_in"]), ("documents changed", summary["documents_changed"]),
            *((f"{kind} masked", n) for kind, n in summary["masked"].items())]
    lines = funnel_table(rows, ("count", "value"))
    if summary["failed"]:
        lines += ["", "## Failed shards", ""] + [f"- {f['input']}: {f['error']}" for f in summary["failed"]]
    publish_markdown("pii-counts", "PII masking", lines)


@flow(name="pii", task_runner=ThreadPoolTaskRunner(max_workers=16))
def pii_flow(config: PiiConfig, input_dir: str, output_dir: str, ray_config: RayConfig = RayConfig()) -> dict:
    """Mask e-mail addresses and public IP addresses (and phone numbers when asked) in every shard of ``input_dir``.

    A run from a deployment has its paths confined to the data root (``pretrain.paths``).
    """
    input_dir, output_dir, _ = confined_folders(input_dir, output_dir)
    shards = parquet_shards(input_dir)
    with stage_run("pii", output_dir, ray_config) as run:
        return _mask(config, shards, input_dir, run)


def _mask(config: PiiConfig, shards: list[Path], input_dir: str, run: StageRun) -> dict:
    started = time.perf_counter()
    kinds = [kind for kind in KINDS if getattr(config, kind)]
    run.logger.info("masking %s in %d shard(s) from %s into %s", ", ".join(kinds) or "nothing", len(shards),
                    input_dir, run.out)
    run.claim([shard.stem for shard in shards], ("*.parquet",))
    reports = run.map(PII, pii_shards(shards, run.out, config))
    summary = summarize(reports, run.failures, run.hits(), time.perf_counter() - started)
    run.logger.info("pii: %d of %d documents changed; masked %s", summary["documents_changed"],
                    summary["documents_in"], summary["masked"])
    return run.finish(summary, config=config.model_dump(), inputs=[str(shard) for shard in shards],
                      code=PII.code_version(), total=len(shards), publish=publish)


# ---------------------------------------------------------------- the pii stage of the end-to-end run


def run_in_pipeline(pipeline: Pipeline) -> dict:
    config = pipeline.recipe.pii
    if not config.enabled:
        get_run_logger().info("pii: skipped (pii.enabled is false)")
        return {"skipped": "pii.enabled is false"}
    return pii_flow(config=config, input_dir=str(pipeline.input_dir), output_dir=str(pipeline.folder("pii")),
                    ray_config=pipeline.recipe.ray)


def masked_or_input(pipeline: Pipeline, result: dict) -> Path:
    """The next stage reads the masked shards; a skipped stage passes what filter wrote on."""
    return pipeline.input_dir if result.get("skipped") else pipeline.folder("pii")


STAGE = Stage(name="pii", folder="pii", section="pii", run=run_in_pipeline, jobs=(PII,), output=masked_or_input,
              products=("*.parquet",))
