"""Benchmark the heuristic filter chain against datatrove: speed and agreement.

Both chains run in this one process, one core, on the same documents:

* ours      -- ``build_chain(FilterConfig())`` without the URL filter:
               gopher_repetition, gopher_quality, c4, fineweb (config order);
* datatrove -- ``GopherRepetitionFilter``, ``GopherQualityFilter``,
               ``C4QualityFilter``, ``FineWebQualityFilter`` with their defaults,
               in the same order, driven in-process through their ``filter(doc)``.

A chain stops at its first drop, as both runners do. C4 rewrites the text of the
documents it keeps in both chains, so every chain gets its own copy of each
document. Only the filter calls are timed; documents/s is the number of
documents over the summed call times. The chains take turns document by
document (alternating which goes first). Each chain is called once before
timing (imports, spaCy's tokenizer, lazy set-up).

Documents:

* the text of the real pages in ``../shared/data/extraction-dev/html/*.html.gz``,
  decoded with ``tasks.decode.decode_html`` and extracted with
  ``tasks.extract.extract_text(html, "fast")``;
* chunks of about ``--chunk-words`` words of the books in
  ``../shared/data/reference/en/*.txt.gz``: hard-wrapped paragraphs joined into
  one line each, consecutive paragraphs grouped into chunks, ``--chunks`` of
  them taken evenly across all books.

``--docs N`` keeps N documents spread evenly over that list (datatrove's Gopher
repetition filter costs tens of milliseconds on a long page). Agreement is the
share of documents on which both chains make the same keep/drop decision; the
disagreements are counted by (our reason, datatrove's reason).

Exit status is 1 when our chain is less than 3x as fast as datatrove's, 0
otherwise, and 0 with a skip message when the data is absent.

datatrove's English word tokenizer needs spaCy (``pip install spacy``; no
model download: it uses ``spacy.blank("en")``).

    .venv/bin/python bench/filters.py [--docs N] [--chunks N] [--chunk-words N]
                                      [--show-disagreements N] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

MIN_SPEEDUP = 3.0
_WRAPPED_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def load_pages(folder: Path) -> list[tuple[str, str]]:
    from tasks.decode import decode_html
    from tasks.extract import extract_text

    docs = []
    for path in sorted(folder.glob("*.html.gz")):
        text = extract_text(decode_html(gzip.decompress(path.read_bytes())), "fast")
        docs.append((f"page:{path.name.removesuffix('.html.gz')}", text))
    return docs


def book_chunks(path: Path, chunk_words: int) -> list[str]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace").replace("\r\n", "\n")
    paragraphs = [" ".join(p.split()) for p in _WRAPPED_PARAGRAPH_BREAK.split(text)]
    chunks, current, n_words = [], [], 0
    for para in filter(None, paragraphs):
        current.append(para)
        n_words += para.count(" ") + 1
        if n_words >= chunk_words:
            chunks.append("\n".join(current))
            current, n_words = [], 0
    return chunks


def spread(items: list, n: int) -> list:
    """``n`` items taken evenly across ``items`` (all of them if n >= len)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def load_documents(data: Path, n_chunks: int, chunk_words: int) -> list[tuple[str, str]]:
    docs = load_pages(data / "extraction-dev" / "html")
    chunks = []
    for path in sorted((data / "reference" / "en").glob("*.txt.gz")):
        chunks += [(f"book:{path.name.removesuffix('.txt.gz')}#{i}", chunk)
                   for i, chunk in enumerate(book_chunks(path, chunk_words))]
    return docs + spread(chunks, n_chunks)


def make_chains():
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    from pretrain.config import FilterConfig
    from tasks.filters import Doc, build_chain

    ours = [f for f in build_chain(FilterConfig()) if f.name != "url"]
    theirs_by_name = {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }
    theirs = [theirs_by_name[f.name] for f in ours]

    def run_ours(text: str, doc_id: str):
        doc = Doc(text=text, id=doc_id)
        for flt in ours:
            verdict = flt.filter(doc)
            if verdict is not True:
                return flt.name, verdict[1]
        return None

    def run_theirs(text: str, doc_id: str):
        doc = Document(text=text, id=doc_id)
        for name, flt in zip(theirs_by_name, theirs):
            verdict = flt.filter(doc)
            if verdict is not True:
                return name, verdict[1] if isinstance(verdict, tuple) else "dropped"
        return None

    return {"ours": run_ours, "datatrove": run_theirs}


def run(docs: list[tuple[str, str]], chains: dict) -> dict:
    names = list(chains)
    for name in names:  # warm up
        chains[name](docs[0][1], "warm-up")
    doc_seconds = {name: [] for name in names}
    verdicts = {name: [] for name in names}
    for i, (doc_id, text) in enumerate(docs):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            verdict = chains[name](text, doc_id)
            doc_seconds[name].append(time.perf_counter() - start)
            verdicts[name].append(verdict)
    seconds = {name: sum(times) for name, times in doc_seconds.items()}
    return {"seconds": seconds, "doc_seconds": doc_seconds, "verdicts": verdicts}


