"""Main-content text extraction from HTML.

Two modes:

* ``fast``    -- our own extractor (this module): one streaming lxml parse and
                 a handful of general rules; several times faster than
                 trafilatura at about the same accuracy.
* ``precise`` -- trafilatura, tuned for recall of the article body.

Both return plain text with one block (heading, paragraph, list item, table
row, ...) per line and whitespace collapsed inside each block, so that the
line-based quality filters downstream (Gopher, C4, FineWeb) see real lines.

How ``fast`` works
------------------
1. Stream the parser's events and cut the text into blocks: a new block starts
   at every block-level tag; script/style/form controls are skipped.  Each
   element gets a node id and a boilerplate *mark* from its tag (``<nav>``,
   ``<footer>``, ``<aside>``...) or its class/id words (``sidebar``,
   ``cookie``, ``share``, ``related``...); each block records its innermost
   enclosing element and how much of its text is link text; an element that
   ends with no text under it is forgotten at once.  A page nesting deeper
   than ``max_depth`` raises HtmlTooDeep (no real page does; the work is
   linear in the number of elements however deep they nest).

   Where the time goes, on the 237 pages of extraction-dev (README,
   Benchmarks): about 45% in libxml2 and in lxml handing the events to Python
   (attributes are half of that), a third in these callbacks, a fifth in
   steps 2-4.
2. Marks are checked against the text: an element holding most of the page's
   prose is a layout wrapper, not boilerplate, whatever its class says.
3. Blocks are scored: sentence-like, link-poor text (*prose*) is good; link
   lists and text under boilerplate is bad; hidden text counts for nothing.
   The main-content container is the element maximising
   ``good - 0.7 * bad`` -- the densest region of real prose -- widened
   while a step up adds enough prose.  (Should all prose sit under marks,
   the marks are ignored.)
4. Emit the container's blocks minus those under boilerplate below it, mostly
   links, photo credits, date lines or short calls to action ("subscribe to
   our newsletter"); add lead paragraphs just above the container; drop
   headings left with no text under them and short lines after the last
   sentence.
"""

from __future__ import annotations

import contextlib
import gc
import re

from lxml import etree

__all__ = ["extract_text", "HtmlTooDeep", "MAX_DEPTH", "MODES"]

MODES = ("fast", "precise")
# Deepest element nesting a page may have.  Chromium stops nesting at 512 open elements
# (HTMLConstructionSite::kMaximumHTMLParserDOMTreeDepth; deeper ones become siblings), libxml2's tree
# builder at 256 (2048 with XML_PARSE_HUGE).  Real pages stay far below: at most 42 levels on the
# 237 pages of shared/data/extraction-dev, median 17.
MAX_DEPTH = 512


class HtmlTooDeep(Exception):
    """The page nests elements deeper than the limit: dropped (``html_too_deep``), not extracted."""


def extract_text(html: str, mode: str = "fast", url: str | None = None, max_depth: int = MAX_DEPTH) -> str:
    """Return the main text of ``html``, one block per line ("" if none).

    Raises HtmlTooDeep when elements nest deeper than ``max_depth``.
    """
    if mode == "fast":
        with _no_cyclic_gc():
            return _fast_extract(html, max_depth)
    if mode == "precise":
        return _precise_extract(html, url, max_depth)
    raise ValueError(f"unknown extraction mode {mode!r}; expected one of {MODES}")


