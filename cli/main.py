"""The `pretrain` command: every pipeline stage from the shell."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pretrain.config import (
    ConfigError, DedupConfig, IngestConfig, PerplexityConfig, PipelineConfig, QualityConfig, TokenizeConfig,
    TrainConfig, apply_overrides, load_recipe, validate_config,
)
from pretrain.paths import parquet_files, require_folder, root_is_configured
from cli.options import ListOptions
from cli.prefect_exit import quiet_temporary_server

# An offline tool: the local Prefect server must not try to phone home (set before Prefect is imported).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    help="Common Crawl in, a trained model out. Each command runs one stage; `run` runs the pipeline.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


@app.callback()
def _every_command(ctx: typer.Context) -> None:
    # A temporary Prefect server is stopped only once what the command ran is recorded (no shutdown tracebacks).
    ctx.call_on_close(quiet_temporary_server())


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _clear_failures() -> tuple[type[Exception], ...]:
    """Failures whose message says everything (which folder, which field, which URL): no traceback, exit 2."""
    from flows.common import OutputInUse, OutputNotWritable
    from pretrain.outputs import OutputRefused
    from pretrain.paths import UnsafePathError
    from tasks.fetch import FetchError
    from tasks.ray_runtime import RayUnreachable

    return OutputInUse, OutputNotWritable, OutputRefused, UnsafePathError, FetchError, RayUnreachable


def _require_input(folder: Path) -> None:
    """Say at once that an input folder does not exist, holds no shards, or a shard that is not a regular file.
    Under PRETRAIN_DATA_ROOT a relative path is the root's, so the flow checks it after resolving (and confining) it."""
    if not root_is_configured():
        require_folder(folder, "--input")
        parquet_files(folder)

def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def _run_with_progress(label: str, run):
    """Run a flow, showing its report_progress calls as a rich progress bar."""
    from pretrain.progress import progress_to

    with _progress() as bar:
        task_id = bar.add_task(label, total=None)

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task_id, description=f"{label}: {stage}", completed=done, total=total)

        with progress_to(update):
            return run()


def _ingest_config(base: dict, **options) -> IngestConfig:
    merged = {**base, **{key: value for key, value in options.items() if value not in (None, [])}}
    return validate_config(IngestConfig, merged, prefix="ingest.")