def summarize(docs: list, result: dict) -> dict:
    ours, theirs = result["verdicts"]["ours"], result["verdicts"]["datatrove"]
    same = sum((a is None) == (b is None) for a, b in zip(ours, theirs))
    same_filter = sum((a and a[0]) == (b and b[0]) for a, b in zip(ours, theirs))
    disagreements = Counter(
        (a[1] if a else "kept", b[1] if b else "kept")
        for a, b in zip(ours, theirs) if (a is None) != (b is None)
    )
    per_chain = {}
    for name, verdicts in result["verdicts"].items():
        secs = result["seconds"][name]
        per_chain[name] = {
            "docs_per_s": round(len(docs) / secs, 1) if secs else 0.0,
            "ms_per_doc": round(1000 * secs / len(docs), 3),
            "kept": sum(v is None for v in verdicts),
            "dropped": dict(Counter(v[1] for v in verdicts if v).most_common()),
        }
    by_source = {}
    for source in sorted({doc_id.split(":", 1)[0] for doc_id, _ in docs}):
        picked = [i for i, (doc_id, _) in enumerate(docs) if doc_id.startswith(source + ":")]
        agree = sum((ours[i] is None) == (theirs[i] is None) for i in picked)
        secs = {name: sum(times[i] for i in picked) for name, times in result["doc_seconds"].items()}
        by_source[source] = {
            "docs": len(picked),
            "agreement_keep_drop": round(agree / len(picked), 4),
            "docs_per_s": {name: round(len(picked) / t, 1) for name, t in secs.items()},
            "speedup": round(secs["datatrove"] / secs["ours"], 2),
        }
    return {
        "docs": len(docs),
        "by_source": by_source,
        "chains": per_chain,
        "speedup": round(result["seconds"]["datatrove"] / result["seconds"]["ours"], 2),
        "agreement_keep_drop": round(same / len(docs), 4),
        "agreement_first_filter": round(same_filter / len(docs), 4),
        "disagreements": {f"{a} / {b}": k for (a, b), k in disagreements.most_common()},
    }


def print_report(summary: dict, ok: bool) -> None:
    print(f"{summary['docs']} documents, one process")
    print(f"{'chain':10} {'docs/s':>9} {'ms/doc':>8} {'kept':>6}  top drop reasons")
    for name, st in summary["chains"].items():
        top = ", ".join(f"{r} {k}" for r, k in list(st["dropped"].items())[:5])
        print(f"{name:10} {st['docs_per_s']:9.1f} {st['ms_per_doc']:8.3f} {st['kept']:6}  {top}")
    per_source = ", ".join(f"{source}s {st['speedup']:.1f}x" for source, st in summary["by_source"].items())
    print(f"speed ratio ours/datatrove: {summary['speedup']:.1f}x ({per_source}; goal >= {MIN_SPEEDUP}x): "
          f"{'PASS' if ok else 'FAIL'}")
    per_source = ", ".join(f"{source}s {100 * st['agreement_keep_drop']:.1f}% of {st['docs']}"
                           for source, st in summary["by_source"].items())
    print(f"agreement on keep/drop: {100 * summary['agreement_keep_drop']:.1f}% ({per_source}); "
          f"on the dropping filter: {100 * summary['agreement_first_filter']:.1f}%")
    if summary["disagreements"]:
        print("disagreements (our reason / datatrove's reason: documents):")
        for pair, k in summary["disagreements"].items():
            print(f"  {pair}: {k}")


def show_disagreements(docs: list, result: dict, limit: int) -> None:
    ours, theirs = result["verdicts"]["ours"], result["verdicts"]["datatrove"]
    shown = 0
    for (doc_id, text), a, b in zip(docs, ours, theirs):
        if (a is None) == (b is None) or shown >= limit:
            continue
        shown += 1
        print(f"--- {doc_id}: ours {a or 'kept'}, datatrove {b or 'kept'}; {len(text)} chars")
        print(text[:600].replace("\n", " | "))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    ap.add_argument("--docs", type=int, default=None, help="use at most N documents, spread evenly")
    ap.add_argument("--chunks", type=int, default=2000, help="book chunks to add to the pages (default 2000)")
    ap.add_argument("--chunk-words", type=int, default=300, help="words per book chunk (default 300)")
    ap.add_argument("--show-disagreements", type=int, default=0, metavar="N",
                    help="print the first N documents the chains disagree on")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args(argv)

    pages = args.data / "extraction-dev" / "html"
    books = args.data / "reference" / "en"
    if not any(pages.glob("*.html.gz")) and not any(books.glob("*.txt.gz")):
        print(f"SKIP: no pages under {pages} and no books under {books}")
        return 0
    try:
        chains = make_chains()
        chains["datatrove"]("A probe. It loads the tokenizer.", "probe")
    except ImportError as error:
        print(f"SKIP: datatrove or spaCy missing ({error}); pip install datatrove spacy")
        return 0
    docs = load_documents(args.data, args.chunks, args.chunk_words)
    if args.docs is not None:
        docs = spread(docs, max(1, args.docs))
    result = run(docs, chains)
    summary = summarize(docs, result)
    ok = summary["speedup"] >= MIN_SPEEDUP
    if args.show_disagreements:
        show_disagreements(docs, result, args.show_disagreements)
    if args.json:
        print(json.dumps({**summary, "pass": ok}, indent=2))
    else:
        print_report(summary, ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
