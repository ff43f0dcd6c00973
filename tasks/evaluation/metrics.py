"""Accuracy from per-choice log-likelihoods, the random baseline and the centred aggregate.

``accuracy``: the choice with the highest log-likelihood is the gold one. ``accuracy_per_char``:
the same after dividing each log-likelihood by its continuation's length in characters (OLMo's
``acc_per_char``; lm-eval's ``acc_norm`` divides by bytes), so a long answer is not penalized
for having more tokens. ``centered``: DCLM's CORE aggregate, the mean over tasks of
(metric - random) / (1 - random), 0 for guessing and 1 for a perfect score, with each task's
primary metric (its OLMo config's: ``items.primary_metric``).
"""

from __future__ import annotations

from typing import Sequence

from tasks.evaluation.items import Item, primary_metric, random_baseline


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # ties: the first


def chosen(item: Item, loglikelihoods: Sequence[float]) -> int:
    return argmax(loglikelihoods)


def chosen_per_char(item: Item, loglikelihoods: Sequence[float]) -> int:
    return argmax([ll / max(1, len(text)) for ll, text in zip(loglikelihoods, item.continuations)])


def task_metrics(items: Sequence[Item], loglikelihoods: Sequence[Sequence[float]]) -> dict:
    """accuracy, accuracy_per_char, random (the expected accuracy of a guess), items, primary_metric."""
    if not items:
        raise ValueError("no items to score")
    n = len(items)
    hits = sum(chosen(item, lls) == item.gold for item, lls in zip(items, loglikelihoods))
    hits_per_char = sum(chosen_per_char(item, lls) == item.gold for item, lls in zip(items, loglikelihoods))
    return {"accuracy": hits / n, "accuracy_per_char": hits_per_char / n, "random": random_baseline(list(items)),
            "items": n, "primary_metric": primary_metric(items[0].task)}


def centered_score(metrics: dict) -> float:
    random = metrics["random"]
    return (metrics[metrics.get("primary_metric", "accuracy")] - random) / (1.0 - random)


def centered(tasks: dict[str, dict]) -> float | None:
    """CORE: the mean of each task's centred primary metric; None without tasks."""
    return sum(centered_score(m) for m in tasks.values()) / len(tasks) if tasks else None
