"""End-to-end throughput: one WARC through our ingest -> filter -> dedup -> quality -> tokenize, and datatrove's.

The WARC is bench/ingest.py's (``build_warc``): the 237 real pages of
../shared/data/extraction-dev, each repeated ``--repeat`` times with distinct URLs and
record ids, so the copies are exact duplicates that dedup removes. This one process is
pinned to one core (``os.sched_setaffinity``; children such as lmplz and datatrove's
extraction sandbox inherit it), so every thread and subprocess shares that core and a
rate per core is documents / wall seconds. The stages alternate, ours then datatrove's,
so both see about the same noise; ``--rounds N`` runs it all N times and keeps each
stage's fastest round.

Ours: the functions the stages' Ray tasks run, called in-process on the folder the stage
before wrote (default configs of ``PipelineConfig``):

* ingest   -- ``tasks.ingest.ingest_warc`` (fastwarc, the ``fast`` extractor, py3langid, zstd Parquet);
* filter   -- ``tasks.filter_runner.filter_checked_shard`` (url, gopher_repetition, gopher_quality, c4,
              fineweb; dropped rows written for audit);
* dedup    -- ``tasks.dedup.phases``: hash, ``check_unique_ids``, bucket edges per (slot, partition),
              clusters, write (exact + URL + MinHash at the default bands x rows, candidate pairs verified
              at the default threshold; without Ray the clusters are one union-find);
* quality  -- ``tasks.quality.score``: score the shard (KenLM perplexity + classifier), cut-offs from the
              scores, apply;
* tokenize -- ``tasks.tokenize.tokenize_shard`` (byte-level BPE, packed .bin files).

The pii and decontaminate stages of `pretrain run` are not in it. One-off work is timed
apart and not in the rates: loading what a worker process loads once (the language-id model,
which both pipelines use, pandas, which pyarrow loads for the first Parquet either writes, datatrove's modules and spaCy word tokenizer), training the perplexity model (on ../shared/data/reference/en,
small settings as in bench/quality.py) and the classifier (those books against the ingested
pages, the recipe's default negatives, 1,000 documents a class), loading them (once per Ray
actor in the flow) and training the tokenizer (once per run, on a sample).

datatrove 0.10.1, driven in-process as LocalPipelineExecutor(tasks=1, workers=1) runs its steps:

* ingest   -- bench/ingest.py's ``run_datatrove``: WarcReader -> Trafilatura -> py3langid (offline,
              as ours) -> ParquetWriter;
* filter   -- ParquetReader -> GopherRepetition -> GopherQuality -> C4Quality -> FineWebQuality -> ParquetWriter;
* dedup    -- MinhashDedupSignature, MinhashDedupBuckets (one rank per bucket), MinhashDedupCluster,
              MinhashDedupFilter -> ParquetWriter (our default's word n-grams and bands x rows, xxhash;
              xxhash 4 refuses str, so the shingles are UTF-8 encoded for it as xxhash 3 did);
* tokenize -- ParquetReader -> DocumentTokenizer with our trained tokenizer.json (offline).

It has no quality-score stage, so its end-to-end figure covers four stages and ours five.
Each pipeline's stage reads what its own stage before wrote, so later stages see different
documents: datatrove's Gopher stop words are English only and drop most of the German pages,
which leaves its dedup and tokenize less to do; dedup drops the copies, so quality and tokenize
see 1 / repeat of the pages; the perplexity model is English, and pages in other languages get
only the classifier's score. A second figure, each page through every stage at that stage's
rate (1 / sum of 1 / rate), does not depend on those drops.

Rates: a stage's docs/s per core is the documents it reads over its wall seconds; end to
end is the WARC's HTML response records over the summed wall seconds of all stages. CPU-hours
per Common Crawl dump = 3e9 pages / end-to-end docs/s per core / 3600. Wall seconds include
the turns of other processes on the core and waits on the disk (our shard writers fsync); the
same figures per CPU-second (this process's and its children's CPU time) are printed beside them.

    .venv/bin/python bench/pipeline.py [--repeat 3] [--rounds 1] [--core N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "data"
PAGES_PER_DUMP = 3e9
CLASSIFIER_DOCUMENTS = 1000  # per class, for a short run (the recipe: 20,000); the scoring cost does not depend on it
STAGES = ("ingest", "filter", "dedup", "quality", "tokenize")


@dataclass
class Stage:
    docs_in: int
    docs_out: int
    seconds: float  # wall
    cpu_seconds: float  # this process's and its reaped children's
    extra: dict = field(default_factory=dict)

    def rate(self, cores: int) -> float:
        return self.docs_in / self.seconds / cores

    def cpu_rate(self) -> float:
        return self.docs_in / self.cpu_seconds


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children that ended (datatrove's extraction
    sandbox, lmplz); the ended ones are reaped first so that their time is counted."""
    multiprocessing.active_children()
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def parquet_rows(paths) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


