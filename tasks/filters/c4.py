"""C4 rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", section 2.2), in the order of C4's reference
cleaning code: per-line rules first, document rules on the lines that survive.

This is the one filter that edits a document: with ``clean_lines`` on, a kept
document's ``text`` is replaced by its surviving lines (stripped, joined with
"\\n", Wikipedia citation marks such as "[1]" and "[edit]" removed). With
``clean_lines`` off the same rules decide, but ``text`` is left as it was.
"""

from __future__ import annotations

import re

from pretrain.config import C4Config
from tasks.filters.base import Doc, DocFilter, Verdict
from tasks.filters.text import TERMINAL_PUNCTUATION, count_words, has_unspaced_script

# C4's end marks (period, question and exclamation marks, closing quotes) plus
# the sentence-final marks of other scripts (。！？। ...), so that non-English
# text is judged by its own punctuation.
END_MARKS = tuple(dict.fromkeys(TERMINAL_PUNCTUATION + ('"', "'", "”", "’")))
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_POLICY_RE = re.compile("|".join(map(re.escape, POLICY_PHRASES)))
_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
# A sentence ends at terminal punctuation (maybe followed by closing quotes or
# brackets) before whitespace or the end of the line. C4 counted sentences with
# a sentence tokenizer; this is the cheap approximation ("Mr. Smith" counts two).
# Full-width marks (Chinese, Japanese) end a sentence with no space after them.
_FULL_WIDTH_ENDS = "。！？｡．"
_SENTENCE_END_RE = re.compile(
    f"[{re.escape(_FULL_WIDTH_ENDS)}]+[」』”’）)]*"
    f"|[{re.escape(''.join(sorted(set(TERMINAL_PUNCTUATION) - set(_FULL_WIDTH_ENDS))))}]+"
    r"[\"'”’)\]]*(?=\s|$)"
)


def count_sentences(line: str) -> int:
    """Sentence ends in a line (at least 1 for a non-empty line)."""
    return max(1, len(_SENTENCE_END_RE.findall(line)))


class C4QualityFilter(DocFilter):
    """C4's line cleaning and page rules.

    A line is removed when (in order) it has a word longer than
    ``max_word_length``; it does not end in terminal punctuation or ends in
    '...' (C4's code accepts . ! ? and ", datatrove adds '; we also accept
    the closing quotes ” and ’, which the C4 paper's "end quotation mark"
    covers, and the sentence-final marks of other scripts); it has fewer than
    ``min_words_per_line`` words (split on whitespace;
    for lines in scripts without spaces, words as ``tasks.filters.text``
    counts them); it mentions "javascript"; it mentions a cookie/terms/privacy
    policy phrase. A surviving line containing "lorem ipsum" or "{" drops the
    whole page ("c4_lorem_ipsum", "c4_curly_bracket"), as in C4's code, which
    checks these on kept lines only. Finally a page with fewer than
    ``min_sentences`` sentences in its surviving lines is dropped
    ("c4_too_few_sentences"); with ``clean_lines`` on, a page left with no
    line at all is dropped too ("c4_no_lines_left").
    """

    name = "c4"

    def __init__(self, cfg: C4Config | None = None):
        self.cfg = cfg or C4Config()

    def filter(self, doc: Doc) -> Verdict:
        cfg, text = self.cfg, doc.text
        lower = text.lower()
        look_lorem = cfg.drop_lorem_ipsum_docs and "lorem ipsum" in lower
        look_js = cfg.drop_javascript_lines and "javascript" in lower
        look_curly = cfg.drop_curly_bracket_docs and "{" in text
        look_policy = cfg.drop_policy_lines and _POLICY_RE.search(lower) is not None
        look_citations = "[" in text

        kept, n_sentences = [], 0
        for line in text.splitlines():
            line = line.strip()
            if not line or self._has_long_word(line):
                continue
            if look_citations:
                line = _CITATION_RE.sub("", line).strip()
            if cfg.require_terminal_punctuation and (not line.endswith(END_MARKS) or line.endswith("...")):
                continue
            if self._too_few_words(line):
                continue
            if look_lorem or look_js or look_policy:
                line_lower = line.lower()
                if look_lorem and "lorem ipsum" in line_lower:
                    return False, "c4_lorem_ipsum"
                if look_js and "javascript" in line_lower:
                    continue
            if look_curly and "{" in line:
                return False, "c4_curly_bracket"
            if look_policy and _POLICY_RE.search(line_lower):
                continue
            n_sentences += count_sentences(line)
            kept.append(line)

        if n_sentences < cfg.min_sentences:
            return False, "c4_too_few_sentences"
        if cfg.clean_lines:
            if not kept:
                return False, "c4_no_lines_left"
            doc.text = "\n".join(kept)
        return True

    def _has_long_word(self, line: str) -> bool:
        limit = self.cfg.max_word_length
        return len(line) > limit and max(map(len, line.split())) > limit

    def _too_few_words(self, line: str) -> bool:
        needed = self.cfg.min_words_per_line
        if len(line.split()) >= needed:
            return False
        return not has_unspaced_script(line) or count_words(line) < needed
