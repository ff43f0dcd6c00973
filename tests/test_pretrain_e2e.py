"""The end-to-end flow on the local recipe: every stage's output, then caching across reruns.

One run of the whole pipeline (demo WARCs -> ingest -> filters -> dedup -> quality ->
tokenize -> train with DeepSpeed on CPU), a rerun that must come entirely from cache,
and a rerun with a changed tokenizer that must redo tokenize and train only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.pretrain import pretrain_flow
from flows.registry import names
from pretrain.config import load_recipe

pytestmark = pytest.mark.integration
STAGES = names()
FAST_TRAIN = ["train.max_steps=20", "train.eval_every_steps=10", "train.checkpoint_every_steps=20"]


def stage_records(root: Path) -> dict[str, dict]:
    return {stage: json.loads((root / folder / "stage.json").read_text())
            for stage, folder in (("ingest", "ingest"), ("filter", "filter"), ("dedup", "dedup"),
                                  ("quality", "quality"), ("tokenize", "tokens"), ("train", "train"))}


@pytest.fixture(scope="module")
def first_run(prefect_server, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain-e2e")
    config = load_recipe("local", [f"output_dir={root}", *FAST_TRAIN])
    summary = pretrain_flow(config=config)
    return root, config, summary


def test_every_stage_runs_and_the_funnel_narrows(first_run):
    root, _, summary = first_run
    assert json.loads((root / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    assert summary["cache_hits"] == dict.fromkeys(STAGES, False)
    docs = summary["documents"]
    assert docs["ingest"] > 150
    assert docs["ingest"] > docs["filter"] > docs["dedup"] >= docs["quality"] == docs["tokenize"] > 100
    stages = summary["stages"]
    assert stages["filter"]["dropped"]["gopher_too_few_stop_words"] >= 12  # keyword spam
    assert stages["dedup"]["dropped"]["exact_duplicate"] > 0
    tokens = summary["tokens"]
    assert tokens["tokenize"] == stages["tokenize"]["tokens"]["train"] + stages["tokenize"]["tokens"]["val"] > 30_000
    assert tokens["ingest"] > tokens["filter"] > tokens["dedup"] >= tokens["quality"]
    assert stages["tokenize"]["tokens"]["val"] > 0


def test_quality_models_trained_offline_drop_the_edited_copies(first_run):
    root, config, summary = first_run
    quality = summary["stages"]["quality"]
    for model in ("perplexity", "classifier"):
        assert (root / "quality" / "models" / model / "model.json").is_file()
    dropped = quality["dropped"].get("perplexity_too_high", 0)
    assert dropped >= 1
    rows = [row for path in sorted((root / "quality" / "scored").glob("*.parquet"))
            for row in pq.read_table(path, columns=["url", "perplexity"]).to_pylist()]
    too_high = [row["url"] for row in rows if row["perplexity"] is not None
                and row["perplexity"] > config.quality.max_perplexity]
    assert len(too_high) == dropped
    assert all("scraper-" in url for url in too_high), too_high  # near-duplicates with edited words
    assert (root / "report" / "score-histograms.png").stat().st_size > 5_000


def test_model_is_trained_exported_and_placed_on_the_scaling_law(first_run):
    root, config, summary = first_run
    model = summary["model"]
    assert model["steps"] == 20
    tokens_per_step = config.train.micro_batch_size * config.train.seq_len
    assert summary["tokens"]["train"] == 20 * tokens_per_step
    assert math.isfinite(model["val_loss"]) and 0 < model["val_loss"] < math.log(config.tokenize.vocab_size)
    hf = Path(model["hf_dir"])
    assert json.loads((hf / "config.json").read_text())["vocab_size"] == config.tokenize.vocab_size
    assert (hf / "model.safetensors").stat().st_size > 4 * model["params"] * 0.9  # fp32 weights
    scaling = model["scaling"]
    if scaling["available"]:
        assert scaling["tokens_per_param"] == pytest.approx(summary["tokens"]["train"] / model["params"])
        assert scaling["optimal_params_for_tokens"] < model["params"]  # far more parameters than the data feeds


def test_rerun_is_all_cache_hits_and_a_tokenizer_change_reruns_tokenize_and_train_only(first_run):
    root, config, first = first_run
    before = stage_records(root)
    again = pretrain_flow(config=config)
    assert again["cache_hits"] == dict.fromkeys(STAGES, True)
    assert stage_records(root) == before  # nothing rewritten
    assert again["documents"] == first["documents"] and again["tokens"] == first["tokens"]

    changed = config.model_copy(update={"tokenize": config.tokenize.model_copy(update={"vocab_size": 768})})
    third = pretrain_flow(config=changed)
    assert third["cache_hits"] == {"ingest": True, "filter": True, "dedup": True, "quality": True,
                                   "tokenize": False, "train": False}
    after = stage_records(root)
    assert {stage: after[stage] == before[stage] for stage in STAGES} == {
        "ingest": True, "filter": True, "dedup": True, "quality": True, "tokenize": False, "train": False}
    assert third["tokens"]["tokenize"] > first["tokens"]["tokenize"]  # a smaller vocabulary, more tokens
    assert json.loads((Path(third["model"]["hf_dir"]) / "config.json").read_text())["vocab_size"] == 768
