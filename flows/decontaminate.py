"""Prefect flow: remove benchmark text from the training documents, one cached Ray-backed task per shard.

The n-gram index of the tasks' items (``tasks.evaluation.decontam``) is built once, here, and
saved as plain arrays under ``OUTPUT/.index`` (rebuilt only when the tasks, n, the items'
package or its code change); one Ray actor per CPU memory-maps it once (``IndexHolder``: the
actors of a machine share its pages) and decontaminates the shards sent to it, each a Prefect
task cached on the shard's identity, the index's settings, the items' package version and the
code version, like every stage. (The index as a Ray object would do as well, but an actor whose
constructor arguments live in the object store gets a warning for every start.)

Output: the kept (or cut) documents under the input's shard names at the top of the output
folder, ``report.json`` (documents in and kept, drops per reason ``contaminated_<task>``, and per
task the matched items' doc_ids with how many documents matched each) and ``info.json``;
artifacts: a funnel table and a table of matched items.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import confined_folders, file_identity, parquet_shards
from flows.runner import Shard, ShardJob, StageRun, stage_run
from flows.stage import Pipeline, Stage
from pretrain.config import EVAL_TASKS, DecontaminateConfig, RayConfig
from pretrain.provenance import code_version, stable_hash
from tasks.evaluation.decontam import (
    IndexHolder, NgramIndex, build_index, decontaminate_held, load_index, merge_reports, save_index, saved_fingerprint,
)
from tasks.evaluation.items import package_version

INDEX_FOLDER = ".index"  # under the output folder: the saved n-gram index the actors map
DECONTAMINATE = ShardJob(name="decontaminate-shard", work=decontaminate_held, holder=IndexHolder,
                         run_name="decontaminate-{label}", progress="decontaminate")


def index_key(config: DecontaminateConfig) -> dict:
    """What a decontaminated shard depends on besides its input and the code: the settings and the items."""
    return {"config": config.model_dump(exclude={"enabled"}), "items": package_version()}


def decontaminate_shards(shards: list[Path], out: Path, config: DecontaminateConfig) -> list[Shard]:
    """One task per input shard, keyed on its identity, the settings and items, its output path."""
    key = index_key(config)
    return [Shard(label=shard.stem, args={"in_path": shard, "out_path": out / shard.name, "action": config.action,
                                          "min_remaining_chars": config.min_remaining_chars},
                  key=(file_identity(shard), key, str(out / shard.name)), outputs=(out / shard.name,),
                  shown_as=str(shard)) for shard in shards]


def summarize(reports: list[dict], failures: list[dict], index: dict, hits: int, seconds: float) -> dict:
    totals = merge_reports(reports)
    return {"shards": len(reports) + len(failures), "shards_written": len(reports), "failed": failures, **totals,
            "documents": totals["documents_kept"], "index": index, "cache_hits": hits, "seconds": round(seconds, 2),
            "docs_per_s": round(totals["documents_in"] / seconds, 1) if seconds > 0 else None,
            "reports": sorted(reports, key=lambda report: report["input"])}


def publish(summary: dict) -> None:
    funnel = [{"count": "documents in", "documents": summary["documents_in"]},
              *({"count": reason, "documents": n} for reason, n in summary["dropped"].items()),
              {"count": "documents cut (kept)", "documents": summary["documents_cut"]},
              {"count": "documents kept", "documents": summary["documents_kept"]}]
    create_table_artifact(key="decontaminate-funnel", table=funnel,
                          description=f"Decontamination: {summary['index']['ngram']}-grams of "
                                      f"{', '.join(summary['index']['tasks'])}")
    items = [{"task": task, "items matched": len(matched), "documents": sum(matched.values()),
              "most matched (doc_id: documents)": ", ".join(f"{doc_id}: {n}" for doc_id, n in
                                                            sorted(matched.items(), key=lambda e: -e[1])[:5])}
             for task, matched in summary["matched_items"].items()]
    create_table_artifact(key="decontaminate-items", table=items or [{"task": "(none matched)"}],
                          description="Benchmark items found in the training documents")


@flow(name="decontaminate", task_runner=ThreadPoolTaskRunner(max_workers=16))
def decontaminate_flow(config: DecontaminateConfig, input_dir: str, output_dir: str,
                       ray_config: RayConfig = RayConfig()) -> dict:
    """Drop (or cut) every document sharing an n-gram with an item of ``config.tasks``.

    A run from a deployment has its paths confined to the data root (``pretrain.paths``).
    """
    input_dir, output_dir, _ = confined_folders(input_dir, output_dir)
    shards = parquet_shards(input_dir)
    with stage_run("decontaminate", output_dir, ray_config) as run:
        return _decontaminate(config, shards, input_dir, run)


def _decontaminate(config: DecontaminateConfig, shards: list[Path], input_dir: str, run: StageRun) -> dict:
    started = time.perf_counter()
    run.claim([shard.stem for shard in shards], ("*.parquet",))
    index = shared_index(config, run.out / INDEX_FOLDER)
    described = index.describe()
    run.logger.info("decontaminating %d shard(s) from %s into %s: %d %d-grams of %s, action %s", len(shards),
                    input_dir, run.out, described["ngrams"], config.ngram, ", ".join(config.tasks), config.action)
    reports = run.map(DECONTAMINATE, decontaminate_shards(shards, run.out, config),
                      holder_args={"folder": str(run.out / INDEX_FOLDER)})
    summary = summarize(reports, run.failures, described, run.hits(), time.perf_counter() - started)
    run.logger.info("decontaminate: kept %d of %d documents; dropped %s", summary["documents_kept"],
                    summary["documents_in"], summary["dropped"] or "none")
    return run.finish(summary, config=config.model_dump(), inputs=[str(shard) for shard in shards],
                      code=DECONTAMINATE.code_version(), total=len(shards), publish=publish, index=described)


def shared_index(config: DecontaminateConfig, folder: Path) -> NgramIndex:
    """The index of the config's tasks, saved in ``folder`` for the actors to map: built once, and
    again only when the tasks, n, the items' package or the code that builds it changed."""
    fingerprint = stable_hash(config.tasks, config.ngram, package_version(), code_version(build_index.__module__))
    if saved_fingerprint(folder) != fingerprint:
        save_index(build_index(config.tasks, config.ngram), folder, fingerprint)
    return load_index(folder)


# ---------------------------------------------------------------- the decontaminate stage of the end-to-end run


def run_in_pipeline(pipeline: Pipeline) -> dict:
    config = pipeline.recipe.decontaminate
    if not config.enabled:
        get_run_logger().info("decontaminate: skipped (decontaminate.enabled is false)")
        return {"skipped": "decontaminate.enabled is false"}
    return decontaminate_flow(config=config, input_dir=str(pipeline.input_dir),
                              output_dir=str(pipeline.folder("decontaminate")), ray_config=pipeline.recipe.ray)


def key_config(pipeline: Pipeline) -> dict:
    """Its config and, when it runs, the version of the items it removes."""
    config = pipeline.recipe.decontaminate
    return {"decontaminate": config, "items": package_version() if config.enabled else None}


def kept_or_input(pipeline: Pipeline, result: dict) -> Path:
    """The next stage reads the kept documents; a skipped stage passes its input on."""
    return pipeline.input_dir if result.get("skipped") else pipeline.folder("decontaminate")


STAGE = Stage(
    name="decontaminate", folder="decontaminate", section="decontaminate", run=run_in_pipeline,
    jobs=(DECONTAMINATE,), key_config=key_config, output=kept_or_input, products=("*.parquet",),
    reasons=tuple(f"contaminated_{task}" for task in EVAL_TASKS),
)
