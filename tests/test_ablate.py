"""Data ablations: the arms' parsing and validation, the held-out loss's windows, content-addressed stage folders,
and (acceptance 4) `pretrain ablate --recipe local` with the quality filter as configured against a stricter cut:
the table, the plot, equal training tokens, the shared stages and tokenizer, a cached rerun, determinism.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from flows import registry
from flows.stage import Pipeline
from pretrain.config import AblationArm, ConfigError, arm_recipe, load_recipe, parse_arm
from tasks.demo_reference import demo_reference_documents
from tasks.heldout import HeldoutError, windows

# The demo's scraped copies go in dedup (the 28 x 4 default), so the configured cut (3.0) drops few or none of
# what reaches it; a stricter one (2.7) drops demo articles too (they score 2.2-2.9).
ARMS = ["--arm", "configured", "--arm", "strict=quality.max_perplexity=2.7"]


# ---------------------------------------------------------------- arms


def test_an_arm_is_a_name_and_its_overrides_and_a_comma_inside_a_value_stays_in_it():
    assert parse_arm("configured") == AblationArm(name="configured", overrides=[])
    assert parse_arm("off=quality.max_perplexity=1000").overrides == ["quality.max_perplexity=1000"]
    arm = parse_arm("mix=tokenize.weights={web: 1, books: 2},dedup.threshold=0.7")
    assert arm.name == "mix" and arm.overrides == ["tokenize.weights={web: 1, books: 2}", "dedup.threshold=0.7"]


def test_an_arms_recipe_is_the_recipe_with_its_overrides():
    recipe = load_recipe("local")
    off = arm_recipe(recipe, parse_arm("off=quality.max_perplexity=1000"))
    assert off.quality.max_perplexity == 1000 and recipe.quality.max_perplexity == 3.0
    assert off.model_dump(exclude={"quality"}) == recipe.model_dump(exclude={"quality"})


@pytest.mark.parametrize("spec, says", [
    ("bad=quality.no_such_key=1", "arm 'bad': invalid config:\n  quality.no_such_key: Extra inputs are not permitted"),
    ("neg=quality.max_perplexity=-1", "arm 'neg': invalid config:\n  quality.max_perplexity: Input should be greater "
                                      "than 0"),
    ("lr=train.lr=0.1", "arm 'lr' changes train.lr: every arm trains the same model"),
    ("vocab=tokenize.vocab_size=512", "arm 'vocab' changes tokenize.vocab_size"),
    ("tasks=eval.limit=3", "arm 'tasks' changes eval.limit"),
])
def test_an_arm_that_does_not_validate_or_changes_what_arms_share_is_refused_by_name(spec, says):
    with pytest.raises(ConfigError) as error:
        arm_recipe(load_recipe("local"), parse_arm(spec))
    assert says in str(error.value)


@pytest.mark.parametrize("arms, says", [
    ([], "arms: an ablation compares arms: give at least two, got 0"),
    (["--arm", "only"], "arms: an ablation compares arms: give at least two, got 1"),
    (["--arm", "a", "--arm", "a=quality.max_perplexity=5"], "arms: arm name(s) given twice: a"),
    (["--arm", "a", "--arm", "b=quality.bogus=1"], "arm 'b': invalid config:"),
    (["--arm", "a", "--arm", "b=quality.max_perplexity=abc"], "arm 'b': invalid config:"),
    (["--arm", "a", "--arm", "b=quality"], "--arm b=quality: expects NAME=key.path=value"),
    (["--arm", "a", "--arm", "a b=quality.max_perplexity=5"], "--arm a b=quality.max_perplexity=5: invalid config"),
])
def test_the_command_refuses_bad_arms_with_exit_2_before_anything_runs(tmp_path, arms, says):
    result = CliRunner().invoke(app, ["ablate", "--recipe", "local", *arms, "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split()) or says in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_missing_held_out_text_is_refused_with_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["ablate", *ARMS, "--output", str(tmp_path / "out"),
                                      "--heldout", str(tmp_path / "no-such.txt")])
    assert result.exit_code == 2 and "no corpus files for" in result.output, result.output


# ---------------------------------------------------------------- held-out loss, stage folders


def test_held_out_windows_predict_every_token_after_the_first_exactly_once():
    tokens = np.arange(10)
    chunks = windows(tokens, seq_len=4)
    assert [list(c) for c in chunks] == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9]]
    predicted = [t for c in chunks for t in c[1:]]
    assert predicted == list(range(1, 10))
    with pytest.raises(HeldoutError, match="nothing to predict"):
        windows(np.arange(1), seq_len=4)


def test_a_stage_folder_is_named_by_what_it_depends_on():
    recipe = load_recipe("local")
    other_quality = arm_recipe(recipe, parse_arm("off=quality.max_perplexity=1000"))
    other_filter = arm_recipe(recipe, parse_arm("f=filter.order=[url]"))
    stage, root = registry.stage("filter"), Path("/runs/ablate/stages")

    def folder(cfg, upstream="ingest-key"):
        return stage.content_folder(Pipeline(recipe=cfg, root=root, folders={}), upstream, root)

    assert folder(recipe) == folder(other_quality)  # quality comes after filter: the same filter folder
    assert folder(recipe).name.startswith("filter-") and folder(recipe).parent == root
    assert folder(recipe) != folder(other_filter)
    assert folder(recipe) != folder(recipe, upstream="another-ingest-key")


# ---------------------------------------------------------------- acceptance 4: pretrain ablate --recipe local


# Small evaluation and no in-loop benchmarks, so that the test trains and scores two models in little time.
SMALL = ["--set", "eval.tasks=[hellaswag,arc_easy]", "--set", "eval.limit=10", "--set", "train.eval_items=0",
         "--set", "decontaminate.tasks=[hellaswag,arc_easy]"]
NUMBERS = ("name", "overrides", "documents", "dataset_tokens", "train_tokens", "epochs", "val_loss", "own_val_loss",
           "final_loss", "eval", "centered")


def heldout_file(folder: Path) -> Path:
    """40 demo-reference articles of another seed than the local recipe's quality reference."""
    path = folder / "heldout.jsonl.gz"
    lines = "".join(json.dumps(doc) + "\n" for doc in demo_reference_documents(40, seed=7))
    path.write_bytes(gzip.compress(lines.encode(), mtime=0))
    return path