# ---------------------------------------------------------------- ours


def ours_ingest(warc: Path, out: Path, n_pages: int) -> tuple[Stage, Path]:
    from ingest import run_ours

    with Clock() as clock:
        result = run_ours(warc, out)
    return Stage(n_pages, result["documents"], clock.wall, clock.cpu), out / "ours.parquet"


def ours_filter(shard: Path, out: Path) -> tuple[Stage, Path]:
    from pretrain.config import FilterConfig
    from tasks.filter_runner import filter_checked_shard

    with Clock() as clock:
        report = filter_checked_shard(shard, out / shard.name, FilterConfig(), out / "removed")
    return Stage(report["documents_in"], report["documents_kept"], clock.wall, clock.cpu,
                 {"dropped": report["dropped"]}), out / shard.name


def ours_dedup(shard: Path, out: Path) -> tuple[Stage, Path]:
    from pretrain.config import DedupConfig
    from tasks.dedup.ids import check_unique_ids
    from tasks.dedup.layout import Layout, key_slots
    from tasks.dedup.phases import bucket_edges, cluster_all, hash_checked_shard, write_shard

    config, names, folder = DedupConfig(), [shard.stem], str(out)
    with Clock() as clock:
        hash_checked_shard(str(shard), shard.stem, folder, config)
        check_unique_ids(Layout(out), names, [shard], config.hash_partitions)
        for slot_index, _ in enumerate(key_slots(config)):
            for part in range(config.hash_partitions):
                bucket_edges(names, slot_index, part, folder, config)
        cluster_all(names, [str(shard)], folder, config)
        report = write_shard(str(shard), shard.stem, folder)
    return Stage(report["documents"], report["kept"], clock.wall, clock.cpu, {"dropped": report["dropped"]}), \
        Layout(out).output_shard(shard.stem)


def train_quality_models(ingested: Path, out: Path, one_off: dict) -> dict:
    """The perplexity model and the classifier, trained as the quality stage does without model folders."""
    from pretrain.config import ClassifierConfig, PerplexityConfig
    from tasks.quality.classifier import train_classifier_from_corpora
    from tasks.quality.perplexity import train_perplexity_model

    reference = [str(DATA / "reference" / "en")]
    with Clock() as clock:
        train_perplexity_model(reference, out / "perplexity", PerplexityConfig(
            order=5, vocab_size=8000, max_train_chars=5_000_000, lmplz_memory="1G"))
    one_off["train_perplexity"] = clock.wall
    with Clock() as clock:
        train_classifier_from_corpora(reference, [str(ingested)], str(out / "classifier"), ClassifierConfig(),
                                      max_documents=CLASSIFIER_DOCUMENTS)
    one_off["train_classifier"] = clock.wall
    return {"perplexity_model": str(out / "perplexity"), "classifier_model": str(out / "classifier")}


