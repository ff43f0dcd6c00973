"""Prompt templates by name: ``<name>.txt`` in a folder of one's own, or one shipped in ``templates/``.

A template is plain text with one ``{text}`` where the document goes (filled by replacement, not
``str.format``: other braces are kept as written). The shipped ones follow the rephrasing styles of
WRAP (Maini et al. 2024, "Rephrasing the Web": a Wikipedia-like medium style and a question/answer
style) and Nemotron-CC's synthetic rephrasing (Su et al. 2024: Wikipedia-style rewriting and
question-answer pairs from the document); the wording is ours. Trailing whitespace of the file is
dropped, so the prompt ends at its cue ("Encyclopedia entry:", "Question:").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PLACEHOLDER = "{text}"
SHIPPED = resources.files("tasks.synthesis") / "templates"


class TemplateError(ValueError):
    """An unknown template name, or a template without exactly one ``{text}``."""


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def parts(self) -> tuple[str, str]:
        """(the text before the document, the text after it)."""
        before, _, after = self.text.partition(PLACEHOLDER)
        return before, after

    def fill(self, document: str) -> str:
        before, after = self.parts()
        return before + document + after


def template_folder(templates_dir: str | Path | None):
    return Path(templates_dir) if templates_dir else SHIPPED


def available(templates_dir: str | Path | None = None) -> list[str]:
    folder = template_folder(templates_dir)
    if not folder.is_dir():
        return []
    return sorted(entry.name[:-len(".txt")] for entry in folder.iterdir() if entry.name.endswith(".txt"))


def load_template(name: str, templates_dir: str | Path | None = None) -> Template:
    """The template ``name``; an unknown name is an error listing the names there are."""
    folder = template_folder(templates_dir)
    entry = folder / f"{name}.txt"
    if "/" in name or not entry.is_file():
        where = f"in {folder}" if templates_dir else "shipped (tasks/synthesis/templates)"
        names = available(templates_dir)
        raise TemplateError(f"unknown template {name!r}: the templates {where} are "
                            f"{', '.join(names) if names else '(none)'}")
    text = entry.read_text(encoding="utf-8").rstrip()
    if text.count(PLACEHOLDER) != 1:
        raise TemplateError(f"template {name} ({entry}) must hold {PLACEHOLDER} exactly once, where the document "
                            f"goes; it holds it {text.count(PLACEHOLDER)} time(s)")
    return Template(name=name, text=text)
