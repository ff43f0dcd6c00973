"""Train the perplexity model from reference text files: the reading half of ``train-perplexity``.

The model (``models.perplexity``) trains on documents; finding and reading the files
(``tasks.quality.corpus``) is work, so it is done here and the model code imports nothing
above it. Its code version, recorded in model.json, covers both.
"""

from __future__ import annotations

from pathlib import Path

from models.perplexity import train_on_documents
from pretrain.config import PerplexityConfig
from pretrain.outputs import local_inputs
from pretrain.provenance import code_version
from tasks.quality.corpus import corpus_files, iter_corpus


def train_perplexity_model(reference: list[str], output_dir: Path, cfg: PerplexityConfig, *,
                           corpus_id: str | None = None, kenlm_bin_dir: str | Path | None = None,
                           force: bool = False) -> Path:
    """Train sentencepiece + a KenLM n-gram on reference text; write ``output_dir``.

    ``reference``: paths, globs or folders of text/JSONL/Parquet (see tasks.quality.corpus).
    ``corpus_id``: how the caller names the corpus (recorded with the file list; the text
    actually used, a prefix when ``cfg.max_train_chars`` cuts it, is pinned by its sha256).
    ``kenlm_bin_dir``: folder holding lmplz and build_binary (default: see find_kenlm_tool).
    The folder appears complete or not at all, and never replaces one holding the reference
    text (``models.perplexity.train_on_documents``). Returns ``output_dir``.
    """
    files = corpus_files(reference)
    return train_on_documents(
        iter_corpus(reference), Path(output_dir), cfg, source=str(reference),
        corpus={"id": corpus_id, "files": [str(path) for path in files]},
        inputs=local_inputs(reference) + files, code=code_version(__name__),
        kenlm_bin_dir=kenlm_bin_dir, force=force)
