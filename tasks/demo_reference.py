"""Reference text for the offline demo: what the `local` recipe trains its quality models on.

Real recipes train the perplexity model on Wikipedia-like text and the classifier on
curated text against web documents (CCNet, DCLM). The demo has neither, so the
reference side is written here: clean articles drawn from the same sentence grammars
as the demo pages (``tasks.demo``), with their own seed, so none is a copy of a
demo page, and no chrome, spam or repetition. A model trained on them scores the demo
web the way a Wikipedia model scores real pages: prose near the reference ranks
high, keyword lists and navigation low. It is synthetic: it checks that the stage
works, it does not measure quality.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from pretrain.provenance import atomic_write_bytes
from tasks.demo import TOPICS, article_paragraphs

REFERENCE_FILE = "reference.jsonl.gz"


def demo_reference_documents(n_documents: int = 240, seed: int = 1) -> list[dict]:
    """``n_documents`` articles (``id``, ``text``, ``source``), cycling through the demo topics."""
    rng = random.Random(f"reference-{seed}")
    topics = sorted(TOPICS)
    documents = []
    for n in range(n_documents):
        topic = topics[n % len(topics)]
        paragraphs = article_paragraphs(rng, TOPICS[topic], rng.randint(4, 9))
        documents.append({"id": f"demo-reference-{n}", "text": "\n".join(paragraphs), "source": "demo-reference"})
    return documents


def write_demo_reference(folder: Path, *, n_documents: int = 240, seed: int = 1) -> Path:
    """Write FOLDER/reference.jsonl.gz (one JSON document per line); same arguments, same bytes.

    An unchanged file is not rewritten, so its mtime (and the caches keyed on it) stay.
    """
    lines = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in demo_reference_documents(n_documents, seed))
    data = gzip.compress(lines.encode("utf-8"), mtime=0)
    path = Path(folder) / REFERENCE_FILE
    if not (path.is_file() and path.read_bytes() == data):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    return path
