"""Token shards of real text for the training tests and bench/train.py.

Books from ../shared/data/reference/en are cut into documents of about 2,000
characters, written as one Parquet shard, and run through the real tokenize stage
(``tasks.tokenize``: a small byte-level BPE is trained, then the train/val ``.bin``
files and index.json are written).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.config import TokenizeConfig

DOC_CHARS = 2000


def book_documents(book_paths: list[Path], doc_chars: int = DOC_CHARS) -> list[dict]:
    docs = []
    for path in book_paths:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        paragraphs, current = text.split("\n\n"), ""
        for paragraph in paragraphs:
            current += paragraph + "\n\n"
            if len(current) >= doc_chars:
                docs.append({"id": f"{path.stem}:{len(docs)}", "text": current.strip(), "source": "books"})
                current = ""
        if current.strip():
            docs.append({"id": f"{path.stem}:{len(docs)}", "text": current.strip(), "source": "books"})
    return docs


def build_token_shards(book_paths: list[Path], output_dir: Path, vocab_size: int = 1024,
                       val_fraction: float = 0.05) -> Path:
    """Tokenize the books into ``output_dir`` (index.json, tokenizer.json, train/, val/)."""
    from tasks import tokenize as tok

    work = output_dir.parent / f"{output_dir.name}-input"
    work.mkdir(parents=True, exist_ok=True)
    shard = work / "books.parquet"
    pq.write_table(pa.Table.from_pylist(book_documents(book_paths)), shard)
    config = TokenizeConfig(vocab_size=vocab_size, val_fraction=val_fraction, train_max_documents=2000, seed=0)
    meta = tok.build_tokenizer([shard], config, output_dir)
    for split in tok.SPLITS:
        (output_dir / split).mkdir(parents=True, exist_ok=True)
    report = tok.tokenize_shard(shard, output_dir / "train" / "books.bin", output_dir / "val" / "books.bin",
                                output_dir / tok.TOKENIZER_FILE, config)
    tok.write_index(output_dir, tok.build_index([report], meta, config))
    return output_dir
