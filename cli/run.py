"""The whole pipeline and its neighbours: run a recipe, refresh a dataset, the demo data, extract."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cli.common import app, clear_failures, console, fail, progress_bar, recipe_or_default, run_with_progress
from cli.options import ListOptions
from pretrain.config import ConfigError, load_recipe, validate_config
from pretrain.paths import root_is_configured


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
        fail(f"--extractor must be fast or precise, got {extractor!r}")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        fail(f"not found: {', '.join(missing)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar, open(output, "w", encoding="utf-8") as out:
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
    """Run the pipeline on a recipe (ingest, filters, dedup, quality, decontaminate, tokenize, train, eval); writes
    OUTPUT/summary.json."""
    try:
        cfg = load_recipe(recipe, set_)
        if output:
            cfg = cfg.model_copy(update={"output_dir": str(output)})
    except ConfigError as error:
        fail(str(error))
    from flows.pretrain import pretrain_flow  # after the recipe: a bad --set is refused without importing every flow

    try:
        _check_output_free(Path(cfg.output_dir), "pretrain")
        summary = run_with_progress(f"run {cfg.name}", lambda: pretrain_flow(config=cfg))
    except clear_failures() as error:  # a locked or unwritable output root, as in the stage commands
        fail(str(error))
    except Exception as error:  # the flow already logged the details
        fail(f"{type(error).__name__}: {error}", code=1)
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
    if summary.get("eval"):
        evaluation = summary["eval"]
        out.print(_evaluation_table(evaluation))
        out.print(f"centred score (CORE-style, over {len(evaluation['tasks'])} tasks): {evaluation['centered']:+.4f}")
    out.print(f"report figures: {Path(summary['output_dir']) / 'report'}")
    out.print(f"summary: {Path(summary['output_dir']) / 'summary.json'} "
              f"({summary['cached_stages']} of {len(summary['stages'])} stages from cache; ~ = estimated tokens)")


def _evaluation_table(evaluation: dict):
    """The eval stage's scores per task."""
    from rich.table import Table

    from flows.pretrain_report import EVALUATION_COLUMNS, evaluation_rows

    table = Table(title=f"evaluation ({evaluation['eval_json']})")
    for column in EVALUATION_COLUMNS:
        table.add_column(column, justify="left" if column == "task" else "right")
    for row in evaluation_rows(evaluation):
        table.add_row(*map(str, row))
    return table


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
        recipe = recipe_or_default(config)
        ingest_cfg = recipe.ingest.model_dump(exclude={"inputs", "max_files", "num_shards", "shard_index"})
        if languages is not None:
            ingest_cfg["languages"] = languages
        options = {"dataset_dir": str(dataset), "crawl": crawl, "max_files_per_run": max_files, "index_url": index_url}
        cfg = validate_config(RefreshConfig, {
            **{key: value for key, value in options.items() if value is not None},
            "ingest": ingest_cfg, "filter": recipe.filter.model_dump(), "ray": recipe.ray.model_dump(),
        }, prefix="refresh.")
    except ConfigError as error:
        fail(str(error))
    try:
        summary = run_with_progress("refresh", lambda: cc_refresh_flow(config=cfg))
    except (RefreshLocked, *clear_failures()) as error:  # an unreachable collinfo.json: FetchError
        fail(str(error))
    except RefreshFailed as error:
        fail(f"{error}\nreports: {dataset / 'runs'}", code=1)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    console.print(f"[green]{summary['crawl']}[/green]: {summary['files_new']} new file(s), "
                  f"{summary['files_skipped']} already in the dataset, {summary['files_deferred']} left for later; "
                  f"{summary['documents_kept']} of {summary['documents_ingested']} documents kept")
    console.print(f"dataset manifest: {dataset / 'manifest.json'}")
