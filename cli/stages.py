"""The data stage commands: ingest, filter, dedup, quality (train the models, score), decontaminate, tokenize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cli.common import (
    app, console, fail, print_drops, recipe_or_default, require_input, run_stage,
)
from cli.options import ListOptions
from pretrain.config import (
    ConfigError, DecontaminateConfig, DedupConfig, IngestConfig, PerplexityConfig, QualityConfig, TokenizeConfig,
    validate_config,
)


def _ingest_config(base: dict, **options) -> IngestConfig:
    merged = {**base, **{key: value for key, value in options.items() if value not in (None, [])}}
    return validate_config(IngestConfig, merged, prefix="ingest.")


@app.command(cls=ListOptions)
def ingest(
    input: list[str] = typer.Option(..., "--input", "-i", help="WARC path/glob/dir, https:// or s3:// URL, or crawl id; or a "
                                    "Wikipedia dump, an arXiv tarball, JSONL/Parquet files, a saved HF dataset (one or more)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the Parquet shards, report.json and info.json."),
    kind: Optional[str] = typer.Option(None, help="auto (default: told from each file's content), warc, wikipedia, arxiv, "
                                                  "jsonl, parquet or hf."),
    source: Optional[str] = typer.Option(None, help="The documents' `source` tag (default: the kind's, e.g. wikipedia)."),
    text_field: Optional[str] = typer.Option(None, help="jsonl/parquet/hf: the field holding the text (default: text)."),
    id_field: Optional[str] = typer.Option(None, help="jsonl/parquet/hf: the field holding a record id (default: id)."),
    extractor: Optional[str] = typer.Option(None, help="fast (default) or precise (trafilatura)."),
    languages: Optional[str] = typer.Option(None, help="Comma-separated ISO 639-1 codes to keep, e.g. en,fr."),
    max_files: Optional[int] = typer.Option(None, help="Use at most N input files."),
    num_shards: Optional[int] = typer.Option(None, help="Split the file list into N parts..."),
    shard_index: Optional[int] = typer.Option(None, help="...and process part I (0-based)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `ingest` section gives defaults."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS, else local)."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Ingest WARC files, Wikipedia dumps, arXiv tarballs or JSONL/Parquet/HF data into Parquet shards on Ray
    (one per input file, or per byte range of a multistream dump)."""
    from flows.ingest import ingest_flow
    from tasks.sources import check_local_inputs

    try:
        recipe = recipe_or_default(config)
        cfg = _ingest_config(
            recipe.ingest.model_dump(exclude={"inputs"}), inputs=input, extractor=extractor, languages=languages,
            max_files=max_files, num_shards=num_shards, shard_index=shard_index, kind=kind, source=source,
            text_field=text_field, id_field=id_field,
        )
        ray_cfg = recipe.ray.model_copy(update={k: v for k, v in {"address": ray_address, "num_cpus": num_cpus}.items() if v})
    except ConfigError as error:
        fail(str(error))
    summary = run_stage("ingest", output, lambda: ingest_flow(config=cfg, output_dir=str(output), ray_config=ray_cfg),
                        check=lambda: check_local_inputs(cfg))  # a missing file, a FIFO or a device: refused first
    _print_ingest_summary(summary, output)


def _print_ingest_summary(summary: dict, output: Path) -> None:
    if set(summary.get("kinds", {})) <= {"warc"}:
        read = f"{summary.get('html_responses', 0)} HTML responses"
    else:
        read = f"{summary.get('records_read', 0)} records ({', '.join(summary['kinds'])})"
    console.print(
        f"[green]ingested[/green] {summary.get('documents', 0)} documents from {read} in {summary['files']} "
        f"file(s) or part(s) ({summary.get('cache_hits', 0)} from cache), {summary['docs_per_s']} docs/s"
    )
    for reason, count in summary["dropped"].items():
        console.print(f"  {reason}: {count}")
    console.print(f"shards and report.json in {output}")


