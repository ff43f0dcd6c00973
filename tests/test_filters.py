"""Unit tests of the heuristic filters: tiny strings in, exact drop reasons out."""

from __future__ import annotations

import gzip
import re

import pytest
from httpserver import http_server  # noqa: F401

from pretrain.config import (
    C4Config,
    DownloadConfig,
    FilterConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    UrlFilterConfig,
)
from tasks.filters import (
    FILTERS,
    C4QualityFilter,
    Doc,
    FilterListError,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    UrlFilter,
    build_chain,
)
from tasks.filters.c4 import count_sentences
from tasks.filters.text import (
    NGrams,
    count_words_with_letter,
    split_lines,
    split_paragraphs,
    tokenize,
)

# Our own prose, long enough for every rule: 7 lines, 8 sentences, 115 words.
ENGLISH = """\
The river runs through the middle of the old town and divides it into two quiet halves.
On the northern bank there is a market where farmers sell bread, cheese and fresh vegetables.
Most of the families who live here have known each other for many generations.
In the summer, children swim near the bridge while their parents talk in the shade of the trees.
The library was built with money that the town raised over twenty years of small donations.
Visitors often say that the place feels slower than the cities they come from. They are right.
When the evening comes, the lights of the houses are reflected in the water of the river."""

CHINESE = """\
城市的清晨总是从公园开始的。老人们在湖边打太极拳，动作缓慢而有力，仿佛时间也跟着慢了下来。
年轻人背着书包匆匆走过，手里拿着刚买的包子和豆浆，一边走一边看手机上的新闻。
附近的小学传来朗朗的读书声，孩子们正在学习一首关于春天的古诗，老师耐心地讲解每一个字的意思。
到了中午，街道两旁的小饭馆坐满了上班族，大家一边吃饭一边讨论工作和周末的计划。
傍晚时分，夕阳把整条河染成了金色，散步的人越来越多，这座城市又慢慢安静下来。"""

JAPANESE = """\
今朝は早く起きて、近くの川沿いを散歩しました。空気はまだ少し冷たく、桜のつぼみが少しずつ膨らみ始めていました。
途中で小さなパン屋に立ち寄り、焼きたてのクロワッサンと温かいコーヒーを買いました。店主はとても親切な方で、季節ごとに新しいパンを作っているそうです。
家に帰ってから、窓を開けて本を読みました。最近読んでいるのは、昔の日本の村の暮らしについて書かれた随筆です。
午後は友人と駅前の図書館で待ち合わせをして、来月の旅行の計画を一緒に立てました。
夜には簡単な夕食を作り、明日の仕事の準備をしてから早めに寝ることにしました。"""

RUSSIAN = """\
Утром мы вышли из дома рано, когда улицы ещё были почти пустыми и тихими.
Мы долго шли вдоль реки, разговаривали о книгах, которые прочитали этой зимой, и о планах на лето.
В маленьком кафе у моста нам подали горячий чай с лимоном и свежие пироги с яблоками.
Хозяйка рассказала, что её семья держит это кафе уже больше тридцати лет и знает почти всех соседей.
После обеда мы поехали в музей, где открылась новая выставка старых фотографий нашего города.
Вечером мы вернулись домой уставшими, но очень довольными этим длинным и спокойным днём."""

EDGE_TEXTS = [
    "",
    " ",
    "\n\n\t \n",
    "word",
    "One sentence.",
    "\x00\x01\x02\xff\ufffd\ud7ff junk \x7f",
    "#" * 500,
    "." * 300,
    "x" * 5000,
    "😀 🙂 🎉",
    "{}\n[]\n()",
    "a\r\nb\rc\u2028d\x0ce",
    "\u0301\u0301 \u00ad \u200d",
    "lone surrogate \ud800 here.",
]
SNAKE_CASE = re.compile(r"[a-z][a-z0-9_]*")


def verdict(flt, text: str, **doc_fields):
    return flt.filter(Doc(text=text, **doc_fields))


def lines_of(*parts: str) -> str:
    return "\n".join(parts)


