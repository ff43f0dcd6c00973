"""FineWeb's extra quality rules (Penedo et al. 2024, "The FineWeb Datasets:
Decanting the Web for the Finest Text Data at Scale", section 3.3.4).

Lines are the non-blank lines of the text, stripped of surrounding whitespace.
"""

from __future__ import annotations

from collections import Counter

from pretrain.config import FineWebConfig
from tasks.filters.base import Doc, DocFilter, Verdict
from tasks.filters.text import TERMINAL_PUNCTUATION, split_lines, tokenize


class FineWebQualityFilter(DocFilter):
    """Drop list-like and boilerplate-like pages. In order, a page is dropped when:

    * fewer than ``min_line_punct_ratio`` of its lines end in sentence-final
      punctuation ("fineweb_line_punct_ratio"; closing quotes do not count);
    * more than ``max_short_line_ratio`` of its lines have at most
      ``short_line_chars`` characters ("fineweb_short_line_ratio"; FineWeb's
      code counts a line of exactly that length as short);
    * repeated lines (all but the first copy) hold more than
      ``max_dup_line_char_ratio`` of the characters other than newlines
      ("fineweb_char_dup_ratio");
    * there are more than ``max_newlines_per_word`` newlines per token (words
      and punctuation, as FineWeb's word tokenizer counts them):
      "fineweb_list_ratio".

    A page with no non-blank line is dropped as "fineweb_empty".
    """

    name = "fineweb"

    def __init__(self, cfg: FineWebConfig | None = None):
        self.cfg = cfg or FineWebConfig()

    def filter(self, doc: Doc) -> Verdict:
        cfg, text = self.cfg, doc.text
        lines = split_lines(text)
        if not lines:
            return False, "fineweb_empty"
        n_lines = len(lines)

        ended = sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION))
        if ended / n_lines < cfg.min_line_punct_ratio:
            return False, "fineweb_line_punct_ratio"

        short = sum(1 for line in lines if len(line) <= cfg.short_line_chars)
        if short / n_lines > cfg.max_short_line_ratio:
            return False, "fineweb_short_line_ratio"

        counts = Counter(lines)
        dup_chars = sum(len(line) * (k - 1) for line, k in counts.items() if k > 1) if len(counts) < n_lines else 0
        newlines = text.count("\n")
        if dup_chars / max(len(text) - newlines, 1) > cfg.max_dup_line_char_ratio:
            return False, "fineweb_char_dup_ratio"

        if newlines / max(tokenize(text).n_tokens, 1) > cfg.max_newlines_per_word:
            return False, "fineweb_list_ratio"
        return True