def ours_quality(shard: Path, out: Path, models: dict, one_off: dict) -> tuple[Stage, Path]:
    from pretrain.config import QualityConfig
    from tasks.quality.score import Scorer, apply_scores, cutoffs_from_scores, sample_scores, score_held

    config = QualityConfig(**models)
    model_lang = json.loads((Path(models["perplexity_model"]) / "model.json").read_text()).get("lang")
    with Clock() as clock:
        scorer = Scorer(config)  # a Ray actor's start: the models, loaded once per worker
    one_off["load_models"] = clock.wall
    scores, kept = out / ".scores" / shard.name, out / "kept" / shard.name
    with Clock() as clock:
        score_held(scorer, shard, scores)
        cutoffs = cutoffs_from_scores(config, *sample_scores([scores], config.percentile_sample_rows))
        report = apply_scores(shard, scores, out / "scored" / shard.name, kept, cutoffs, model_lang)
    return Stage(report["documents_in"], report["documents_kept"], clock.wall, clock.cpu,
                 {"buckets": report["buckets"]}), kept


def ours_tokenize(shard: Path, out: Path, one_off: dict) -> tuple[Stage, Path]:
    from pretrain.config import TokenizeConfig
    from tasks.tokenize import TOKENIZER_FILE, build_tokenizer, tokenize_shard

    config = TokenizeConfig()
    with Clock() as clock:
        build_tokenizer([shard], config, out)
    one_off["train_tokenizer"] = clock.wall
    with Clock() as clock:
        report = tokenize_shard(shard, out / "train" / f"{shard.stem}.bin", out / "val" / f"{shard.stem}.bin",
                                out / TOKENIZER_FILE, config)
    tokens = sum(split["tokens"] for split in report["splits"].values())
    return Stage(report["documents"], report["documents"], clock.wall, clock.cpu, {"tokens": tokens}), \
        out / TOKENIZER_FILE


# ---------------------------------------------------------------- datatrove


def drive(steps: list, rank: int = 0, world_size: int = 1) -> None:
    """Chain datatrove steps and drain them, as its local executor does for one task."""
    docs = None
    for step in steps:
        docs = step.run(docs, rank=rank, world_size=world_size)
    for _ in docs or ():
        pass


def dt_ingest(warc: Path, out: Path, n_pages: int) -> tuple[Stage, Path]:
    from ingest import run_datatrove

    with Clock() as clock:
        result = run_datatrove(warc, out)
    return Stage(n_pages, result["documents"], clock.wall, clock.cpu), out / "datatrove"


