"""Train the quality classifier from its two corpora: the reading half of ``train-classifier``.

Here, not in the flow, so that the training task's cache key covers what this imports
(the corpus reader and sampler as well as the classifier), as ``code_version`` computes it.
The classifier module is imported when training starts: scikit-learn takes seconds to import,
and the flows are imported by commands that never train one.
"""

from __future__ import annotations

from pathlib import Path

from pretrain.config import ClassifierConfig
from pretrain.outputs import local_inputs
from tasks.quality.corpus import corpus_files, corpus_identity, sample_corpus


def train_classifier_from_corpora(positive: list[str], negative: list[str], output_dir: str, config: ClassifierConfig,
                                  max_documents: int, force: bool = False) -> dict:
    """Sample up to ``max_documents`` of each corpus and train; the classifier's model.json."""
    from models.quality_classifier import check_output, train_classifier

    inputs = local_inputs(positive + negative) + corpus_files(positive + negative)
    check_output(Path(output_dir), inputs, force)  # before the corpora are read
    positives = sample_corpus(positive, max_documents, seed=config.seed)
    negatives = sample_corpus(negative, max_documents, seed=config.seed + 1)
    sources = {"positive": corpus_identity(positive), "negative": corpus_identity(negative)}
    return train_classifier(positives, negatives, Path(output_dir), config, sources=sources, inputs=inputs, force=force)
