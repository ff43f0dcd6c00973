"""Tests for tasks.extract: main-content text extraction."""

from __future__ import annotations

import pytest

from tasks.extract import HtmlTooDeep, extract_text

PARAS = [
    "The committee met on Tuesday to discuss the new budget, which has been delayed for months.",
    "Several members argued that the proposal ignores rural schools, and asked for a new vote.",
    "A final decision is expected next week, after the public consultation has closed.",
]


def page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head><title>T</title>{head}</head><body>{body}</body></html>"


ARTICLE = page(
    """
    <header class="site-header"><nav><ul>
      <li><a href="/">Home</a></li><li><a href="/news">News</a></li>
      <li><a href="/sport">Sport</a></li>
    </ul></nav></header>
    <div id="cookie-banner">We use cookies to improve your experience. Accept all cookies?</div>
    <main>
      <article>
        <h1>Budget talks stall again</h1>
        <p>{0}</p>
        <p>{1}</p>
        <script>var tracking = "SCRIPT TEXT MUST NOT LEAK";</script>
        <style>.x {{ color: red }}</style>
        <p>{2}</p>
      </article>
    </main>
    <aside class="sidebar">
      <h3>Most read</h3><ul><li><a href="/a">Other story one</a></li></ul>
    </aside>
    <footer class="site-footer"><p>Copyright 2024 Example News. All rights reserved.</p></footer>
    """.format(*PARAS)
)


def test_keeps_article_paragraphs():
    text = extract_text(ARTICLE)
    for para in PARAS:
        assert para in text


def test_drops_navigation_footer_cookie_banner_and_script():
    text = extract_text(ARTICLE)
    for junk in ("Home", "Sport", "We use cookies", "Most read", "Other story one",
                 "Copyright 2024", "SCRIPT TEXT", "color: red"):
        assert junk not in text


def test_one_block_per_line_with_whitespace_collapsed():
    html = page(
        """<article>
        <h2>Section   title</h2>
        <p>{0}</p>
        <p>Second   paragraph
           spread over   lines, with <b>bold</b> and <a href="#">a link</a> inside it.</p>
        <ul><li>First item of the list</li><li>Second item of the list</li></ul>
        <table>
          <tr><td>Cell A1</td><td>Cell B1</td></tr>
          <tr><td>Cell A2</td><td>Cell B2</td></tr>
        </table>
        <p>{1}</p>
        </article>""".format(*PARAS)
    )
    lines = extract_text(html).split("\n")
    assert "Section title" in lines
    assert PARAS[0] in lines
    assert "Second paragraph spread over lines, with bold and a link inside it." in lines
    assert "First item of the list" in lines
    assert "Second item of the list" in lines
    assert any("Cell A1" in line and "Cell B1" in line for line in lines)
    assert not any("Cell A1" in line and "Cell A2" in line for line in lines)
    assert all(line == line.strip() and "  " not in line for line in lines)


def test_br_starts_a_new_line():
    html = page(f"<article><p>{PARAS[0]}<br>{PARAS[1]}</p></article>")
    assert extract_text(html).split("\n") == PARAS[:2]


def test_hidden_and_link_list_blocks_are_not_content():
    html = page(
        f"""<div class="content"><p>{PARAS[0]}</p><p>{PARAS[1]}</p>
        <div style="display:none">Hidden popup text that should not be chosen.</div>
        <ul class="related-posts"><li><a href="/1">Related story number one</a></li>
        <li><a href="/2">Related story number two</a></li></ul></div>"""
    )
    text = extract_text(html)
    assert PARAS[0] in text and PARAS[1] in text
    assert "Related story" not in text


@pytest.mark.parametrize(
    "paragraphs",
    [
        [
            "中国的城市化进程在过去四十年里发生了巨大的变化，数亿人从农村迁移到城市生活和工作。",
            "专家认为，未来的发展需要更加注重环境保护和社会公平，而不仅仅是经济增长的速度。",
        ],
        [
            "Городской совет утвердил новый план развития транспорта, "
            "который включает строительство трёх линий метро.",
            "По словам мэра, первые станции откроются уже через два года, а работы начнутся весной.",
        ],
    ],
    ids=["chinese", "cyrillic"],
)
def test_non_latin_paragraphs_survive(paragraphs):
    html = page(
        "<nav><a href='/'>首页</a> <a href='/a'>Главная</a></nav><article>"
        + "".join(f"<p>{p}</p>" for p in paragraphs)
        + "</article>",
        head='<meta charset="utf-8">',
    )
    text = extract_text(html)
    for para in paragraphs:
        assert para in text


@pytest.mark.parametrize(
    "html",
    [
        "",
        "   \n\t ",
        "<html></html>",
        "<div><span></span></div>",
        "<html><head><script>var x = 1;</script></head><body></body></html>",
        "<!-- only a comment -->",
        "</p></div></body>",
        "<?xml version='1.0' encoding='iso-8859-1'?><html><body></body></html>",
    ],
)
def test_empty_or_textless_html_gives_empty_string(html):
    assert extract_text(html) == ""


@pytest.mark.parametrize(
    "html",
    [
        "<<<>>> &&& <p <div",
        "\x00\x01\x02 binary \ud800 junk",
        "<p>" * 2000 + "deeply nested" + "</p>" * 2000,
        "<table><td>cell without row<td>another",
    ],
)
def test_garbage_html_does_not_raise(html):
    assert isinstance(extract_text(html), str)


def test_a_page_nested_past_max_depth_raises_html_too_deep():
    deep = "<div>" * 5000 + "very deep" + "</div>" * 5000
    with pytest.raises(HtmlTooDeep, match="deeper than 512 levels"):
        extract_text(deep)
    assert extract_text(deep, max_depth=6000) == "very deep"


def test_head_is_skipped_but_a_closing_head_tag_in_a_script_is_not_trusted():
    head = '<script>document.write("</head>");</script><style>p { margin: 0 }</style>'
    text = extract_text(page(f"<article><p>{PARAS[0]}</p><p>{PARAS[1]}</p></article>", head))
    assert text.split("\n") == PARAS[:2]


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="turbo"):
        extract_text(ARTICLE, mode="turbo")


def test_precise_mode_uses_trafilatura():
    text = extract_text(ARTICLE, mode="precise", url="https://example.org/budget")
    assert PARAS[0] in text
    assert extract_text("", mode="precise") == ""
