"""Benchmark main-content extraction: accuracy and speed on real pages.

Scores three extractors in one run on the pages of
``../shared/data/extraction-dev`` (``html/*.html.gz`` + ``expectations.json``):

* ``fast``        -- ``tasks.extract.extract_text(html, "fast")`` (our extractor; step 1 in C)
* ``fast-python`` -- the same extractor with its Python block builder (tasks/_htmlblocks
                     not used): the code before step 1 moved to C, same output
* ``fast@REV``    -- ``tasks/extract.py`` as it was at git revision REV (``--before``,
                     default 451deca, before the speed work of issue 17), loaded from git
* ``precise``     -- ``tasks.extract.extract_text(html, "precise", url)``
* ``trafilatura`` -- ``trafilatura.extract(html)`` with default arguments

Scoring (as in shared/data/README.md): for each page, a ``with`` snippet found
in the extracted text is a true positive, a missing one a false negative; a
``without`` snippet found is a false positive, a missing one a true negative.
Precision, recall and F1 are computed over all snippets of all pages.
Snippets are matched as substrings after collapsing every run of whitespace to
a single space, in the snippet and in the extracted text alike (so a line break
between blocks matches a space in the snippet).

Speed: every page is decoded to ``str`` once, before timing, the same way for
every extractor (the ``<meta charset>`` if it decodes cleanly, else UTF-8 with
``errors="replace"``); only the extraction call is timed, and pages/s is the
number of pages over the summed call times.  Each extractor is called once
before timing (imports, lazy set-up).  The extractors take turns page by page,
in an order that rotates from page to page, so that machine noise hits them
alike and none always runs in the cache wake of another; with ``--repeat N``
every call is made N times and the fastest is kept (steadier on a busy box).

Printed per extractor: precision, recall, F1, pages/s and pages/s over
trafilatura's in the same run (``x trafilatura``).

Exit status is 1 when ``fast`` has F1 < 0.90 or is less than 10x as fast as
trafilatura (pages/s), 0 otherwise, and 0 with a skip message when the data
folder is absent.

    .venv/bin/python bench/extraction.py [--data DIR] [--repeat N] [--json] [--before REV]
                                         [--show-errors fast|precise|trafilatura]
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import json
import re
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "extraction-dev"
sys.path.insert(0, str(REPO))

MIN_F1 = 0.90
MIN_SPEEDUP = 10.0  # issue 17's goal
DEFAULT_BEFORE = "451deca"

_WS = re.compile(r"\s+")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)


def normalize(text: str) -> str:
    return _WS.sub(" ", text).strip()


def decode_html(raw: bytes) -> str:
    """Decode with the declared <meta charset> if it works, else UTF-8/replace."""
    match = _META_CHARSET.search(raw[:8192])
    if match:
        name = match.group(1).decode("ascii", "ignore")
        try:
            codecs.lookup(name)
            return raw.decode(name)
        except (LookupError, UnicodeDecodeError):
            pass
    return raw.decode("utf-8", "replace")


def load_pages(data: Path) -> list[dict]:
    expectations = json.loads((data / "expectations.json").read_text("utf-8"))
    pages = []
    for stem, exp in sorted(expectations.items()):
        path = data / "html" / f"{stem}.html.gz"
        if not path.exists():
            continue
        html = decode_html(gzip.decompress(path.read_bytes()))
        pages.append({"id": stem, "html": html, **exp})
    return pages


def extractor_at(rev: str):
    """extract_text of tasks/extract.py at git revision ``rev`` (None when git cannot show it)."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:tasks/extract.py"],
                                capture_output=True, check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType(f"extract_at_{rev}")
    exec(compile(source, f"{rev}:tasks/extract.py", "exec"), module.__dict__)
    return module.extract_text


def make_extractors(before: str | None) -> dict:
    import trafilatura

    from tasks import extract
    from tasks.extract import extract_text

    def fast_python(html, url):
        with extract._no_cyclic_gc():  # as extract_text does
            return extract._fast_extract(html, extract.MAX_DEPTH, None)

    if extract._NATIVE is None:
        print("NOTE: tasks/_htmlblocks is not built (make setup): 'fast' runs the Python builder")
    extractors = {
        "fast": lambda html, url: extract_text(html, "fast", url=url),
        "fast-python": fast_python,
    }
    if before:
        old = extractor_at(before)
        if old is None:
            print(f"NOTE: git cannot show tasks/extract.py at {before}: fast@{before} left out")
        else:
            extractors[f"fast@{before}"] = lambda html, url: old(html, "fast")
    extractors["precise"] = lambda html, url: extract_text(html, "precise", url=url)
    extractors["trafilatura"] = lambda html, url: trafilatura.extract(html) or ""
    return extractors


