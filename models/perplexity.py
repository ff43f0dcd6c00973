"""CCNet-style perplexity model: normalization, sentencepiece pieces, a KenLM n-gram.

Follows the published CCNet recipe (Wenzek et al. 2020): text is normalized
(lowercase, no accents, digits as 0, unified punctuation), cut into pieces by a
sentencepiece model, and scored line by line with a KenLM n-gram model trained on
reference text. A document's perplexity is ``10 ** (-sum_log10 / n_tokens)`` over
all its lines, where every line also counts its end-of-sentence token, as KenLM
does. Documents are then put in head / middle / tail buckets by perplexity
percentiles (30 and 60 in CCNet) or by fixed cut-offs (CCNet English: 340, 520).

A document without any letter after normalization has no score: ``perplexity``
returns None and ``bucket`` gives it ``"none"``.

Plain Python: no Prefect, no Ray. ``load_cached`` keeps one model per process so
a Ray worker loads it once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import unicodedata
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from pretrain.config import PerplexityConfig
from pretrain.outputs import check_replaceable

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SP_MODEL = "sp.model"
LM_BINARY = "lm.binary"
MODEL_JSON = "model.json"
KENLM_BIN_ENV = "KENLM_BIN_DIR"
KENLM_FIX = "run `make setup` (or `bash infra/build_kenlm.sh .venv`)"
TRAIN_HINT = "train one with `pretrain quality train-perplexity` (models.perplexity.train_perplexity_model)"
BUCKETS = ("head", "middle", "tail", "none")

LOADS: Counter[str] = Counter()
"""Model loads per resolved model folder in this process (``load_cached`` loads once)."""


class PerplexityModelError(ValueError):
    """A model folder that exists but cannot be used (corrupt, wrong format)."""


class PerplexityTrainingError(ValueError):
    """The reference corpus cannot give a model (no text, sentencepiece refused it)."""


class KenLMToolsMissing(FileNotFoundError):
    """KenLM's lmplz or build_binary is not installed."""


class KenLMError(RuntimeError):
    """lmplz or build_binary failed; the message carries the end of its stderr."""


# --------------------------------------------------------------------------- normalization

# Unicode punctuation variants and their ASCII forms (CCNet unifies the same kinds).
_PUNCT = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4\u2039\u203a", "'"),   # single quotes, prime, acute
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),          # double quotes, guillemets
    **dict.fromkeys("\u300c\u300d\u300e\u300f\u300a\u300b", '"'),                # CJK quotes and titles
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),          # hyphens, dashes, minus
    "\u2026": "...", "\u3002": ".", "\u3001": ",", "\u3010": "[", "\u3011": "]",
}
_KEEP_CONTROLS = "\n\r\t\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"   # whitespace and line breaks, handled later


def _fold_char(char: str) -> str:
    """One character after accent removal: its unified form, '' to drop it, or itself."""
    if char in _PUNCT:
        return _PUNCT[char]
    if "\uff01" <= char <= "\uff5e":            # fullwidth ASCII forms: ！ -> !, （ -> (
        char = chr(ord(char) - 0xFEE0)
    if char.isdecimal():                         # any decimal digit, of any script
        return "0"
    category = unicodedata.category(char)
    if category == "Mn":                         # combining mark left by NFD: an accent
        return ""
    if category in ("Cc", "Cf") and char not in _KEEP_CONTROLS:
        return ""                                # non-printing: controls, zero-width, soft hyphen
    if category.startswith("P") and not char.isascii():
        return ""                                # other non-ASCII punctuation: bullets, ¿, ¡
    return char


class _FoldTable(dict):
    """``str.translate`` table that computes and remembers each character's fold."""

    def __missing__(self, code: int) -> str:
        self[code] = folded = _fold_char(chr(code))
        return folded


_FOLD = _FoldTable()


