"""Wikipedia (any MediaWiki XML export, ``.xml`` or ``.xml.bz2``) to plain-text article records.

The export is streamed with a pull parser, each ``<page>`` cleared once read. Only articles (namespace 0)
are kept; redirects, other namespaces and disambiguation pages are counted and skipped. Wikitext becomes
plain text with mwparserfromhell: templates, references, tables, files and categories go; link labels,
headings (as their own lines) and list items (without their markers) stay.

A *multistream* dump (Wikimedia's ``...-pages-articles-multistream.xml.bz2``: bz2 streams of ~100 pages each)
with its ``...-multistream-index.txt[.bz2]`` beside it splits into parts of about ``split_bytes`` compressed
bytes, cut at stream starts; a part decompresses only its bytes, after the ``<siteinfo>`` of the first stream.
"""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink

import tasks.readers.records as readers  # Part, Record and WHOLE

DEFAULT_SOURCE = "wikipedia"
REASONS: tuple[str, ...] = ("redirect", "not_article_namespace", "disambiguation", "empty_text")

CHUNK_BYTES = 1 << 20
# Namespaces whose links are not prose, by their canonical names (siteinfo adds the localized ones).
FILE_NAMESPACES = (6, 14)  # File (Image is its alias), Category
# Aliases siteinfo does not list: the canonical names, and the old "Image" names of the larger wikis (MediaWiki's
# languages/messages/Messages<Lang>.php, $namespaceAliases).
FILE_ALIASES = ("file", "image", "category", "media", "bild", "fichier", "imagen", "archivo", "immagine", "imagem",
                "arquivo", "ficheiro", "afbeelding", "bestand", "grafika", "plik", "изображение", "файл", "fil")
# Disambiguation and set-index templates of the English Wikipedia (Template:Disambiguation and its
# redirects; Wikipedia:Set index articles); any "<topic> disambiguation" template is one too.
DISAMBIGUATION_TEMPLATES = frozenset({
    "disambiguation", "disambig", "dab", "disamb", "dis", "hndis", "geodis", "numberdis",
    "letter-numbercombdisambig",
    "set index article", "sia", "set index",
})
DROPPED_TAGS = frozenset({"ref", "references", "table", "gallery", "math", "chem", "score", "timeline", "graph",
                          "syntaxhighlight", "source", "templatedata", "imagemap", "mapframe", "hiero", "hr"})
LINE_TAGS = frozenset({"br", "p", "li", "dt", "dd", "tr"})
REDIRECT = re.compile(r"\s*#redirect\b", re.IGNORECASE)
MAGIC_WORD = re.compile(r"__[A-Z]+__")
INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]+)*")
BLANK_LINES = re.compile(r"\n{3,}")
SPACES = re.compile(r"[ \t\u00a0]+")


@dataclass(frozen=True)
class Site:
    """What a page needs from ``<siteinfo>``: the URL base and the namespaces of files and categories."""

    base_url: str
    namespaces: dict[str, int]  # lower-cased name -> number
    dropped_prefixes: frozenset[str]  # lower-cased link prefixes whose links are dropped

    @classmethod
    def from_element(cls, siteinfo: ET.Element | None) -> Site:
        base, namespaces = "", {}
        if siteinfo is not None:
            base_el = _child(siteinfo, "base")
            base = (base_el.text or "").strip() if base_el is not None else ""
            base = base[: base.rfind("/") + 1] if "/" in base else base
            for ns in _child_list(_child(siteinfo, "namespaces")):
                if ns.text:
                    namespaces[ns.text.strip().lower()] = int(ns.get("key", "0"))
        dropped = {name for name, key in namespaces.items() if key in FILE_NAMESPACES}
        return cls(base, namespaces, frozenset(dropped | set(FILE_ALIASES)))

    def url(self, title: str) -> str | None:
        return self.base_url + title.replace(" ", "_") if self.base_url else None


def read(path: Path, part: readers.Part, cfg, counts: Counter) -> Iterator[readers.Record]:
    """The article records of ``path`` (or of one part of a multistream dump), every page counted."""
    for site, page in _pages(_chunks(Path(path), part)):
        record = page_record(site, page, counts)
        if record is not None:
            yield record


