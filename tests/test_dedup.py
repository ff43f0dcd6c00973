"""Unit tests of the dedup steps: tiny strings and arrays, no Prefect, no Ray."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import deque

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from pretrain.config import DedupConfig
from tasks.dedup.apply import write_deduped_shard
from tasks.dedup.buckets import find_edges, star_edges
from tasks.dedup.clusters import build_clusters, choose_kept, connected_components, unique_pairs
from tasks.dedup.hashing import document_keys, hash_shard
from tasks.dedup.keys import exact_keys, normalize_url
from tasks.dedup.layout import EXACT, FUZZY, URL, Layout, key_slots
from tasks.dedup.minhash import (
    MERSENNE_61, SHINGLES_PER_CHUNK, band_keys, candidate_probability, estimated_jaccard, mulmod61, permutations,
    signatures,
)
from tasks.dedup.text import normalize_text, shingle_hashes, word_hashes, words

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = sorted({"".join(random.Random(i).choices(_LETTERS, k=3 + i % 6)) for i in range(5000)})  # letters only


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n_words))


def signature_of(texts: list[str], ngram_words: int = 5, num_perm: int = 112, seed: int = 1) -> np.ndarray:
    hashes, offsets = word_hashes(texts)
    shingles, shingle_offsets = shingle_hashes(hashes, offsets, ngram_words)
    return signatures(shingles, shingle_offsets, num_perm, seed)


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    tokens = text.split()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def true_jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb)


# --- normalization and hashing -------------------------------------------------------------

def test_words_lowercase_and_drop_punctuation_digits_and_symbols():
    assert words("Hello, World!  It's 2024 -- (really) €5") == ["hello", "world", "it", "s", "really"]
    assert normalize_text("  Déjà\tvu...\nÇA  ") == "déjà vu ça"


def test_cjk_and_thai_are_split_into_characters_but_hangul_is_not():
    assert words("我们在北京。") == ["我", "们", "在", "北", "京"]
    assert words("東京タワーへ行く") == list("東京タワーへ行く")
    assert words("한국어 문장") == ["한국어", "문장"]
    assert len(words("ภาษาไทย")) == len("ภาษาไทย")
    assert words("GPU是什么") == ["gpu", "是", "什", "么"]


def test_vectorized_word_hashes_agree_with_reference_tokenizer():
    texts = ["Hello, World!", "", "  ", "我们在北京。中文 and English", "ภาษาไทย 123", "emoji 😀 here",
             "Ünïcödé Straße"]
    hashes, offsets = word_hashes(texts)
    assert list(np.diff(offsets)) == [len(words(t)) for t in texts]
    # the same word hashes equally wherever it appears; different words differ
    by_word = {}
    for text, lo, hi in zip(texts, offsets[:-1], offsets[1:]):
        for word, h in zip(words(text), hashes[lo:hi]):
            assert by_word.setdefault(word, h) == h
    assert len(set(by_word.values())) == len(by_word)


def test_hashes_do_not_depend_on_the_process():
    code = "from tasks.dedup.text import word_hashes; print(list(word_hashes(['Mixed Case words, 中文'])[0]))"
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(list(word_hashes(["Mixed Case words, 中文"])[0]))


def test_shingles_short_and_empty_documents():
    hashes, offsets = word_hashes(["one two three four five six", "just three words", "", "!!! 42"])
    shingles, sh_offsets = shingle_hashes(hashes, offsets, 5)
    assert list(np.diff(sh_offsets)) == [2, 1, 1, 1]  # n-5+1, whole doc, empty, empty
    assert shingles[3] == shingles[4]  # two documents without words share the empty shingle
    assert len(set(shingles[:4].tolist())) == 4


def test_exact_keys_ignore_case_punctuation_and_whitespace():
    texts = ["The cat sat.", "the   CAT, sat!", "The cat sat on", "the sat cat"]
    keys = exact_keys(*word_hashes(texts))
    assert keys[0] == keys[1]
    assert len({keys[0], keys[2], keys[3]}) == 3


@pytest.mark.parametrize("a, b", [
    ("https://www.Example.com/a/b/?utm_source=x&z=1&a=2#top", "http://example.com/a/b?a=2&z=1"),
    ("http://example.com:80/", "https://example.com"),
    ("https://example.com./page?fbclid=abc", "https://EXAMPLE.com/page"),
])
def test_equivalent_urls_normalize_equally(a, b):
    assert normalize_url(a) == normalize_url(b)


def test_distinct_urls_stay_distinct():
    urls = ["https://example.com/A", "https://example.com/a", "https://example.com/a?page=2",
            "https://example.com:8080/a", "https://sub.example.com/a"]
    assert len({normalize_url(u) for u in urls}) == len(urls)
    assert normalize_url(None) is None and normalize_url("  ") is None
    assert normalize_url("http://[bad") == "http://[bad"


# --- MinHash ------------------------------------------------------------------------------------

def test_mulmod61_is_exact_where_uint64_would_overflow():
    rng = np.random.default_rng(0)
    edge = [0, 1, 2, MERSENNE_61 - 1, MERSENNE_61 - 2, (1 << 32) - 1, 1 << 32, (1 << 60) + 12345]
    a = np.array(edge + rng.integers(0, MERSENNE_61, 500, dtype=np.uint64).tolist(), dtype=np.uint64)
    x = np.array(edge[::-1] + rng.integers(0, MERSENNE_61, 500, dtype=np.uint64).tolist(), dtype=np.uint64)
    got = mulmod61(a[:, None], x[None, :])
    want = np.array([[int(ai) * int(xi) % MERSENNE_61 for xi in x[:40]] for ai in a[:40]], dtype=np.uint64)
    assert np.array_equal(got[:40, :40], want)
    assert all(int(got[i, i]) == int(a[i]) * int(x[i]) % MERSENNE_61 for i in range(a.size))


def test_signature_is_the_minimum_of_the_universal_hashes():
    text = random_text(random.Random(1), 30)
    hashes, offsets = word_hashes([text])
    shingles, sh_offsets = shingle_hashes(hashes, offsets, 5)
    a, b = permutations(16, 7)
    want = [min((int(a[k]) * (int(s) % MERSENNE_61) + int(b[k])) % MERSENNE_61 for s in shingles.tolist())
            for k in range(16)]
    assert signatures(shingles, sh_offsets, 16, 7)[0].tolist() == want


def test_identical_texts_have_identical_signatures_whatever_the_batch():
    rng = random.Random(2)
    long_doc = random_text(rng, 3 * SHINGLES_PER_CHUNK + 17)  # spans several work chunks
    alone = signature_of([long_doc])
    batch = signature_of([random_text(rng, 50), long_doc, "", long_doc.upper()])
    assert np.array_equal(alone[0], batch[1]) and np.array_equal(alone[0], batch[3])
    assert batch.max() < MERSENNE_61
    assert not np.array_equal(batch[0], batch[1])


@pytest.mark.parametrize("edit_fraction", [0.02, 0.05, 0.1, 0.2])
def test_estimated_jaccard_is_close_to_true_jaccard(edit_fraction):
    errors, truths = [], []
    for seed in range(25):
        rng = random.Random(seed)
        original = random_text(rng, 600).split()
        copy = [rng.choice(VOCAB) if rng.random() < edit_fraction else w for w in original]
        a, b = " ".join(original), " ".join(copy)
        sig = signature_of([a, b], seed=seed + 1)
        truths.append(true_jaccard(a, b))
        errors.append(estimated_jaccard(sig[0], sig[1]) - truths[-1])
    errors = np.array(errors)
    similarity = float(np.mean(truths))
    assert abs(errors.mean()) < 0.02  # unbiased
    # binomial spread of 112 independent hashes: about 0.035-0.047 here
    assert np.sqrt(np.mean(errors**2)) < 1.25 * np.sqrt(similarity * (1 - similarity) / 112)
    assert np.mean(np.abs(errors) < 0.1) >= 0.9 and np.abs(errors).max() < 0.16


def shingle_pair(rng: np.random.Generator, similarity: float, union: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Two shingle sets with exactly this Jaccard similarity."""
    values = rng.integers(0, 2**63, size=union, dtype=np.uint64)
    shared = round(similarity * union)
    only = (union - shared) // 2
    return values[: shared + only], np.concatenate((values[:shared], values[shared + only : shared + 2 * only]))


