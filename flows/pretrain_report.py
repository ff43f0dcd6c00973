"""The end-to-end run's report: the funnel, score histograms, the loss curve, the scaling-law position,
the benchmark evaluation.

Everything is read from the stage folders, so a fully cached run publishes the same
report. Artifacts: ``pretrain-report`` (markdown), ``pretrain-funnel`` (table) and
the figures as image artifacts (``pretrain-score-histograms``, ``pretrain-loss-curve``,
``pretrain-scaling``); the PNGs are also written to OUTPUT/report/.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from flows.common import funnel_table
from models.scaling import CHINCHILLA, optimal_tokens_for_params, plan_for_tokens

SHARD_GLOBS = {"quality": "kept/*.parquet"}  # where a document stage's kept shards are, when not "*.parquet"
NOT_DOCUMENT_STAGES = ("tokenize", "train", "eval")  # the stages whose output is no documents: no text-bytes row
MAX_SCORE_SAMPLE = 200_000


def text_bytes(folder: Path, pattern: str) -> int:
    """Bytes of the ``text`` column of a folder's shards, from the Parquet footers (no data read).

    The uncompressed column-chunk size: the UTF-8 text plus 4 bytes of length per row.
    """
    total = 0
    for path in sorted(folder.glob(pattern)):
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if "text" not in names:
            continue
        column = names.index("text")
        total += sum(meta.row_group(g).column(column).total_uncompressed_size for g in range(meta.num_row_groups))
        total -= 4 * meta.num_rows
    return total


def funnel(stages: dict[str, dict]) -> list[dict]:
    """Documents, text bytes and tokens per stage.

    Tokens are counted by the tokenize stage (train + val) and the trainer (tokens seen);
    for the stages before, they are estimated from their text bytes at the tokenized
    data's bytes per token (``tokens_estimated``).
    """
    rows = []
    for name, stage in stages.items():  # in the registry's order; every stage before tokenize keeps documents
        if name in NOT_DOCUMENT_STAGES or stage.get("skipped"):
            continue
        documents = stage.get("documents", stage.get("documents_kept"))
        rows.append({"stage": name, "documents": documents,
                     "text_bytes": text_bytes(Path(stage["output"]), SHARD_GLOBS.get(name, "*.parquet")),
                     "tokens": None, "tokens_estimated": True})
    tokenize = stages.get("tokenize")
    if tokenize and tokenize.get("tokens") and rows:
        tokens = tokenize["tokens"]["train"] + tokenize["tokens"]["val"]
        per_byte = tokens / max(1, rows[-1]["text_bytes"])
        for row in rows:
            row["tokens"] = round(row["text_bytes"] * per_byte)
        rows.append({"stage": "tokenize", "documents": tokenize.get("documents"), "text_bytes": None,
                     "tokens": tokens, "tokens_estimated": False, "train_tokens": tokenize["tokens"]["train"],
                     "val_tokens": tokenize["tokens"]["val"]})
    train = stages.get("train")
    if train and train.get("tokens") is not None:
        rows.append({"stage": "train", "documents": None, "text_bytes": None, "tokens": train["tokens"],
                     "tokens_estimated": False})
    return rows


def scaling_position(params: int | None, rows: list[dict]) -> dict | None:
    """Where the trained model sits against the Chinchilla law (``models.scaling``)."""
    by_stage = {row["stage"]: row for row in rows}
    if not params or "train" not in by_stage:
        return None
    trained = by_stage["train"]["tokens"]
    available = by_stage.get("tokenize", {}).get("train_tokens") or trained
    plan = plan_for_tokens(available, CHINCHILLA)
    return {
        "available": True, "law": CHINCHILLA.name, "params": params, "tokens_trained": trained,
        "tokens_per_param": trained / params, "optimal_tokens_for_params": optimal_tokens_for_params(params),
        "optimal_params_for_tokens": plan.n_params, "law_loss": CHINCHILLA.loss(params, trained),
        "flops": 6.0 * params * trained,
    }


# ---------------------------------------------------------------- figures


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_histograms(scored_dir: Path) -> bytes | None:
    columns = {"perplexity": [], "quality_score": []}
    for path in sorted(scored_dir.glob("*.parquet")):
        table = pq.read_table(path, columns=[c for c in columns if c in pq.read_schema(path).names])
        for name in table.column_names:
            columns[name].append(table.column(name).to_numpy(zero_copy_only=False).astype(float))
        if sum(len(part) for part in columns["perplexity"]) >= MAX_SCORE_SAMPLE:
            break
    values = {name: np.concatenate(parts) if parts else np.array([]) for name, parts in columns.items()}
    values = {name: v[~np.isnan(v)] for name, v in values.items()}
    if not any(v.size for v in values.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (name, data) in zip(axes, values.items()):
        ax.hist(data, bins=40, color="#4472c4")
        ax.set_title(f"{name} ({data.size} documents)")
    return _png(fig)


def scaling_figure(position: dict) -> bytes:
    plt = _pyplot()
    n = np.logspace(np.log10(min(position["params"], position["optimal_params_for_tokens"]) / 10), 11, 100)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(n, [optimal_tokens_for_params(x) for x in n], label=f"{CHINCHILLA.name}: compute-optimal D(N)")
    ax.loglog(n, 20 * n, linestyle="--", color="grey", label="20 tokens per parameter")
    ax.scatter([position["params"]], [position["tokens_trained"]], color="#c00000", zorder=3,
               label=f"this model: {position['params']:.3g} params, {position['tokens_trained']:.3g} tokens")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("training tokens D")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


# ---------------------------------------------------------------- publishing


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def figures(summary: dict, root: Path) -> dict[str, bytes]:
    found = {}
    quality = summary["stages"].get("quality", {})
    if quality and not quality.get("skipped"):
        histogram = score_histograms(Path(quality["output"]) / "scored")
        if histogram:
            found["score-histograms"] = histogram
    model = summary.get("model") or {}
    if model.get("loss_curve") and Path(model["loss_curve"]).is_file():
        found["loss-curve"] = Path(model["loss_curve"]).read_bytes()
    if (model.get("scaling") or {}).get("available"):
        found["scaling"] = scaling_figure(model["scaling"])
    folder = root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    for name, png in found.items():
        (folder / f"{name}.png").write_bytes(png)
    return found


def report_lines(summary: dict) -> list[str]:
    rows = [(r["stage"], r["documents"] if r["documents"] is not None else "",
             f"{r['text_bytes'] / 1e6:.2f}" if r["text_bytes"] is not None else "",
             (f"~{r['tokens']:,}" if r["tokens_estimated"] else f"{r['tokens']:,}") if r["tokens"] is not None else "")
            for r in summary["funnel"]]
    lines = ["## Funnel", "", "| stage | documents | text MB | tokens |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {' | '.join(map(str, row))} |" for row in rows]
    lines += ["", "Tokens marked ~ are estimated from text bytes at the tokenized data's bytes per token.", "",
              "## Stages", "", "| stage | output | from cache | task cache hits |", "| --- | --- | --- | ---: |"]
    lines += [f"| {name} | `{s['output']}` | {'yes' if s['cached'] else 'no'} | {s.get('task_cache_hits', '')} |"
              for name, s in summary["stages"].items()]
    model = summary.get("model")
    if model:
        lines += ["", "## Model", "", *funnel_table([
            ("parameters", model["params"]), ("steps", model["steps"]), ("final train loss", model["final_loss"]),
            ("validation loss", model["val_loss"]), ("Hugging Face folder", f"`{model['hf_dir']}`"),
            ("checkpoint", f"`{model['checkpoint']}`")], ("", "value"))]
        scaling = model.get("scaling") or {}
        if scaling.get("available"):
            lines += ["", "## Scaling-law position", "", *funnel_table([
                ("law", scaling["law"]), ("tokens per parameter", f"{scaling['tokens_per_param']:.3g} (optimum ~20)"),
                ("compute-optimal tokens for this model", f"{scaling['optimal_tokens_for_params']:.3g}"),
                ("compute-optimal parameters for these tokens", f"{scaling['optimal_params_for_tokens']:.3g}"),
                ("training FLOPs (6ND)", f"{scaling['flops']:.3g}"),
                ("law's loss L(N, D)", f"{scaling['law_loss']:.3f} (its data and tokenizer, not comparable)")],
                ("", "value"))]
    return lines + evaluation_lines(summary.get("eval"))


EVALUATION_COLUMNS = ("task", "items", "accuracy", "accuracy per char", "random")


def evaluation_rows(evaluation: dict) -> list[tuple]:
    """Per task (``EVALUATION_COLUMNS``): items, accuracy, accuracy per character and the random baseline."""
    return [(task, m["items"], f"{m['accuracy']:.3f}", f"{m['accuracy_per_char']:.3f}", f"{m['random']:.3f}")
            for task, m in evaluation["tasks"].items()]


def evaluation_lines(evaluation: dict | None) -> list[str]:
    if not evaluation:
        return []
    lines = ["", "## Evaluation", "", f"| {' | '.join(EVALUATION_COLUMNS)} |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {' | '.join(map(str, row))} |" for row in evaluation_rows(evaluation)]
    return lines + ["", f"Centred score (CORE-style: each task's primary metric as (metric - random) / (1 - random), "
                        f"averaged over the tasks): **{evaluation['centered']:+.4f}**; per task and item: "
                        f"`{evaluation['eval_json']}`."]


def publish_report(summary: dict, root: Path) -> None:
    """Write OUTPUT/report/*.png and publish the report artifacts of this run."""
    pngs = figures(summary, root)
    lines = ["# Pretraining run", "", f"Recipe `{summary['recipe']}`, output `{summary['output_dir']}`, "
             f"{summary['cached_stages']} of {len(summary['stages'])} stages from cache.", "", *report_lines(summary)]
    titles = {"score-histograms": "Quality scores", "loss-curve": "Loss curve", "scaling": "Scaling-law position"}
    for name, png in pngs.items():
        lines += ["", f"## {titles[name]}", "", f"![{titles[name]}]({_data_url(png)})"]
        create_image_artifact(image_url=_data_url(png), key=f"pretrain-{name}", description=titles[name])
    create_markdown_artifact(key="pretrain-report", markdown="\n".join(lines), description="End-to-end run report")
    create_table_artifact(key="pretrain-funnel", table=summary["funnel"], description="Documents and tokens per stage")