def dt_filter(folder: Path, out: Path) -> tuple[Stage, Path]:
    from datatrove.pipeline.filters import (
        C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    with Clock() as clock:
        drive([ParquetReader(str(folder)), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
               FineWebQualityFilter(), ParquetWriter(str(out))])
    return Stage(parquet_rows(folder.rglob("*.parquet")), parquet_rows(out.rglob("*.parquet")), clock.wall,
                 clock.cpu), out


def hash_str_with_xxhash4() -> bool:
    """datatrove 0.10.1 hands xxhash a str, which xxhash 3 encoded as UTF-8 and xxhash 4 refuses:
    encode it as xxhash 3 did. True when that was needed."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    try:
        xxhash.xxh64_intdigest("probe")
        return False
    except TypeError:
        as_bytes = lambda data: data.encode("utf-8") if isinstance(data, str) else data  # noqa: E731
        dt_xxhash.xxhash32 = lambda data: xxhash.xxh32_intdigest(as_bytes(data))
        dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(as_bytes(data))
        return True


def dt_dedup(folder: Path, out: Path) -> tuple[Stage, Path]:
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    from pretrain.config import DedupConfig

    ours = DedupConfig()  # the same shingles and LSH bands x rows as our default
    config = MinhashConfig(n_grams=ours.ngram_words, num_buckets=ours.bands, hashes_per_bucket=ours.rows_per_band,
                           seed=ours.seed)
    shimmed = hash_str_with_xxhash4()
    sigs, buckets, removed, kept = (str(out / name) for name in ("sigs", "buckets", "remove", "kept"))
    with Clock() as clock:
        drive([ParquetReader(str(folder)), MinhashDedupSignature(output_folder=sigs, config=config)])
        for bucket in range(config.num_buckets):
            drive([MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)],
                  rank=bucket, world_size=config.num_buckets)
        MinhashDedupCluster(input_folder=buckets, output_folder=removed, config=config).run(world_size=1)
        drive([ParquetReader(str(folder)), MinhashDedupFilter(input_folder=removed), ParquetWriter(kept)])
    return Stage(parquet_rows(folder.rglob("*.parquet")), parquet_rows(Path(kept).rglob("*.parquet")),
                 clock.wall, clock.cpu, {"xxhash_str_encoded": shimmed}), Path(kept)


def dt_tokenize(folder: Path, out: Path, tokenizer: Path) -> Stage:
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    from pretrain.config import TokenizeConfig

    n_docs = parquet_rows(folder.rglob("*.parquet"))
    with Clock() as clock:
        drive([ParquetReader(str(folder)), DocumentTokenizer(str(out), tokenizer_name_or_path=str(tokenizer),
                                                             eos_token=TokenizeConfig().eos_token)])
    return Stage(n_docs, n_docs, clock.wall, clock.cpu)


# ---------------------------------------------------------------- the run


def warm_up(one_off: dict) -> None:
    """Load what a worker process loads once, before any stage's clock starts, for both pipelines: the
    language-id model (both use it), pandas (pyarrow loads it for the first Parquet either writes; before,
    our ingest paid it and datatrove's, run after it, did not), datatrove's steps and trafilatura, and
    datatrove's spaCy word tokenizer."""
    with Clock() as clock:
        import trafilatura  # noqa: F401  datatrove's extraction sandbox is forked from this process
        from datatrove.data import Document
        from datatrove.pipeline import extractors, readers, writers  # noqa: F401
        from datatrove.pipeline.filters import GopherQualityFilter

        import pyarrow as pa

        from tasks.langid import identify_language

        identify_language("Ein kurzer Satz. A short sentence.")
        pa.array(["x"])  # pyarrow imports pandas (0.3-0.4 s) on its first conversion of Python objects
        GopherQualityFilter().filter(Document(text="A probe. It loads the word tokenizer.", id="warm-up"))
    one_off["warm_up"] = clock.wall


def run_all(warc: Path, tmp: Path, n_pages: int, one_off: dict,
            models: dict | None = None) -> tuple[dict, dict, dict]:
    """One round of both pipelines, stage by stage in turn; (our stages, datatrove's, the quality models:
    trained in the first round, after ingest, on what it wrote)."""
    ours, theirs = {}, {}
    ours["ingest"], shard = ours_ingest(warc, tmp / "ours" / "ingest", n_pages)
    theirs["ingest"], dt_folder = dt_ingest(warc, tmp / "dt" / "ingest", n_pages)
    ours["filter"], shard_f = ours_filter(shard, tmp / "ours" / "filter")
    theirs["filter"], dt_folder = dt_filter(dt_folder, tmp / "dt" / "filter")
    ours["dedup"], shard_d = ours_dedup(shard_f, tmp / "ours" / "dedup")
    theirs["dedup"], dt_folder = dt_dedup(dt_folder, tmp / "dt" / "dedup")
    models = models or train_quality_models(shard.parent, tmp / "models", one_off)
    ours["quality"], shard_q = ours_quality(shard_d, tmp / "ours" / "quality", models, one_off)
    ours["tokenize"], tokenizer = ours_tokenize(shard_q, tmp / "ours" / "tokens", one_off)
    theirs["tokenize"] = dt_tokenize(dt_folder, tmp / "dt" / "tokens", tokenizer)
    return ours, theirs, models


def fastest(rounds: list[dict]) -> dict:
    """Per stage, the round with the fewest wall seconds: the one least disturbed by other processes."""
    return {name: min((stages[name] for stages in rounds), key=lambda st: st.seconds) for name in rounds[0]}


def end_to_end(n_pages: int, stages: dict, cores: int, names=STAGES) -> float:
    return n_pages / sum(stages[name].seconds for name in names if name in stages) / cores


def end_to_end_cpu(n_pages: int, stages: dict) -> float:
    return n_pages / sum(st.cpu_seconds for st in stages.values())


def without_drops(stages: dict, cores: int) -> float:
    """docs/s per core if every page went through every stage (no stage dropping anything): 1 / sum(1 / rate)."""
    return 1 / sum(1 / st.rate(cores) for st in stages.values())


def stage_entry(st: Stage, cores: int) -> dict:
    return {"docs_in": st.docs_in, "docs_out": st.docs_out, "seconds": round(st.seconds, 3),
            "cpu_seconds": round(st.cpu_seconds, 3), "docs_per_s_per_core": round(st.rate(cores), 1),
            "docs_per_cpu_s": round(st.cpu_rate(), 1), **st.extra}


def summary(n_pages: int, ours: dict, theirs: dict, cores: int) -> dict:
    stages = {name: stage_entry(st, cores) for name, st in ours.items()}
    for name, st in theirs.items():
        stages[name]["datatrove"] = stage_entry(st, cores)
    x, y = end_to_end(n_pages, ours, cores), end_to_end(n_pages, theirs, cores)
    return {"stages": stages, "end_to_end_docs_per_s_per_core": round(x, 2),
            "datatrove_docs_per_s_per_core": round(y, 2),
            "ratio_vs_datatrove": round(x / y, 2), "cpu_hours_per_dump": round(PAGES_PER_DUMP / x / 3600)}


def print_table(ours: dict, theirs: dict, cores: int) -> None:
    print(f"{'':<10}{'----------------- ours -----------------':>47}{'------------- datatrove -------------':>44}")
    print(f"{'stage':<10}{'in':>7}{'out':>7}{'wall s':>8}{'cpu s':>7}{'docs/s/core':>12}{'docs/cpu-s':>11}"
          f"{'in':>7}{'out':>7}{'wall s':>8}{'cpu s':>7}{'docs/s/core':>12}{'ratio':>7}")
    for name, st in ours.items():
        line = (f"{name:<10}{st.docs_in:>7}{st.docs_out:>7}{st.seconds:>8.2f}{st.cpu_seconds:>7.2f}"
                f"{st.rate(cores):>12.1f}{st.cpu_rate():>11.1f}")
        if name in theirs:
            dt = theirs[name]
            line += (f"{dt.docs_in:>7}{dt.docs_out:>7}{dt.seconds:>8.2f}{dt.cpu_seconds:>7.2f}"
                     f"{dt.rate(cores):>12.1f}{st.rate(cores) / dt.rate(cores):>6.1f}x")
        else:
            line += "   (no datatrove equivalent)"
        print(line)


def print_report(result: dict, n_pages: int, ours: dict, theirs: dict, one_off: dict, cores: int) -> None:
    print("one-off, not in the rates: " + ", ".join(f"{k} {v:.1f} s" for k, v in one_off.items()))
    print_table(ours, theirs, cores)
    x, y = result["end_to_end_docs_per_s_per_core"], result["datatrove_docs_per_s_per_core"]
    same = [name for name in STAGES if name in theirs]
    x_same = end_to_end(n_pages, ours, cores, same)
    print(f"end to end ({n_pages} WARC pages / summed wall seconds of the stages / {cores} core): ours {x:.1f} "
          f"docs/s/core ({len(ours)} stages), datatrove {y:.1f} ({len(theirs)} stages: {', '.join(same)}); "
          f"ratio {result['ratio_vs_datatrove']:.1f}x")
    print(f"  on the same four stages (ours without quality): {x_same:.1f} docs/s/core, {x_same / y:.1f}x")
    cx, cy = end_to_end_cpu(n_pages, ours), end_to_end_cpu(n_pages, theirs)
    print(f"  per CPU-second instead of wall second (what the others' load on the core does not change): ours "
          f"{cx:.1f}, datatrove {cy:.1f} docs/cpu-s, {cx / cy:.1f}x")
    flat_x, flat_y = without_drops(ours, cores), without_drops(theirs, cores)
    print(f"  if no stage dropped anything (each page through every stage at its rate): ours {flat_x:.1f}, "
          f"datatrove {flat_y:.1f} docs/s/core, {flat_x / flat_y:.1f}x")
    print(f"CPU-hours per Common Crawl dump ({PAGES_PER_DUMP:.0e} pages) at the end-to-end rate: ours "
          f"{result['cpu_hours_per_dump']:,.0f}, datatrove {PAGES_PER_DUMP / y / 3600:,.0f}; per CPU-second: ours "
          f"{PAGES_PER_DUMP / cx / 3600:,.0f}, datatrove {PAGES_PER_DUMP / cy / 3600:,.0f}; ours with no drops "
          f"{PAGES_PER_DUMP / flat_x / 3600:,.0f}")
    wall = sum(st.seconds for st in [*ours.values(), *theirs.values()])
    share = sum(st.cpu_seconds for st in [*ours.values(), *theirs.values()]) / wall
    print(f"the stages had {share:.0%} of the pinned core (CPU / wall seconds); the rest went to other processes")


def idlest_core(cores: list[int], seconds: float = 1.0) -> int:
    """The core with the most idle time over ``seconds`` (/proc/stat): the run meets less of the others' load."""
    def idle() -> dict[int, int]:
        lines = Path("/proc/stat").read_text().splitlines()
        fields = {int(line.split()[0][3:]): line.split()[1:]
                  for line in lines if line[:3] == "cpu" and line[3].isdigit()}
        return {core: int(values[3]) + int(values[4]) for core, values in fields.items()}  # idle + iowait

    before = idle()
    time.sleep(seconds)
    after = idle()
    return max(cores, key=lambda core: after.get(core, 0) - before.get(core, 0))


def pin(core: int | None) -> int:
    """Pin this process to one core (default: the idlest allowed one); the number of cores it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = idlest_core(allowed) if core is None else core
    if chosen not in allowed:
        raise SystemExit(f"--core {chosen} is not one of this process's cores {allowed}")
    os.sched_setaffinity(0, {chosen})
    return len(os.sched_getaffinity(0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="copies of each of the 237 pages (default 3)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run both pipelines this many times and keep each stage's fastest round (default 1)")
    parser.add_argument("--core", type=int, default=None,
                        help="the core to pin to (default: the idlest one over a second)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = parser.parse_args()
    if not (DATA / "extraction-dev").is_dir() or not (DATA / "reference" / "en").is_dir():
        print(f"skipped: real pages or reference books not found under {DATA} (see ../shared/data/README.md)")
        return 0
    if args.repeat < 1 or args.rounds < 1:
        raise SystemExit("--repeat and --rounds must be at least 1")
    try:
        import datatrove  # noqa: F401
    except ImportError as error:
        print(f"skipped: datatrove missing ({error}); install the `bench` extra")
        return 0
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as the tokenize Ray tasks run
    cores = pin(args.core)
    from ingest import build_warc

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp_path = Path(tmp)
        warc = tmp_path / "input" / "bench.warc.gz"
        n_pages = build_warc(warc, args.repeat)
        print(f"WARC: {n_pages} HTML response records (237 pages x {args.repeat} copies, distinct URLs), "
              f"{warc.stat().st_size / 1e6:.1f} MB; one process pinned to core {sorted(os.sched_getaffinity(0))} "
              f"({cores} core)" + (f"; per stage the fastest of {args.rounds} rounds" if args.rounds > 1 else ""))
        one_off, models, rounds = {}, None, []
        warm_up(one_off)
        for number in range(args.rounds):
            ours, theirs, models = run_all(warc, tmp_path / f"round{number}", n_pages, one_off, models)
            rounds.append((ours, theirs))
        ours, theirs = fastest([r[0] for r in rounds]), fastest([r[1] for r in rounds])
    result = summary(n_pages, ours, theirs, cores)
    print_report(result, n_pages, ours, theirs, one_off, cores)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
