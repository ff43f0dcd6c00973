"""The end-to-end flow on the local recipe: every stage's output, then caching across reruns.

One run of the whole pipeline (demo WARCs -> ingest -> filters -> dedup -> quality ->
decontaminate -> tokenize -> train with DeepSpeed on CPU -> eval), a rerun through the
`pretrain run` command that must come entirely from cache (no re-evaluation) and print the
evaluation table, and a rerun with a changed tokenizer that must redo tokenize, train and eval only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows import registry
from flows.pretrain import pretrain_flow
from flows.registry import names
from pretrain.config import load_recipe

pytestmark = pytest.mark.integration
STAGES = names()
FAST_TRAIN = ["train.max_steps=20", "train.eval_every_steps=10", "train.checkpoint_every_steps=20"]


def stage_records(root: Path) -> dict[str, dict]:
    return {stage.name: json.loads((root / stage.folder / "stage.json").read_text()) for stage in registry.STAGES}


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
    assert docs["decontaminate"] == docs["quality"]  # the demo grammars share no 13-gram with the benchmarks
    stages = summary["stages"]
    assert stages["decontaminate"]["matched_items"] == {} and "eval" not in docs  # eval keeps no documents
    assert stages["filter"]["dropped"]["gopher_too_few_stop_words"] >= 12  # keyword spam
    assert stages["dedup"]["dropped"]["exact_duplicate"] > 0
    tokens = summary["tokens"]
    assert tokens["tokenize"] == stages["tokenize"]["tokens"]["train"] + stages["tokenize"]["tokens"]["val"] > 30_000
    assert tokens["ingest"] > tokens["filter"] > tokens["dedup"] >= tokens["quality"]
    assert stages["tokenize"]["tokens"]["val"] > 0


def scraped_copies(folder: Path) -> int:
    """Documents of the demo's scraped copies (its articles with words edited) in a stage's shards."""
    return sum("scraper-" in (row["url"] or "") for path in sorted(folder.glob("*.parquet"))
               for row in pq.read_table(path, columns=["url"]).to_pylist())


def test_the_edited_copies_are_removed_and_the_quality_models_trained_offline(first_run):
    """The demo's scraped copies with edited words pass the heuristic filters; the default MinHash setting
    (28 x 4, threshold 0.4) drops them as near duplicates, and the perplexity filter drops what dedup leaves
    (all of them, before that default): none reaches tokenize."""
    root, config, summary = first_run
    quality = summary["stages"]["quality"]
    for model in ("perplexity", "classifier"):
        assert (root / "quality" / "models" / model / "model.json").is_file()
    copies = scraped_copies(root / "filter")
    assert copies >= 10 and scraped_copies(root / "quality" / "kept") == 0
    dropped = quality["dropped"].get("perplexity_too_high", 0)
    assert summary["stages"]["dedup"]["dropped"]["fuzzy_duplicate"] >= copies - dropped
    rows = [row for path in sorted((root / "quality" / "scored").glob("*.parquet"))
            for row in pq.read_table(path, columns=["url", "perplexity"]).to_pylist()]
    assert sum(row["perplexity"] is not None for row in rows) > 100  # the trained model scored the English pages
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


def test_the_run_ends_with_an_evaluation_table(first_run):
    root, config, summary = first_run
    evaluation = summary["eval"]
    written = json.loads((root / "eval" / "eval.json").read_text())
    assert evaluation["eval_json"] == str(root / "eval" / "eval.json")
    assert list(evaluation["tasks"]) == config.eval.tasks and len(config.eval.tasks) == 10
    for task, metrics in evaluation["tasks"].items():
        assert metrics["items"] == config.eval.limit == 100
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["accuracy_per_char"] <= 1 and 0 < metrics["random"] < 1
        assert {key: written["tasks"][task][key] for key in metrics} == metrics
    assert evaluation["centered"] == written["centered"]
    print("evaluation:", {task: round(m["accuracy"], 3) for task, m in evaluation["tasks"].items()},
          "centred", round(evaluation["centered"], 4))
    assert abs(evaluation["centered"]) < 0.2  # a 20-step model on demo text guesses
    in_loop = summary["stages"]["train"]["benchmarks"]  # the trainer's last in-loop scores, at its last step
    assert in_loop["step"] == 20 and list(in_loop["tasks"]) == config.train.eval_tasks
    assert all(m["items"] == config.train.eval_items for m in in_loop["tasks"].values())
    report = pretrain_report(root / "eval" / "eval.json")
    assert "| task | items | accuracy | accuracy per char | random |" in report
    hellaswag = evaluation["tasks"]["hellaswag"]
    assert f"| hellaswag | 100 | {hellaswag['accuracy']:.3f} | {hellaswag['accuracy_per_char']:.3f} |" in report
    assert f"**{evaluation['centered']:+.4f}**" in report


def pretrain_report(eval_json: Path) -> str:
    """The pretrain-report artifact of the run whose evaluation is at ``eval_json``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        reports = [a.data for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pretrain-report"])))]
    found = [report for report in reports if f"`{eval_json}`" in report]
    assert found, f"no pretrain-report names {eval_json}"
    return found[-1]


def test_rerun_is_all_cache_hits_and_a_tokenizer_change_reruns_tokenize_train_and_eval_only(first_run):
    from typer.testing import CliRunner

    import cli.main

    root, config, first = first_run
    before = stage_records(root)
    evaluated = (root / "eval" / "eval.json").stat().st_mtime_ns
    sets = [arg for override in FAST_TRAIN for arg in ("--set", override)]
    result = CliRunner().invoke(cli.main.app, ["run", "--recipe", "local", "--output", str(root), *sets],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    again = json.loads((root / "summary.json").read_text())
    assert again["cache_hits"] == dict.fromkeys(STAGES, True)
    assert stage_records(root) == before  # nothing rewritten
    assert (root / "eval" / "eval.json").stat().st_mtime_ns == evaluated  # not evaluated again
    assert again["documents"] == first["documents"] and again["tokens"] == first["tokens"]
    assert again["eval"] == json.loads(json.dumps(first["eval"]))
    printed = " ".join(result.output.split())
    assert f"evaluation ({root / 'eval' / 'eval.json'})" in printed
    for task, metrics in first["eval"]["tasks"].items():  # task, items, accuracy, per char, random
        assert (f"{task} │ 100 │ {metrics['accuracy']:.3f} │ {metrics['accuracy_per_char']:.3f} │ "
                f"{metrics['random']:.3f} │") in printed
    assert f"centred score (CORE-style, over 10 tasks): {first['eval']['centered']:+.4f}" in printed
    assert f"{len(STAGES)} of {len(STAGES)} stages from cache" in printed

    changed = config.model_copy(update={"tokenize": config.tokenize.model_copy(update={"vocab_size": 768})})
    third = pretrain_flow(config=changed)
    expected = {"ingest": True, "filter": True, "pii": True, "dedup": True, "quality": True, "sources": True,
                "decontaminate": True, "tokenize": False, "train": False, "eval": False}
    assert third["cache_hits"] == expected
    after = stage_records(root)
    assert {stage: after[stage] == before[stage] for stage in STAGES} == expected
    assert third["tokens"]["tokenize"] > first["tokens"]["tokenize"]  # a smaller vocabulary, more tokens
    assert json.loads((Path(third["model"]["hf_dir"]) / "config.json").read_text())["vocab_size"] == 768
