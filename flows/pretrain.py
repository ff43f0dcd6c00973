"""The end-to-end flow. Today: (demo data ->) ingestion; later stages chain on here.

Stages pass paths, never data. Each stage's folder sits under the recipe's
``output_dir``; ``summary.json`` there says what every stage produced.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.ingest import ingest_flow
from pretrain.config import PipelineConfig
from pretrain.provenance import atomic_write_text
from tasks.demo import write_demo_data


def stage_summary(summary: dict, output: Path) -> dict:
    keep = ("files", "records_read", "html_responses", "documents", "text_bytes", "cache_hits", "dropped", "seconds")
    return {"output": str(output), **{key: summary.get(key) for key in keep}}


@flow(name="pretrain")
def pretrain_flow(config: PipelineConfig = PipelineConfig()) -> dict:
    """Run the pipeline stages for a recipe and write OUTPUT/summary.json."""
    logger = get_run_logger()
    root = Path(config.output_dir)
    ingest_cfg = config.ingest
    if config.demo_data:
        demo_dir = root / "demo-data"
        paths = write_demo_data(demo_dir)
        logger.info("demo data: %d WARC files in %s", len(paths), demo_dir)
        ingest_cfg = ingest_cfg.model_copy(update={"inputs": [str(demo_dir)]})
    ingest_dir = root / "ingest"
    ingested = ingest_flow(config=ingest_cfg, output_dir=str(ingest_dir), ray_config=config.ray)
    summary = {
        "recipe": config.name,
        "output_dir": str(root),
        "stages": {"ingest": stage_summary(ingested, ingest_dir)},
        "cache_hits": ingested.get("cache_hits", 0),
    }
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    logger.info("summary: %s", root / "summary.json")
    return summary
