"""The Wikipedia reader on dumps built here in the real export format (schema 0.11) from a public-domain book."""

from __future__ import annotations

import bz2
import gzip
from collections import Counter
from datetime import datetime, timezone
from xml.sax.saxutils import escape, quoteattr

import pyarrow.parquet as pq
import pytest
from conftest import shared_data

from pretrain.config import IngestConfig
from tasks.readers import WHOLE, wikipedia

EXPORT_NS = "http://www.mediawiki.org/xml/export-0.11/"
SITEINFO = """  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.42.0-wmf.5</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="-2" case="first-letter">Media</namespace>
      <namespace key="-1" case="first-letter">Special</namespace>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="2" case="first-letter">User</namespace>
      <namespace key="4" case="first-letter">Wikipedia</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
    </namespaces>
  </siteinfo>
"""
HEADER = (f'<mediawiki xmlns="{EXPORT_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
          f'xsi:schemaLocation="{EXPORT_NS} http://www.mediawiki.org/xml/export-0.11.xsd" version="0.11" '
          f'xml:lang="en">\n{SITEINFO}')
FOOTER = "</mediawiki>\n"
WIKI_CHARS = set("[]{}<>|=*#:;&~")


def book_paragraphs(n: int) -> list[str]:
    """Prose paragraphs of Pride and Prejudice, one line each, with nothing in them that is wiki markup."""
    raw = gzip.decompress(shared_data("reference", "en", "Pride_and_Prejudice_JaneAusten.txt.gz").read_bytes())
    paragraphs = [" ".join(block.split()) for block in raw.decode("utf-8").split("\n\n")]
    prose = [p for p in paragraphs if len(p) > 300 and not WIKI_CHARS & set(p) and "''" not in p and "_" not in p]
    assert len(prose) >= n
    return prose[:n]


