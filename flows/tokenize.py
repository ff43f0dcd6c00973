"""Prefect flow: train (or load) the tokenizer, then tokenize every shard on Ray into packed token files.

Output (see ``tasks.tokenize``): ``tokenizer.json``, ``train/`` and ``val/`` ``.bin``
files, ``index.json`` (written last: its presence means the folder is complete),
``report.json`` and ``info.json``; artifact: splits and the source mixture. The jobs go
through the shard runner (``flows.runner``), which holds the output folder's lock and
removes the ``.*.part`` files of killed writers on the way in and out.

Caching: the tokenizer task is keyed on the input shards' identities, the
tokenizer settings, the code version and the output folder; each shard task on
its input's identity, the written tokenizer's digest, the split and weight
settings, the code version and its output files. A task whose output is missing
is recomputed.

With ``tokenize.mixture.shares`` a counting job runs first (one task per shard, keyed
like the shard tasks, writing ``mixture/<shard>.parquet``); the flow plans the mixture
from those files (``tasks.mixture.plan_mixture``: a share needing more epochs than
allowed is refused here, before any token file is written) and every shard task gets
the plan, which its key covers. index.json, report.json and the artifact show the
target and realized shares and the epochs.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import file_identity, funnel_table, parameter_policy, publish_markdown
from flows.runner import Shard, ShardJob, StageFailed, StageRun, stage_run
from flows.stage import Pipeline, Stage
from pretrain.config import RayConfig, TokenizeConfig
from pretrain.paths import PathPolicy
from tasks.mixture import SIDECAR_FOLDER, check_mixture_sources, plan_mixture, read_sidecars, sidecar_path
from tasks.shards import check_document_shard
from tasks.tokenize import (
    INDEX_FILE, SPLITS, TOKENIZER_FILE, ShardSurvey, build_index, build_tokenizer, bytes_per_token, check_free_space,
    check_weight_sources, check_weights, count_shard, estimated_tokens, file_sha256, input_shards, survey_shard,
    token_dtype, tokenize_shard, vocab_shortfall, write_index,
)

SHARD_SETTINGS = {"val_fraction", "weights", "seed", "eos_token"}
TOKENIZER_SETTINGS = {"tokenizer", "eos_token", "vocab_size", "train_max_documents", "seed"}

# Whole-dataset work, run once before the shards. Its worker is one Ray task, but the tokenizer's
# own thread pool trains on every core of the node, as it did when it ran in the flow process.
TOKENIZER = ShardJob(name="tokenizer", work=build_tokenizer, run_name=None)
# One CPU per shard: the tokenizer's own thread pool would oversubscribe the node.
TOKENIZE = ShardJob(name="tokenize-shard", work=tokenize_shard, run_name="tokenize-{label}", progress="tokenize",
                    ray_options={"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}})
# A mixture's first pass: each shard's train documents counted into its sidecar file.
COUNT = ShardJob(name="tokenize-count", work=count_shard, run_name="count-{label}", progress="mixture count",
                 ray_options={"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}})
COUNT_SETTINGS = {"val_fraction", "seed", "eos_token"}


def tokenizer_shard(config: TokenizeConfig, paths: list[Path], out: Path) -> Shard:
    """The tokenizer's task, keyed on its inputs (the given tokenizer file, else every input shard),
    the tokenizer settings and the output folder."""
    inputs = [file_identity(config.tokenizer)] if config.tokenizer else [file_identity(p) for p in paths]
    return Shard(label="tokenizer", args={"shard_paths": paths, "config": config, "output_dir": out},
                 key=(inputs, config.model_dump(include=TOKENIZER_SETTINGS), str(out)),
                 outputs=(out / TOKENIZER_FILE,))


def tokenize_shards(config: TokenizeConfig, shards: list[tuple[str, Path]], out: Path, digest: str,
                    plan: dict | None = None) -> list[Shard]:
    """One task per input shard, keyed on its identity, the written tokenizer's digest, the split and
    weight settings (or the mixture plan) and its two output files."""
    tasks = []
    for name, path in shards:
        train_path, val_path = out / "train" / f"{name}.bin", out / "val" / f"{name}.bin"
        tasks.append(Shard(label=name, args={"in_path": path, "train_path": train_path, "val_path": val_path,
                                             "tokenizer_path": out / TOKENIZER_FILE, "config": config, "plan": plan},
                           key=(file_identity(path), digest, config.model_dump(include=SHARD_SETTINGS), plan,
                                str(train_path), str(val_path)),
                           outputs=(train_path, val_path), shown_as=str(path)))
    return tasks


def count_shards(config: TokenizeConfig, shards: list[tuple[str, Path]], out: Path, digest: str) -> list[Shard]:
    """A mixture's counting task per input shard, keyed on its identity, the tokenizer's digest, the split
    settings and its sidecar file."""
    tasks = []
    for name, path in shards:
        sidecar = sidecar_path(out, name)
        tasks.append(Shard(label=name, args={"in_path": path, "sidecar": sidecar, "tokenizer_path": out / TOKENIZER_FILE,
                                             "config": config},
                           key=(file_identity(path), digest, config.model_dump(include=COUNT_SETTINGS), str(sidecar)),
                           outputs=(sidecar,), shown_as=str(path)))
    return tasks


def planned_mixture(config: TokenizeConfig, shards: list[tuple[str, Path]], run: StageRun, digest: str,
                    vocab_size: int) -> dict:
    """Count every shard's train documents, plan the mixture from the counts and check that it fits on disk."""
    counts = run.map(COUNT, count_shards(config, shards, run.out, digest))
    if run.failed:
        raise StageFailed("tokenize", run.failures, len(shards), prefix="mixture count: ")
    plan = plan_mixture(read_sidecars({name: sidecar_path(run.out, name) for name, _ in shards}), config.mixture)
    val_tokens = sum(c.get("val_tokens", 0) for report in counts for c in report["sources"].values())
    tokens, itemsize = plan["total_tokens"] + val_tokens, token_dtype(vocab_size).itemsize
    check_free_space(run.out, tokens * itemsize, f" ({plan['total_tokens']:,} train tokens of the mixture and "
                                                 f"{val_tokens:,} val tokens x {itemsize} bytes)")
    run.logger.info("mixture: %s", ", ".join(f"{source} {entry['share']:g} = {entry['target_tokens']:,} tokens "
                                            f"({entry['epochs']:.3g} epochs)"
                                            for source, entry in plan["sources"].items()))
    return plan


