"""Dataset-wide deduplication: exact, URL and fuzzy (MinHash LSH), in four stages.

Plain functions, no Prefect; ``flows/dedup.py`` runs each stage's entry in
``phases`` through the shard runner (cached, retried Prefect tasks that run Ray
tasks). Stages pass files, never data:

1. ``hashing.hash_shard`` (one task per shard): normalize text, compute the exact
   key, URL key and MinHash band keys of every document, write them bucketed by
   (slot, partition). A "slot" is one band, or the exact key, or the URL key.
   Then ``ids.check_unique_ids`` (in the flow) refuses ids that repeat.
2. ``buckets.find_edges`` (one task per (slot, partition)): read that section
   of every shard's key file, turn groups of equal keys into star edges,
   verify fuzzy edges against the threshold when one is set.
3. ``clusters.build_clusters`` (one task that runs rounds of ``cluster_partitions``
   Ray tasks, ``distributed``): connected components over all edges, keep one
   document per cluster, write a cluster table per shard.
4. ``apply.write_deduped_shard`` (one task per shard): write the kept rows plus
   ``dup_cluster``.

Memory (N documents in all; slots = bands + 2 with exact and URL dedup on;
P = hash_partitions; defaults 28 bands x 4 rows = 112 hashes, threshold 0.4, P = 16;
the figures below were measured with 14 bands, whose slots are 16 rather than 30).
Measured with tracemalloc on this machine; per-billion figures extrapolate.

* Stage 1 (per shard) grows with the shard, never the dataset: one text batch
  of at most 2 M characters (about 115 MB of numpy temporaries, measured) plus
  about 1.3 KB per document of the shard during the final sort (16 slots x
  key 8 B + row 4 B + sort temporaries; 3.1 KB with a threshold, which keeps
  the 112 x 8 B signatures): 130 MB for a 100k-document shard (310 MB with a
  threshold). Disk per billion documents: keys 192 GB (16 slots x 12 B), word
  counts 4 GB, signatures 896 GB (only with a threshold).
* Stage 2 (per slot and partition) holds one bucket: N / P key records of one
  slot at about 70 B each while sorting (measured 67 B): 4.4 GB per task for
  N = 1e9 and P = 16, 270 MB with P = 256. With a threshold, each candidate
  edge adds the two signatures it compares (1.8 KB). Output: one 16 B edge per
  document that shares the key with a smaller one (stars, not k^2 pairs).
* Stage 3 sees only documents that have duplicates. In one task (``cluster_partitions``
  1): edges are deduplicated slot by slot (17 B per distinct pair; stars give about
  one pair per duplicated document: 0.6 here), and union-find, keep rule and relation
  need about 100-150 B per clustered document in all (measured 107 B), plus the `id`
  column of one shard at a time: about 45 GB if 300 M of 1e9 documents have a
  duplicate. Over C = ``cluster_partitions`` parts (the default, 8): each task holds
  about 1/C of the edge files, of the distinct pairs or of the clustered documents
  (a star round's task also the largest cluster), plus one shard's ids at a time;
  the calling task holds counts only.
* Stage 4 (per shard) holds one row group of the shard plus its cluster table.
"""

from tasks.dedup.apply import write_deduped_shard
from tasks.dedup.buckets import find_edges
from tasks.dedup.clusters import build_clusters, choose_kept, connected_components
from tasks.dedup.hashing import document_keys, hash_shard
from tasks.dedup.keys import normalize_url
from tasks.dedup.layout import Layout, Slot, key_slots
from tasks.dedup.minhash import band_keys, candidate_probability, estimated_jaccard, signatures
from tasks.dedup.text import normalize_text, shingle_hashes, word_hashes, words

__all__ = [
    "Layout", "Slot", "band_keys", "build_clusters", "candidate_probability", "choose_kept",
    "connected_components", "document_keys", "estimated_jaccard", "find_edges", "hash_shard",
    "key_slots", "normalize_text", "normalize_url", "shingle_hashes", "signatures", "word_hashes", "words",
    "write_deduped_shard",
]