def run(pages: list[dict], extractors: dict, repeat: int) -> dict:
    stats = {name: {"tp": 0, "fn": 0, "fp": 0, "tn": 0, "seconds": 0.0, "errors": []}
             for name in extractors}
    names = list(extractors)
    for name in names:  # warm up: imports, lazy initialisation
        extractors[name](pages[0]["html"], pages[0].get("url"))
    for i, page in enumerate(pages):
        # Rotate the order so that no extractor always runs right after another.
        order = names[i % len(names):] + names[: i % len(names)]
        texts, best = {}, dict.fromkeys(names, float("inf"))
        for _ in range(repeat):
            for name in order:
                start = time.perf_counter()
                text = extractors[name](page["html"], page.get("url"))
                best[name] = min(best[name], time.perf_counter() - start)
                texts.setdefault(name, text)
        for name in names:
            st = stats[name]
            st["seconds"] += best[name]
            text = normalize(texts[name])
            for snippet in page.get("with", []):
                if normalize(snippet) in text:
                    st["tp"] += 1
                else:
                    st["fn"] += 1
                    st["errors"].append(("missed", page["id"], snippet))
            for snippet in page.get("without", []):
                if normalize(snippet) in text:
                    st["fp"] += 1
                    st["errors"].append(("kept", page["id"], snippet))
                else:
                    st["tn"] += 1
    results = {}
    for name, st in stats.items():
        p = st["tp"] / max(1, st["tp"] + st["fp"])
        r = st["tp"] / max(1, st["tp"] + st["fn"])
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        results[name] = {
            "precision": round(p, 4),
            "recall": round(r, 4),
            "f1": round(f1, 4),
            "pages_per_s": round(len(pages) / st["seconds"], 1) if st["seconds"] else 0.0,
            "seconds": st["seconds"],
            "tp": st["tp"], "fn": st["fn"], "fp": st["fp"], "tn": st["tn"],
            "errors": st["errors"],
        }
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="extraction-dev folder")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each call N times and keep the fastest (default 1)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--before", default=DEFAULT_BEFORE, metavar="REV",
                    help=f"also time tasks/extract.py at this git revision (default {DEFAULT_BEFORE}; '' for none)")
    ap.add_argument("--show-errors", metavar="NAME",
                    help="also list the missed and wrongly kept snippets of one extractor")
    args = ap.parse_args(argv)

    data = args.data
    if not (data / "expectations.json").is_file() or not (data / "html").is_dir():
        print(f"SKIP: extraction benchmark data not found at {data}")
        return 0

    pages = load_pages(data)
    if not pages:
        print(f"SKIP: no pages under {data / 'html'}")
        return 0
    extractors = make_extractors(args.before or None)
    if args.show_errors and args.show_errors not in extractors:
        print(f"--show-errors: no extractor {args.show_errors!r}; one of {', '.join(extractors)}")
        return 2
    results = run(pages, extractors, max(1, args.repeat))
    fast, traf = results["fast"], results["trafilatura"]
    # pages/s of each extractor over trafilatura's, in this run (the same pages, interleaved)
    speedups = {name: traf["seconds"] / res["seconds"] if res["seconds"] else float("inf")
                for name, res in results.items()}
    ratio = speedups["fast"]
    ok = fast["f1"] >= MIN_F1 and ratio >= MIN_SPEEDUP

    if args.show_errors:
        for kind, page_id, snippet in results[args.show_errors]["errors"]:
            print(f"{kind:6} {page_id} {snippet!r}")
    if args.json:
        summary = {name: {**{k: v for k, v in res.items() if k not in ("errors", "seconds")},
                          "speedup_vs_trafilatura": round(speedups[name], 2)}
                   for name, res in results.items()}
        print(json.dumps({"pages": len(pages), "repeat": max(1, args.repeat), "results": summary,
                          "speedup_fast_vs_trafilatura": round(ratio, 2), "pass": ok}, indent=2))
    else:
        print(f"{len(pages)} pages from {data}")
        print(f"{'extractor':14} {'precision':>9} {'recall':>7} {'F1':>7} {'pages/s':>8} {'x trafilatura':>13}")
        for name, res in results.items():
            print(f"{name:14} {res['precision']:9.3f} {res['recall']:7.3f} "
                  f"{res['f1']:7.3f} {res['pages_per_s']:8.1f} {speedups[name]:12.2f}x")
        print(f"speed ratio fast/trafilatura: {ratio:.1f}x "
              f"(need F1 >= {MIN_F1} and >= {MIN_SPEEDUP}x): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
