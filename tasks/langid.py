"""Offline language identification with py3langid (its model ships in the package)."""

from __future__ import annotations

from functools import lru_cache

LANGID_SAMPLE_CHARS = 1500  # a paragraph or two decides; longer samples add time, not accuracy


@lru_cache(maxsize=1)
def _identifier():
    """py3langid's identifier; its per-byte feature walk in C when tasks/_langid_walk is built."""
    import numpy as np
    from py3langid.langid import MODEL_FILE, RAW_FLOOR, LanguageIdentifier

    try:
        from tasks._langid_walk import visit_counts
    except ImportError:  # not built (make setup): py3langid's own Python loop, same results
        return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    class Identifier(LanguageIdentifier):
        """The same scores, faster: visit_counts (a Python loop over the text's bytes) runs in C,
        and the feature weights are kept as float32 (57 MB instead of 28), which the matrix
        product converted them to on every call (bit-equal scores, half the time)."""

        __slots__ = ("_walk_rowbase", "_walk_output", "_walk_ptc")

        def _raw_score(self, text):
            if not hasattr(self, "_walk_rowbase"):
                self._walk_rowbase = np.asarray(self._rowbase, dtype=np.int64)
                self._walk_output = np.asarray(self.tk_output, dtype=np.int32)
                self._walk_ptc = self.nb_ptc.astype(np.float32)
            visits = visit_counts(self.tk_nextmove, self._walk_rowbase, self._walk_output, text)
            if visits:
                return self._sparse_score(visits, self._walk_ptc)
            fill = 0.0 if self._norm_probs else RAW_FLOOR  # as py3langid's own _raw_score
            return np.full(len(self.nb_classes), fill, dtype=np.float32)

    return Identifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """(language code, probability in [0, 1]); ("und", 0.0) for text without letters.

    The code is ISO 639-1 where the language has one, else py3langid's own (yue, ary, ...):
    pretrain.languages.IDENTIFIED_CODES lists them all.
    """
    sample = text[:LANGID_SAMPLE_CHARS]
    if not any(ch.isalpha() for ch in sample):
        return "und", 0.0
    lang, score = _identifier().classify(sample)
    return lang, float(score)
