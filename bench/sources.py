"""Curated and synthetic sources, against their peers in the same run (issue 15, acceptance 6).

1. The Wikipedia reader (tasks/readers/wikipedia.py) against wikiextractor 3.1.0 on the same
   .xml.bz2 dump: documents/s and MB/s of XML per CPU second (bench/sources_wikipedia.py).
2. Synthesis (tasks/synthesis/: the model held once, batched, seeded per document) against a plain
   one-document-at-a-time ``transformers`` ``generate`` loop on the same documents and settings
   (bench/sources_synthesis.py, which takes its own options: --documents, --batch-size, ...).

    .venv/bin/python bench/sources.py [options of bench/sources_synthesis.py]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sources_synthesis  # noqa: E402
import sources_wikipedia  # noqa: E402


def main() -> None:
    print("== Wikipedia reader vs wikiextractor ==")
    sources_wikipedia.main()
    print("\n== synthesis vs a plain transformers generate loop ==")
    sources_synthesis.main()


if __name__ == "__main__":
    main()