def normalize(text: str) -> str:
    """CCNet-style normalization; lines are kept apart by ``\\n``.

    1. lowercase;
    2. Unicode NFD, then drop combining marks: accents go (``é`` -> ``e``);
    3. every decimal digit becomes ``0`` (``2024`` -> ``0000``);
    4. punctuation variants become ASCII (curly quotes, guillemets, dashes, ``…``,
       fullwidth and CJK forms); other non-ASCII punctuation and non-printing
       characters (controls, zero-width, soft hyphens) are removed;
    5. whitespace runs inside a line become one space, lines are stripped and
       empty lines dropped.

    Idempotent: ``normalize(normalize(t)) == normalize(t)``.
    """
    folded = unicodedata.normalize("NFD", text.lower()).translate(_FOLD)
    lines = (" ".join(line.split()) for line in folded.splitlines())
    return "\n".join(line for line in lines if line)


def has_letters(text: str) -> bool:
    return any(char.isalpha() for char in text)


# --------------------------------------------------------------------------- KenLM tools

def find_kenlm_tool(name: str, bin_dir: str | Path | None = None) -> Path:
    """``lmplz`` or ``build_binary``: in ``bin_dir`` (or $KENLM_BIN_DIR) when given,
    else next to the running Python (the virtualenv's bin/), else on PATH."""
    bin_dir = bin_dir or os.environ.get(KENLM_BIN_ENV)
    if bin_dir:
        candidates = [Path(bin_dir) / name]
    else:
        on_path = shutil.which(name)
        candidates = [Path(sys.executable).parent / name] + ([Path(on_path)] if on_path else [])
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    where = f"{bin_dir} (from the argument or ${KENLM_BIN_ENV})" if bin_dir else \
        f"{Path(sys.executable).parent} or PATH"
    raise KenLMToolsMissing(f"KenLM's `{name}` not found in {where}; {KENLM_FIX}")


def _run_tool(command: list[str]) -> None:
    result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", errors="replace").strip()[-2000:]
        raise KenLMError(f"{Path(command[0]).name} failed (exit {result.returncode}): "
                         f"{' '.join(command)}\n--- stderr tail ---\n{tail}")


# --------------------------------------------------------------------------- training

def _training_lines(documents: Iterable[str], max_chars: int) -> Iterator[str]:
    """Normalized paragraph lines with letters, until ``max_chars`` normalized chars."""
    total = 0
    for document in documents:
        for line in normalize(document).split("\n"):
            if not has_letters(line):
                continue
            yield line
            total += len(line)
            if total >= max_chars:
                return


def _write_training_text(documents: Iterable[str], source: str, path: Path, max_chars: int) -> dict:
    digest, chars, lines = hashlib.sha256(), 0, 0
    with open(path, "w", encoding="utf-8") as out:
        for line in _training_lines(documents, max_chars):
            out.write(line + "\n")
            digest.update(line.encode() + b"\n")
            chars, lines = chars + len(line), lines + 1
    if not lines:
        raise PerplexityTrainingError(f"reference corpus {source} has no text with letters")
    return {"training_chars": chars, "training_lines": lines, "training_text_sha256": digest.hexdigest()}


def _train_sentencepiece(text_path: Path, prefix: Path, vocab_size: int, stats: dict):
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=str(text_path), model_prefix=str(prefix), vocab_size=vocab_size,
            model_type="unigram", hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary
            input_sentence_size=5_000_000, shuffle_input_sentence=True, max_sentence_length=1 << 16,
            num_threads=os.cpu_count() or 1, minloglevel=2,
        )
    except RuntimeError as error:
        raise PerplexityTrainingError(
            f"sentencepiece could not train vocab_size={vocab_size} on {stats['training_lines']} lines "
            f"({stats['training_chars']} chars): {error}; give more reference text or a smaller vocab_size"
        ) from None
    prefix.with_suffix(".vocab").unlink(missing_ok=True)
    processor = spm.SentencePieceProcessor(model_file=str(prefix.with_suffix(".model")))
    if processor.get_piece_size() < vocab_size:
        log.warning("reference corpus too small for vocab_size=%d: sentencepiece kept %d pieces",
                    vocab_size, processor.get_piece_size())
    return processor