def numbered_words(n: int, prefix: str = "word") -> list[str]:
    """n distinct letter-only words (no digits, so every one counts as alphabetic)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [prefix + letters[i // 26 % 26] + letters[i % 26] for i in range(n)]


# --- the contract ----------------------------------------------------------------


def test_filter_names_are_the_config_sections():
    sections = set(FilterConfig.model_fields) - {"order", "write_removed"}
    assert set(FILTERS) == sections
    for name, cls in FILTERS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(FILTERS))
@pytest.mark.parametrize("text", EDGE_TEXTS, ids=range(len(EDGE_TEXTS)))
def test_filters_never_raise_and_answer_in_contract_form(name, text):
    flt = build_chain(FilterConfig(order=[name]))[0]
    result = flt.filter(Doc(text=text, url="http://[::1/x" if name == "url" else "", lang="en"))
    assert result is True or (
        isinstance(result, tuple) and result[0] is False and SNAKE_CASE.fullmatch(result[1])
    ), result


def test_edge_texts_get_the_expected_reasons():
    assert verdict(GopherQualityFilter(), "") == (False, "gopher_short_doc")
    assert verdict(GopherQualityFilter(), "word") == (False, "gopher_short_doc")
    assert verdict(GopherRepetitionFilter(), "") == (False, "gopher_repetition_empty")
    assert verdict(GopherRepetitionFilter(), " \n\t ") == (False, "gopher_repetition_empty")
    assert verdict(C4QualityFilter(), "   ") == (False, "c4_too_few_sentences")
    assert verdict(FineWebQualityFilter(), "\n \n") == (False, "fineweb_empty")


def test_build_chain_follows_order_and_skips_disabled():
    cfg = FilterConfig(order=["fineweb", "c4", "url", "gopher_quality"])
    cfg.c4.enabled = False
    chain = build_chain(cfg)
    assert [f.name for f in chain] == ["fineweb", "url", "gopher_quality"]
    assert [type(f) for f in chain] == [FineWebQualityFilter, UrlFilter, GopherQualityFilter]
    assert [f.name for f in build_chain(FilterConfig())] == [
        "url", "gopher_repetition", "gopher_quality", "c4", "fineweb"
    ]


def test_filters_are_built_from_their_config_section():
    cfg = FilterConfig()
    cfg.gopher_quality.min_doc_words = 7
    cfg.fineweb.short_line_chars = 12
    chain = {f.name: f for f in build_chain(cfg)}
    assert chain["gopher_quality"].cfg.min_doc_words == 7
    assert chain["fineweb"].cfg.short_line_chars == 12


def test_default_chain_keeps_good_english():
    doc = Doc(text=ENGLISH, url="https://example.org/town/history", lang="en")
    assert [f.filter(doc) for f in build_chain(FilterConfig())] == [True] * 5


@pytest.mark.parametrize("text,lang", [(CHINESE, "zh"), (JAPANESE, "ja"), (RUSSIAN, "ru")])
def test_default_chain_keeps_non_latin_prose(text, lang):
    doc = Doc(text=text, url="https://example.org/diary", lang=lang)
    assert [(f.name, f.filter(doc)) for f in build_chain(FilterConfig())] == [
        (name, True) for name in FilterConfig().order
    ]
    assert doc.text == "\n".join(line.strip() for line in text.splitlines())  # C4 kept every line


# --- text utilities --------------------------------------------------------------


def test_tokenize_splits_punctuation_from_words():
    tokens = tokenize("It's 3.14, e.g. Mrs. Smith's https://example.com/a?b=1 don't -- ok...")
    assert tokens.words == (
        "It", "'s", "3.14", "e.g", "Mrs.", "Smith", "'s", "https://example.com/a?b=1", "don", "'t", "ok",
    )
    assert tokens.n_tokens == len(tokens.words) + 4  # ",", ".", "--", "..."
    assert tokens.n_unspaced == 0


def test_tokenize_counts_one_word_per_character_in_scripts_without_spaces():
    tokens = tokenize("我们去公园。東京は大きい。")
    assert tokens.words == tuple("我们去公园東京は大きい")
    assert tokens.n_unspaced == 11 and tokens.n_tokens == 13
    assert len(tokenize(CHINESE).words) == 189  # every Han character; Gopher needs 50 words


def test_tokenize_keeps_combining_marks_and_soft_hyphens_inside_words():
    assert tokenize("हिन्दी भाषा").words == ("हिन्दी", "भाषा")
    assert tokenize("Wein\u00adberg cafe\u0301").words == ("Wein\u00adberg", "cafe\u0301")
    assert tokenize("Привет, мир!").words == ("Привет", "мир")


def test_count_words_with_letter():
    assert count_words_with_letter(("abc", "123", "a1", "3.14", "हिन्दी", "我", "_")) == 4


def test_lines_and_paragraphs():
    assert split_lines("  a \r\n\n b\u2028c\n\t\n") == ["a", "b", "c"]
    assert split_paragraphs("a\nb\n\n  \n c \n\n\nd\n") == ["a\nb", "c", "d"]
    assert split_paragraphs(" \n ") == []


def test_ngrams_top_and_duplicate_chars():
    grams = NGrams("a b c a b c a b c d".split())
    assert grams.top_chars(2) == 6  # "a b" three times, 2 word characters each
    assert grams.top_chars(3) == 9
    assert grams.duplicate_chars(3) == 6  # words 3..8 repeat earlier 3-grams
    assert grams.duplicate_chars(5) == 6
    assert grams.duplicate_chars(11) == 0
    assert NGrams([]).top_chars(2) == 0


def test_ngrams_top_ties_take_the_longest():
    # every 2-gram occurs once: the longest one counts
    assert NGrams("aa bbbb c".split()).top_chars(2) == 6
    # "x yy" and "zzzz w" both occur twice: the longer one counts
    assert NGrams("x yy q zzzz w r x yy s zzzz w".split()).top_chars(2) == 2 * 5


def test_ngrams_duplicate_fraction_shrinks_with_n():
    words = "one two three four five six one two three four five seven eight one two three".split()
    grams = NGrams(words)
    counts = [grams.duplicate_chars(n) for n in range(1, 8)]
    assert counts == sorted(counts, reverse=True) and counts[4] > 0 and counts[-1] == 0


# --- Gopher quality --------------------------------------------------------------


def test_gopher_quality_keeps_prose():
    assert verdict(GopherQualityFilter(), ENGLISH) is True


@pytest.mark.parametrize("text,lang", [(CHINESE, "zh"), (JAPANESE, "ja"), (RUSSIAN, "ru")])
def test_gopher_quality_keeps_non_latin_prose_of_known_language(text, lang):
    assert verdict(GopherQualityFilter(), text, lang=lang) is True


def test_gopher_stop_words_apply_to_english_and_unknown_language_only():
    flt = GopherQualityFilter()
    assert verdict(flt, RUSSIAN, lang="") == (False, "gopher_too_few_stop_words")
    assert verdict(flt, RUSSIAN, lang="en") == (False, "gopher_too_few_stop_words")
    assert verdict(flt, RUSSIAN, lang="ru") is True
    flt = GopherQualityFilter(GopherQualityConfig(stop_words=["и", "в", "с"], stop_words_languages=["ru"]))
    assert verdict(flt, RUSSIAN, lang="ru") is True
    assert verdict(flt, ENGLISH, lang="ru") == (False, "gopher_too_few_stop_words")
    assert verdict(flt, ENGLISH, lang="en") is True  # the rule does not apply to English now


def test_gopher_stop_words_fall_back_to_lower_case():
    words = " ".join(numbered_words(60))
    assert verdict(GopherQualityFilter(), f"The {words} And more.") is True
    assert verdict(GopherQualityFilter(), f"The {words} more.") == (False, "gopher_too_few_stop_words")


def test_gopher_word_count_limits():
    flt = GopherQualityFilter()
    short = "The cat and the dog sat together in the sun."
    assert verdict(flt, short) == (False, "gopher_short_doc")
    assert verdict(GopherQualityFilter(GopherQualityConfig(min_doc_words=5)), short) is True
    assert verdict(GopherQualityFilter(GopherQualityConfig(max_doc_words=100)), ENGLISH) == (False, "gopher_long_doc")


def test_gopher_counts_chinese_characters_as_words():
    text = "今天天气很好，我们一起去公园散步，看到了很多美丽的花和快乐的孩子。" * 2
    assert len(tokenize(text).words) >= 50
    assert verdict(GopherQualityFilter(GopherQualityConfig(min_stop_words=0)), text) is True


def test_gopher_mean_word_length():
    tiny = " ".join(["a", "to", "be", "of", "the"] * 12)
    assert verdict(GopherQualityFilter(), tiny) == (False, "gopher_below_avg_word_length")
    long_words = " ".join(w * 3 for w in numbered_words(50, "incomprehensible")) + " the and"
    assert verdict(GopherQualityFilter(), long_words) == (False, "gopher_above_avg_word_length")
    relaxed = GopherQualityFilter(GopherQualityConfig(max_avg_word_length=100))
    assert verdict(relaxed, long_words) is True


def test_gopher_hashes_and_ellipsis():
    hashtags = ENGLISH + " " + " ".join(f"#{w}" for w in numbered_words(30))
    assert verdict(GopherQualityFilter(), hashtags) == (False, "gopher_too_many_hashes")
    relaxed = GopherQualityConfig(max_symbol_word_ratio=0.5, min_alpha_words_ratio=0.5)  # '#' is a token
    assert verdict(GopherQualityFilter(relaxed), hashtags) is True
    dots = ENGLISH.replace(" the ", " the... ")
    assert verdict(GopherQualityFilter(), dots) == (False, "gopher_too_many_ellipsis")


def test_gopher_bullet_and_ellipsis_lines():
    lines = ENGLISH.splitlines()
    bullets = lines_of(*(f"• {line}" for line in lines))
    assert verdict(GopherQualityFilter(), bullets) == (False, "gopher_too_many_bullets")
    assert verdict(GopherQualityFilter(), lines_of(*(f"- {line}" for line in lines[:6]), lines[6])) is True
    trailing = lines_of(*(line[:-1] + " …" if i < 3 else line for i, line in enumerate(lines)))
    assert verdict(GopherQualityFilter(), trailing) == (False, "gopher_too_many_end_ellipsis")
    relaxed = GopherQualityFilter(GopherQualityConfig(max_ellipsis_lines_ratio=0.5))
    assert verdict(relaxed, trailing) is True


def test_gopher_alpha_words():
    numbers = ENGLISH + "\n" + " ".join(str(1000 + i) for i in range(150))
    assert verdict(GopherQualityFilter(), numbers) == (False, "gopher_below_alpha_threshold")
    relaxed = GopherQualityFilter(GopherQualityConfig(min_alpha_words_ratio=0.3))
    assert verdict(relaxed, numbers) is True


# --- Gopher repetition -----------------------------------------------------------


def test_gopher_repetition_keeps_prose():
    for text in (ENGLISH, CHINESE, JAPANESE, RUSSIAN):
        assert verdict(GopherRepetitionFilter(), text) is True


def test_gopher_duplicate_paragraphs():
    paras = ENGLISH.splitlines()
    doubled = "\n\n".join(paras[:3] * 2)
    assert verdict(GopherRepetitionFilter(), doubled) == (False, "dup_para_frac")
    # one long paragraph repeated among short ones: few duplicates, many characters
    long_para = paras[0] + " " + paras[1] + " " + paras[3]
    text = "\n\n".join([long_para, *(f"Short note {w}." for w in numbered_words(6)), long_para])
    assert verdict(GopherRepetitionFilter(), text) == (False, "dup_para_char_frac")
    relaxed = GopherRepetitionConfig(max_dup_para_char_frac=0.9, max_dup_line_char_frac=0.9)
    relaxed.max_dup_ngram_char_frac = {n: 0.9 for n in relaxed.max_dup_ngram_char_frac}
    assert verdict(GopherRepetitionFilter(relaxed), text) is True


def test_gopher_duplicate_lines():
    lines = ENGLISH.splitlines()
    assert verdict(GopherRepetitionFilter(), lines_of(*lines[:4], *lines[:2])) == (False, "dup_line_frac")
    long_line = lines[0] + " " + lines[1] + " " + lines[3]
    text = lines_of(long_line, *(f"Short note {w}." for w in numbered_words(6)), long_line)
    assert verdict(GopherRepetitionFilter(), text) == (False, "dup_line_char_frac")


def test_gopher_top_ngram():
    text = " ".join(f"buy now {w}" for w in numbered_words(40)) + "."
    assert verdict(GopherRepetitionFilter(), text) == (False, "top_2_gram")
    cfg = GopherRepetitionConfig(max_top_ngram_char_frac={2: 0.9, 3: 0.9, 4: 0.9})
    assert verdict(GopherRepetitionFilter(cfg), text) is True


def test_gopher_duplicated_ngrams():
    unique = numbered_words(120)
    repeated = "the quick brown fox jumps over the lazy dog".split()
    words = unique[:40] + repeated + unique[40:80] + repeated + unique[80:]
    text = " ".join(words)
    ngrams = NGrams(words)
    assert ngrams.duplicate_chars(5) == sum(map(len, repeated))
    frac = ngrams.duplicate_chars(5) / len(text)
    assert 0.03 < frac < 0.15
    low = {n: frac - 0.01 for n in range(5, 11)}
    flt = GopherRepetitionFilter(GopherRepetitionConfig(max_dup_ngram_char_frac=low))
    assert verdict(flt, text) == (False, "duplicated_5_n_grams")
    only_ten = GopherRepetitionConfig(max_dup_ngram_char_frac={5: 0.9, 10: frac - 0.01})
    assert verdict(GopherRepetitionFilter(only_ten), text) is True  # a 9-word repeat has no repeated 10-gram
    only_nine = GopherRepetitionConfig(max_dup_ngram_char_frac={5: 0.9, 9: frac - 0.01})
    assert verdict(GopherRepetitionFilter(only_nine), text) == (False, "duplicated_9_n_grams")
    assert verdict(GopherRepetitionFilter(), text) is True


def test_gopher_duplicated_ngrams_on_spam():
    phrase = "limited offer on genuine designer watches with free worldwide shipping and returns"
    spam = " ".join([phrase] * 3 + numbered_words(60))
    assert verdict(GopherRepetitionFilter(), spam) == (False, "duplicated_5_n_grams")


# --- C4 --------------------------------------------------------------------------


C4_PAGE = lines_of(
    "Welcome to our bakery in the old harbour district of the town.",
    "Please enable JavaScript to view the opening hours on this page.",
    "Our bread is baked every morning from local flour and spring water.",
    "Home | Menu | Contact",
    "This site uses cookies to improve your experience.",
    "We also sell cakes, tarts and cookies on weekends.[1]",
    "Read our privacy policy before ordering online.",
    "Orders for weddings should reach us two weeks in advance.",
    "Thank you!",
    "Our team has worked together for more than ten years. We love what we do!",
)


def test_c4_cleans_lines_and_rewrites_text():
    doc = Doc(text=C4_PAGE)
    assert C4QualityFilter().filter(doc) is True
    assert doc.text == lines_of(
        "Welcome to our bakery in the old harbour district of the town.",
        "Our bread is baked every morning from local flour and spring water.",
        "We also sell cakes, tarts and cookies on weekends.",
        "Orders for weddings should reach us two weeks in advance.",
        "Our team has worked together for more than ten years. We love what we do!",
    )


def test_c4_without_line_cleaning_decides_but_keeps_text():
    doc = Doc(text=C4_PAGE)
    assert C4QualityFilter(C4Config(clean_lines=False)).filter(doc) is True
    assert doc.text == C4_PAGE


def test_c4_line_rules_are_configurable():
    cfg = C4Config(drop_javascript_lines=False, drop_policy_lines=False, min_words_per_line=2)
    doc = Doc(text=C4_PAGE)
    assert C4QualityFilter(cfg).filter(doc) is True
    assert "Please enable JavaScript" in doc.text and "privacy policy" in doc.text
    assert "Thank you!" in doc.text and "Home | Menu" not in doc.text
    doc = Doc(text=C4_PAGE)
    assert C4QualityFilter(C4Config(require_terminal_punctuation=False)).filter(doc) is True
    assert "Home | Menu | Contact" in doc.text


def test_c4_too_few_sentences():
    text = lines_of(*ENGLISH.splitlines()[:3])
    assert verdict(C4QualityFilter(), text) == (False, "c4_too_few_sentences")
    assert verdict(C4QualityFilter(C4Config(min_sentences=3)), text) is True
    no_punctuation = lines_of(*(line.rstrip(".") for line in ENGLISH.splitlines()))
    assert verdict(C4QualityFilter(), no_punctuation) == (False, "c4_too_few_sentences")


def test_c4_no_lines_left():
    flt = C4QualityFilter(C4Config(min_sentences=0))
    assert verdict(flt, "Menu\nHome") == (False, "c4_no_lines_left")
    assert verdict(C4QualityFilter(C4Config(min_sentences=0, clean_lines=False)), "Menu\nHome") is True


def test_c4_lorem_ipsum_and_curly_bracket_drop_the_page():
    lorem = ENGLISH + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    assert verdict(C4QualityFilter(), lorem) == (False, "c4_lorem_ipsum")
    assert verdict(C4QualityFilter(C4Config(drop_lorem_ipsum_docs=False)), lorem) is True
    code = ENGLISH + "\nThe function returns {value} when it is called twice."
    assert verdict(C4QualityFilter(), code) == (False, "c4_curly_bracket")
    assert verdict(C4QualityFilter(C4Config(drop_curly_bracket_docs=False)), code) is True
    # as in C4's code, only lines that survive the line rules are checked
    assert verdict(C4QualityFilter(), ENGLISH + "\nfunction f() { return 1 }") is True


def test_c4_long_words_and_ellipsis_lines_are_removed():
    doc = Doc(text=ENGLISH + "\nThis line has a " + "x" * 40 + " word.\nAnd so it goes on and on...")
    assert C4QualityFilter(C4Config(max_word_length=30)).filter(doc) is True
    assert doc.text == ENGLISH


def test_c4_sentence_count():
    assert count_sentences("He said “Stop.” Then he left! Did he? Yes... Version 3.14 is out.") == 5
    assert count_sentences("城市的清晨总是从公园开始的。老人们在湖边打太极拳，时间也慢了下来。") == 2
    assert count_sentences("「はい。」と言った。") == 2
    assert count_sentences("no end mark") == 1


def test_c4_accepts_other_scripts_and_closing_quotes():
    for text in (CHINESE, JAPANESE, RUSSIAN):
        assert verdict(C4QualityFilter(), text) is True
    quoted = lines_of(*(f"“{line}”" for line in ENGLISH.splitlines()))
    assert verdict(C4QualityFilter(), quoted) is True


# --- FineWeb ---------------------------------------------------------------------


def test_fineweb_keeps_prose():
    for text in (ENGLISH, CHINESE, JAPANESE, RUSSIAN):
        assert verdict(FineWebQualityFilter(), text) is True


def test_fineweb_line_punctuation():
    text = lines_of(*(line.rstrip(".") for line in ENGLISH.splitlines()))
    assert verdict(FineWebQualityFilter(), text) == (False, "fineweb_line_punct_ratio")
    assert verdict(FineWebQualityFilter(FineWebConfig(min_line_punct_ratio=0.1)), text + "\nEnd.") is True


def test_fineweb_short_lines():
    text = ENGLISH + "\n" + lines_of(*(f"Item {w}." for w in numbered_words(20)))
    assert verdict(FineWebQualityFilter(), text) == (False, "fineweb_short_line_ratio")
    assert verdict(FineWebQualityFilter(FineWebConfig(short_line_chars=8)), text) is True


def test_fineweb_duplicate_line_chars():
    text = ENGLISH + "\n" + ENGLISH.splitlines()[2]
    assert verdict(FineWebQualityFilter(), text) == (False, "fineweb_char_dup_ratio")
    assert verdict(FineWebQualityFilter(FineWebConfig(max_dup_line_char_ratio=0.2)), text) is True


def test_fineweb_newlines_per_word():
    text = lines_of(*(f"Supercalifragilistic{w} antidisestablishment{w}." for w in numbered_words(30)))
    assert verdict(FineWebQualityFilter(), text) == (False, "fineweb_list_ratio")
    assert verdict(FineWebQualityFilter(FineWebConfig(max_newlines_per_word=0.5)), text) is True


# --- URL -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url_filter() -> UrlFilter:
    return UrlFilter(UrlFilterConfig())


@pytest.mark.parametrize("url,expected", [
    ("https://pornhub.com/view", (False, "url_blocked_domain")),
    ("https://www.PORNHUB.com:443/view", (False, "url_blocked_domain")),
    ("pornhub.com/x", (False, "url_blocked_domain")),
    ("https://notpornhub.com/", True),
    ("https://example.org/free-porn-videos", (False, "url_banned_word")),
    ("https://example.org/sussex/essex-news", True),
    ("https://hot-girls.example.org/cam", (False, "url_soft_banned_words")),
    ("https://example.org/hot-cakes-and-girls-scouts", True),
    ("", True),
    ("not a url at all", True),
    ("http://[::1/broken", True),
])
def test_url_default_lists(url_filter, url, expected):
    assert url_filter.filter(Doc(text="", url=url)) == expected


def test_url_soft_banned_count_is_configurable():
    strict = UrlFilter(UrlFilterConfig(soft_banned_min_count=2))
    assert strict.filter(Doc(text="", url="https://example.org/hot-cakes-and-girls-scouts")) == (
        False, "url_soft_banned_words"
    )


def test_url_user_lists_from_files(tmp_path):
    domains = tmp_path / "domains.txt"
    domains.write_text("# comment\n\n0.0.0.0 Bad-Site.example\n*.spam.example\n")
    words = tmp_path / "words.txt.gz"
    words.write_bytes(gzip.compress(b"forbidden\n"))
    soft = tmp_path / "soft.txt"
    soft.write_text("alpha\nbeta\n")
    cfg = UrlFilterConfig(
        blocklist_paths=[str(domains)], banned_words_paths=[str(words)], soft_banned_words_paths=[str(soft)],
        use_default_lists=False, soft_banned_min_count=2,
    )
    flt = UrlFilter(cfg)

    def check(url: str):
        return flt.filter(Doc(text="", url=url))

    assert check("http://bad-site.example/") == (False, "url_blocked_domain")
    assert check("http://a.b.spam.example/") == (False, "url_blocked_domain")
    assert check("http://example.org/forbidden") == (False, "url_banned_word")
    assert check("http://example.org/alpha/beta") == (False, "url_soft_banned_words")
    assert check("https://pornhub.com/") is True  # default lists off


def test_url_missing_list_names_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FilterListError, match=re.escape(str(missing))):
        UrlFilter(UrlFilterConfig(blocklist_paths=[str(missing)]))
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(FilterListError, match=re.escape(str(bad))):
        UrlFilter(UrlFilterConfig(banned_words_paths=[str(bad)]))


def test_url_list_from_https(http_server):  # noqa: F811 (fixture)
    http_server.files["/lists/domains.txt"] = b"remote-bad.example\n"
    cfg = UrlFilterConfig(blocklist_paths=[http_server.url("/lists/domains.txt")])
    flt = UrlFilter(cfg, DownloadConfig(max_attempts=1, timeout_s=5))
    assert flt.filter(Doc(text="", url="https://www.remote-bad.example/a")) == (False, "url_blocked_domain")
    missing = http_server.url("/lists/missing.txt")
    with pytest.raises(FilterListError, match=re.escape(missing)):
        UrlFilter(UrlFilterConfig(blocklist_paths=[missing]), DownloadConfig(max_attempts=1, timeout_s=5))
