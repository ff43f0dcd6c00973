"""Prefect flow: input files (WARC files local, https, s3, or a crawl id; a Wikipedia dump, an arXiv
tarball, JSONL/Parquet/HF data) to Parquet shards on Ray.

One Prefect task per input file, or per byte range of one (a multistream Wikipedia dump with its index). The task is retried on transient failures only,
cached on (input identity, the config fields that change its output, code version,
shard path), and idempotent: a shard is written under a temporary name and renamed
when complete. The task itself runs the work as a Ray task, so the flow process only
orchestrates; large data never travels through Prefect results (tasks return reports).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import parameter_policy
from flows.runner import Shard, ShardJob, StageRun, stage_run
from flows.stage import Pipeline, Stage
from pretrain.config import IngestConfig, RayConfig
from pretrain.paths import PathPolicy, redact_url
from pretrain.provenance import stable_hash
from tasks.ingest import ingest_input, input_kind
from tasks.readers import READER_KINDS, WHOLE, Part, parts_of, reader
from tasks.readers.detect import UnknownKind
from tasks.sources import CRAWL_ID, InputFile, input_identity, resolve_inputs

# Fields of IngestConfig that change a shard's content (inputs/selection and fetch
# settings do not).
OUTPUT_FIELDS = ("kind", "source", "extractor", "languages", "min_lang_score", "min_text_chars", "max_html_bytes",
                 "max_html_depth", "text_field", "id_field", "split_bytes")


INGEST = ShardJob(name="ingest-shard", work=ingest_input, run_name="ingest-{label}", progress="ingest")


def output_fingerprint(config: IngestConfig) -> dict:
    return config.model_dump(include=set(OUTPUT_FIELDS))


def file_parts(item: InputFile, config: IngestConfig) -> list[Part]:
    """How one input splits over tasks: byte ranges of a local multistream dump, else the whole file.

    A file whose kind cannot be told is one task, which then fails with the reason (reported, not retried).
    """
    if item.kind != "local":
        return [WHOLE]
    try:
        kind = input_kind(Path(item.uri), config)
    except UnknownKind:
        return [WHOLE]
    return parts_of(kind, Path(item.uri), config) if kind in READER_KINDS else [WHOLE]


def planned_shards(files: list[InputFile], config: IngestConfig) -> list[tuple[InputFile, Part, str]]:
    """(input, part, shard name) of every task: a file in several parts gives shards <name>-0000, -0001, ..."""
    planned = []
    for item, name in zip(files, shard_names(files)):
        parts = file_parts(item, config)
        planned += [(item, part, name if len(parts) == 1 else f"{name}-{part.index:04d}") for part in parts]
    return planned


def ingest_shards(planned: list[tuple[InputFile, Part, str]], out: Path, config: IngestConfig) -> list[Shard]:
    """One task per input file or part, keyed on its identity, its byte range, the output settings and its
    shard's path."""
    shards = []
    for item, part, name in planned:
        path = out / f"{name}.parquet"
        span = () if part.whole else ((part.index, part.count, part.start, part.end),)
        shown = redact_url(item.uri) + ("" if part.whole else f" (part {part.index + 1} of {part.count})")
        shards.append(Shard(label=name, args={"item": item, "shard_path": path, "cfg": config, "part": part},
                            key=(input_identity(item), *span, output_fingerprint(config), str(path)),
                            outputs=(path,), shown_as=shown))
    return shards


def shard_names(files: list[InputFile]) -> list[str]:
    """Shards are named after their input; inputs sharing a name get a hash suffix."""
    counts = Counter(item.shard_name for item in files)
    return [
        item.shard_name if counts[item.shard_name] == 1 else f"{item.shard_name}-{stable_hash(item.uri, length=8)}"
        for item in files
    ]


def summarize(reports: list[dict], failures: list[dict], seconds: float) -> dict:
    totals, dropped, kinds = Counter(), Counter(), Counter()
    for report in reports:
        for key in ("records_read", "responses", "html_responses", "documents", "html_bytes", "text_bytes", "input_bytes"):
            totals[key] += report.get(key, 0)
        kinds[report.get("kind", "warc")] += 1
        dropped.update(report.get("dropped", {}))
    return {
        "files": len(reports) + len(failures),
        "shards_written": len(reports),
        "failed": failures,
        **dict(totals),
        "dropped": dict(sorted(dropped.items())),
        "kinds": dict(sorted(kinds.items())),
        "seconds": round(seconds, 2),
        "docs_per_s": round(totals["documents"] / seconds, 1) if seconds > 0 else None,
        "shards": reports,
    }


def funnel_markdown(summary: dict) -> str:
    lines = [
        "# Ingestion funnel",
        "",
        "| stage | count |",
        "| --- | ---: |",
        f"| input files | {summary['files']} |",
        f"| records read (WARC records, pages, papers, lines) | {summary.get('records_read', 0)} |",
        f"| responses | {summary.get('responses', 0)} |",
        f"| HTML 200 responses | {summary.get('html_responses', 0)} |",
        f"| documents kept | {summary.get('documents', 0)} |",
        "",
        "| skipped or dropped, by reason | count |",
        "| --- | ---: |",
    ]
    lines += [f"| {reason} | {n} |" for reason, n in summary["dropped"].items()]
    if summary["failed"]:
        lines += ["", "## Failed files", ""] + [f"- {f['input']}: {f['error']}" for f in summary["failed"]]
    lines += ["", f"{summary['seconds']} s, {summary['docs_per_s']} documents/s, "
              f"{summary.get('cache_hits', 0)} shard(s) reused from cache"]
    return "\n".join(lines)


