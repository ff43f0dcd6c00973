"""One evaluation: score a loaded model on benchmark tasks and write ``eval.json`` and the predictions.

Every task's requests are encoded first (text the tokenizer cannot encode stops the run before any
forward pass), then scored as one pool, so batches of similar length form across tasks. The output
folder is written as a whole under a temporary name and renamed into place: ``eval.json`` (the
metrics per task, the centred aggregate, items/s, the data package's version), ``predictions/
<task>.jsonl`` (per item: the context and choices exactly as scored, one log-likelihood per choice,
the chosen and the gold answer) and ``info.json``. It replaces only an earlier evaluation (its
info.json says ``"stage": "eval"``) or an empty folder, unless forced, and never the model's folder.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from pretrain.outputs import check_replaceable, json_field_is
from pretrain.provenance import atomic_write_text, code_version, replace_dir, write_info_json
from tasks.evaluation.items import DISTRIBUTION, SOURCES, Item, check_tasks, load_items, package_version
from tasks.evaluation.metrics import centered, chosen, chosen_per_char, task_metrics
from tasks.evaluation.models import ScoringModel
from tasks.evaluation.scorer import Request, build_requests, per_item, score_requests, split_pair

COMMAND = "eval"
EVAL_FILE = "eval.json"
PREDICTIONS = "predictions"


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1 (items per task), got {limit}; leave it out to score every item")


def is_eval_output(folder: Path) -> bool:
    return json_field_is(Path(folder) / "info.json", "stage", COMMAND)


def check_output(output_dir: Path, model: ScoringModel, force: bool) -> None:
    """Raise OutputRefused unless the evaluation may replace ``output_dir`` (see the module docstring)."""
    check_replaceable(Path(output_dir), COMMAND, is_eval_output, inputs=[model.name, model.folder], force=force,
                      marker="info.json")


def evaluate(model: ScoringModel, tasks: Sequence[str], limit: int | None, output_dir: str | Path, batch_size: int,
             progress: Callable[[int, int], None] | None = None, force: bool = False) -> dict:
    """Score ``tasks`` (the first ``limit`` items of each; all when None); returns what eval.json holds."""
    tasks = check_tasks(list(tasks))
    check_limit(limit)
    output_dir = Path(output_dir)
    check_output(output_dir, model, force)  # before the long part
    items = {task: load_items(task, limit) for task in tasks}
    started = time.perf_counter()
    loglikelihoods = score_tasks(model, items, batch_size, progress)
    seconds = time.perf_counter() - started
    metrics = {task: {**task_metrics(items[task], loglikelihoods[task]), "source": SOURCES[task][0],
                      "licence": SOURCES[task][1]} for task in tasks}
    total = sum(len(task_items) for task_items in items.values())
    result = {
        "model": model.name, "model_folder": str(model.folder), "checkpoint": model.checkpoint,
        "parameters": model.parameters, "device": str(model.device), "max_length": model.max_length,
        "tasks": metrics, "centered": centered(metrics), "items": total, "limit": limit, "batch_size": batch_size,
        "seconds": round(seconds, 3), "items_per_s": round(total / seconds, 2) if seconds > 0 else None,
        "package": f"{DISTRIBUTION} {package_version()}",
    }
    write_output(output_dir, model, force, result, items, loglikelihoods)
    return result


def score_tasks(model: ScoringModel, items: dict[str, list[Item]], batch_size: int,
                progress: Callable[[int, int], None] | None) -> dict[str, list[list[float]]]:
    """Per task, per item, per choice: the log-likelihood; all tasks' requests scored as one pool."""
    pooled: list[Request] = []
    spans: dict[str, tuple[int, int]] = {}
    for task, task_items in items.items():
        requests = build_requests(task_items, model.encode, model.max_length, model.eos_id, model.unk_id)
        spans[task] = (len(pooled), len(pooled) + len(requests))
        pooled += requests
    scores = score_requests(model.logits_fn, pooled, batch_size, model.pad_id, model.device, progress)
    return {task: per_item(pooled[start:end], scores[start:end], items[task]) for task, (start, end) in spans.items()}


def prediction(item: Item, loglikelihoods: list[float]) -> dict:
    """One predictions line: the context(s) and choices as scored (a trailing space of the context moved
    to the choice), so that context + choice is each request's text."""
    pairs = [split_pair(context, continuation) for context, continuation in item.requests]
    contexts = [context for context, _ in pairs]
    return {"doc_id": item.doc_id, "context": contexts[0] if len(set(contexts)) == 1 else contexts,
            "choices": [continuation for _, continuation in pairs], "loglikelihoods": loglikelihoods,
            "chosen": chosen(item, loglikelihoods), "chosen_per_char": chosen_per_char(item, loglikelihoods),
            "gold": item.gold}


def write_output(output_dir: Path, model: ScoringModel, force: bool, result: dict, items: dict[str, list[Item]],
                 loglikelihoods: dict[str, list[list[float]]]) -> None:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    (tmp / PREDICTIONS).mkdir(parents=True)
    try:
        for task, task_items in items.items():
            lines = [json.dumps(prediction(item, lls)) for item, lls in zip(task_items, loglikelihoods[task])]
            atomic_write_text(tmp / PREDICTIONS / f"{task}.jsonl", "\n".join(lines) + "\n")
        atomic_write_text(tmp / EVAL_FILE, json.dumps(result, indent=2) + "\n")
        write_info_json(tmp, stage=COMMAND, code=code_version(__name__),
                        config={"tasks": list(items), "limit": result["limit"], "batch_size": result["batch_size"]},
                        inputs=[model.name, str(model.folder)], package=result["package"])
        check_output(output_dir, model, force)  # again: the folder may have been filled meanwhile
        replace_dir(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
