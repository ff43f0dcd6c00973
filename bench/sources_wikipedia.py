"""Wikipedia reader throughput: ours (tasks.readers.wikipedia) vs wikiextractor on the same .xml.bz2 dump.

The dump is built here in the export format (schema 0.11) from the public-domain books in
../shared/data/reference/en, each article carrying the usual constructs (infobox, <ref> with {{cite web}},
labelled links, bold/italic, headings, a list, a table, a file, categories, an interlanguage link), with
redirects, talk pages and disambiguation pages among them. Rates are per core: documents and MB of
uncompressed XML per CPU second (wikiextractor's CPU time includes its worker and reducer processes).

    .venv/bin/python -m bench.sources_wikipedia [--pages 3000]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[1]
BOOKS = REPO.parent / "shared" / "data" / "reference" / "en"
EXPORT_NS = "http://www.mediawiki.org/xml/export-0.11/"
HEADER = (f'<mediawiki xmlns="{EXPORT_NS}" version="0.11" xml:lang="en">\n  <siteinfo>\n'
          "    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
          "    <base>https://en.wikipedia.org/wiki/Main_Page</base>\n    <case>first-letter</case>\n"
          "    <namespaces>\n" + "".join(
              f'      <namespace key="{k}" case="first-letter">{n}</namespace>\n'
              for k, n in ((-2, "Media"), (-1, "Special"), (1, "Talk"), (2, "User"), (6, "File"),
                           (10, "Template"), (14, "Category"))) +
          '      <namespace key="0" case="first-letter" />\n    </namespaces>\n  </siteinfo>\n')
WIKI_CHARS = set("[]{}<>|=*#:;&~_")


def paragraphs() -> list[str]:
    prose = []
    for book in sorted(BOOKS.glob("*.txt.gz")):
        for block in gzip.decompress(book.read_bytes()).decode("utf-8", "replace").split("\n\n"):
            text = " ".join(block.split())
            if len(text) > 300 and not WIKI_CHARS & set(text) and "''" not in text:
                prose.append(text)
    return prose


def article(title: str, p1: str, p2: str, p3: str) -> str:
    return (f"{{{{Infobox book\n| name = {title}\n| author = [[Anonymous]]\n| pub_date = 1850\n}}}}\n"
            f"'''{title}''' {p1}<ref>{{{{cite web |url=https://www.gutenberg.org/ |title={title} "
            f"|publisher=Project Gutenberg}}}}</ref> See [[Literature|the field]] and [[Novel]], or "
            f"[https://www.gutenberg.org the archive].\n[[File:Cover.jpg|thumb|The cover of [[{title}]]]]\n\n"
            f"== Summary ==\n{p2}\n\n=== People ===\n* [[The author]], a ''writer''\n* '''The reader'''\n\n"
            f"{{| class=\"wikitable\"\n! Year !! Event\n|-\n| 1850 || Published\n|}}\n{p3}\n\n"
            f"{{{{Literature navbox}}}}\n[[Category:Novels]]\n[[fr:{title}]]\n")


def page_xml(page_id: int, title: str, text: str, ns: int = 0) -> str:
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n"
            f"    <revision>\n      <id>{page_id * 10}</id>\n      <timestamp>2024-03-01T12:30:00Z</timestamp>\n"
            f"      <contributor>\n        <username>Editor</username>\n        <id>7</id>\n      </contributor>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n'
            f"    </revision>\n  </page>\n")


def build_dump(path: Path, n_pages: int) -> int:
    """A bz2 dump of ``n_pages`` pages (one in ten a redirect, talk or disambiguation page); its XML bytes."""
    prose = paragraphs()
    pages = []
    for i in range(n_pages):
        title = f"Book {i}"
        if i % 10 == 3:
            pages.append(page_xml(i + 1, title, "#REDIRECT [[Book 1]]"))
        elif i % 10 == 6:
            pages.append(page_xml(i + 1, f"Talk:{title}", "== Sources ==\nNeeds citations.", ns=1))
        elif i % 10 == 9:
            pages.append(page_xml(i + 1, title, f"'''{title}''' may refer to:\n* [[Book 1]]\n{{{{disambiguation}}}}"))
        else:
            pages.append(page_xml(i + 1, title, article(title, *(prose[(3 * i + k) % len(prose)] for k in range(3)))))
    xml = (HEADER + "".join(pages) + "</mediawiki>\n").encode("utf-8")
    path.write_bytes(bz2.compress(xml))
    return len(xml)


def run_ours(path: Path) -> dict:
    from pretrain.config import IngestConfig
    from tasks.readers import WHOLE, wikipedia

    counts: Counter = Counter()
    cpu, wall = time.process_time(), time.perf_counter()
    docs = sum(1 for _ in wikipedia.read(path, WHOLE, IngestConfig(), counts))
    return {"docs": docs, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
            "counts": dict(counts)}


def run_wikiextractor(path: Path, out: Path) -> dict:
    """WikiExtractor with one extraction process; CPU time is that of all its processes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "wikiextractor.WikiExtractor", str(path), "--processes", "1",
                           "--json", "-q", "-o", str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"wikiextractor exited {proc.returncode}: " + " | ".join(tail)}
    docs = sum(1 for f in out.rglob("wiki_*") for line in f.open(encoding="utf-8") if json.loads(line)["text"])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"docs": docs, "cpu_s": cpu, "wall_s": wall}


def main(pages: int = 3000) -> dict:
    """Build a dump of ``pages`` pages, time both extractors on it, print the rates and their ratios."""
    with tempfile.TemporaryDirectory(prefix="bench-wiki-") as tmp:
        dump = Path(tmp) / "enwiki-bench-pages-articles.xml.bz2"
        xml_bytes = build_dump(dump, pages)
        print(f"dump: {pages} pages, {xml_bytes / 1e6:.1f} MB of XML, {dump.stat().st_size / 1e6:.1f} MB bz2")
        results = {"ours": run_ours(dump), "wikiextractor": run_wikiextractor(dump, Path(tmp) / "wikiextractor")}
    for name, r in results.items():
        if "error" in r:
            print(f"{name:>14}: could not run: {r['error']}")
            continue
        r["docs_per_cpu_s"] = r["docs"] / r["cpu_s"]
        r["xml_mb_per_cpu_s"] = xml_bytes / 1e6 / r["cpu_s"]
        print(f"{name:>14}: {r['docs']} docs, {r['cpu_s']:.2f} CPU s ({r['wall_s']:.2f} s wall): "
              f"{r['docs_per_cpu_s']:.0f} docs/s and {r['xml_mb_per_cpu_s']:.2f} MB/s per core")
    ours, theirs = results["ours"], results["wikiextractor"]
    if "error" not in theirs:
        ratio = ours["docs_per_cpu_s"] / theirs["docs_per_cpu_s"]
        print(f"ours / wikiextractor: {ratio:.2f}x docs/s per core, "
              f"{ours['xml_mb_per_cpu_s'] / theirs['xml_mb_per_cpu_s']:.2f}x MB/s per core")
    print(f"our drops: {ours['counts']}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3000)
    main(parser.parse_args().pages)