@pytest.mark.parametrize("seed", range(6))
def test_lsh_bands_catch_near_duplicates_and_not_dissimilar_pairs(seed):
    config = DedupConfig(bands=14, rows_per_band=8)  # FineWeb's setting
    rng = np.random.default_rng(seed)
    for similarity, should_collide in ((0.9, True), (0.2, False)):
        a, b = shingle_pair(rng, similarity)
        sig = signatures(np.concatenate((a, b)), np.array([0, a.size, a.size + b.size]), 112, seed)
        keys = band_keys(sig, config.bands, config.rows_per_band)
        assert bool((keys[0] == keys[1]).any()) == should_collide, similarity


def test_candidate_probability_matches_fineweb_numbers():
    assert candidate_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)
    assert candidate_probability(0.2, 14, 8) < 1e-4
    assert candidate_probability(1.0, 14, 8) == 1.0


def test_cjk_near_duplicates_are_similar():
    base = "今天天气很好我们一起去公园散步然后在湖边吃午饭下午回家休息晚上看电影" * 3
    edited = base.replace("公园", "公圆", 1)
    unrelated = "机器学习是人工智能的一个分支研究计算机怎样模拟人类的学习行为以获取新的知识" * 3
    sig = signature_of([base, edited, unrelated])
    assert estimated_jaccard(sig[0], sig[1]) > 0.7
    assert estimated_jaccard(sig[0], sig[2]) < 0.1