def page_xml(page_id: int, title: str, text: str | None, *, ns: int = 0, redirect: str | None = None) -> str:
    redirect_el = f"    <redirect title={quoteattr(redirect)} />\n" if redirect else ""
    text_el = ('      <text bytes="0" deleted="deleted" />\n' if text is None else
               f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n')
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n{redirect_el}"
            f"    <revision>\n      <id>{page_id * 10}</id>\n      <parentid>{page_id * 10 - 1}</parentid>\n"
            f"      <timestamp>2024-03-{1 + page_id % 28:02d}T12:30:00Z</timestamp>\n"
            f"      <contributor>\n        <username>Editor</username>\n        <id>7</id>\n      </contributor>\n"
            f"      <comment>copyedit</comment>\n      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f"{text_el}      <sha1>0</sha1>\n    </revision>\n  </page>\n")


def article(title: str, p1: str, p2: str, p3: str) -> tuple[str, str]:
    """(wikitext, expected plain text) of an article using the usual constructs."""
    wikitext = (
        f"{{{{Short description|Novel by Jane Austen}}}}\n"
        f"{{{{Infobox book\n| name = {title}\n| author = [[Jane Austen]]\n| pub_date = 1813\n}}}}\n"
        f"'''{title}''' {p1}<ref>{{{{cite web |url=https://www.gutenberg.org/ebooks/1342 |title=Pride and "
        f"Prejudice |publisher=Project Gutenberg}}}}</ref> See [[Elizabeth Bennet|the heroine]] and [[Longbourn]], "
        f"or [https://www.gutenberg.org the archive].<ref name=\"pg\" />\n"
        f"[[File:PrideAndPrejudiceTitlePage.jpg|thumb|The title page of [[the first edition]]]]\n\n"
        f"== Plot ==\n{p2}\n\n=== Characters ===\n* [[Elizabeth Bennet]], the ''second'' daughter\n"
        f"* '''Mr. Darcy'''\n\n"
        f"{{| class=\"wikitable\"\n! Year !! Event\n|-\n| 1813 || Published\n|}}\n"
        f"{p3}<!-- a hidden comment -->\n\n"
        f"{{{{Jane Austen navbox}}}}\n[[Category:1813 novels]]\n[[Category:Novels by Jane Austen]]\n"
        f"[[fr:Orgueil et Préjugés]]\n"
    )
    expected = (f"{title} {p1} See the heroine and Longbourn, or the archive.\n\nPlot\n\n{p2}\n\n"
                f"Characters\n\nElizabeth Bennet, the second daughter\nMr. Darcy\n\n{p3}")
    return wikitext, expected


def dump_pages(n_articles: int) -> tuple[list[str], dict[str, str]]:
    """Page XML (articles interleaved with the pages that are skipped) and the expected text per page id."""
    paragraphs = book_paragraphs(3 * n_articles)
    skipped = [
        lambda i: page_xml(i, "Pride & Prejudice", "#REDIRECT [[Pride and Prejudice]]",
                           redirect="Pride and Prejudice"),
        lambda i: page_xml(i, "Pride and prejudice",
                           "#redirect [[Pride and Prejudice]] {{R from other capitalisation}}"),
        lambda i: page_xml(i, "Talk:Pride and Prejudice", "== Sources ==\nThe plot section needs citations. ~~~~",
                           ns=1),
        lambda i: page_xml(i, "User:Editor", "I edit articles about novels.", ns=2),
        lambda i: page_xml(i, "File:PrideAndPrejudiceTitlePage.jpg", "Title page of the 1813 edition.", ns=6),
        lambda i: page_xml(i, "Bennet", "'''Bennet''' may refer to:\n* [[Elizabeth Bennet]]\n* [[Jane Bennet]]\n"
                                        "{{Disambiguation|surname}}"),
        lambda i: page_xml(i, "Darcy (disambiguation)", "'''Darcy''' may refer to:\n* [[Fitzwilliam Darcy]]"),
        lambda i: page_xml(i, "Netherfield", "'''Netherfield''' may be:\n* [[Netherfield Park]]\n{{ dab }}"),
        lambda i: page_xml(i, "HMS Bennet", "'''HMS Bennet''' was the name of two ships.\n{{Set index article}}"),
        lambda i: page_xml(i, "Meryton", "{{Infobox settlement|name=Meryton}}\n[[Category:Fictional towns]]"),
        lambda i: page_xml(i, "Rosings", None),
    ]
    pages, expected = [], {}
    for i in range(n_articles):
        page_id = 100 + 2 * i
        wikitext, text = article(f"Novel {i}", *paragraphs[3 * i: 3 * i + 3])
        pages.append(page_xml(page_id, f"Novel {i}", wikitext))
        expected[str(page_id)] = text
        if i < len(skipped):
            pages.append(skipped[i](page_id + 1))
    return pages, expected


EXPECTED_DROPS = {"redirect": 2, "not_article_namespace": 3, "disambiguation": 4, "empty_text": 2}


def write_multistream(path, pages: list[str], per_stream: int):
    """A bz2 multistream dump and its index as Wikimedia lays them out: a header stream, streams of
    ``per_stream`` pages, a footer stream; index lines ``offset:page_id:title``."""
    streams = [HEADER] + ["".join(pages[i: i + per_stream]) for i in range(0, len(pages), per_stream)] + [FOOTER]
    index_lines, offset = [], 0
    with open(path, "wb") as f:
        for k, stream in enumerate(streams):
            if 0 < k < len(streams) - 1:
                for page in pages[(k - 1) * per_stream: k * per_stream]:
                    page_id = page.split("<id>", 1)[1].split("<", 1)[0]
                    title = page.split("<title>", 1)[1].split("<", 1)[0]
                    index_lines.append(f"{offset}:{page_id}:{title}\n")
            data = bz2.compress(stream.encode("utf-8"))
            f.write(data)
            offset += len(data)
    index = path.with_name(path.name.removesuffix(".xml.bz2") + "-index.txt.bz2")
    index.write_bytes(bz2.compress("".join(index_lines).encode("utf-8")))
    return path


def read_all(path, part=WHOLE, cfg=IngestConfig()):
    counts = Counter()
    return list(wikipedia.read(path, part, cfg, counts)), counts


@pytest.fixture(scope="module")
def corpus():
    return dump_pages(12)


def test_articles_become_plain_text_and_skipped_pages_are_counted(tmp_path, corpus):
    pages, expected = corpus
    path = tmp_path / "enwiki-20240301-pages-articles.xml"
    path.write_text(HEADER + "".join(pages) + FOOTER, encoding="utf-8")
    records, counts = read_all(path)
    assert {r.record_id: r.text for r in records} == expected
    assert [r.record_id for r in records] == list(expected)
    assert dict(counts) == {"records_read": len(pages), **EXPECTED_DROPS}
    first = records[0]
    assert first.url == "https://en.wikipedia.org/wiki/Novel_0"
    assert first.fetch_time == datetime(2024, 3, 17, 12, 30, tzinfo=timezone.utc)
    assert first.source is None


def test_bz2_dump_reads_as_the_xml_does(tmp_path, corpus):
    pages, expected = corpus
    path = tmp_path / "enwiki-20240301-pages-articles.xml.bz2"
    path.write_bytes(bz2.compress((HEADER + "".join(pages) + FOOTER).encode("utf-8")))
    assert wikipedia.parts(path, IngestConfig(split_bytes=1)) == [WHOLE]  # no index beside it
    records, counts = read_all(path)
    assert {r.record_id: r.text for r in records} == expected
    assert dict(counts) == {"records_read": len(pages), **EXPECTED_DROPS}


def test_multistream_parts_give_the_single_read(tmp_path, corpus):
    pages, expected = corpus
    path = write_multistream(tmp_path / "enwiki-20240301-pages-articles-multistream.xml.bz2", pages, per_stream=3)
    whole, whole_counts = read_all(path)
    assert {r.record_id: r.text for r in whole} == expected
    cfg = IngestConfig(split_bytes=path.stat().st_size // 3)
    parts = wikipedia.parts(path, cfg)
    assert len(parts) >= 2
    assert [(p.index, p.count) for p in parts] == [(i, len(parts)) for i in range(len(parts))]
    assert parts[0].start == 0 and parts[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))
    union, union_counts = [], Counter()
    for part in parts:
        records, counts = read_all(path, part, cfg)
        assert records  # every part holds articles at this size
        union += records
        union_counts += counts
    assert union == whole
    assert union_counts == whole_counts == Counter({"records_read": len(pages), **EXPECTED_DROPS})
    assert wikipedia.parts(path, IngestConfig(split_bytes=1 << 30)) == [WHOLE]


def test_localized_file_and_category_links_are_dropped_in_a_schema_0_10_export(tmp_path):
    header = HEADER.replace("export-0.11", "export-0.10").replace('version="0.11"', 'version="0.10"')
    siteinfo = SITEINFO.replace(">File<", ">Datei<").replace(">Category<", ">Kategorie<")
    siteinfo = siteinfo.replace("https://en.wikipedia.org/wiki/Main_Page",
                                "https://de.wikipedia.org/wiki/Wikipedia:Hauptseite")
    text = ("'''Stolz und Vorurteil''' ist ein Roman von [[Jane Austen]].\n[[Datei:Titel.jpg|mini|Titelblatt]]\n"
            "[[Bild:Karte.png|mini|Karte]]\n[[Kategorie:Roman]]\n[[en:Pride and Prejudice]]")
    path = tmp_path / "dewiki.xml"
    text += "\nEr erschien 1813.<br />In drei Bänden."
    path.write_text(header.replace(SITEINFO, siteinfo) + page_xml(5, "Stolz und Vorurteil", text) + FOOTER,
                    encoding="utf-8")
    records, counts = read_all(path)
    assert [r.text for r in records] == ["Stolz und Vorurteil ist ein Roman von Jane Austen.\n\n"
                                         "Er erschien 1813.\nIn drei Bänden."]
    assert records[0].url == "https://de.wikipedia.org/wiki/Stolz_und_Vorurteil"
    assert dict(counts) == {"records_read": 1}


def _documents(out):
    rows = []
    for shard in sorted(out.glob("*.parquet")):
        rows += pq.read_table(shard, columns=["source", "warc_record_id", "text"]).to_pylist()
    return rows


def test_ingest_flow_shards_a_multistream_dump(services, tmp_path, corpus):
    from flows.ingest import ingest_flow

    pages, expected = corpus
    path = write_multistream(tmp_path / "enwiki-20240301-pages-articles-multistream.xml.bz2", pages, per_stream=3)
    ingest_flow(config=IngestConfig(inputs=[str(path)], split_bytes=1 << 30), output_dir=str(tmp_path / "one"))
    ingest_flow(config=IngestConfig(inputs=[str(path)], split_bytes=path.stat().st_size // 3),
                output_dir=str(tmp_path / "split"))
    one, split = _documents(tmp_path / "one"), _documents(tmp_path / "split")
    assert len(list((tmp_path / "one").glob("*.parquet"))) == 1
    assert len(list((tmp_path / "split").glob("*.parquet"))) >= 2
    assert {row["source"] for row in one} == {"wikipedia"}
    assert {row["warc_record_id"]: row["text"] for row in one} == expected
    assert split == one