@app.command("filter")
def filter_(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet shards (e.g. the ingest output)."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for kept shards, removed/, report.json."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `filter` section configures the chain."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Apply the heuristic filters (URL, Gopher, C4, FineWeb) to every shard."""
    from flows.filter import filter_flow

    try:
        recipe = recipe_or_default(config)
    except ConfigError as error:
        fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    summary = run_stage("filter", output, lambda: filter_flow(
        config=recipe.filter, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg),
        check=lambda: require_input(input))
    console.print(f"[green]kept[/green] {summary.get('documents_kept', 0)} of {summary.get('documents_in', 0)} "
                  f"documents ({summary.get('cache_hits', 0)} shard(s) from cache)")
    print_drops(summary["dropped"])
    console.print(f"shards, removed/ and report.json in {output}")


@app.command()
def dedup(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet shards."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for deduplicated shards, clusters, report.json."),
    threshold: Optional[float] = typer.Option(None, help="Confirm fuzzy pairs at this estimated Jaccard "
                                                         "(0-1; default 0.4)."),
    bands: Optional[int] = typer.Option(None, help="MinHash LSH bands (default 28)."),
    rows: Optional[int] = typer.Option(None, help="Rows per band (default 4)."),
    partitions: Optional[int] = typer.Option(None, help="Bucket files per band (default 16; 1 for small data)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `dedup` section gives defaults."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Remove exact, URL and near duplicates across the whole dataset (MinHash LSH)."""
    from flows.dedup import dedup_flow

    try:
        recipe = recipe_or_default(config)
        updates = {k: v for k, v in {"threshold": threshold, "bands": bands, "rows_per_band": rows,
                                   "hash_partitions": partitions}.items()
                   if v is not None}
        cfg = validate_config(DedupConfig, {**recipe.dedup.model_dump(), **updates}, prefix="dedup.")
    except ConfigError as error:
        fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    summary = run_stage("dedup", output, lambda: dedup_flow(
        config=cfg, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg),
        check=lambda: require_input(input))
    console.print(f"[green]kept[/green] {summary.get('documents_kept', 0)} of {summary.get('documents_in', 0)} documents")
    print_drops(summary.get("dropped", {}))
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
        base = recipe_or_default(config).quality.perplexity.model_dump()
        updates = {k: v for k, v in {"lang": lang, "order": order, "vocab_size": vocab_size}.items() if v is not None}
        cfg = validate_config(PerplexityConfig, {**base, **updates}, prefix="quality.perplexity.")
    except ConfigError as error:
        fail(str(error))
    try:
        meta = train_perplexity_flow(reference=reference, output_dir=str(output), config=cfg, force=force)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        fail(str(error))
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
        recipe = recipe_or_default(config)
    except ConfigError as error:
        fail(str(error))
    cfg = recipe.quality.classifier
    if max_documents is None:
        max_documents = recipe.quality_training.max_documents
    try:
        meta = train_classifier_flow(positive=positive, negative=negative, output_dir=str(output), config=cfg,
                                     max_documents=max_documents, force=force)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
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

    try:
        recipe = recipe_or_default(config)
        updates = {"perplexity_model": str(perplexity_model) if perplexity_model else None,
                   "classifier_model": str(classifier_model) if classifier_model else None,
                   "keep_fraction": keep_fraction, "max_perplexity": max_perplexity, "min_quality": min_quality}
        cfg = validate_config(QualityConfig, {**recipe.quality.model_dump(),
                                                     **{k: v for k, v in updates.items() if v is not None}},
                              prefix="quality.")
    except ConfigError as error:
        fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    summary = run_stage("quality", output, lambda: score_flow(
        config=cfg, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg),
        check=lambda: require_input(input))
    console.print(f"[green]kept[/green] {summary['documents_kept']} of {summary['documents_in']} documents; "
                  f"cut-offs {summary['cutoffs']}; buckets {summary['buckets']}")
    print_drops(summary["dropped"])


@app.command(cls=ListOptions)
def decontaminate(
    input: Path = typer.Option(..., "--input", "-i", help="Folder of Parquet shards with `text`."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the kept shards, report.json, info.json."),
    tasks: list[str] = typer.Option([], "--tasks", "-t", help="Benchmarks whose items are removed (one or more, or "
                                    "comma-separated; default: the recipe's decontaminate.tasks, all ten)."),
    ngram: Optional[int] = typer.Option(None, help="Words per n-gram (default 13); a shorter item is matched whole."),
    action: Optional[str] = typer.Option(None, help="drop (default): the document goes; cut: only the matching "
                                         "words are cut out."),
    min_remaining_chars: Optional[int] = typer.Option(None, help="cut: drop a document left shorter than this "
                                                      "(default 200)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `decontaminate` section gives defaults."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Remove benchmark text: drop (or cut) documents sharing a word n-gram with an evaluation item."""
    from flows.decontaminate import decontaminate_flow
    from tasks.evaluation.items import EvalDataMissing, package_version

    try:
        recipe = recipe_or_default(config)
        updates = {k: v for k, v in {"ngram": ngram, "action": action,
                                     "min_remaining_chars": min_remaining_chars}.items() if v is not None}
        if tasks:
            updates["tasks"] = [name.strip() for value in tasks for name in value.split(",") if name.strip()]
        cfg = validate_config(DecontaminateConfig, {**recipe.decontaminate.model_dump(), **updates},
                              prefix="decontaminate.")
        package_version()
    except (ConfigError, EvalDataMissing) as error:
        fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    summary = run_stage("decontaminate", output, lambda: decontaminate_flow(
        config=cfg, input_dir=str(input), output_dir=str(output), ray_config=ray_cfg),
        check=lambda: require_input(input))
    cut = f", {summary['documents_cut']} cut" if cfg.action == "cut" else ""
    console.print(f"[green]kept[/green] {summary['documents_kept']} of {summary['documents_in']} documents{cut} "
                  f"({summary['cache_hits']} shard(s) from cache)")
    print_drops(summary["dropped"])
    for task, items in summary["matched_items"].items():
        doc_id, documents = max(items.items(), key=lambda entry: entry[1])
        console.print(f"  {task}: {len(items)} item(s) matched (the most, doc_id {doc_id}, in {documents} "
                      f"document(s))")
    console.print(f"shards and report.json in {output}")


@app.command(cls=ListOptions)
def tokenize(
    input: list[Path] = typer.Option(..., "--input", "-i", help="Folder(s) of Parquet shards with `text` (one or more)."),
    output: Path = typer.Option(..., "--output", "-o", help="Token shards folder: train/, val/, index.json, tokenizer.json."),
    tokenizer: Optional[Path] = typer.Option(None, help="Use this tokenizer.json instead of training one."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary of the trained BPE tokenizer (default 32000)."),
    weights: list[str] = typer.Option([], help="Mixture weight per source: source=w (one or more, or comma-separated)."),
    mixture: list[str] = typer.Option([], help="Share of the train tokens per source, summing to 1: "
                                               "source=share (comma-separated), e.g. cc=0.5,wikipedia=0.3,arxiv=0.2."),
    max_epochs: list[str] = typer.Option([], help="With --mixture: the most passes a share may need, per source: "
                                                  "source=epochs (default 4)."),
    total_tokens: Optional[int] = typer.Option(None, help="With --mixture: train tokens of the mixture (default: as "
                                                          "many as the sources hold once)."),
    config: Optional[Path] = typer.Option(None, help="A recipe YAML; its `tokenize` section gives defaults."),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs for the local Ray instance."),
) -> None:
    """Train (or load) a byte-level BPE tokenizer and write packed token shards on Ray."""
    from flows.tokenize import tokenize_flow
    from tasks.mixture import parse_source_numbers
    from tasks.tokenize import parse_weights

    if tokenizer and vocab_size:
        fail("give --tokenizer or --vocab-size, not both (a given tokenizer has its own vocabulary)")
    if weights and mixture:
        fail("give --weights (copies per document) or --mixture (shares of tokens), not both")
    if (max_epochs or total_tokens) and not mixture:
        fail("--max-epochs and --total-tokens go with --mixture")
    try:
        recipe = recipe_or_default(config)
        updates = {k: v for k, v in {"tokenizer": str(tokenizer) if tokenizer else None, "vocab_size": vocab_size,
                                     "weights": parse_weights(weights) if weights else None}.items() if v is not None}
        if mixture:  # its shares replace the recipe's mixture and weights
            base = recipe.tokenize.mixture.model_dump()
            updates["weights"] = {}
            updates["mixture"] = {**base, "shares": parse_source_numbers(mixture, "--mixture"),
                                  "max_epochs": parse_source_numbers(max_epochs, "--max-epochs") if max_epochs
                                  else base["max_epochs"], "total_tokens": total_tokens or base["total_tokens"]}
        cfg = validate_config(TokenizeConfig, {**recipe.tokenize.model_dump(), **updates}, prefix="tokenize.")
    except (ConfigError, ValueError) as error:
        fail(str(error))
    ray_cfg = recipe.ray.model_copy(update={"num_cpus": num_cpus} if num_cpus else {})
    summary = run_stage("tokenize", output, lambda: tokenize_flow(
        config=cfg, input_dirs=[str(p) for p in input], output_dir=str(output), ray_config=ray_cfg),
        check=lambda: [require_input(folder) for folder in input])
    console.print(f"[green]tokenized[/green] {summary['documents']} documents: {summary['tokens']['train']} train and "
                  f"{summary['tokens']['val']} validation tokens ({summary['tokens_per_s']} tokens/s, "
                  f"{summary['cache_hits']} shard(s) from cache); index in {output / 'index.json'}")
    if summary.get("mixture"):
        record = summary["mixture"]
        console.print("mixture: " + ", ".join(f"{source} {record['realized'][source]:.2%} (target {target:.2%}, "
                                              f"{record['epochs'][source]:.3g} epochs)"
                                              for source, target in record["target"].items()))
    for warning in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if summary.get("val_warning"):
        console.print(f"[yellow]warning:[/yellow] {summary['val_warning']}")