def parts(path: Path, cfg) -> list[readers.Part]:
    """Byte ranges of about ``cfg.split_bytes`` cut at stream starts, when the dump's index lies beside it."""
    path = Path(path)
    index = index_path(path)
    if index is None:
        return [readers.WHOLE]
    cuts = [0]
    for offset in stream_offsets(index):
        if offset - cuts[-1] >= cfg.split_bytes:
            cuts.append(offset)
    ranges = list(zip(cuts, cuts[1:] + [path.stat().st_size]))
    if len(ranges) == 1:
        return [readers.WHOLE]
    return [readers.Part(i, len(ranges), start, end) for i, (start, end) in enumerate(ranges)]


def index_path(path: Path) -> Path | None:
    """``<name>-index.txt.bz2`` (or ``.txt``) beside ``<name>.xml.bz2``, as Wikimedia names them."""
    if not path.name.endswith(".xml.bz2"):
        return None
    stem = path.name[: -len(".xml.bz2")]
    for name in (f"{stem}-index.txt.bz2", f"{stem}-index.txt"):
        if (path.parent / name).is_file():
            return path.parent / name
    return None


def stream_offsets(index: Path) -> Iterator[int]:
    """The distinct stream offsets of an index (lines ``offset:page_id:title``), in file order."""
    last = None
    with (bz2.open(index, "rt", encoding="utf-8") if index.suffix == ".bz2" else open(index, encoding="utf-8")) as f:
        for line in f:
            head = line.split(":", 1)[0]
            if head.strip().isdigit() and int(head) != last:
                last = int(head)
                yield last


# ---- the XML stream


def _chunks(path: Path, part: readers.Part) -> Iterator[bytes]:
    """The XML bytes of ``part``: the whole file, or the siteinfo header and then the part's streams."""
    if part.start is None:
        if path.name.endswith(".bz2"):
            yield from _bz2_range(path, 0, None)
        else:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield chunk
        return
    if part.start > 0:
        yield _header(path)
    yield from _bz2_range(path, part.start, part.end)


def _bz2_range(path: Path, start: int, end: int | None) -> Iterator[bytes]:
    """Decompressed bytes of the bz2 streams in [start, end), one stream after another."""
    with open(path, "rb") as f:
        f.seek(start)
        left = None if end is None else end - start
        decompressor = bz2.BZ2Decompressor()
        while left is None or left > 0:
            data = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not data:
                break
            if left is not None:
                left -= len(data)
            while data:
                out = decompressor.decompress(data)
                if out:
                    yield out
                data = b""
                if decompressor.eof:
                    data = decompressor.unused_data
                    decompressor = bz2.BZ2Decompressor()


def _header(path: Path) -> bytes:
    """The ``<mediawiki ...>`` start tag and ``<siteinfo>`` of a multistream dump's first stream."""
    head = b""
    with open(path, "rb") as f:
        decompressor = bz2.BZ2Decompressor()
        while not decompressor.eof and b"</siteinfo>" not in head:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            head += decompressor.decompress(data)
    end = head.find(b"</siteinfo>")
    if end < 0:
        raise ValueError(f"{path}: no <siteinfo> in the dump's first stream")
    return head[: end + len(b"</siteinfo>")]


def _pages(chunks: Iterable[bytes]) -> Iterator[tuple[Site, ET.Element]]:
    """(site, page element) of every ``<page>``; each page is dropped from the tree once the caller has it."""
    parser = ET.XMLPullParser(events=("start", "end"))
    root, site, closed = None, Site.from_element(None), False

    def events():
        nonlocal root, site, closed
        for event, elem in parser.read_events():
            if event == "start":
                if root is None:
                    root = elem
                continue
            name = _local(elem.tag)
            if name == "siteinfo":
                site = Site.from_element(elem)
            elif name == "page":
                yield site, elem
                root.clear()
            elif elem is root:
                closed = True

    for chunk in chunks:
        parser.feed(chunk)
        yield from events()
    if root is not None and not closed:  # a part ending before the dump's last stream
        parser.feed(b"</mediawiki>")
    parser.close()
    yield from events()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element | None, name: str) -> ET.Element | None:
    if elem is None:
        return None
    for child in elem:
        if _local(child.tag) == name:
            return child
    return None


def _child_list(elem: ET.Element | None) -> list[ET.Element]:
    return [] if elem is None else list(elem)


