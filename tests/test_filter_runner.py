"""The filter runner on tiny shards: counting, audit files, rewriting, bad schema."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pretrain.config import FilterConfig
from tasks.filter_runner import filter_shard

PROSE = ("The river below the old mill was measured by the volunteers of the town every spring. "
         "They wrote down the height of the water and the colour of the stones on the bank. "
         "Over the years the records showed that the floods came earlier than before. "
         "The council used the notes to plan a new path along the meadows and the woods. "
         "Children from the school now help with the work and learn how rivers change with the weather.")


def write_shard(path, texts, urls=None):
    urls = urls or [f"https://example.org/{i}" for i in range(len(texts))]
    table = pa.table({"id": [str(i) for i in range(len(texts))], "url": urls, "text": texts, "lang": ["en"] * len(texts)})
    pq.write_table(table, path)
    return path


def test_counts_audit_and_rewrite(tmp_path):
    texts = [PROSE + "\nvar x = javascript;", "buy cheap buy cheap " * 40, "", PROSE.replace(".", "") ]
    src = write_shard(tmp_path / "in.parquet", texts)
    report = filter_shard(src, tmp_path / "out" / "in.parquet", FilterConfig(), tmp_path / "out" / "removed")
    kept = pq.read_table(tmp_path / "out" / "in.parquet").to_pylist()
    assert report["documents_in"] == 4
    assert report["documents_kept"] == len(kept) == 1
    assert "javascript" not in kept[0]["text"]  # C4 line cleaning rewrote the kept text
    assert sum(report["dropped"].values()) == 3
    removed = {p.parent.name: pq.read_table(p).to_pylist() for p in (tmp_path / "out" / "removed").glob("*/*.parquet")}
    assert sum(len(rows) for rows in removed.values()) == 3
    assert all(row["reason"] in report["dropped"] for rows in removed.values() for row in rows)
    assert report["filters"]["url"]["in"] == 4


def test_shard_without_text_column_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["x"]}), path)
    with pytest.raises(ValueError, match="needs a `text` column"):
        filter_shard(path, tmp_path / "out.parquet", FilterConfig())
    assert not (tmp_path / "out.parquet").exists()
