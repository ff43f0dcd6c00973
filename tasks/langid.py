"""Offline language identification with py3langid (its model ships in the package)."""

from __future__ import annotations

from functools import lru_cache

LANGID_SAMPLE_CHARS = 1500  # a paragraph or two decides; longer samples add time, not accuracy


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


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