def publish(summary: dict) -> None:
    create_markdown_artifact(key="ingest-funnel", markdown=funnel_markdown(summary), description="Ingestion funnel")
    rows = [
        {"input": r["input"], "documents": r["documents"], "html_responses": r["html_responses"],
         "dropped": sum(r["dropped"].values()), "seconds": r["seconds"]}
        for r in summary["shards"]
    ]
    if rows:
        create_table_artifact(key="ingest-shards", table=rows, description="Per-shard ingestion report")


def confine_parameters(policy: PathPolicy, config: IngestConfig, output_dir: str) -> tuple[IngestConfig, str]:
    """Check an untrusted run's paths and URLs before anything is read or written.

    Returns the config with local inputs made absolute under the data root, and the output folder.
    """
    inputs = [entry if CRAWL_ID.match(entry.strip()) else policy.location(entry.strip(), f"ingest.inputs[{i}]")
              for i, entry in enumerate(config.inputs)]
    policy.url(config.cc_base_url, "ingest.cc_base_url")
    download = config.download
    if download.download_dir:
        download = download.model_copy(update={
            "download_dir": str(policy.path(download.download_dir, "ingest.download.download_dir"))})
    confined = config.model_copy(update={"inputs": inputs, "download": download})
    return confined, str(policy.path(output_dir, "output_dir"))


def confine_files(policy: PathPolicy, files: list[InputFile]) -> None:
    """After expansion: globs and listings may have led elsewhere (a symlink, a listed URL)."""
    for item in files:
        if item.kind == "local":
            policy.path(item.uri, "ingest.inputs (expanded)")
        else:
            policy.url(item.uri, "ingest.inputs (expanded)")


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=16))
def ingest_flow(config: IngestConfig, output_dir: str = "runs/local/ingest", ray_config: RayConfig = RayConfig()) -> dict:
    """Ingest WARC inputs into one Parquet shard per file under ``output_dir``.

    Writes ``report.json`` (counts per stage and per drop reason) and ``info.json``;
    raises StageFailed, after every other shard is done, if any file failed.
    A run from a deployment has its paths confined to the data root (``pretrain.paths``);
    a second run on the same output folder fails at once (``OutputInUse``).
    """
    policy = parameter_policy()
    if policy is not None:
        config, output_dir = confine_parameters(policy, config, output_dir)
    with stage_run("ingest", output_dir, ray_config) as run:
        return _ingest(config, run, policy)


def _ingest(config: IngestConfig, run: StageRun, policy: PathPolicy | None) -> dict:
    started = time.perf_counter()
    files = resolve_inputs(config)
    if policy is not None:
        confine_files(policy, files)
    run.logger.info("ingesting %d input file(s) into %s", len(files), run.out)
    planned = planned_shards(files, config)
    run.claim([name for _, _, name in planned], ("*.parquet",))  # the folder holds this run's shards only
    reports = sorted(run.map(INGEST, ingest_shards(planned, run.out, config)), key=lambda r: r["shard"])
    summary = summarize(reports, run.failures, time.perf_counter() - started)
    summary["cache_hits"] = run.hits()
    run.logger.info(
        "ingest: %d documents from %d records read (%d HTML responses) in %d files or parts (%d failed)",
        summary.get("documents", 0), summary.get("records_read", 0), summary.get("html_responses", 0),
        summary["files"], len(run.failures),
    )
    return run.finish(summary, config=redacted(config), inputs=[redact_url(item.uri) for item in files],
                      code=INGEST.code_version(), total=len(planned), what="input files" if len(planned) == len(files)
                      else "input files and parts", publish=publish)


def redacted(config: IngestConfig) -> dict:
    """The config for info.json, without credentials in its URLs."""
    dump = config.model_dump()
    dump["inputs"] = [redact_url(entry) for entry in dump["inputs"]]
    dump["cc_base_url"] = redact_url(dump["cc_base_url"])
    return dump


# ---------------------------------------------------------------- the ingest stage of the end-to-end run


def inputs_identity(pipeline: Pipeline) -> list[str]:
    """Input identity: local files by path, size and mtime; remote ones by URL (a crawl's files do not change)."""
    return [input_identity(item) for item in resolve_inputs(pipeline.recipe.ingest)]


def run_in_pipeline(pipeline: Pipeline) -> dict:
    recipe = pipeline.recipe
    return ingest_flow(config=recipe.ingest, output_dir=str(pipeline.folder("ingest")), ray_config=recipe.ray)


STAGE = Stage(
    name="ingest", folder="ingest", section="ingest", run=run_in_pipeline, jobs=(INGEST,),
    reads=None, inputs=inputs_identity, products=("*.parquet",),
    reasons=("no_http_headers", "http_status_not_200", "not_html", "html_too_large", "truncated_record",
             "corrupt_record", "content_length_mismatch", "content_encoding_error", "unsupported_content_encoding",
             "empty_file", "binary_content", "html_too_deep", "extraction_error", "empty_text", "text_too_short",
             "language_not_selected", "lang_score_too_low",  # tasks/warc.py, tasks/decode.py, tasks/ingest.py
             *sorted({reason for kind in READER_KINDS for reason in reader(kind).REASONS})),  # tasks/readers/
)
