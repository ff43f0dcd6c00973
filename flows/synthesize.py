"""Prefect flow: rephrase every document of a folder's shards with a local model, one cached task per shard.

A Ray actor per CPU (one per GPU share on CUDA) loads the model once (``tasks.synthesis.generate.
Synthesizer``) and generates the shards sent to it in batches; each shard is a Prefect task cached
on the input shard's identity, the settings, the model folder's files, the template's text and the
code version, and writes its output shard (the input's name) atomically: a killed run, rerun,
recomputes only the shards that were not written, and a shard is never half there or written twice.
A run folder as the model is exported here once (its newest checkpoint, as ``pretrain eval`` does).

Output: one shard of ``SYNTHETIC_SCHEMA`` rows per input shard, ``report.json`` (documents in and
out, ``empty_generation``, ``document_truncated``, tokens generated, cache hits, model loads per
actor) and ``info.json`` (the settings, the model folder, the template's name and sha256).
No stage of its own: the sources stage runs it for a synthetic branch.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import confined_folders, file_identity, parquet_shards
from flows.runner import Shard, ShardJob, StageRun, stage_run
from pretrain.config import RayConfig, SynthesizeConfig
from tasks.ray_runtime import cluster_cpus
from tasks.synthesis.generate import Synthesizer, model_loads, resolve_device
from tasks.synthesis.shard import synthesize_held
from tasks.synthesis.templates import Template, load_template

SYNTHESIZE = ShardJob(name="synthesize-shard", work=synthesize_held, holder=Synthesizer,
                      run_name="synthesize-{label}", progress="synthesize")
TOTALS = ("documents_in", "documents", "empty_generation", "document_truncated", "generated_tokens")


def resolve_model(model: str | None, say) -> Path:
    """The HF folder to load: ``model`` itself, or a run folder's newest checkpoint exported (once)."""
    from tasks.evaluation.models import check_model_path, exported_checkpoint, is_run_folder

    if not model:
        raise ValueError("synthesize.model is not set: give a Hugging Face causal-LM folder or a run folder")
    path = Path(model)
    check_model_path(path)
    return exported_checkpoint(path, say)[0] if is_run_folder(path) else path


def model_identity(folder: Path) -> list[str]:
    """The model folder by its files' identities (path, size, mtime)."""
    return [file_identity(path) for path in sorted(folder.rglob("*")) if path.is_file()]


def settings_key(config: SynthesizeConfig, template: Template) -> dict:
    """What a shard's output depends on besides its input, the model and the code."""
    return {"settings": config.model_dump(exclude={"model", "templates_dir"}), "template_sha256": template.sha256}


def synthesize_shards(shards: list[Path], out: Path, config: SynthesizeConfig, template: Template,
                      model: list[str]) -> list[Shard]:
    key = settings_key(config, template)
    return [Shard(label=shard.stem, args={"in_path": shard, "out_path": out / shard.name},
                  key=(file_identity(shard), key, model, str(out / shard.name)), outputs=(out / shard.name,),
                  shown_as=str(shard)) for shard in shards]


def job_for(config: SynthesizeConfig, shards: int) -> tuple[ShardJob, float]:
    """(the job, each actor's share of a GPU): on CUDA each actor asks Ray for its share of the GPUs (the
    runner starts one actor per CPU, at most one per shard); on CPU, one CPU each."""
    if not resolve_device(config.device).startswith("cuda"):
        return SYNTHESIZE, 1.0
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    share = min(1.0, gpus / max(1, min(shards, cluster_cpus())))
    return (dataclasses.replace(SYNTHESIZE, ray_options={"num_gpus": share}), share) if gpus else (SYNTHESIZE, 1.0)


def summarize(reports: list[dict], failures: list[dict], hits: int, seconds: float, loads: list[dict]) -> dict:
    totals = {key: sum(report.get(key, 0) for report in reports) for key in TOTALS}
    return {"shards": len(reports) + len(failures), "shards_written": len(reports), "failed": failures, **totals,
            "cache_hits": hits, "seconds": round(seconds, 2),
            "docs_per_s": round(totals["documents_in"] / seconds, 2) if seconds > 0 else None,
            "model_loads": sorted(loads, key=lambda load: load["pid"]),
            "reports": sorted(reports, key=lambda report: report["input"])}


@flow(name="synthesize", task_runner=ThreadPoolTaskRunner(max_workers=16))
def synthesize_flow(config: SynthesizeConfig, input_dir: str, output_dir: str,
                    ray_config: RayConfig = RayConfig()) -> dict:
    """Rephrase the documents of ``input_dir``'s shards with ``config.model`` and ``config.template``.

    A run from a deployment has its paths confined to the data root (``pretrain.paths``).
    """
    input_dir, output_dir, policy = confined_folders(input_dir, output_dir)
    if policy is not None and config.model:
        config = config.model_copy(update={"model": str(policy.path(config.model, "model"))})
    template = load_template(config.template, config.templates_dir)
    shards = parquet_shards(input_dir)
    with stage_run("synthesize", output_dir, ray_config) as run:
        return _synthesize(config, template, shards, input_dir, run)


def _synthesize(config: SynthesizeConfig, template: Template, shards: list[Path], input_dir: str,
                run: StageRun) -> dict:
    started = time.perf_counter()
    run.claim([shard.stem for shard in shards], ("*.parquet",))
    folder = resolve_model(config.model, run.logger.info)
    run.logger.info("synthesizing %d shard(s) from %s into %s: model %s, template %s, seed %d", len(shards),
                    input_dir, run.out, folder, template.name, config.seed)
    job, gpu_share = job_for(config, len(shards))
    reports = run.map(job, synthesize_shards(shards, run.out, config, template, model_identity(folder)),
                      holder_args={"model_dir": str(folder), "config": config, "gpu_share": gpu_share},
                      ask=model_loads)
    summary = summarize(reports, run.failures, run.hits(), time.perf_counter() - started, run.answers)
    run.logger.info("synthesize: %d documents from %d (%d empty generations)", summary["documents"],
                    summary["documents_in"], summary["empty_generation"])
    return run.finish(summary, config=config.model_dump(), inputs=[str(shard) for shard in shards],
                      code=job.code_version(), total=len(shards), model_folder=str(folder), template=template.name,
                      template_sha256=template.sha256)
