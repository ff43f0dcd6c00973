"""Test only: a trivial stage that copies every shard it reads, unchanged, through the shard runner.

What a new stage takes: this module (a flow that goes through ``flows.runner``, and its
``STAGE``) plus its line in ``flows.registry.STAGES`` (tests/test_stage_registry.py inserts
it after dedup). The copy is the filter's shard work with an empty chain: every row is
written as it was read, and counted. Its work function must live in a project module: Ray
workers import it by name, and code versions are computed over project modules only.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import file_identity, parquet_shards
from flows.runner import Shard, ShardJob, stage_run
from flows.stage import Pipeline, Stage
from pretrain.config import FilterConfig, RayConfig
from tasks.filter_runner import filter_checked_shard

COPY = ShardJob(name="passthrough-shard", work=filter_checked_shard, run_name="passthrough-{label}",
                progress="passthrough")
NO_FILTERS = FilterConfig(order=[], write_removed=False)


def copies(shards: list[Path], out: Path) -> list[Shard]:
    return [Shard(label=shard.stem, args={"in_path": shard, "out_path": out / shard.name, "cfg": NO_FILTERS,
                                          "removed_dir": None},
                  key=(file_identity(shard), str(out / shard.name)), outputs=(out / shard.name,))
            for shard in shards]


@flow(name="passthrough", task_runner=ThreadPoolTaskRunner(max_workers=4))
def passthrough_flow(input_dir: str, output_dir: str, ray_config: RayConfig = RayConfig()) -> dict:
    shards = parquet_shards(input_dir)
    with stage_run("passthrough", output_dir, ray_config) as run:
        run.claim([shard.stem for shard in shards], ("*.parquet",))
        reports = run.map(COPY, copies(shards, run.out))
        summary = {"shards": len(shards), "documents_in": sum(r["documents_in"] for r in reports),
                   "documents_kept": sum(r["documents_kept"] for r in reports), "cache_hits": run.hits()}
        return run.finish(summary, config={}, inputs=[str(shard) for shard in shards], code=COPY.code_version(),
                          total=len(shards))


def run_in_pipeline(pipeline: Pipeline) -> dict:
    return passthrough_flow(input_dir=str(pipeline.input_dir), output_dir=str(pipeline.folder("passthrough")),
                            ray_config=pipeline.recipe.ray)


STAGE = Stage(
    name="passthrough", folder="passthrough", run=run_in_pipeline, jobs=(COPY,), products=("*.parquet",),
    code=(),  # this module is not a project module (tests/): its key versions the code it runs, COPY's
)