def test_empty_and_wordless_documents_do_not_crash():
    keys = document_keys(["", "   ", "!!! 123", "real words here"], [None, "", "https://a.org", None],
                         DedupConfig(threshold=0.5))
    assert keys["words"].tolist() == [0, 0, 0, 3]
    assert keys["exact"][0] == keys["exact"][1] == keys["exact"][2] != keys["exact"][3]
    assert keys["url_present"].tolist() == [False, False, True, False]
    assert keys["bands"].shape == (4, 28) and keys["sigs"].shape == (4, 112)  # the default: 28 bands x 4 rows
    empty = document_keys([], [], DedupConfig())
    assert empty["bands"].shape == (0, 28)


# --- grouping and clustering -------------------------------------------------------------------------

def test_star_edges_link_each_member_to_the_smallest():
    keys = np.array([5, 9, 5, 5, 7, 9], dtype=np.uint64)
    refs = np.array([30, 11, 20, 40, 50, 10], dtype=np.uint64)
    a, b = star_edges(keys, refs)
    assert sorted(zip(a.tolist(), b.tolist())) == [(11, 10), (30, 20), (40, 20)]


def components_by_bfs(edges: list[tuple[int, int]]) -> set[frozenset]:
    graph: dict[int, set] = {}
    for x, y in edges:
        graph.setdefault(x, set()).add(y)
        graph.setdefault(y, set()).add(x)
    seen, out = set(), set()
    for start in graph:
        if start in seen:
            continue
        queue, comp = deque([start]), set()
        while queue:
            node = queue.popleft()
            if node not in comp:
                comp.add(node)
                queue.extend(graph[node] - comp)
        seen |= comp
        out.add(frozenset(comp))
    return out


def test_union_find_chain_and_separate_components():
    a = np.array([1, 2, 3, 4, 10, 12], dtype=np.uint64)
    b = np.array([2, 3, 4, 5, 11, 11], dtype=np.uint64)
    nodes, root = connected_components(a[::-1], b[::-1])
    assert nodes.tolist() == [1, 2, 3, 4, 5, 10, 11, 12]
    assert nodes[root].tolist() == [1, 1, 1, 1, 1, 10, 10, 10]  # root: the smallest member


@pytest.mark.parametrize("seed", range(5))
def test_union_find_matches_breadth_first_search(seed):
    rng = random.Random(seed)
    edges = [(rng.randrange(300), rng.randrange(300)) for _ in range(250)]
    a, b = (np.array(side, dtype=np.uint64) for side in zip(*edges))
    nodes, root = connected_components(a, b)
    found: dict[int, set] = {}
    for node, r in zip(nodes.tolist(), root.tolist()):
        found.setdefault(r, set()).add(node)
    assert {frozenset(c) for c in found.values()} == components_by_bfs(edges)