@app.command(cls=ListOptions)
def ingest(
    input: list[str] = typer.Option(..., "--input", "-i", help="WARC path/glob/dir, https:// or s3:// URL, or crawl id (one or more)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the Parquet shards, report.json and info.json."),
    extractor: Optional[str] = typer.Option(None, help="fast (default) or precise (trafilatura)."),
    languages: Optional[str] = typer.Option(None, help="Comma-separated ISO 639-1 codes to keep, e.g. en,fr."),
    max_files: Optional[int] = typer.Option(None, help="Use at most N input files."),
    num_shards: Optional[int] = typer.Option(None, help="Split the file list into N parts..."),
    shard_index: Optional[int] = typer.Option(None, help="...and process part I (0-based)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `ingest` section gives defaults."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS, else local)."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Ingest WARC files into Parquet shards (one per input file) on Ray."""
    from flows.ingest import ingest_flow
    from flows.runner import StageFailed
    from tasks.sources import check_local_inputs

    try:
        recipe = _recipe_or_default(config)
        cfg = _ingest_config(
            recipe.ingest.model_dump(exclude={"inputs"}), inputs=input, extractor=extractor, languages=languages,
            max_files=max_files, num_shards=num_shards, shard_index=shard_index,
        )
        ray_cfg = recipe.ray.model_copy(update={k: v for k, v in {"address": ray_address, "num_cpus": num_cpus}.items() if v})
    except ConfigError as error:
        _fail(str(error))
    try:
        check_local_inputs(cfg)  # a missing file, a FIFO or a device: refused before the run starts
        summary = _run_with_progress("ingest", lambda: ingest_flow(config=cfg, output_dir=str(output), ray_config=ray_cfg))
    except StageFailed as error:
        _fail(f"{error}\nreport: {output / 'report.json'}", code=1)
    except _clear_failures() as error:
        _fail(str(error))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    _print_ingest_summary(summary, output)


def _print_ingest_summary(summary: dict, output: Path) -> None:
    console.print(
        f"[green]ingested[/green] {summary.get('documents', 0)} documents from {summary.get('html_responses', 0)} "
        f"HTML responses in {summary['files']} file(s) ({summary.get('cache_hits', 0)} from cache), "
        f"{summary['docs_per_s']} docs/s"
    )
    for reason, count in summary["dropped"].items():
        console.print(f"  {reason}: {count}")
    console.print(f"shards and report.json in {output}")


def _recipe_or_default(config: Optional[Path]) -> PipelineConfig:
    return load_recipe(str(config)) if config else PipelineConfig()


def _print_drops(dropped: dict) -> None:
    for reason, count in dropped.items():
        console.print(f"  {reason}: {count}")


@app.command("filter")
def filter_(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet shards (e.g. the ingest output)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for kept shards, removed/, report.json."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `filter` section configures the chain."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Apply the heuristic filters (URL, Gopher, C4, FineWeb) to every shard."""
    from flows.filter import filter_flow
    from flows.runner import StageFailed

    try:
        recipe = _recipe_or_default(config)
    except ConfigError as error:
        _fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    try:
        _require_input(input)
        summary = _run_with_progress("filter", lambda: filter_flow(
            config=recipe.filter, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg))
    except StageFailed as error:
        _fail(f"{error}\nreport: {output / 'report.json'}", code=1)
    except _clear_failures() as error:
        _fail(str(error))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    console.print(f"[green]kept[/green] {summary.get('documents_kept', 0)} of {summary.get('documents_in', 0)} "
                  f"documents ({summary.get('cache_hits', 0)} shard(s) from cache)")
    _print_drops(summary["dropped"])
    console.print(f"shards, removed/ and report.json in {output}")


@app.command()
def dedup(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet shards."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for deduplicated shards, clusters, report.json."),
    threshold: Optional[float] = typer.Option(None, help="Confirm fuzzy pairs at this estimated Jaccard (0-1)."),
    bands: Optional[int] = typer.Option(None, help="MinHash LSH bands (default 14)."),
    rows: Optional[int] = typer.Option(None, help="Rows per band (default 8)."),
    partitions: Optional[int] = typer.Option(None, help="Bucket files per band (default 16; 1 for small data)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `dedup` section gives defaults."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Remove exact, URL and near duplicates across the whole dataset (MinHash LSH)."""
    from flows.dedup import dedup_flow

    try:
        recipe = _recipe_or_default(config)
        updates = {k: v for k, v in {"threshold": threshold, "bands": bands, "rows_per_band": rows,
                                   "hash_partitions": partitions}.items()
                   if v is not None}
        cfg = validate_config(DedupConfig, {**recipe.dedup.model_dump(), **updates}, prefix="dedup.")
    except ConfigError as error:
        _fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    try:
        _require_input(input)
        summary = _run_with_progress("dedup", lambda: dedup_flow(
            config=cfg, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg))
    except _clear_failures() as error:
        _fail(str(error))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    console.print(f"[green]kept[/green] {summary.get('documents_kept', 0)} of {summary.get('documents_in', 0)} documents")
    _print_drops(summary.get("dropped", {}))
    console.print(f"shards, clusters and report.json in {output}")


quality_app = typer.Typer(help="Model-based quality: KenLM perplexity and a quality classifier.", no_args_is_help=True)
app.add_typer(quality_app, name="quality")


@quality_app.command("train-perplexity", cls=ListOptions)
def train_perplexity(
    reference: list[str] = typer.Option(..., "--reference", "-r", help="Reference text: files, globs or folders "
                                        "(.txt[.gz], JSONL, Parquet); one or more."),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write (sp.model, lm.binary, model.json)."),
    lang: Optional[str] = typer.Option(None, help="Language of the reference text (documents in others are not "
                                       "scored; default: the recipe's, else en)."),
    order: Optional[int] = typer.Option(None, help="n-gram order (default 5)."),
    vocab_size: Optional[int] = typer.Option(None, help="Sentencepiece vocabulary size (default 8000)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `quality.perplexity` section gives defaults."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --output that is not an earlier model."),
) -> None:
    """Train a CCNet-style perplexity model: normalize, sentencepiece, KenLM n-gram, binarize."""
    from flows.quality import train_perplexity_flow

    try:
        base = _recipe_or_default(config).quality.perplexity.model_dump()
        updates = {k: v for k, v in {"lang": lang, "order": order, "vocab_size": vocab_size}.items() if v is not None}
        cfg = validate_config(PerplexityConfig, {**base, **updates}, prefix="quality.perplexity.")
    except ConfigError as error:
        _fail(str(error))
    try:
        meta = train_perplexity_flow(reference=reference, output_dir=str(output), config=cfg, force=force)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        _fail(str(error))
    console.print(f"[green]perplexity model[/green] ({meta.get('lang')}, order {meta.get('order')}) in {output}")


@quality_app.command("train-classifier", cls=ListOptions)
def train_classifier(
    positive: list[str] = typer.Option(..., "--positive", "-p", help="Reference (good) text; one or more."),
    negative: list[str] = typer.Option(..., "--negative", "-n", help="Web documents, e.g. ingested shards; one or more."),
    output: Path = typer.Option(..., "--output", "-o", help="Model folder to write (model.joblib, model.json)."),
    max_documents: Optional[int] = typer.Option(None, help="Documents sampled per class, at most (default: the "
                                                "recipe's quality_training.max_documents, else 20000)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `quality.classifier` section and "
                                          "quality_training.max_documents give defaults."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --output that is not an earlier classifier."),
) -> None:
    """Train the quality classifier (hashed n-grams + logistic SGD) and report held-out metrics."""
    from flows.quality import train_classifier_flow

    try:
        recipe = _recipe_or_default(config)
    except ConfigError as error:
        _fail(str(error))
    cfg = recipe.quality.classifier
    if max_documents is None:
        max_documents = recipe.quality_training.max_documents
    try:
        meta = train_classifier_flow(positive=positive, negative=negative, output_dir=str(output), config=cfg,
                                     max_documents=max_documents, force=force)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    console.print(f"[green]classifier[/green] in {output}: " + json.dumps(meta.get("metrics", meta), default=str))


@quality_app.command("score")
def score(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet shards with `text` (and `id`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Writes OUTPUT/scored (all rows + scores), OUTPUT/kept."),
    perplexity_model: Optional[Path] = typer.Option(None, help="Folder from train-perplexity."),
    classifier_model: Optional[Path] = typer.Option(None, help="Folder from train-classifier."),
    keep_fraction: Optional[float] = typer.Option(None, help="Keep the top F of documents by quality_score."),
    max_perplexity: Optional[float] = typer.Option(None, help="Keep documents with perplexity <= X."),
    min_quality: Optional[float] = typer.Option(None, help="Keep documents with quality_score >= Q."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `quality` section gives defaults."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Score shards with the models (on Ray, one load per worker) and keep by one rule."""
    from flows.quality import score_flow
    from flows.runner import StageFailed

    try:
        recipe = _recipe_or_default(config)
        updates = {"perplexity_model": str(perplexity_model) if perplexity_model else None,
                   "classifier_model": str(classifier_model) if classifier_model else None,
                   "keep_fraction": keep_fraction, "max_perplexity": max_perplexity, "min_quality": min_quality}
        cfg = validate_config(QualityConfig, {**recipe.quality.model_dump(),
                                                     **{k: v for k, v in updates.items() if v is not None}},
                              prefix="quality.")
    except ConfigError as error:
        _fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    try:
        _require_input(input)
        summary = _run_with_progress("quality", lambda: score_flow(
            config=cfg, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg))
    except StageFailed as error:
        _fail(f"{error}\nreport: {output / 'report.json'}", code=1)
    except _clear_failures() as error:
        _fail(str(error))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    console.print(f"[green]kept[/green] {summary['documents_kept']} of {summary['documents_in']} documents; "
                  f"cut-offs {summary['cutoffs']}; buckets {summary['buckets']}")
    _print_drops(summary["dropped"])


@app.command(cls=ListOptions)
def tokenize(
    input: list[Path] = typer.Option(..., "--input", "-i", help="Folder(s) of Parquet shards with `text` (one or more)."),
    output: Path = typer.Option(..., "--output", "-o", help="Token shards folder: train/, val/, index.json, tokenizer.json."),
    tokenizer: Optional[Path] = typer.Option(None, help="Use this tokenizer.json instead of training one."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary of the trained BPE tokenizer (default 32000)."),
    weights: list[str] = typer.Option([], help="Mixture weight per source: source=w (one or more, or comma-separated)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `tokenize` section gives defaults."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Train (or load) a byte-level BPE tokenizer and write packed token shards on Ray."""
    from flows.runner import StageFailed
    from flows.tokenize import tokenize_flow
    from tasks.tokenize import parse_weights

    if tokenizer and vocab_size:
        _fail("give --tokenizer or --vocab-size, not both (a given tokenizer has its own vocabulary)")
    try:
        recipe = _recipe_or_default(config)
        updates = {k: v for k, v in {"tokenizer": str(tokenizer) if tokenizer else None, "vocab_size": vocab_size,
                                     "weights": parse_weights(weights) if weights else None}.items() if v is not None}
        cfg = validate_config(TokenizeConfig, {**recipe.tokenize.model_dump(), **updates}, prefix="tokenize.")
    except (ConfigError, ValueError) as error:
        _fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    try:
        for folder in input:
            _require_input(folder)
        summary = _run_with_progress("tokenize", lambda: tokenize_flow(
            config=cfg, input_dirs=[str(p) for p in input], output_dir=str(output), ray_config=ray_cfg))
    except StageFailed as error:
        _fail(f"{error}\nreport: {output / 'report.json'}", code=1)
    except _clear_failures() as error:
        _fail(str(error))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    console.print(f"[green]tokenized[/green] {summary['documents']} documents: {summary['tokens']['train']} train and "
                  f"{summary['tokens']['val']} validation tokens ({summary['tokens_per_s']} tokens/s, "
                  f"{summary['cache_hits']} shard(s) from cache); index in {output / 'index.json'}")
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if summary.get("val_warning"):
        console.print(f"[yellow]warning:[/yellow] {summary['val_warning']}")


def _train_config(config: Optional[Path], overrides: list[str], short: dict) -> TrainConfig:
    """The recipe's `train` section, with the --set assignments (recipe paths: train.seq_len=8), then the options."""
    for assignment in overrides:
        _refuse_a_bare_train_key(assignment)
    recipe = (load_recipe(str(config), overrides) if config else
              validate_config(PipelineConfig, apply_overrides({}, overrides)))
    raw = recipe.train.model_dump(exclude_none=True)
    raw.update({k: v for k, v in short.items() if v is not None})
    return validate_config(TrainConfig, raw, prefix="train.")


def _refuse_a_bare_train_key(assignment: str) -> None:
    """`--set seq_len=8` (a TrainConfig field, not a recipe key): say the recipe path, train.seq_len."""
    key = assignment.split("=", 1)[0].strip()
    top = key.split(".", 1)[0]
    if top not in PipelineConfig.model_fields and top in TrainConfig.model_fields:
        raise ConfigError(f"--set {assignment}: the recipe has no key {key!r}; the training field is train.{key} "
                          f"(--set train.{assignment})")


@app.command(cls=ListOptions)
def train(
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `train` section is the run's config."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value, e.g. "
                                   "train.max_steps=5 (one or more)."),
    resume: bool = typer.Option(False, help="Continue from the newest checkpoint in the run folder."),
    data: Optional[Path] = typer.Option(None, help="Token shards folder (from `pretrain tokenize`)."),
    output: Optional[Path] = typer.Option(None, help="Run folder: checkpoints, metrics.jsonl, summary.json."),
    model: Optional[str] = typer.Option(None, help="Named model size: tiny, small, 125m, 350m, 1b, 7b."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    num_procs: Optional[int] = typer.Option(None, help="Processes (GPUs, or CPU ranks on gloo)."),
) -> None:
    """Train a model with DeepSpeed (ZeRO-3 by default) on token shards."""
    from flows.train import train_flow
    from tasks.train.ds_config import BatchConfigError
    from tasks.train.preflight import TrainConfigError, check_run

    try:
        cfg = _train_config(config, set_, {"data_dir": str(data) if data else None,
                                           "output_dir": str(output) if output else None,
                                           "model_size": model, "max_steps": max_steps, "num_procs": num_procs})
    except ConfigError as error:
        _fail(str(error))
    if not cfg.data_dir:
        _fail("no token data: give --data TOKENS_DIR (or train.data_dir in the recipe)")
    try:
        found = check_run(cfg)  # data, model and vocabulary, before Prefect or a launcher starts
    except TrainConfigError as error:
        _fail(str(error))
    for warning in found.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    try:
        summary = _run_with_progress("train", lambda: train_flow(config=cfg, resume=resume))
    except (BatchConfigError, FileNotFoundError, ValueError) as error:
        _fail(str(error))
    except Exception as error:  # the training processes failed after their retries
        _fail(f"{type(error).__name__}: {error}", code=1)
    val_loss = summary.get("val_loss")
    validation = (f"validation loss {val_loss}" if val_loss is not None else
                  f"no validation loss (the val split has {summary.get('val_tokens', 0):,} tokens, not one window "
                  f"of seq_len {cfg.seq_len} + 1)")
    console.print(f"[green]trained[/green] {summary.get('steps')} steps: loss {summary.get('final_loss')}, "
                  f"{validation}; run folder {cfg.output_dir}")


@app.command("export-hf")
def export_hf_command(
    run_dir: Path = typer.Option(..., "--run", help="A training run folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for config.json + model.safetensors (+ tokenizer)."),
    tag: Optional[str] = typer.Option(None, help="Checkpoint tag (default: the newest undamaged, e.g. step100)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --output that is not an earlier export."),
) -> None:
    """Export a checkpoint as a Hugging Face `LlamaForCausalLM` folder (loads with transformers)."""
    from models.export_hf import check_output, export_hf
    from pretrain.outputs import OutputRefused
    from tasks.train.checkpoint import checkpoint_folder, checkpoint_root, consolidate_fp32, saved_model_shape
    from tasks.train.main import load_train_config

    summary_path, config_path = run_dir / "summary.json", run_dir / "train_config.json"
    if not config_path.is_file():
        _fail(f"{run_dir} is not a training run folder (no train_config.json)")
    cfg = load_train_config(config_path)
    tokenizer = Path(cfg.data_dir) / "tokenizer.json"
    inputs = [run_dir, checkpoint_root(run_dir), *([tokenizer] if tokenizer.is_file() else [])]
    try:
        check_output(output, inputs, force)  # before the checkpoint is read
    except OutputRefused as error:
        _fail(str(error))
    try:
        folder = checkpoint_folder(checkpoint_root(run_dir), tag,  # its files checked against its manifest
                                   say=lambda line: console.print(f"[yellow]warning:[/yellow] {line}"))
        state = consolidate_fp32(checkpoint_root(run_dir), folder.name)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    shape = saved_model_shape(folder) or summary.get("model")  # the checkpoint's own, else the run's
    if shape is None:
        _fail(f"no model shape in {folder / 'client.json'} or {summary_path}; finish or resume the run first")
    from pretrain.config import ModelConfig

    model_cfg = ModelConfig.model_validate(shape)
    try:
        out = export_hf(state, model_cfg, output, tokenizer_file=tokenizer if tokenizer.is_file() else None,
                        inputs=[run_dir, folder], force=force)
    except OutputRefused as error:
        _fail(str(error))
    console.print(f"[green]exported[/green] {out} (LlamaForCausalLM, {len(state)} tensors)")


@app.command()
def extract(
    files: list[Path] = typer.Argument(..., help=".html or .html.gz files."),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file: one {\"file\", \"text\"} object per input."),
    extractor: str = typer.Option("fast", help="fast or precise."),
) -> None:
    """Run the extractor on HTML files (the same code path as ingestion)."""
    from tasks.decode import decode_html
    from tasks.extract import HtmlTooDeep, extract_text

    if extractor not in ("fast", "precise"):
        _fail(f"--extractor must be fast or precise, got {extractor!r}")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        _fail(f"not found: {', '.join(missing)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with _progress() as bar, open(output, "w", encoding="utf-8") as out:
        for path in bar.track(files, description="extract"):
            raw = path.read_bytes()
            if path.suffix == ".gz":
                raw = gzip.decompress(raw)
            try:
                record = {"file": str(path), "text": extract_text(decode_html(raw), extractor)}
            except HtmlTooDeep as error:  # what ingestion counts as html_too_deep
                record = {"file": str(path), "text": "", "dropped": "html_too_deep"}
                console.print(f"[yellow]warning:[/yellow] {path}: {error}; written with no text")
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    console.print(f"wrote {len(files)} record(s) to {output}")


@app.command("demo-data")
def demo_data(
    folder: Path = typer.Argument(..., help="Where to write the demo WARC files."),
    files: int = typer.Option(3, min=1, help="Number of WARC files."),
    articles_per_file: int = typer.Option(40, min=1, help="Original articles per file (other page kinds are added)."),
) -> None:
    """Write the offline demo sample (WARC files) that the `local` recipe ingests."""
    from tasks.demo import write_demo_data

    paths = write_demo_data(folder, n_files=files, articles_per_file=articles_per_file)
    for path in paths:
        console.print(f"wrote {path} ({path.stat().st_size} bytes)")


@app.command(cls=ListOptions)
def run(
    recipe: str = typer.Option("local", help="A shipped recipe by name (local, cc-small, cc-full) or a YAML path."),
    output: Optional[Path] = typer.Option(None, help="Output root (default: the recipe's output_dir)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe field: key.path=value, e.g. "
                                   "train.max_steps=5 (one or more)."),
) -> None:
    """Run the pipeline on a recipe (ingest, filters, dedup, quality, tokenize, train); writes OUTPUT/summary.json."""
    try:
        cfg = load_recipe(recipe, set_)
        if output:
            cfg = cfg.model_copy(update={"output_dir": str(output)})
    except ConfigError as error:
        _fail(str(error))
    from flows.pretrain import pretrain_flow  # after the recipe: a bad --set is refused without importing every flow

    try:
        _check_output_free(Path(cfg.output_dir), "pretrain")
        summary = _run_with_progress(f"run {cfg.name}", lambda: pretrain_flow(config=cfg))
    except _clear_failures() as error:  # a locked or unwritable output root, as in the stage commands
        _fail(str(error))
    except Exception as error:  # the flow already logged the details
        _fail(f"{type(error).__name__}: {error}", code=1)
    _print_run_summary(summary)


def _check_output_free(folder: Path, stage: str) -> None:
    """Refuse a folder another run holds before the flow starts, so that the refusal is one line, not a failed
    flow run's traceback (the flow takes the lock itself; under PRETRAIN_DATA_ROOT it resolves the folder)."""
    from flows.common import output_lock
    if folder.is_dir() and not root_is_configured():
        with output_lock(folder, stage):
            pass


def _print_run_summary(summary: dict) -> None:
    """Where every output is, the funnel, cache hits and the model (stdout; logs go to stderr)."""
    from rich.table import Table

    out = Console()
    funnel = {row["stage"]: row for row in summary["funnel"]}
    table = Table(title=f"pretrain run {summary['recipe']} ({summary['seconds']} s)")
    for column in ("stage", "output", "documents", "tokens", "from cache"):
        table.add_column(column, justify="right" if column in ("documents", "tokens") else "left")
    for name, stage in summary["stages"].items():
        row = funnel.get(name, {})
        tokens = row.get("tokens")
        table.add_row(name, stage["output"], str(row.get("documents") or ""),
                      "" if tokens is None else ("~" if row.get("tokens_estimated") else "") + f"{tokens:,}",
                      "yes" if stage["cached"] else "no")
    out.print(table)
    model = summary.get("model")
    if model:
        out.print(f"model: {model['hf_dir'] or model['checkpoint']} ({model['params']:,} parameters, "
                  f"{model['steps']} steps), validation loss {model['val_loss']:.4f}")
        out.print(f"loss curve: {model['loss_curve']}")
    out.print(f"report figures: {Path(summary['output_dir']) / 'report'}")
    out.print(f"summary: {Path(summary['output_dir']) / 'summary.json'} "
              f"({summary['cached_stages']} of {len(summary['stages'])} stages from cache; ~ = estimated tokens)")


@app.command()
def refresh(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Dataset root: filtered/<crawl>/, ledger/, runs/."),
    crawl: Optional[str] = typer.Option(None, help="A crawl id (CC-MAIN-YYYY-WW); default: the newest in the index."),
    max_files: Optional[int] = typer.Option(None, help="New WARC files to take this run (default 10)."),
    languages: Optional[str] = typer.Option(None, help="Comma-separated ISO 639-1 codes to keep, e.g. en,fr."),
    index_url: Optional[str] = typer.Option(None, help="collinfo.json URL (default: index.commoncrawl.org)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its ingest, filter and ray sections apply."),
) -> None:
    """Append the newest crawl's WARC files that the dataset does not have yet (ingest + filters)."""
    from flows.refresh import RefreshFailed, cc_refresh_flow
    from pretrain.config import RefreshConfig
    from tasks.refresh import RefreshLocked

    try:
        recipe = _recipe_or_default(config)
        ingest_cfg = recipe.ingest.model_dump(exclude={"inputs", "max_files", "num_shards", "shard_index"})
        if languages is not None:
            ingest_cfg["languages"] = languages
        options = {"dataset_dir": str(dataset), "crawl": crawl, "max_files_per_run": max_files, "index_url": index_url}
        cfg = validate_config(RefreshConfig, {
            **{key: value for key, value in options.items() if value is not None},
            "ingest": ingest_cfg, "filter": recipe.filter.model_dump(), "ray": recipe.ray.model_dump(),
        }, prefix="refresh.")
    except ConfigError as error:
        _fail(str(error))
    try:
        summary = _run_with_progress("refresh", lambda: cc_refresh_flow(config=cfg))
    except (RefreshLocked, *_clear_failures()) as error:  # an unreachable collinfo.json: FetchError
        _fail(str(error))
    except RefreshFailed as error:
        _fail(f"{error}\nreports: {dataset / 'runs'}", code=1)
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    console.print(f"[green]{summary['crawl']}[/green]: {summary['files_new']} new file(s), "
                  f"{summary['files_skipped']} already in the dataset, {summary['files_deferred']} left for later; "
                  f"{summary['documents_kept']} of {summary['documents_ingested']} documents kept")
    console.print(f"dataset manifest: {dataset / 'manifest.json'}")


scaling_app = typer.Typer(help="Scaling laws: plan a run (Chinchilla), fit L(N, D) to runs, run a sweep.",
                          no_args_is_help=True)
app.add_typer(scaling_app, name="scaling")


def _plan_budget(flops, gpu_hours, device, mfu, tokens, tokens_dir) -> tuple[str, float, dict]:
    """("flops" or "tokens", the amount, how it was derived) from the plan options."""
    from models.scaling import flops_from_gpu_hours
    from tasks.scaling import tokens_in_index

    given = [name for name, value in (("--flops", flops), ("--gpu-hours", gpu_hours),
                                      ("--tokens/--tokens-dir", tokens or tokens_dir)) if value is not None]
    if len(given) != 1 or (tokens is not None and tokens_dir is not None):
        raise typer.BadParameter(f"give one of --flops, --gpu-hours or --tokens/--tokens-dir (got {given or 'none'})")
    if gpu_hours is not None:
        if device is None or mfu is None:
            raise typer.BadParameter("--gpu-hours needs --device and --mfu")
        budget = flops_from_gpu_hours(gpu_hours, device, mfu)
        return "flops", budget, {"gpu_hours": gpu_hours, "device": device, "mfu": mfu}
    if flops is not None:
        return "flops", flops, {}
    if tokens_dir is not None:
        return "tokens", float(tokens_in_index(tokens_dir)), {"tokens_dir": str(tokens_dir)}
    return "tokens", tokens, {}


def _check_plan_sizes(seq_len: Optional[int], vocab_size: Optional[int]) -> None:
    """The model-shape options must be ones a ModelConfig takes (a context of 8+ tokens, 2+ token types)."""
    if seq_len is not None and seq_len < 8:
        raise typer.BadParameter(f"--seq-len must be at least 8 tokens, got {seq_len}")
    if vocab_size is not None and vocab_size < 2:
        raise typer.BadParameter(f"--vocab-size must be at least 2, got {vocab_size}")


def _model_params(model: str, vocab_size: int, seq_len: int) -> float:
    from models.shapes import total_params
    from models.sizes import MODEL_SIZES, model_config

    if model in MODEL_SIZES:
        return float(total_params(model_config(model, vocab_size, seq_len)))
    try:
        return float(model)
    except ValueError:
        raise typer.BadParameter(f"--model: {model!r} is neither a named size ({', '.join(MODEL_SIZES)}) "
                                 "nor a parameter count") from None


def _print_plan(out: dict) -> None:
    law, shape = out["law_params"], out["model"]
    lines = [
        ("law", f"{out['law']}: L = {law['E']:.4g} + {law['A']:.4g} / N^{law['alpha']:.4g} + "
                f"{law['B']:.4g} / D^{law['beta']:.4g}"),
        ("budget", f"{out['flops']:.4g} FLOPs ({out['method']})"),
        ("parameters N", f"{out['n_params']:.4g}"),
        ("tokens D", f"{out['n_tokens']:.4g}"),
        ("tokens per parameter", f"{out['tokens_per_param']:.1f}"),
        ("predicted loss", f"{out['loss']:.4f} nats/token"),
        ("closest config", "none (see the warning)" if shape is None else
         f"{shape['name']}: n_layers {shape['n_layers']}, d_model {shape['d_model']}, n_heads "
         f"{shape['n_heads']} ({shape['params']:.4g} parameters, vocabulary {shape['vocab_size']})"),
    ]
    epochs = out.get("epochs_for_model")
    if epochs:
        lines.append((f"model {epochs['model']}", f"{epochs['n_params']:.4g} parameters, compute-optimal at "
                      f"{epochs['optimal_tokens']:.4g} tokens = {epochs['epochs']:.2f} epochs of the data"
                      + (" (over 4: repeated data is worth less, Muennighoff et al. 2023)"
                         if epochs["repeats_too_much"] else "")))
    for label, value in lines:
        typer.echo(f"{label:<22}{value}")


@scaling_app.command("plan")
def scaling_plan(
    flops: Optional[float] = typer.Option(None, help="Training compute budget in FLOPs, e.g. 1e21."),
    gpu_hours: Optional[float] = typer.Option(None, help="Budget as GPU-hours (with --device and --mfu)."),
    device: Optional[str] = typer.Option(None, help="h100, h200 or a100 (dense bf16 peak)."),
    mfu: Optional[float] = typer.Option(None, help="Model FLOPs utilisation, e.g. 0.4."),
    tokens: Optional[float] = typer.Option(None, help="Tokens the data has: plan the model for them."),
    tokens_dir: Optional[Path] = typer.Option(None, help="Token shards folder: its index.json's train tokens."),
    law: str = typer.Option("chinchilla", help="chinchilla, epoch, or a JSON file from `scaling fit --json`."),
    seq_len: Optional[int] = typer.Option(None, help="Count attention FLOPs at this sequence length (numeric optimum)."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary for the config's embeddings (default: the "
                                             "tokens dir's, else 32000)."),
    model: Optional[str] = typer.Option(None, help="With --tokens: epochs a named size or N-parameter model needs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compute-optimal N and D for a budget (or the best N for the tokens you have)."""
    from models.scaling import (
        ScalingError, epochs_needed, load_law, loss_above_uniform, optimal_allocation, plan_for_tokens,
    )
    from models.shapes import closest_model_shape, shape_mismatch, total_params

    try:
        _check_plan_sizes(seq_len, vocab_size)
        kind, amount, source = _plan_budget(flops, gpu_hours, device, mfu, tokens, tokens_dir)
        if model is not None and kind != "tokens":
            raise typer.BadParameter("--model needs --tokens or --tokens-dir (it reports epochs of that data)")
        scaling_law = load_law(law)
        plan = optimal_allocation(amount, scaling_law, seq_len=seq_len) if kind == "flops" \
            else plan_for_tokens(amount, scaling_law)
        if vocab_size is None and tokens_dir is not None:
            vocab_size = json.loads((tokens_dir / "index.json").read_text()).get("vocab_size")
        vocab, context = vocab_size or 32_000, seq_len or 2048
        name, shape = closest_model_shape(plan.n_params, vocab_size=vocab, seq_len=context)
        warnings = [w for w in (shape_mismatch(plan.n_params, name, shape), loss_above_uniform(plan.loss, vocab)) if w]
        out = {**plan.to_dict(), **source, "law_params": scaling_law.params(), "warnings": warnings,
               "model": None if shape_mismatch(plan.n_params, name, shape) else
               {"name": name, **shape.model_dump(include={"n_layers", "d_model", "n_heads", "n_kv_heads",
                                                          "vocab_size"}), "params": total_params(shape)}}
        if model is not None:
            out["epochs_for_model"] = {"model": model,
                                       **epochs_needed(_model_params(model, vocab, context), amount, scaling_law)}
    except (ScalingError, typer.BadParameter) as error:
        _fail(str(error.message if isinstance(error, typer.BadParameter) else error))
    for warning in out["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        _print_plan(out)


@scaling_app.command("fit")
def scaling_fit(
    csv_path: Path = typer.Option(..., "--csv", help="One row per training run."),
    params_col: str = typer.Option(..., help="Column of parameter counts N."),
    loss_col: str = typer.Option(..., help="Column of final (validation) losses."),
    tokens_col: Optional[str] = typer.Option(None, help="Column of training tokens D."),
    flops_col: Optional[str] = typer.Option(None, help="Column of training FLOPs (D = FLOPs / 6N)."),
    plot: Optional[Path] = typer.Option(None, help="PNG to write (default: next to the CSV, <name>-fit.png)."),
    bootstrap: int = typer.Option(100, min=0, help="Bootstrap resamples for the confidence intervals."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit L(N, D) (Huber on log loss, L-BFGS from a grid) and IsoFLOP parabolas; plot them."""
    from models.scaling import LAW_FIELDS, ScalingError, fit_law, isoflop_fits
    from tasks.scaling import plot_fit, read_runs_csv

    try:
        runs = read_runs_csv(csv_path, params_col, loss_col, tokens_col=tokens_col, flops_col=flops_col)
        fit = fit_law(runs.n_params, runs.n_tokens, runs.losses, bootstrap=bootstrap, name=csv_path.stem)
    except ScalingError as error:
        _fail(str(error))
    isoflop = isoflop_fits(runs.n_params, runs.losses, runs.flops)
    png = plot_fit(plot or csv_path.with_name(f"{csv_path.stem}-fit.png"), runs, fit.law, isoflop)
    out = {**fit.to_dict(), "isoflop": isoflop.to_dict(), "plot": str(png)}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{len(runs)} runs; {fit.confidence:.0%} intervals from {bootstrap} bootstrap resamples")
    for key in LAW_FIELDS:
        low, high = fit.intervals.get(key, (float("nan"), float("nan")))
        typer.echo(f"  {key:<6} {out[key]:>10.4g}   [{low:.4g}, {high:.4g}]")
    typer.echo(f"N_opt ~ C^{fit.law.a:.3f}, D_opt ~ C^{fit.law.b:.3f}; IsoFLOP parabolas: a = {isoflop.a}, "
               f"b = {isoflop.b}")
    typer.echo(f"plot: {png}")


@scaling_app.command("sweep", cls=ListOptions)
def scaling_sweep(
    data: Path = typer.Option(..., help="Token shards folder (from `pretrain tokenize`)."),
    output: Path = typer.Option(Path("runs/sweep"), "--output", "-o", help="Sweep folder: runs/, sweep.csv, fit.json, sweep.png."),
    config: Optional[str] = typer.Option(None, help="A sweep config: a shipped one by name (gpu: a GPU grid) or a "
                                         "YAML path (default: the CPU grid)."),
    set_: list[str] = typer.Option([], "--set", help="Override a sweep config field: key.path=value, e.g. "
                                   "train.seq_len=128 (one or more)."),
) -> None:
    """Train a grid of models at several compute budgets, then fit L(N, D) to their losses."""
    from flows.sweep import sweep_flow
    from models.scaling import ScalingError
    from pretrain.config import load_sweep_config

    try:
        cfg = load_sweep_config(config, set_)
    except (ConfigError, OSError) as error:
        _fail(str(error))
    try:
        result = _run_with_progress("sweep", lambda: sweep_flow(config=cfg, data_dir=str(data), output_dir=str(output)))
    except (ScalingError, FileNotFoundError) as error:
        _fail(str(error))
    except Exception as error:  # a training run failed after its retries
        _fail(f"{type(error).__name__}: {error}", code=1)
    console.print(f"[green]sweep[/green] {result['runs']} runs in {result['seconds']} s: "
                  + ", ".join(f"{k} {result[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta")))
    console.print(f"table {result['csv']}, fit {result['fit']}, plot {result['plot']}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
