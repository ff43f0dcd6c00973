"""The end-to-end run with several source branches joined into one tokenize (issue 15, section 3).

The crawl (the local recipe's demo WARCs) plus three branches: a Wikipedia dump in the real export
format (built from a real book, tests/test_wikipedia.py), JSON lines of another real book, and a
synthetic branch that rephrases the filtered crawl with the tiny model `pretrain run` trains and
exports. Tokenize realizes a mixture by token share over the four sources; a rerun is all cache hits.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import shared_data

from flows.pretrain import pretrain_flow
from pretrain.config import PipelineConfig, load_recipe

SHARES = {"commoncrawl": 0.5, "wikipedia": 0.25, "books": 0.15, "synthetic": 0.1}
TOTAL_TOKENS = 20_000


def write_book_jsonl(path: Path, n: int = 20) -> list[str]:
    text = gzip.open(shared_data("reference", "en", "Great_Expectations_CharlesDickens.txt.gz"), "rt").read()
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) > 40][50:50 + n]
    with gzip.open(path, "wt") as handle:
        for i, paragraph in enumerate(paragraphs):
            handle.write(json.dumps({"doc": f"ge-{i}", "body": paragraph}) + "\n")
    return paragraphs


@pytest.fixture(scope="module")
def branches(tmp_path_factory):
    """(wikipedia dump, its expected texts, the JSONL file, the exported model, a templates folder)."""
    from test_wikipedia import FOOTER, HEADER, dump_pages
    from tiny_run import tiny_book_run

    from flows.train import export_model

    folder = tmp_path_factory.mktemp("branches")
    pages, expected = dump_pages(12)
    dump = folder / "demowiki-20260101-pages-articles.xml"
    dump.write_text(HEADER + "".join(pages) + FOOTER)
    jsonl = folder / "books.jsonl.gz"
    write_book_jsonl(jsonl)
    run_dir, _, _, _ = tiny_book_run(folder / "model")
    hf = export_model(run_dir, json.loads((run_dir / "summary.json").read_text()))
    templates = folder / "templates"
    templates.mkdir()
    (templates / "short.txt").write_text("Rewrite: {text}\nRewritten:\n")  # the tiny model has 64 tokens of context
    return dump, expected, jsonl, hf, templates


def recipe(root: Path, dump: Path, jsonl: Path, hf: Path, templates: Path) -> PipelineConfig:
    raw = load_recipe("local", [f"output_dir={root}", "ray.num_cpus=2", "until=tokenize"]).model_dump()
    raw["sources"] = {
        "wikipedia": {"ingest": {"inputs": [str(dump)]}},
        "books": {"ingest": {"inputs": [str(jsonl)], "source": "books", "text_field": "body", "id_field": "doc"}},
        "synthetic": {"synthesize": {"model": str(hf), "template": "short", "templates_dir": str(templates),
                                     "max_new_tokens": 16, "max_input_tokens": 32, "batch_size": 8},
                      "from_stage": "filter"},
    }
    raw["tokenize"]["mixture"] = {"shares": SHARES, "total_tokens": TOTAL_TOKENS}
    return PipelineConfig(**raw)


def train_tokens_per_source(tokens: Path) -> dict[str, int]:
    index = json.loads((tokens / "index.json").read_text())
    return {source: entry["tokens"] for source, entry in index["sources"].items()}


@pytest.mark.integration
def test_crawl_wikipedia_jsonl_and_synthetic_branches_meet_their_token_shares(services, tmp_path, branches):
    dump, expected, jsonl, hf, templates = branches
    root = tmp_path / "run"
    cfg = recipe(root, dump, jsonl, hf, templates)
    summary = pretrain_flow(config=cfg)
    stages = summary["stages"]
    assert list(stages) == ["ingest", "filter", "pii", "dedup", "quality", "sources", "decontaminate", "tokenize"]

    joined = stages["sources"]
    filtered = stages["filter"]["documents_kept"]
    assert joined["sources"] == {"books": 20, "commoncrawl": stages["quality"]["documents_kept"],
                                 "synthetic": filtered, "wikipedia": len(expected)}  # synthesize: N in, N out
    shards = sorted(path.name for path in (root / "sources").glob("*.parquet"))
    assert [name for name in shards if name.startswith("wikipedia-")] == ["wikipedia-demowiki-20260101-pages-articles.parquet"]
    assert sum(name.startswith("synthetic-") for name in shards) == len(list((root / "filter").glob("*.parquet")))

    wiki = pq.read_table(root / "sources" / "wikipedia-demowiki-20260101-pages-articles.parquet").to_pylist()
    assert {row["warc_record_id"]: row["text"] for row in wiki} == expected
    assert {row["source"] for row in wiki} == {"wikipedia"}
    synthetic = pq.read_table(root / "sources" / first_synthetic_shard(shards)).to_pylist()
    crawl_ids = {row["id"] for shard in (root / "filter").glob("*.parquet") for row in pq.read_table(shard).to_pylist()}
    assert synthetic and {row["parent_id"] for row in synthetic} <= crawl_ids
    assert {row["template"] for row in synthetic} == {"short"}

    index = json.loads((root / "tokens" / "index.json").read_text())
    mixture = index["mixture"]
    assert mixture["target"] == SHARES
    written = train_tokens_per_source(root / "tokens")
    total = sum(written.values())
    assert abs(total - TOTAL_TOKENS) <= len(SHARES)  # every target met up to a token of rounding
    for source, share in SHARES.items():
        assert abs(written[source] / total - share) <= 0.01, (source, written)
        assert mixture["realized"][source] == pytest.approx(written[source] / total, abs=1e-3)
    bins = sum(np.fromfile(path, dtype=index["dtype"]).size for path in (root / "tokens" / "train").glob("*.bin"))
    assert bins == index["tokens"]["train"] == total

    again = pretrain_flow(config=cfg)
    assert again["cache_hits"] == dict.fromkeys(stages, True)


def first_synthetic_shard(shards: list[str]) -> str:
    return next(name for name in shards if name.startswith("synthetic-"))
