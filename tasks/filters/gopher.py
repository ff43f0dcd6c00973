"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models:
Methods, Analysis & Insights from Training Gopher", appendix A.1.1 and table A1).

Thresholds are those of the paper, as datatrove ships them (see
``GopherQualityConfig`` / ``GopherRepetitionConfig``). Words and tokens are
those of ``tasks.filters.text.tokenize``: punctuation marks are tokens but not
words, and scripts without spaces count one word per character.
"""

from __future__ import annotations

from pretrain.config import GopherQualityConfig, GopherRepetitionConfig
from tasks.filters.base import Doc, DocFilter, Verdict
from tasks.filters.text import (
    NGrams,
    count_words_with_letter,
    duplicate_stats,
    split_lines,
    split_paragraphs,
    tokenize,
)

BULLETS = ("•", "‣", "◦", "▪", "●", "-", "*", "–")
ELLIPSES = ("...", "…")


class GopherQualityFilter(DocFilter):
    """Drop documents that do not look like prose (Gopher's quality filter).

    In order, a document is dropped when:

    * it has fewer than ``min_doc_words`` or more than ``max_doc_words`` words;
    * the mean word length is outside [min, max] characters. Only words of
      space-separated scripts enter the mean, and the rule is skipped when most
      words are characters of scripts without spaces (Chinese, Japanese, Thai:
      their "words" here are single characters);
    * '#' or ellipses ('...', '…') per token exceed ``max_symbol_word_ratio``;
    * more than ``max_bullet_lines_ratio`` of the non-blank lines start with a
      bullet, or more than ``max_ellipsis_lines_ratio`` end with an ellipsis;
    * fewer than ``min_alpha_words_ratio`` of the tokens hold a letter
      (punctuation tokens count as tokens without one, as in datatrove);
    * fewer than ``min_stop_words`` distinct stop words occur (matched
      case-sensitively, then lower-cased if that is not enough). The stop words
      are English, so this rule applies only to documents whose ``lang`` is in
      ``stop_words_languages`` or empty (unknown language).
    """

    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig | None = None):
        self.cfg = cfg or GopherQualityConfig()
        self.stop_words = frozenset(self.cfg.stop_words)
        self.stop_words_lower = frozenset(word.lower() for word in self.cfg.stop_words)
        self.stop_word_languages = frozenset(self.cfg.stop_words_languages)

    def filter(self, doc: Doc) -> Verdict:
        cfg, text = self.cfg, doc.text
        tokens = tokenize(text)
        words = tokens.words
        n_words, n_tokens = len(words), max(tokens.n_tokens, 1)
        if n_words < cfg.min_doc_words:
            return False, "gopher_short_doc"
        if n_words > cfg.max_doc_words:
            return False, "gopher_long_doc"

        n_spaced = n_words - tokens.n_unspaced
        if n_spaced > tokens.n_unspaced:  # mostly space-separated words
            mean_length = (sum(map(len, words)) - tokens.n_unspaced) / n_spaced
            if mean_length < cfg.min_avg_word_length:
                return False, "gopher_below_avg_word_length"
            if mean_length > cfg.max_avg_word_length:
                return False, "gopher_above_avg_word_length"

        if text.count("#") / n_tokens > cfg.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if (text.count("...") + text.count("…")) / n_tokens > cfg.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"

        lines = split_lines(text)
        n_lines = max(len(lines), 1)
        if sum(1 for line in lines if line.startswith(BULLETS)) / n_lines > cfg.max_bullet_lines_ratio:
            return False, "gopher_too_many_bullets"
        if sum(1 for line in lines if line.endswith(ELLIPSES)) / n_lines > cfg.max_ellipsis_lines_ratio:
            return False, "gopher_too_many_end_ellipsis"

        if count_words_with_letter(words) / n_tokens < cfg.min_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"

        if self._check_stop_words(doc.lang) and not self._enough_stop_words(words):
            return False, "gopher_too_few_stop_words"
        return True

    def _check_stop_words(self, lang: str) -> bool:
        return self.cfg.min_stop_words > 0 and (not lang or lang in self.stop_word_languages)

    def _enough_stop_words(self, words: tuple[str, ...]) -> bool:
        needed = self.cfg.min_stop_words
        if len(self.stop_words.intersection(words)) >= needed:
            return True
        return len(self.stop_words_lower.intersection(map(str.lower, words))) >= needed


class GopherRepetitionFilter(DocFilter):
    """Drop documents with repeated lines, paragraphs or n-grams (Gopher table A1).

    Character fractions are over ``len(doc.text)``. Lines are the non-blank
    lines, stripped; paragraphs are separated by blank lines. For duplicates
    only the repeats count (the first occurrence does not).

    * ``top_{n}_gram``: the most frequent word n-gram, times its count, covers
      more than ``max_top_ngram_char_frac[n]`` of the characters;
    * ``duplicated_{n}_n_grams``: the words covered by repeated n-grams hold
      more than ``max_dup_ngram_char_frac[n]`` of the characters.

    N-gram character lengths count word characters only (no separators). The
    duplicated fraction can only shrink as n grows, so larger n are skipped
    once the fraction for a smaller n is already within their threshold; the
    top n-gram check is skipped when a cheap upper bound is within it.
    """

    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig | None = None):
        self.cfg = cfg or GopherRepetitionConfig()
        self.top_ngrams = sorted(self.cfg.max_top_ngram_char_frac.items())
        self.dup_ngrams = sorted(self.cfg.max_dup_ngram_char_frac.items())

    def filter(self, doc: Doc) -> Verdict:
        cfg, text = self.cfg, doc.text
        if not text or text.isspace():
            return False, "gopher_repetition_empty"
        n_chars = len(text)

        paragraphs = split_paragraphs(text)
        dup_paras, dup_para_chars = duplicate_stats(paragraphs)
        if dup_paras / len(paragraphs) > cfg.max_dup_para_frac:
            return False, "dup_para_frac"
        if dup_para_chars / n_chars > cfg.max_dup_para_char_frac:
            return False, "dup_para_char_frac"

        lines = split_lines(text)
        dup_lines, dup_line_chars = duplicate_stats(lines)
        if dup_lines / len(lines) > cfg.max_dup_line_frac:
            return False, "dup_line_frac"
        if dup_line_chars / n_chars > cfg.max_dup_line_char_frac:
            return False, "dup_line_char_frac"

        ngrams = NGrams(tokenize(text).words)
        for n, max_frac in self.top_ngrams:
            if ngrams.top_chars_bound(n) / n_chars > max_frac and ngrams.top_chars(n) / n_chars > max_frac:
                return False, f"top_{n}_gram"
        bound = None  # fraction of a smaller n: an upper bound for larger n
        for n, max_frac in self.dup_ngrams:
            if bound is not None and bound <= max_frac:
                continue
            bound = ngrams.duplicate_chars(n) / n_chars
            if bound > max_frac:
                return False, f"duplicated_{n}_n_grams"
        return True