def _write_pieces(processor, text_path: Path, pieces_path: Path, batch_lines: int = 10_000) -> int:
    tokens = 0
    with open(text_path, encoding="utf-8") as source, open(pieces_path, "w", encoding="utf-8") as out:
        while batch := [line.rstrip("\n") for _, line in zip(range(batch_lines), source)]:
            for pieces in processor.encode(batch, out_type=str):
                out.write(" ".join(pieces) + "\n")
                tokens += len(pieces) + 1               # + </s>, as KenLM counts
    return tokens


def _build_kenlm(pieces_path: Path, binary_path: Path, cfg: PerplexityConfig, bin_dir) -> None:
    lmplz, build_binary = find_kenlm_tool("lmplz", bin_dir), find_kenlm_tool("build_binary", bin_dir)
    arpa = pieces_path.with_suffix(".arpa")
    _run_tool([str(lmplz), "-o", str(cfg.order), "-S", cfg.lmplz_memory, "-T", str(pieces_path.parent) + "/",
               "--skip_symbols", "--text", str(pieces_path), "--arpa", str(arpa), "--discount_fallback"])
    _run_tool([str(build_binary), str(arpa), str(binary_path)])


def is_perplexity_model(folder: Path) -> bool:
    """True for a folder train_perplexity_model wrote (its model.json has the sentencepiece model type)."""
    try:
        return "sentencepiece_model_type" in json.loads((Path(folder) / MODEL_JSON).read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_output(output_dir: Path, inputs: Sequence[Path | str], force: bool = False) -> None:
    """Raise OutputRefused unless a new model may replace ``output_dir`` (``pretrain.outputs``): it must
    not hold one of ``inputs``, the reference text."""
    check_replaceable(Path(output_dir), "train-perplexity", is_perplexity_model, inputs, force, marker=MODEL_JSON)


def _publish(staging: Path, output_dir: Path) -> None:
    """Rename the finished staging folder to ``output_dir`` (replacing an older model)."""
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}")
        output_dir.rename(old)
        staging.rename(output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output_dir)


def _model_info(cfg: PerplexityConfig, stats: dict, processor, corpus: dict, code: str, staging: Path) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "lang": cfg.lang,
        "order": cfg.order,
        "vocab_size": processor.get_piece_size(),
        "requested_vocab_size": cfg.vocab_size,
        "sentencepiece_model_type": "unigram",
        **stats,
        "corpus": corpus,
        "config": cfg.model_dump(mode="json"),
        "code_version": code,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file_bytes": {name: (staging / name).stat().st_size for name in (SP_MODEL, LM_BINARY)},
    }