# ---- one page


def page_record(site: Site, page: ET.Element, counts: Counter) -> readers.Record | None:
    """The record of an article page; None, counted under its reason, for any other page."""
    counts["records_read"] += 1
    title = (_text_of(page, "title") or "").strip()
    revisions = [child for child in page if _local(child.tag) == "revision"]
    revision = revisions[-1] if revisions else None
    wikitext = _text_of(revision, "text") or ""
    if _namespace(site, page, title) != 0:
        counts["not_article_namespace"] += 1
        return None
    if _child(page, "redirect") is not None or REDIRECT.match(wikitext):
        counts["redirect"] += 1
        return None
    code = mwparserfromhell.parse(wikitext)
    if title.endswith("(disambiguation)") or is_disambiguation(code):
        counts["disambiguation"] += 1
        return None
    text = plain_text(code, site)
    if not text:
        counts["empty_text"] += 1
        return None
    return readers.Record(record_id=(_text_of(page, "id") or "").strip(), text=text, url=site.url(title),
                          fetch_time=_timestamp(_text_of(revision, "timestamp")))


def _text_of(elem: ET.Element | None, name: str) -> str | None:
    child = _child(elem, name)
    return None if child is None else child.text


def _namespace(site: Site, page: ET.Element, title: str) -> int:
    ns = _text_of(page, "ns")
    if ns is not None and ns.strip().lstrip("-").isdigit():
        return int(ns)
    prefix, colon, _ = title.partition(":")  # schemas before 0.5 have no <ns>
    return site.namespaces.get(prefix.strip().lower(), 0) if colon else 0


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return stamp.astimezone(timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _template_name(template: Template) -> str:
    return " ".join(str(template.name).replace("_", " ").split()).lower().removeprefix("template:")


def is_disambiguation(code) -> bool:
    """Whether the page carries a disambiguation or set-index template."""
    for template in code.filter_templates(recursive=False):
        name = _template_name(template)
        if name in DISAMBIGUATION_TEMPLATES or name.endswith((" disambiguation", " set index article")):
            return True
    return False


# ---- wikitext to plain text


def plain_text(code, site: Site) -> str:
    """The prose of parsed wikitext: lines stripped, runs of blank lines cut to one."""
    raw = MAGIC_WORD.sub("", _render(code.nodes, site))
    lines = [SPACES.sub(" ", line).strip() for line in raw.split("\n")]
    return BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _render(nodes, site: Site) -> str:
    return "".join(_node_text(node, site) for node in nodes)


def _node_text(node, site: Site) -> str:
    if isinstance(node, Text):
        return node.value
    if isinstance(node, Wikilink):
        return _link_text(node, site)
    if isinstance(node, Tag):
        return _tag_text(node, site)
    if isinstance(node, Heading):
        return "\n" + _render(node.title.nodes, site).strip() + "\n"
    if isinstance(node, ExternalLink):
        if node.title is not None:
            return _render(node.title.nodes, site)
        return "" if node.brackets else str(node.url)
    if isinstance(node, HTMLEntity):
        return node.normalize()
    return ""  # templates, comments, template arguments


def _link_text(link: Wikilink, site: Site) -> str:
    target = str(link.title).strip()
    visible = target.startswith(":")  # [[:Category:X]] is a link to the category, shown
    prefix, colon, _ = target.lstrip(":").partition(":")
    prefix = prefix.strip().lower()
    if colon and not visible and (prefix in site.dropped_prefixes or
                                  (prefix not in site.namespaces and INTERLANGUAGE.fullmatch(prefix))):
        return ""  # files, images, categories, interlanguage links
    if link.text is not None:
        return _render(link.text.nodes, site)
    return target.lstrip(":")


def _tag_text(tag: Tag, site: Site) -> str:
    name = str(tag.tag).strip().lower()
    if name in DROPPED_TAGS:
        return ""
    if name in LINE_TAGS:
        if tag.wiki_markup:  # a list or definition marker: the item's text follows it on its line
            return ""
        if tag.self_closing or tag.contents is None:  # <br />
            return "\n"
        return "\n" + _render(tag.contents.nodes, site) + "\n"
    if tag.contents is None:
        return ""
    return _render(tag.contents.nodes, site)