def summarize(index: dict | None, reports: list[dict], failures: list[dict], tokenizer: dict,
              seconds: float, cache_hits: int) -> dict:
    written = sum(r["splits"][name]["tokens"] for r in reports for name in SPLITS)
    return {
        "shards": len(reports) + len(failures),
        "shards_written": len(reports),
        "failed": failures,
        "cache_hits": cache_hits,
        "tokenizer": tokenizer,
        "documents": sum(r["documents"] for r in reports),
        "dropped": {reason: sum(r["dropped"].get(reason, 0) for r in reports)
                    for reason in sorted({k for r in reports for k in r["dropped"]})},
        "tokens": index["tokens"] if index else None,
        "sources": index["sources"] if index else None,
        "mixture": index.get("mixture") if index else None,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(written / seconds, 1) if seconds > 0 else None,
        "reports": sorted(reports, key=lambda r: r["shard"]),
    }


def empty_validation(index: dict, config: TokenizeConfig) -> str | None:
    """Why training on these shards will report no validation loss: val_fraction > 0 held out no
    document (a document is held out with that chance, so small inputs can get none)."""
    if config.val_fraction == 0 or index["tokens"]["val"] > 0:
        return None
    documents = sum(index["documents"].values())
    return (f"the val split is empty: val_fraction {config.val_fraction} held out none of the {documents:,} "
            f"documents, so training will report no validation loss; raise tokenize.val_fraction "
            f"(about {min(0.5, 2 / max(documents, 1)):.2g} holds out 2 documents on average)")


def publish(summary: dict) -> None:
    tokens, sources = summary["tokens"], summary["sources"]
    lines = funnel_table([("documents", summary["documents"]), ("train tokens", tokens["train"]),
                          ("val tokens", tokens["val"]), ("vocab size", summary["tokenizer"]["vocab_size"]),
                          ("tokens/s", summary["tokens_per_s"])], ("", "value"))
    total = max(1, tokens["train"])
    lines += ["", "| source | documents | weight | train tokens (raw) | train tokens (weighted) | share |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {s['documents']} | {s['weight']} | {s['raw_tokens']} | {s['tokens']} | "
              f"{s['tokens'] / total:.1%} |" for name, s in sources.items()]
    if mixture := summary.get("mixture"):
        lines += ["", f"Mixture of {mixture['total_tokens']:,} train tokens:", "",
                  "| source | target share | realized share | epochs | tokens |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {name} | {target:.2%} | {mixture['realized'][name]:.2%} | {mixture['epochs'][name]:.3g} | "
                  f"{mixture['tokens'][name]} |" for name, target in mixture["target"].items()]
    publish_markdown("tokenize-mixture", "Tokenized data", lines)


def confine_parameters(policy: PathPolicy, config: TokenizeConfig, input_dirs: list[str],
                       output_dir: str) -> tuple[TokenizeConfig, list[str], str]:
    """Check an untrusted run's folders and tokenizer file before anything is read or written."""
    if config.tokenizer:
        config = config.model_copy(update={"tokenizer": str(policy.path(config.tokenizer, "tokenize.tokenizer"))})
    inputs = [str(policy.path(folder, f"input_dirs[{i}]")) for i, folder in enumerate(input_dirs)]
    return config, inputs, str(policy.path(output_dir, "output_dir"))