def ablate(out: Path, heldout: Path) -> tuple[dict, str]:
    result = CliRunner().invoke(app, ["ablate", "--recipe", "local", *ARMS, "--output", str(out),
                                      "--heldout", str(heldout), *SMALL])
    assert result.exit_code == 0, result.output
    return json.loads((out / "ablation.json").read_text()), result.output


def numbers(result: dict) -> list[dict]:
    return [{name: arm[name] for name in NUMBERS} for arm in result["arms"]]


@pytest.fixture(scope="module")
def ablation(prefect_server, ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    heldout = heldout_file(root)
    out = root / "out"
    first, said = ablate(out, heldout)
    return out, heldout, first, said


@pytest.mark.integration
def test_both_arms_train_on_exactly_the_smallest_arms_tokens(ablation):
    out, _, result, _ = ablation
    configured, strict = result["arms"]
    assert [configured["name"], strict["name"]] == ["configured", "strict"]
    assert strict["overrides"] == ["quality.max_perplexity=2.7"] and configured["overrides"] == []
    assert configured["documents"] > strict["documents"] > 80  # the stricter cut drops articles the other keeps
    smallest = min(configured["dataset_tokens"], strict["dataset_tokens"])
    assert result["budget_from"] == "arm strict" and result["token_budget"] == smallest
    assert result["tokens_per_step"] == 8 * 128  # micro_batch_size x seq_len of the local recipe, one process
    assert result["steps"] == smallest // result["tokens_per_step"]
    assert configured["train_tokens"] == strict["train_tokens"] == result["steps"] * result["tokens_per_step"]
    for arm in result["arms"]:
        summary = json.loads((Path(arm["run_dir"]) / "summary.json").read_text())
        assert summary["tokens"] == result["train_tokens"] and summary["steps"] == result["steps"]
        assert math.isfinite(arm["val_loss"]) and 0 < arm["val_loss"] < math.log(1024)
        assert set(arm["eval"]) == {"hellaswag", "arc_easy"} and all(0 <= a <= 1 for a in arm["eval"].values())


@pytest.mark.integration
def test_shared_stages_come_from_cache_and_every_arm_has_the_first_arms_tokenizer(ablation):
    _, _, result, _ = ablation
    configured, strict = result["arms"]
    shared = ("ingest", "filter", "pii", "dedup")
    assert all(not stage["cached"] for stage in configured["stages"].values())
    assert {name: strict["stages"][name]["cached"] for name in strict["stages"]} == {
        name: name in shared for name in strict["stages"]}
    for name in shared:
        assert strict["stages"][name]["output"] == configured["stages"][name]["output"]
    assert strict["stages"]["quality"]["output"] != configured["stages"]["quality"]["output"]
    tokenizers = [(Path(arm["stages"]["tokenize"]["output"]) / "tokenizer.json").read_bytes()
                  for arm in result["arms"]]
    assert tokenizers[0] == tokenizers[1]
    first_tokens, strict_tokens = (Path(arm["stages"]["tokenize"]["output"]) for arm in result["arms"])
    report = json.loads((strict_tokens / "report.json").read_text())
    assert report["tokenizer"]["source"] == str(first_tokens / "tokenizer.json")  # given, not trained again


@pytest.mark.integration
def test_the_table_and_the_plot(ablation):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    out, _, result, said = ablation
    png = (out / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    for arm in result["arms"]:
        assert f"{arm['val_loss']:.4f}" in said and f"{arm['eval']['hellaswag']:.3f}" in said
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["ablation", "ablation-plot"])))
    ours = [a for a in artifacts if str(out) in (a.description or "")]
    assert sorted(a.key for a in ours) == ["ablation", "ablation-plot"]
    table = next(a for a in ours if a.key == "ablation").data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["arm"] for row in rows] == ["configured", "strict"]
    assert [row["train_tokens"] for row in rows] == [result["train_tokens"]] * 2
    assert rows[0]["heldout_val_loss"] == round(result["arms"][0]["val_loss"], 4)
    assert next(a for a in ours if a.key == "ablation-plot").data.startswith("data:image/png;base64,")


@pytest.mark.integration
def test_an_unchanged_rerun_is_all_cache_hits_and_retraining_gives_the_same_numbers(ablation):
    out, heldout, first, _ = ablation
    rerun, _ = ablate(out, heldout)
    assert rerun["cache_hits"] == rerun["cache_lookups"] == 2 * (len(registry.STAGES) + 1)
    assert numbers(rerun) == numbers(first)
    for arm in first["arms"]:  # the trained models and their evaluations go: trained and scored again
        shutil.rmtree(arm["stages"]["train"]["output"])
        shutil.rmtree(arm["stages"]["eval"]["output"])
    again, _ = ablate(out, heldout)
    for arm in again["arms"]:
        assert not arm["stages"]["train"]["cached"] and not arm["stages"]["eval"]["cached"]
        assert not arm["heldout_cached"] and arm["stages"]["tokenize"]["cached"]
    assert numbers(again) == numbers(first)