def test_keep_rule_prefers_most_words_then_earliest():
    root = np.array([0, 0, 0, 3, 3, 5, 5])
    n_words = np.array([100, 250, 250, 80, 80, 10, 9])
    refs = np.array([1, 7, 4, 2, 9, 3, 8], dtype=np.uint64)
    assert choose_kept(root, n_words, refs).tolist() == [False, False, True, True, False, True, False]


def test_pairs_found_by_several_slots_keep_the_strongest_kind():
    a = np.array([5, 2, 2, 7], dtype=np.uint64)
    b = np.array([2, 5, 5, 8], dtype=np.uint64)
    kind = np.array([FUZZY, EXACT, URL, FUZZY], dtype=np.uint8)
    low, high, kinds = unique_pairs(a, b, kind)
    assert list(zip(low.tolist(), high.tolist(), kinds.tolist())) == [(2, 5, EXACT), (7, 8, FUZZY)]


# --- the four stages as plain functions ---------------------------------------------------------------

def run_stages(inputs, out, config):
    layout, names = Layout(out), [p.stem for p in inputs]
    for path in inputs:
        hash_shard(path, path.stem, layout, config)
    for slot_index, slot in enumerate(key_slots(config)):
        for part in range(config.hash_partitions):
            find_edges(layout, names, slot_index, slot, part, config)
    summary = build_clusters(layout, names, inputs, config)
    reports = [write_deduped_shard(p, layout.cluster_table(p.stem), layout.output_shard(p.stem)) for p in inputs]
    return summary, reports


def test_stages_drop_exact_url_and_fuzzy_duplicates_deterministically(tmp_path):
    rng = random.Random(5)
    base = [random_text(rng, 300) for _ in range(6)]
    fuzzy = base[2].split()
    fuzzy[100] = "changed"
    docs = [
        {"id": "a0", "text": base[0], "url": "https://a.org/0", "extra": 1},
        {"id": "a1", "text": base[1], "url": "https://a.org/1", "extra": 2},
        {"id": "b0", "text": base[0].upper() + "!", "url": "https://b.org/0", "extra": 3},  # exact (normalized)
        {"id": "b1", "text": base[3], "url": "http://www.a.org/1/", "extra": 4},  # same page as a1
        {"id": "b2", "text": " ".join(fuzzy), "url": None, "extra": 5},  # near-duplicate of c0
        {"id": "c0", "text": base[2], "url": "https://c.org/2", "extra": 6},
        {"id": "c1", "text": base[4], "url": "https://c.org/4", "extra": 7},
    ]
    inputs = []
    for name, rows in (("s0", docs[:2]), ("s1", docs[2:5]), ("s2", docs[5:])):
        path = tmp_path / "in" / f"{name}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
        inputs.append(path)
    config = DedupConfig(hash_partitions=3, threshold=0.5)

    summary, _ = run_stages(inputs, tmp_path / "out", config)
    assert summary["dropped"] == {"exact_duplicate": 1, "url_duplicate": 1, "fuzzy_duplicate": 1}
    assert summary["clusters"] == 3
    kept = pa.concat_tables(pq.read_table(tmp_path / "out" / f"{n}.parquet") for n in ("s0", "s1", "s2"))
    assert kept.column_names == ["id", "text", "url", "extra", "dup_cluster"]
    clusters = dict(zip(kept.column("id").to_pylist(), kept.column("dup_cluster").to_pylist()))
    # equal word counts everywhere, so the earliest member (shard name, then row) is kept: b2 over c0
    assert clusters == {"a0": "a0", "a1": "a1", "b2": "b2", "c1": None}
    table = pq.read_table(tmp_path / "out" / "dedup" / "clusters" / "s1.parquet").to_pylist()
    assert {(r["id"], r["kept"], r["reason"]) for r in table} == {
        ("b0", False, "exact"), ("b1", False, "url"), ("b2", True, "fuzzy")}

    first = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.parquet")}
    run_stages(inputs, tmp_path / "out", config)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.parquet")} == first


def test_a_shard_without_text_is_bad_input(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["no text column"]}), path)
    with pytest.raises(ValueError, match="`id` and `text`"):
        hash_shard(path, "bad", Layout(tmp_path / "out"), DedupConfig())
