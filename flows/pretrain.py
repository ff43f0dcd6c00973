"""The end-to-end flow: (demo data ->) ingest -> heuristic filters -> dedup; later stages chain on here.

Stages pass paths, never data. Each stage's folder sits under the recipe's
``output_dir``; ``summary.json`` there says what every stage produced.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger

from flows.dedup import dedup_flow
from flows.filter import filter_flow
from flows.ingest import ingest_flow
from pretrain.config import PipelineConfig
from pretrain.provenance import atomic_write_text
from tasks.demo import write_demo_data


def stage_summary(summary: dict, output: Path) -> dict:
    keep = ("files", "records_read", "html_responses", "documents", "documents_in", "documents_kept",
            "text_bytes", "bytes_in", "bytes_kept", "clusters", "cache_hits", "dropped", "seconds")
    return {"output": str(output), **{key: summary[key] for key in keep if key in summary}}


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
    ingest_dir, filter_dir, dedup_dir = root / "ingest", root / "filter", root / "dedup"
    ingested = ingest_flow(config=ingest_cfg, output_dir=str(ingest_dir), ray_config=config.ray)
    filtered = filter_flow(config=config.filter, input_dir=str(ingest_dir), output_dir=str(filter_dir),
                           ray_config=config.ray)
    deduped = dedup_flow(config=config.dedup, input_dir=str(filter_dir), output_dir=str(dedup_dir),
                         ray_config=config.ray)
    stages = {
        "ingest": stage_summary(ingested, ingest_dir),
        "filter": stage_summary(filtered, filter_dir),
        "dedup": stage_summary(deduped, dedup_dir),
    }
    summary = {
        "recipe": config.name,
        "output_dir": str(root),
        "documents": {name: stage.get("documents", stage.get("documents_kept")) for name, stage in stages.items()},
        "stages": stages,
        "cache_hits": {name: stage.get("cache_hits", 0) for name, stage in stages.items()},
    }
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    logger.info("summary: %s", root / "summary.json")
    return summary