def train_on_documents(documents: Iterable[str], output_dir: Path, cfg: PerplexityConfig, *, source: str,
                       corpus: dict, inputs: Sequence[Path | str], code: str,
                       kenlm_bin_dir: str | Path | None = None, force: bool = False) -> Path:
    """Train sentencepiece + a KenLM n-gram on reference documents; write ``output_dir``.

    ``documents`` is read lazily, only until ``cfg.max_train_chars`` (the text actually used
    is pinned by its sha256). Reading files is the caller's work (``tasks.quality.perplexity``),
    which also names the corpus: ``source`` for messages, ``corpus`` (its id and files) and
    ``code`` (the code version) for model.json, ``inputs`` the files the folder must not hold.
    ``kenlm_bin_dir``: folder holding lmplz and build_binary (default: see find_kenlm_tool).
    The folder appears complete or not at all: it is built in a staging folder and renamed.
    It replaces only an earlier model or an empty folder (another with ``force``), never one
    holding the reference text. Returns ``output_dir`` holding sp.model, lm.binary and model.json.
    """
    output_dir = Path(output_dir)
    check_output(output_dir, inputs, force)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    build = staging / "build"
    build.mkdir(parents=True)
    started = time.monotonic()
    try:
        stats = _write_training_text(documents, source, build / "train.txt", cfg.max_train_chars)
        processor = _train_sentencepiece(build / "train.txt", staging / Path(SP_MODEL).stem, cfg.vocab_size, stats)
        stats["training_tokens"] = _write_pieces(processor, build / "train.txt", build / "pieces.txt")
        _build_kenlm(build / "pieces.txt", staging / LM_BINARY, cfg, kenlm_bin_dir)
        shutil.rmtree(build)
        info = _model_info(cfg, stats, processor, corpus, code, staging)
        (staging / MODEL_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        check_output(output_dir, inputs, force)  # again: the folder may have been filled meanwhile
        _publish(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("perplexity model %s: %d lines, %d chars, %d tokens, vocab %d, order %d, %.1f s",
             output_dir, stats["training_lines"], stats["training_chars"], stats["training_tokens"],
             info["vocab_size"], cfg.order, time.monotonic() - started)
    return output_dir


# --------------------------------------------------------------------------- scoring

def _read_info(model_dir: Path) -> dict:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no perplexity model folder at {model_dir}; {TRAIN_HINT}")
    missing = [name for name in (MODEL_JSON, SP_MODEL, LM_BINARY) if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"perplexity model {model_dir} lacks {', '.join(missing)}; {TRAIN_HINT}")
    try:
        info = json.loads((model_dir / MODEL_JSON).read_text())
        version, lang, order = info["format_version"], info["lang"], int(info["order"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
        raise PerplexityModelError(f"{model_dir / MODEL_JSON} is not a valid model description: {error!r}") from None
    if version != FORMAT_VERSION:
        raise PerplexityModelError(f"{model_dir} has format_version {version}; this code reads "
                                   f"{FORMAT_VERSION}; {TRAIN_HINT}")
    _check_sizes(model_dir, info)
    return info


def retrain_command(model_dir: Path, info: dict) -> str:
    """The train-perplexity command line that rebuilds ``model_dir`` from the corpus model.json names."""
    files = (info.get("corpus") or {}).get("files") or ["REFERENCE_TEXT"]
    shown = " ".join(files[:3]) + (f" ... ({len(files)} files)" if len(files) > 3 else "")
    return (f"pretrain quality train-perplexity --reference {shown} --output {model_dir} "
            f"--lang {info.get('lang', 'en')} --order {info.get('order', 5)}")


def _check_sizes(model_dir: Path, info: dict) -> None:
    """A truncated or replaced sp.model / lm.binary is named before KenLM reads it (model.json records sizes)."""
    for name, expected in (info.get("file_bytes") or {}).items():
        actual = (model_dir / name).stat().st_size
        if actual != expected:
            raise PerplexityModelError(
                f"{model_dir / name}: {actual:,} bytes, model.json records {expected:,} (the file is truncated or "
                f"was replaced); retrain with: {retrain_command(model_dir, info)}")


def check_model_folder(model_dir: Path | str) -> dict:
    """model.json of a usable model folder (files present, format and sizes right), else a clear error."""
    return _read_info(Path(model_dir).resolve())


class PerplexityModel:
    """A trained model folder, ready to score text; ``lang`` says which language it is for."""

    def __init__(self, model_dir: Path, info: dict, processor, lm) -> None:
        self.model_dir = model_dir
        self.info = info
        self.lang: str = info["lang"]
        self.order: int = int(info["order"])
        self._sp = processor
        self._lm = lm

    @classmethod
    def load(cls, model_dir: Path) -> PerplexityModel:
        import kenlm
        import sentencepiece as spm

        model_dir = Path(model_dir).resolve()
        info = _read_info(model_dir)
        try:
            processor = spm.SentencePieceProcessor(model_file=str(model_dir / SP_MODEL))
            lm = kenlm.Model(str(model_dir / LM_BINARY))
        except (OSError, RuntimeError) as error:
            raise PerplexityModelError(f"cannot load perplexity model {model_dir}: {error}; {TRAIN_HINT}") from None
        if lm.order != int(info["order"]):
            raise PerplexityModelError(f"{model_dir}: lm.binary has order {lm.order}, model.json says {info['order']}")
        LOADS[str(model_dir)] += 1
        return cls(model_dir, info, processor, lm)

    def sentence_log10(self, line: str) -> tuple[float, int]:
        """log10 probability of one *normalized* line and its token count (pieces + </s>)."""
        pieces = self._sp.encode(line, out_type=str)
        return self._lm.score(" ".join(pieces), bos=True, eos=True), len(pieces) + 1

    def _line_scores(self, normalized: str) -> list[tuple[float, int]]:
        return [self.sentence_log10(line) for line in normalized.split("\n") if line]

    def paragraph_perplexities(self, text: str) -> list[float]:
        """One perplexity per line of ``normalize(text)`` (empty lines are already gone)."""
        return [10 ** (-log10 / tokens) for log10, tokens in self._line_scores(normalize(text))]

    def perplexity(self, text: str) -> float | None:
        """CCNet document perplexity ``10 ** (-sum log10 / sum tokens)`` over all lines;
        None (no score) when the normalized text has no letter."""
        normalized = normalize(text)
        if not has_letters(normalized):
            return None
        scores = self._line_scores(normalized)
        return 10 ** (-sum(s for s, _ in scores) / sum(n for _, n in scores))


@functools.lru_cache(maxsize=4)
def _load_cached(model_dir: str, stamp: tuple[int, int] | None) -> PerplexityModel:
    return PerplexityModel.load(Path(model_dir))


def load_cached(model_dir: str | Path) -> PerplexityModel:
    """The process-wide model for ``model_dir``: loaded once, again only if retrained."""
    path = Path(model_dir).resolve()
    try:
        info = (path / MODEL_JSON).stat()
        stamp = (info.st_ino, info.st_mtime_ns)   # a retrained folder has a new model.json
    except OSError:
        stamp = None                       # load() raises the helpful error
    return _load_cached(str(path), stamp)


# --------------------------------------------------------------------------- buckets

def percentile_cutoffs(values: Iterable[float | None], head_pct: float, middle_pct: float) -> tuple[float, float]:
    """(head, middle) perplexity cut-offs: the ``head_pct`` and ``middle_pct`` percentiles
    of the scored values (None and NaN are left out)."""
    if not 0 < head_pct < middle_pct < 100:
        raise ValueError(f"need 0 < head_pct < middle_pct < 100, got {head_pct}, {middle_pct}")
    scored = np.array([v for v in values if v is not None], dtype=float)
    scored = scored[np.isfinite(scored)]
    if scored.size == 0:
        raise ValueError("no perplexity values to take percentiles of")
    head, middle = np.percentile(scored, [head_pct, middle_pct])
    return float(head), float(middle)


def resolve_cutoffs(cfg: PerplexityConfig, values: Iterable[float | None] = ()) -> tuple[float, float]:
    """``cfg.cutoffs`` when fixed, else the configured percentiles of ``values``."""
    if cfg.cutoffs is not None:
        return cfg.cutoffs
    return percentile_cutoffs(values, cfg.head_percentile, cfg.middle_percentile)


def bucket(perplexity: float | None, cutoffs: tuple[float, float]) -> str:
    """``head`` below the first cut-off, ``middle`` below the second, else ``tail``;
    ``none`` for a document without a score."""
    if perplexity is None or math.isnan(perplexity):
        return "none"
    head, middle = cutoffs
    if perplexity < head:
        return "head"
    return "middle" if perplexity < middle else "tail"