@flow(name="tokenize", task_runner=ThreadPoolTaskRunner(max_workers=16))
def tokenize_flow(config: TokenizeConfig, input_dirs: list[str], output_dir: str,
                  ray_config: RayConfig = RayConfig()) -> dict:
    """Train or load a byte-level BPE tokenizer and write packed train/val token shards with index.json.

    A run from a deployment has its paths confined to the data root (``pretrain.paths``);
    a second run on the same output folder fails at once (``OutputInUse``).
    """
    policy = parameter_policy()
    if policy is not None:
        config, input_dirs, output_dir = confine_parameters(policy, config, input_dirs, output_dir)
    check_weights(config.weights)
    if config.tokenizer and not Path(config.tokenizer).is_file():
        raise FileNotFoundError(f"no tokenizer file at {config.tokenizer}")
    shards = input_shards(input_dirs)
    check_input_shards([path for _, path in shards])
    surveys = [survey_shard(path) for _, path in shards]
    present = sum((survey.sources for survey in surveys), Counter())
    if config.mixture.shares:
        check_mixture_sources(config.mixture.shares, present)
    else:
        check_weight_sources(config.weights, present)
    with stage_run("tokenize", output_dir, ray_config) as run:
        return _tokenize(config, shards, surveys, run)


def _tokenize(config: TokenizeConfig, shards: list[tuple[str, Path]], surveys: list[ShardSurvey],
              run: StageRun) -> dict:
    started = time.perf_counter()
    out, paths = run.out, [path for _, path in shards]
    (out / INDEX_FILE).unlink(missing_ok=True)  # present only while the folder is complete and consistent
    run.claim([name for name, _ in shards], ("train/*.bin", "val/*.bin", f"{SIDECAR_FOLDER}/*.parquet"))  # an earlier run's other .bin files

    report, cached = run.one(TOKENIZER, tokenizer_shard(config, paths, out))
    tokenizer = {**report, "cached": cached}
    tokenizer_path = out / TOKENIZER_FILE
    digest = file_sha256(tokenizer_path)  # the file as it is now, whatever a cached result says
    run.logger.info("tokenizer %s: vocab %d, EOS id %d; tokenizing %d shard(s) into %s",
                    tokenizer["source"], tokenizer["vocab_size"], tokenizer["eos_id"], len(shards), out)
    if shortfall := vocab_shortfall(tokenizer):
        run.logger.warning(shortfall)
    plan = None
    if config.mixture.shares:
        plan = planned_mixture(config, shards, run, digest, tokenizer["vocab_size"])
    else:
        check_output_fits(config, paths, surveys, tokenizer_path, tokenizer["vocab_size"], out)

    reports = run.map(TOKENIZE, tokenize_shards(config, shards, out, digest, plan))
    cache_hits = run.cache_hits[TOKENIZE.name]
    index = build_index(reports, {**tokenizer, "sha256": digest}, config, plan) if not run.failed else None
    summary = summarize(index, reports, run.failures, tokenizer, time.perf_counter() - started, cache_hits)
    summary["stale_removed"] = run.stale
    summary["warnings"] = [shortfall] if shortfall else []
    summary["val_warning"] = empty_validation(index, config) if index else None
    if summary["val_warning"]:
        run.logger.warning(summary["val_warning"])
    run.finish(summary, config=config.model_dump(), inputs=[str(path) for path in paths],
               code=TOKENIZE.code_version(), total=len(shards), tokenizer_sha256=digest)  # StageFailed if a shard failed
    write_index(out, index)  # last: its presence means the folder is complete
    publish(summary)
    run.logger.info("tokenize: %d documents, %d train and %d val tokens (%d shard(s) from cache)",
                    summary["documents"], index["tokens"]["train"], index["tokens"]["val"], cache_hits)
    return summary


def check_output_fits(config: TokenizeConfig, paths: list[Path], surveys: list[ShardSurvey], tokenizer_path: Path,
                      vocab_size: int, out: Path) -> None:
    """Estimate the token files' size (text bytes / measured bytes per token x weights) against free disk."""
    text_per_token = bytes_per_token(tokenizer_path, paths)
    tokens = estimated_tokens(surveys, config, text_per_token)
    itemsize = token_dtype(vocab_size).itemsize
    check_free_space(out, tokens * itemsize, f" ({tokens:,} tokens x {itemsize} bytes at {text_per_token:.2f} bytes "
                                              f"of text per token, with the mixture weights)")


def check_input_shards(paths: list[Path]) -> None:
    """Every shard feeds the tokenizer, so an unusable one stops the run up front, by name."""
    problems = []
    for path in paths:
        try:
            check_document_shard(path, required=("text",))
        except ValueError as error:  # its message names the file
            problems.append({"input": str(path), "error": str(error)})
    if problems:
        raise StageFailed("tokenize", problems, len(paths), what="input shards", verb="are unusable",
                          entry="{error}")



# ---------------------------------------------------------------- the tokenize stage of the end-to-end run


def run_in_pipeline(pipeline: Pipeline) -> dict:
    recipe = pipeline.recipe
    return tokenize_flow(config=recipe.tokenize, input_dirs=[str(pipeline.input_dir)],
                         output_dir=str(pipeline.folder("tokenize")), ray_config=recipe.ray)


STAGE = Stage(name="tokenize", folder="tokens", section="tokenize", run=run_in_pipeline,
              jobs=(TOKENIZER, COUNT, TOKENIZE),
              products=("index.json", "tokenizer.json", "train/*.bin", "val/*.bin", f"{SIDECAR_FOLDER}/*.parquet"),
              reasons=("empty_text",))