@contextlib.contextmanager
def _no_cyclic_gc():
    """Pause Python's cyclic garbage collector for one page.

    A page makes tens of thousands of short-lived containers (lxml's attribute
    dicts, node tuples, blocks) and no reference cycles: reference counting
    frees them all when the call returns, and the collector's passes over
    them, a few per page, only cost time (about 6% of the extractor's).  It is
    switched back on after the page, unless it was off already.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _precise_extract(html: str, url: str | None, max_depth: int) -> str:
    import trafilatura  # imported lazily: heavy, and only this mode needs it

    if not html or not html.strip():
        return ""
    _parse(html, _DepthProbe(max_depth))  # trafilatura would silently cut a deeper page at 256 levels
    text = trafilatura.extract(
        html,
        url=url,
        include_comments=False,
        include_tables=True,
        favor_precision=False,
        deduplicate=False,
    )
    return text or ""


# --------------------------------------------------------------------------
# Tag and attribute vocabulary
# --------------------------------------------------------------------------

# Never text for a reader: skipped with their whole subtree.
_SKIP_TAGS = frozenset(
    """script style noscript template svg math canvas iframe frame frameset
    object embed applet audio video source track map area head title meta
    link base button select option optgroup textarea input datalist output
    progress meter dialog""".split()
)

# A new output line starts at each of these.
_BLOCK_TAGS = frozenset(
    """address article aside blockquote body center dd details dir div dl dt
    fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr
    html li main nav ol p pre section summary table tbody thead tfoot tr ul
    caption legend menu""".split()
)
_HEADING_TAGS = frozenset("h1 h2 h3 h4 h5 h6".split())
_CELL_TAGS = frozenset(("td", "th"))
# Formatting tags that hardly ever wrap a block; they get no node id (saves
# time: they are a third of all elements).
_INLINE_TAGS = frozenset(
    """span b i em strong small big img picture abbr acronym time u s strike
    sup sub font code kbd samp var tt mark q cite dfn label wbr nobr bdi bdo
    del ins""".split()
)
# What the block builder does at a tag, in one lookup.
_SKIP, _BLOCK, _LINK, _BREAK, _CELL, _INLINE = range(6)
_TAG_KIND = {
    **{t: _INLINE for t in _INLINE_TAGS},
    **{t: _SKIP for t in _SKIP_TAGS},
    **{t: _BLOCK for t in _BLOCK_TAGS},
    **{t: _CELL for t in _CELL_TAGS},
    "a": _LINK,
    "br": _BREAK,
}

# Boilerplate marks on an element, from weakest to strongest.  A *weak* mark
# (ads, widgets, captions, forms) is lifted when the element turns out to be
# full of prose; a *strong* one (navigation, footer, comments, sharing,
# related links) only when the element holds most of the page's prose.
_NO_MARK, _WEAK, _STRONG = 0, 1, 2

_STRONG_TAGS = frozenset("nav footer aside menu figcaption".split())
_WEAK_TAGS = frozenset(("form",))
_TAG_MARKS = {**{t: _STRONG for t in _STRONG_TAGS}, **{t: _WEAK for t in _WEAK_TAGS}}
# Tags whose mark does not come from their class alone (see _element_flags).
_SPECIAL_MARK_TAGS = frozenset((*_TAG_MARKS, "html", "body"))
_STRONG_ROLES = frozenset("navigation banner contentinfo complementary search menu menubar".split())

# Words of a class name or id (split at "-", "_" and spaces).  A word marks
# the element when it is one of these, or -- for the longer, distinctive
# ones -- starts or ends with one ("socialshare", "articleSidebar", "mainnav").
_STRONG_WORDS = frozenset(
    """nav navi navbar navigation menu menus submenu megamenu footer
    sidebar breadcrumb breadcrumbs crumbs comment comments commentlist
    share sharing shares social cookie cookies consent gdpr related
    newsletter subscribe subscription pagination pager paging login
    signin signup toolbar outbrain taboola disqus masthead topbar copyright
    recommended recommendations tags tagcloud byline author authors bio
    """.split()
)
_WEAK_WORDS = frozenset(
    """ad ads advert adverts advertising advertisement anzeige banner widget
    widgets popup modal overlay promo sponsored sponsor rating print
    meta caption credit credits""".split()
)
_STRONG_AFFIXES = tuple(
    """sidebar breadcrumb cookie consent comment social share newsletter
    navigation navbar subnav topnav mainnav menu footer related disqus taboola
    outbrain pagination skiplink sitemap""".split()
)
_WEAK_AFFIXES = tuple("advert banner widget sponsor carousel slider".split())
# A class name starting with one of these describes a state or a taxonomy
# ("has-sidebar", "no-comments", "tag-footer"), not a page region.
_MODIFIER_WORDS = frozenset("has no with without is not tag category single hide show".split())

_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_WORDS = re.compile(r"\w{2,}")
_DIGIT = re.compile(r"\d")
_SENTENCE_END = re.compile(r"[.!?;:。！？…]")
_CJK_SENTENCE_END = re.compile(r"[。！？]")
# A date or a time of day, in the usual numeric and (en/de/fr/es) textual forms.
_DATE = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b|\b\d{1,2}:\d{2}\b|"
    r"\b(?:\d{1,2}\.?\s*(?:de\s+)?)?"
    r"(?:jan|feb|fév|mär|mar|apr|avr|abr|ma[iy]|jun|juin|jul|juil|"
    r"aug|aoû|ago|sep|set|o[ck]t|nov|de[cz]|déc|dic|ene)[a-zéûä]*\.?"
    r"(?:\s+\d{1,2}(?:st|nd|rd|th)?,?)?(?:\s+(?:de\s+)?\d{4})\b",
    re.IGNORECASE,
)
# Calls to action and legal lines: newsletter and subscription offers, "follow
# us", app downloads, donation appeals, copyright and cookie notices.  Only
# checked on short blocks, where such a phrase is the block's whole point.
# The regex runs on lowercased text and only when one of the plain stems
# occurs: Python's regex engine is slow at many alternatives per position.
_BOILERPLATE_STEMS = (
    "newsletter", "subscri", "abonn", "suscri", "follow", "folgen sie", "síguenos",
    "suivez", "sign up", "download", "spende", "donat", "support", "unterstütze", "hazte",
    "rights reserved", "rechte vorbehalten", "droits réservés", "todos los derechos", "cookie",
)
_BOILERPLATE_TEXT = re.compile(
    r"newsletter|\bsubscri(?:be|ption)|\babonn(?:ieren|iere|ement|ez)\b|\bsuscri|"
    r"\bfollow (?:us|the)\b|\bfolgen sie uns|\bsíguenos|\bsuivez[- ]nous|\bsign up\b|"
    r"\bdownload (?:the|our)\b|\bspende\b|\bdonat(?:e|ion)|\bsupport(?:ing)? (?:our|us)\b|"
    r"\bunterstütze\b|\bhazte\b|all rights reserved|alle rechte vorbehalten|"
    r"tous droits réservés|todos los derechos|\bcookies?\b"
)
_BOILERPLATE_TEXT_MAX = 300
# Photo credits and picture captions that stand alone as a block.
_CREDIT = re.compile(
    r"\(?(?:©|\(c\)|copyright\b|(?:photo|foto|bild|image|picture|credit|quelle|source|"
    r"fuente|kuva|titelbild|fotos|photos|bilder|images)s?\s*(?::|©|by\b))",
    re.IGNORECASE,
)

_mark_cache: dict[str, int] = {}


def _attr_mark(value: str) -> int:
    """Boilerplate mark carried by a class or id value (cached: sites repeat them)."""
    mark = _mark_cache.get(value)
    if mark is not None:
        return mark
    mark = _NO_MARK
    for name in value.lower().split():
        words = name.replace("-", " ").replace("_", " ").split()
        if not words or words[0] in _MODIFIER_WORDS:
            continue
        for word in words:
            if (word in _STRONG_WORDS or word.startswith(_STRONG_AFFIXES)
                    or word.endswith(_STRONG_AFFIXES)):
                mark = _STRONG
                break
            if (word in _WEAK_WORDS or word.startswith(_WEAK_AFFIXES)
                    or word.endswith(_WEAK_AFFIXES)):
                mark = _WEAK
        if mark == _STRONG:
            break
    if len(_mark_cache) > 100_000:
        _mark_cache.clear()
    _mark_cache[value] = mark
    return mark


def _element_flags(tag: str, attrib) -> tuple[int, bool]:
    """(boilerplate mark, hidden) of an element with attributes."""
    style = attrib.get("style")
    hidden = (
        "hidden" in attrib
        or attrib.get("aria-hidden") == "true"
        or (style is not None and _HIDDEN_STYLE.search(style) is not None)
    )
    if tag in _STRONG_TAGS or attrib.get("role") in _STRONG_ROLES:
        return _STRONG, hidden
    if tag == "html" or tag == "body":  # their classes describe the page, not a region
        return _NO_MARK, hidden
    mark = _WEAK if tag in _WEAK_TAGS else _NO_MARK
    for value in (attrib.get("class"), attrib.get("id")):
        if value:
            value_mark = _mark_cache.get(value)
            if value_mark is None:
                value_mark = _attr_mark(value)
            if value_mark > mark:
                mark = value_mark
    return mark, hidden


# --------------------------------------------------------------------------
# Step 1: linearise the document into blocks
# --------------------------------------------------------------------------


class _Block:
    __slots__ = ("text", "length", "link_len", "node", "tag", "prose")

    def __init__(self, text: str, link_len: int, node: int, tag: str):
        length = len(text)
        self.text = text  # whitespace-collapsed, may contain "\n" from <br>
        self.length = length
        self.link_len = link_len if link_len < length else length  # characters inside <a>
        self.node = node  # id of the innermost element enclosing it (its ancestors: _Tree)
        self.tag = tag  # tag of the owning block element
        # Prose: a real sentence that is not a link.  Chinese and Japanese pack
        # a sentence into a dozen characters; their full stop is telling.
        self.prose = link_len < 0.3 * length and (
            (length >= 40 and _SENTENCE_END.search(text) is not None)
            or (length >= 10 and not text.isascii() and _CJK_SENTENCE_END.search(text) is not None)
        )


class _DepthProbe:
    """lxml parser target that only checks the nesting depth (raises HtmlTooDeep)."""

    __slots__ = ("_depth", "_max_depth")

    def __init__(self, max_depth: int):
        self._depth = 0
        self._max_depth = max_depth

    def start(self, tag: str, attrib: dict) -> None:
        self._depth += 1
        if self._depth > self._max_depth:
            raise HtmlTooDeep(f"elements nest deeper than {self._max_depth} levels")

    def end(self, tag: str) -> None:
        self._depth -= 1

    def close(self) -> None:
        return None


class _BlockBuilder:
    """lxml parser target that cuts the document into text blocks.

    Fed by the parser's start/end/data events directly, so no tree is built
    and no Python object is made per element: about half the run time of
    building the tree and walking it.  Every element but inline formatting
    gets a node id (its position in start order, so a parent's id is below its
    children's); a block records the id of the innermost element enclosing
    it, and the parent links give the rest (so memory stays linear in the page
    however deep it nests).  An element that ends with no block under it is
    forgotten at once: it and its subtree are the last ids handed out, so the
    ids stay in document order, and the later steps only walk the elements
    that hold text (about half of them).  These methods run once per element
    or text node, hence the slots and the inlined checks; attributes are only
    kept here and judged later.  The nesting depth is the number of open
    elements outside skipped ones (``_open``) plus the depth inside one.
    """

    __slots__ = (
        "blocks", "nodes", "_path", "_open", "_owner", "_parts",
        "_has_text", "_link_len", "_in_link", "_skip", "_skip_room", "_max_depth",
    )

    def __init__(self, max_depth: int):
        self._max_depth = max_depth
        self.blocks: list[_Block] = []
        self.nodes: list[tuple[int, str, dict]] = []  # per node id: (parent id or -1, tag, attributes)
        self._path: list[int] = [-1]  # node ids of the open elements, under a -1 for "none"
        self._open: list[int | None] = []  # _TAG_KIND of the open elements outside skipped ones
        self._owner: list[str] = ["body"]  # tags of the open block elements
        self._parts: list[str] = []  # text of the block being built
        self._has_text = False  # whether _parts holds more than whitespace
        self._link_len = 0  # characters of link text in it
        self._in_link = 0  # depth of open <a> elements
        self._skip = 0  # depth inside a skipped element (script, style, ...)
        self._skip_room = 0  # the most _skip may reach within max_depth

    def start(self, tag: str, attrib: dict) -> None:
        if self._skip:
            self._skip += 1
            if self._skip > self._skip_room:
                raise HtmlTooDeep(f"elements nest deeper than {self._max_depth} levels")
            return
        open_kinds = self._open
        if len(open_kinds) >= self._max_depth:
            raise HtmlTooDeep(f"elements nest deeper than {self._max_depth} levels")
        kind = _TAG_KIND.get(tag)
        if kind == _BLOCK:  # the most frequent kind first
            if self._has_text:
                self._flush()
            self._owner.append(tag)
        elif kind is not None:
            if kind == _INLINE:  # text formatting: no node of its own
                open_kinds.append(_INLINE)
                return
            if kind == _SKIP:
                self._skip = 1
                self._skip_room = self._max_depth - len(open_kinds)
                return
            if kind == _LINK:
                self._in_link += 1
            elif kind == _BREAK:  # a line break inside the block
                if self._has_text:
                    self._parts.append("\x00")
                open_kinds.append(_BREAK)
                return
            elif self._has_text:  # a table cell: cells of a row share one line
                self._parts.append(" | ")
        nodes, path = self.nodes, self._path
        path.append(len(nodes))
        nodes.append((path[-2], tag, attrib))
        open_kinds.append(kind)

    def end(self, tag: str) -> None:
        if self._skip:
            self._skip -= 1
            return
        try:
            kind = self._open.pop()  # the parser closes elements in order
        except IndexError:
            return
        if kind == _BLOCK:
            if self._has_text:
                self._flush()
            self._owner.pop()
        elif kind == _INLINE or kind == _BREAK:
            return
        elif kind == _LINK:
            self._in_link -= 1
        node = self._path.pop()
        blocks = self.blocks
        if not blocks or blocks[-1].node < node:  # no text under it: drop its subtree
            del self.nodes[node:]

    def data(self, text: str) -> None:
        if self._skip:
            return
        if self._has_text:
            self._parts.append(text)
        elif text.isspace():
            return  # whitespace before a block's first word is dropped anyway
        else:
            self._parts.append(text)
            self._has_text = True
        if self._in_link:
            self._link_len += len(text.strip())

    def close(self) -> "_Page":
        if self._has_text:
            self._flush()
        nodes = self.nodes
        return _Page(
            self.blocks, [node[0] for node in nodes], [node[1] for node in nodes], [node[2] for node in nodes]
        )

    def _flush(self) -> None:
        """Turn the pending text into a block (called when it has some)."""
        raw = "".join(self._parts)
        self._parts.clear()
        self._has_text = False
        link_len, self._link_len = self._link_len, 0
        if "\x00" in raw:  # keep the <br> line breaks
            lines = (" ".join(line.split()) for line in raw.split("\x00"))
            text = "\n".join(line for line in lines if line)
        else:
            text = " ".join(raw.split())  # collapse whitespace runs
        node = self._path[-1]
        if text and node >= 0:  # (libxml2 always opens <html> first; just in case)
            self.blocks.append(_Block(text, link_len, node, self._owner[-1]))


class _Page:
    """What step 1 hands on: the blocks, and per node id its parent, tag and attributes.

    Made by _BlockBuilder, or by tasks._htmlblocks (the same rules in C), which hands on
    the judged marks instead of tags and attributes (``judged``).
    """

    __slots__ = ("blocks", "node_parent", "node_tags", "node_attrs", "judged")

    def __init__(self, blocks, node_parent: list[int], node_tags: list[str] | None = None,
                 node_attrs: list | None = None, judged: tuple[list[int], list[bool]] | None = None):
        self.blocks = blocks
        self.node_parent = node_parent
        self.node_tags = node_tags
        self.node_attrs = node_attrs
        self.judged = judged

    def judge_elements(self) -> tuple[list[int], list[bool]]:
        """(boilerplate mark, hidden) per node id."""
        if self.judged is not None:
            return self.judged
        n = len(self.node_tags)
        marks, hidden = [_NO_MARK] * n, [False] * n
        for node, (tag, attrib) in enumerate(zip(self.node_tags, self.node_attrs)):
            if not attrib:
                marks[node] = _TAG_MARKS.get(tag, _NO_MARK)
            elif len(attrib) == 1 and "class" in attrib and tag not in _SPECIAL_MARK_TAGS:
                value = attrib["class"]  # the most common case, in short
                mark = _mark_cache.get(value)
                marks[node] = _attr_mark(value) if mark is None else mark
            else:
                marks[node], hidden[node] = _element_flags(tag, attrib)
        return marks, hidden


def _skip_head(html: str) -> str:
    """Cut off ``<head>``: its elements are never text, but parsing them costs
    about 5% of the time.  Only a plain ``</head>`` right before ``<body`` is
    trusted, so that a "</head>" inside a script cannot cut the page short.
    """
    end = html.find("</head>")
    if end < 0:
        return html
    body = end + 7
    while body < len(html) and html[body] in " \t\r\n":
        body += 1
    return html[body:] if html.startswith("<body", body) else html


def _parse(html: str, target):
    """Feed ``html`` to a parser target; what its close() returns (None when lxml gives up)."""
    parser = etree.HTMLParser(
        target=target, encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True
    )
    try:
        return etree.fromstring(html.encode("utf-8", "replace"), parser)
    except (etree.LxmlError, ValueError):
        return None


def _load_native():
    """tasks._htmlblocks, when built (infra/build_native.py) against this lxml's libxml2."""
    try:
        from tasks import _htmlblocks
    except ImportError:
        return None
    major, minor, patch = etree.LIBXML_VERSION
    if _htmlblocks.LIBXML_VERSION != major * 10000 + minor * 100 + patch:
        return None  # built against another lxml: its structures may differ; rebuild it
    judge = (_TAG_MARKS, _STRONG_TAGS, _WEAK_TAGS, frozenset(("html", "body")), _STRONG_ROLES, _attr_mark,
             _mark_cache, _HIDDEN_STYLE.search)
    try:
        _htmlblocks.configure(_TAG_KIND, etree.__file__, judge)
    except ImportError:  # an lxml whose etree module does not export libxml2: the Python builder
        return None
    return _htmlblocks


_NATIVE = _load_native()


def _linearize(html: str, max_depth: int, native=_NATIVE) -> _Page | None:
    """Parse ``html`` into blocks; None when there is nothing to parse.

    ``native``: the C builder (tasks._htmlblocks) or None for the Python one; the same
    blocks either way, the C one about twice as fast over the whole extractor.
    """
    if not html or html.isspace():
        return None
    html = _skip_head(html)
    if native is not None:
        found = native.linearize(html.encode("utf-8", "replace"), max_depth)
        if found is None:
            raise HtmlTooDeep(f"elements nest deeper than {max_depth} levels")
        if found is False:  # text that is not UTF-8, where lxml gives up
            return None
        if found is not NotImplemented:  # (over 2,000 distinct tag names on one page)
            blocks, parents, marks, hidden = found
            return _Page(blocks, parents, judged=(marks, hidden))
    return _parse(html, _BlockBuilder(max_depth))


class _Tree:
    """Ancestry questions on the builder's nodes, each in time linear in the answer's path.

    Node ids are in document (pre-)order, so a subtree is the id range from its
    root to ``last[root]``.
    """

    def __init__(self, parent: list[int]):
        n = len(parent)
        self.parent = parent
        self.last = last = list(range(n))
        for node in range(n - 1, -1, -1):  # a parent's id is below its children's
            up = parent[node]
            if up >= 0 and last[node] > last[up]:
                last[up] = last[node]

    def contains(self, root: int, node: int) -> bool:
        """Whether ``node`` is ``root`` or below it."""
        return root <= node <= self.last[root]

    def ancestor(self, node: int, levels: int) -> int:
        """The element ``levels`` above ``node`` (-1 above the root)."""
        while levels > 0 and node >= 0:
            node = self.parent[node]
            levels -= 1
        return node

    def common_ancestor(self, a: int, b: int) -> int:
        """The deepest element holding both (-1 for nodes under different roots)."""
        parent, last = self.parent, self.last
        while a >= 0 and not a <= b <= last[a]:
            a = parent[a]
        return a


# --------------------------------------------------------------------------
# Steps 2-4: weigh the marks, pick the container, emit
# --------------------------------------------------------------------------

_BAD_WEIGHT = 0.7  # how much a character of boilerplate costs a container
_PAGE_SHARE = 0.5  # an element with this share of the page's prose is no boilerplate
_PROSE_DENSE = 0.6  # a weak mark is lifted when this share of its text is prose
_LINK_HEAVY = 0.5  # a block with more link text than this is a link list
_WIDEN_RATIO = 0.25  # extra prose per extra boilerplate that widens the container
_WIDEN_MIN_GAIN = 0.1  # ... and the least extra prose, relative to what it has
_LEAD_LEVELS = 3  # how far above the container a lead paragraph may sit
_TAIL_MIN = 40  # after the last prose block, shorter blocks are labels and links


def _inherit(flags: list[bool], parent: list[int]) -> list[bool]:
    """A node is flagged when it or any ancestor is."""
    out = flags[:]
    for node in range(len(out)):
        up = parent[node]
        if up >= 0 and out[up]:
            out[node] = True
    return out


def _effective_marks(doc: _Page, marks: list[int]) -> list[bool]:
    """Which marked elements really are boilerplate, given the prose under them."""
    n = len(marks)
    prose, total, n_prose = [0] * n, [0] * n, [0] * n
    for block in doc.blocks:
        owner = block.node
        total[owner] += block.length
        if block.prose:
            prose[owner] += block.length
            n_prose[owner] += 1
    parent = doc.node_parent
    for node in range(n - 1, 0, -1):  # add each node's sums into its parent's, children first
        up = parent[node]
        if up >= 0:
            prose[up] += prose[node]
            total[up] += total[node]
            n_prose[up] += n_prose[node]
    page_prose = max(1, sum(b.length for b in doc.blocks if b.prose))
    boiler = [False] * n
    for node, mark in enumerate(marks):
        if mark == _NO_MARK:
            continue
        if prose[node] >= _PAGE_SHARE * page_prose and n_prose[node] >= 3:
            continue  # a layout wrapper around most of the page's prose
        if mark == _WEAK and prose[node] >= 100 and prose[node] >= _PROSE_DENSE * total[node]:
            continue  # e.g. an "ad-free" or "widget" box that is really text
        boiler[node] = True
    return boiler


def _pick_container(doc: _Page, under_boiler, under_hidden) -> int:
    """The node whose subtree maximises good - _BAD_WEIGHT * bad text (-1: no prose).

    Then widen it while each step up brings enough extra prose for the extra
    boilerplate (which the emit step filters out anyway): an article body
    interleaved with picture captions or a related-links box should not
    shrink to its longest paragraph.
    """
    parent = doc.node_parent
    n = len(parent)
    good, bad = [0.0] * n, [0.0] * n
    for block in doc.blocks:
        owner = block.node
        if under_hidden[owner]:  # unseen text (toolbars, pop-ups) is no evidence
            continue
        if under_boiler[owner] or block.link_len > _LINK_HEAVY * block.length:
            bad[owner] += block.length
        elif block.prose:
            good[owner] += block.length - block.link_len
    for node in range(n - 1, 0, -1):  # add each node's sums into its parent's, children first
        up = parent[node]
        if up >= 0:
            good[up] += good[node]
            bad[up] += bad[node]
    scores = [g - _BAD_WEIGHT * b for g, b in zip(good, bad)]
    best = scores.index(max(scores))  # the first, outermost, of equal scores
    if good[best] <= 0:
        return -1
    while parent[best] >= 0:
        up = parent[best]
        gain = good[up] - good[best]
        if gain <= _WIDEN_MIN_GAIN * good[best] or gain < _WIDEN_RATIO * (bad[up] - bad[best]):
            break
        best = up
    return best


def _keep_block(block: _Block, under_boilerplate: bool) -> bool:
    """Whether a block inside the container is content."""
    if under_boilerplate:
        return False
    if block.link_len > _LINK_HEAVY * block.length:
        return False
    if block.length < 120 and _CREDIT.match(block.text):
        return False
    if block.length < _BOILERPLATE_TEXT_MAX and _is_call_to_action(block.text):
        return False
    return not _is_date_line(block)


def _is_call_to_action(text: str) -> bool:
    lowered = text.lower()
    for stem in _BOILERPLATE_STEMS:
        if stem in lowered:
            return _BOILERPLATE_TEXT.search(lowered) is not None
    return False


def _is_date_line(block: _Block) -> bool:
    """A short line that is mostly a date: a byline, a timestamp, a teaser date."""
    if block.length > 80 or block.prose and block.length > 40:
        return False
    if not _DIGIT.search(block.text):  # every date form has a number
        return False
    rest, n_dates = _DATE.subn(" ", block.text)
    return n_dates > 0 and len(_WORDS.findall(rest)) <= 4


def _looks_like_lead(block: _Block) -> bool:
    """Prose, or a longer line of plain text (standfirsts often lack a full stop)."""
    return block.prose or (
        block.length >= 60
        and block.link_len < 0.1 * block.length
        and block.tag not in _HEADING_TAGS
    )


def _drop_empty_sections(kept: list[_Block], blocks: list[_Block], tree: _Tree) -> list[_Block]:
    """Drop headings that no kept text follows (e.g. "Related articles").

    The text must come before the next heading of the same or a higher level,
    and inside the heading's section: the smallest element holding both the
    heading and the block right after it on the page.  A "Read also" heading
    whose box lost all its links does not own the paragraph after the box.
    """
    section = {}
    for block, after in zip(blocks, blocks[1:]):
        if block.tag in _HEADING_TAGS:
            section[id(block)] = tree.common_ancestor(block.node, after.node)
    out: list[_Block] = []
    for block in reversed(kept):
        if block.tag in _HEADING_TAGS:
            # "h2" <= "h3": heading tags compare like their levels.
            if not out or (out[-1].tag in _HEADING_TAGS and out[-1].tag <= block.tag):
                continue
            owner = section.get(id(block), -1)
            if owner < 0 or not tree.contains(owner, out[-1].node):
                continue
        out.append(block)
    out.reverse()
    return out


def _trim_tail(kept: list[_Block]) -> list[_Block]:
    """Drop short lines after the last prose block: tags, "read more", labels."""
    last = max((i for i, b in enumerate(kept) if b.prose), default=len(kept))
    return kept[: last + 1] + [b for b in kept[last + 1 :] if b.length > _TAIL_MIN]


def _boiler_below(boiler: list[bool], tree: _Tree, container: int) -> list[bool]:
    """Per node of the container's subtree: whether boilerplate lies between them, the
    container itself excluded (boilerplate above the container does not count against
    its blocks)."""
    below = [False] * len(boiler)
    parent = tree.parent
    for node in range(container + 1, tree.last[container] + 1):
        up = parent[node]
        below[node] = boiler[node] or (up != container and below[up])
    return below


def _select_blocks(doc, tree, container, boiler, under_boiler, under_hidden) -> list[_Block]:
    """The content blocks of the container, plus lead paragraphs at most _LEAD_LEVELS above it."""
    below = _boiler_below(boiler, tree, container)
    lead_root = tree.ancestor(container, _LEAD_LEVELS)
    kept: list[_Block] = []
    inside_seen = False
    last = tree.last[container]
    for block in doc.blocks:
        owner = block.node
        if container <= owner <= last:  # tree.contains(container, owner), inlined
            inside_seen = True
            if _keep_block(block, below[owner]):
                kept.append(block)
        elif (not inside_seen and _looks_like_lead(block)
              and (lead_root < 0 or tree.contains(lead_root, owner))):
            if not under_hidden[owner] and _keep_block(block, under_boiler[owner]):
                kept.append(block)
    return kept


def _fast_extract(html: str, max_depth: int, native=_NATIVE) -> str:
    doc = _linearize(html, max_depth, native)
    if doc is None or not doc.blocks:
        return ""
    tree = _Tree(doc.node_parent)
    marks, hidden = doc.judge_elements()
    boiler = _effective_marks(doc, marks)
    under_boiler = _inherit(boiler, doc.node_parent)
    under_hidden = _inherit(hidden, doc.node_parent)
    container = _pick_container(doc, under_boiler, under_hidden)
    if container < 0:  # all prose sits under boilerplate marks: distrust them
        unmarked = [False] * len(boiler)
        container = _pick_container(doc, unmarked, under_hidden)
        if container >= 0:
            boiler = under_boiler = unmarked
        else:  # no prose at all: keep whatever is not boilerplate
            container = 0
    kept = _select_blocks(doc, tree, container, boiler, under_boiler, under_hidden)
    kept = _trim_tail(_drop_empty_sections(kept, doc.blocks, tree))
    return "\n".join(block.text for block in kept)
