"""The C block builder (tasks/htmlblocks.c) against the Python one it replaces in the hot path.

Both cut a page into blocks from the same libxml2 parse; they must agree on every block
(text, length, link characters, owning node and tag, prose), on the node tree and on the
marks judged from it, for real pages, for pages cut and spliced at random, and for random
tag soup full of what trips such code (Unicode whitespace, <br>, entities, NUL, cells,
links, unclosed and skipped elements).
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from tasks import extract
from tasks.extract import HtmlTooDeep

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NATIVE = extract._NATIVE


def test_the_c_builder_is_built_and_in_use():
    assert NATIVE is not None, "tasks/_htmlblocks is not built (or not for this lxml): run make setup"
    assert extract._fast_extract.__defaults__[-1] is NATIVE


def page_view(html: str, native) -> tuple | None:
    page = extract._linearize(html, extract.MAX_DEPTH, native)
    if page is None:
        return None
    blocks = [(b.text, b.length, b.link_len, b.node, b.tag, bool(b.prose)) for b in page.blocks]
    return blocks, page.node_parent, page.judge_elements()


def assert_same(html: str) -> tuple | None:
    python = page_view(html, None)
    assert page_view(html, NATIVE) == python
    assert extract._fast_extract(html, extract.MAX_DEPTH, NATIVE) == extract._fast_extract(
        html, extract.MAX_DEPTH, None
    )
    return python


def real_pages() -> list[str]:
    folder = DATA / "extraction-dev" / "html"
    if not folder.is_dir():
        pytest.skip(f"real pages not found: {folder} (see ../shared/data/README.md)")
    pages = []
    for path in sorted(folder.glob("*.html.gz")):
        pages.append(gzip.decompress(path.read_bytes()).decode("utf-8", "replace"))
    return pages


@pytest.mark.skipif(NATIVE is None, reason="tasks/_htmlblocks is not built")
def test_equal_blocks_on_every_real_page():
    pages = real_pages()
    n_blocks = sum(len(assert_same(html)[0]) for html in pages)
    assert len(pages) == 237
    assert n_blocks > 30_000  # the pages really were cut into blocks


@pytest.mark.skipif(NATIVE is None, reason="tasks/_htmlblocks is not built")
def test_equal_blocks_on_real_pages_cut_and_spliced():
    pages = real_pages()
    rng = random.Random(7)
    for _ in range(150):
        a, b = rng.choice(pages), rng.choice(pages)
        cut_a, cut_b = rng.randrange(len(a)), rng.randrange(len(b))
        html = a[:cut_a] + b[cut_b:] if rng.random() < 0.5 else a[: rng.randrange(len(a))]
        assert_same(html)


SOUP_TAGS = (
    "div p span a b br td th tr table li ul h2 section nav footer script style noscript "
    "form article aside pre font x-custom fb:like svg title head body html"
).split()
SOUP_TEXT = [
    "Words and more words.", " ", "\n\t", "\u00a0", "\u3000", "\x1c", "\u2028", "&nbsp;", "&amp;",
    "&#x3002;", "这是一个句子。", "Ünïcödé text: done!", "a", "&#0;", "\x00", "<!-- c -->", "<![CDATA[x]]>",
    "...", "Click here", "&#xD800;", "\u200b", "\ufeff",
]
SOUP_ATTRS = [
    "", ' class="sidebar"', ' id="main-content"', ' style="display:none"', " hidden", ' aria-hidden="true"',
    ' role="navigation"', ' class="a" class="share"', ' href="/x"', ' class="no-comments"', " class",
]


def soup(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.35:
            out.append(f"<{rng.choice(SOUP_TAGS)}{rng.choice(SOUP_ATTRS)}>")
        elif roll < 0.55:
            out.append(f"</{rng.choice(SOUP_TAGS)}>")
        else:
            out.append(rng.choice(SOUP_TEXT))
    return "".join(out)


@pytest.mark.skipif(NATIVE is None, reason="tasks/_htmlblocks is not built")
def test_equal_blocks_on_random_tag_soup():
    rng = random.Random(11)
    with_blocks = 0
    for i in range(600):
        view = assert_same(soup(rng, rng.randrange(1, 400)))
        with_blocks += bool(view and view[0])
    assert with_blocks > 300


@pytest.mark.skipif(NATIVE is None, reason="tasks/_htmlblocks is not built")
@pytest.mark.parametrize(
    "html",
    [
        "<p>one<br>two<br><br>  three\u00a0four</p>",
        "<table><tr><td>a</td><td>b</td><th>c</th></tr></table>",
        "<p>Read <a href='/'>  the  whole story  </a> here.</p>",
        "<div class='a b' id='x' style='color:red' data-x='1'><p>Styled text that is long enough.</p></div>",
        "<p>\x00nul\x00 chars</p>",
        "<p>\ud800 a lone surrogate in the str</p>",
        "</head> <body><p>after the head</p>",
        "<body><p>" + "".join(f"<t{i}>w{i}</t{i}> " for i in range(2500)),  # over 2,000 tag names: Python builder
    ],
)
def test_equal_blocks_on_edge_cases(html):
    assert_same(html)


@pytest.mark.skipif(NATIVE is None, reason="tasks/_htmlblocks is not built")
@pytest.mark.parametrize("inner", ["div", "object", "span"])  # a block, a skipped and an inline tag
def test_too_deep_raises_in_both(inner):
    depth = 40
    html = "<body>" + "<div>" * 10 + f"<{inner}>" * (depth - 10) + "text"
    for native in (None, NATIVE):
        with pytest.raises(HtmlTooDeep, match="deeper than 30 levels"):
            extract._linearize(html, 30, native)
        assert extract._linearize(html, 60, native) is not None
