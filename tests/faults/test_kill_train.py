"""kill -9 in the middle of training: the launcher's process group (torchrun and both gloo ranks),
then the flow process (`pretrain train`), between two checkpoints; `--resume` then repeats the
uninterrupted run step for step, and its final weights are bit-identical to a clean run's.

tests/test_train.py covers a run that stops itself (``stop_after_steps``) and resumes; here
nothing gets to exit cleanly: the kill lands while rank 0 is held (tests/faults/trap) at the commit
of the second checkpoint, its files written but not marked complete, so metrics.jsonl holds steps
the resumed run must redo and the newest checkpoint is half written.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import shared_data
from faultlib import CommitTrap, StageProcess, slow
from train_fixtures import build_token_shards

from pretrain.config import TrainConfig
from tasks.train.checkpoint import COMPLETE_MARKER, consolidate_fp32, list_checkpoints
from tasks.train.launch import run_training

pytestmark = [pytest.mark.faults, pytest.mark.integration]

STEPS, CHECKPOINT_EVERY = 16, 4
HELD_AT = 2 * CHECKPOINT_EVERY  # killed while rank 0 commits this checkpoint; the one before is complete


def train_config(shards: Path, run_dir: Path) -> TrainConfig:
    return TrainConfig(data_dir=str(shards), output_dir=str(run_dir), model_size="tiny", seq_len=128,
                       micro_batch_size=4, num_procs=2, max_steps=STEPS, lr=3e-3, warmup_steps=2, precision="fp32",
                       zero_stage=3, checkpoint_every_steps=CHECKPOINT_EVERY, keep_checkpoints=2,
                       eval_every_steps=STEPS, eval_batches=2)


def train_steps(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every train record of metrics.jsonl, in file order (repeats included)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def kill_training(stage: StageProcess) -> list[psutil.Process]:
    """SIGKILL the launcher's process group (it runs in a session of its own), then the flow process's."""
    tree = psutil.Process(stage.proc.pid).children(recursive=True)
    groups = {os.getpgid(p.pid) for p in tree if p.is_running()} - {stage.proc.pid}
    assert groups, f"no launcher process group under the flow process: {[p.cmdline() for p in tree]}"
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    stage.kill9()
    return tree


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    book = shared_data("reference", "en", "Pride_and_Prejudice_JaneAusten.txt.gz")
    return build_token_shards([book], tmp_path_factory.mktemp("kill-train") / "shards", vocab_size=512)


@slow  # about 50 s: `make test-faults`
def test_kill9_during_training_then_resume_repeats_the_uninterrupted_run(prefect_server, shards, tmp_path, ledger):
    clean_dir, run_dir = tmp_path / "clean", tmp_path / "killed"
    clean = run_training(train_config(shards, clean_dir), log_callback=[].append)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"train": train_config(shards, run_dir).model_dump(mode="json",
                                                                                       exclude_none=True)}))

    trap = CommitTrap(run_dir / "checkpoints" / f"step{HELD_AT}" / COMPLETE_MARKER, tmp_path / "trap",
                      process="tasks/train/main.py")
    stage = StageProcess(["train", "--config", str(recipe)], prefect_server, **trap.env)
    held = trap.wait_held(stage, timeout_s=600)
    tree = kill_training(stage)
    assert held in {p.pid for p in tree}, "the rank held at the checkpoint's commit should be among those killed"
    _, alive = psutil.wait_procs(tree, timeout=10)
    survivors = [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], "every training process should be gone"
    logged_at_kill = max(s for s, _ in train_steps(run_dir))
    complete_at_kill = [s for s, _ in list_checkpoints(run_dir / "checkpoints")]
    assert complete_at_kill and logged_at_kill > complete_at_kill[-1], (complete_at_kill, logged_at_kill)
    assert complete_at_kill == [CHECKPOINT_EVERY] and (run_dir / "checkpoints" / f"step{HELD_AT}").is_dir()
    assert not (run_dir / "summary.json").exists()

    lines: list[str] = []
    resumed = run_training(train_config(shards, run_dir), resume=True, log_callback=lines.append)
    resume_step = complete_at_kill[-1]
    assert any(f"resumed from {run_dir / 'checkpoints' / f'step{resume_step}'} at step {resume_step}" in line
               for line in lines), lines[-20:]

    expected, got = dict(train_steps(clean_dir)), train_steps(run_dir)
    assert [s for s, _ in got] == list(range(1, STEPS + 1))  # every step exactly once, in order
    diffs = {s: abs(loss - expected[s]) / abs(expected[s]) for s, loss in got}
    print(f"\nkilled at step {logged_at_kill} (complete checkpoints {complete_at_kill}); resumed from step "
          f"{resume_step}; steps {resume_step + 1}..{STEPS}: max relative loss difference "
          f"{max(diffs[s] for s in range(resume_step + 1, STEPS + 1)):.3g}")
    assert max(diffs.values()) <= 1e-5
    assert expected[STEPS] < expected[1] - 0.5  # the steps compared did train
    assert resumed["completed"] and resumed["steps"] == STEPS
    assert resumed["val_loss"] == pytest.approx(clean["val_loss"], rel=1e-5)

    final = run_dir / "checkpoints" / f"step{STEPS}"
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")][-1] == STEPS
    assert json.loads((final / COMPLETE_MARKER).read_text())["step"] == STEPS
    ours, theirs = consolidate_fp32(run_dir / "checkpoints"), consolidate_fp32(clean_dir / "checkpoints")
    assert sorted(ours) == sorted(theirs)
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    print(f"final weights: {len(ours)} tensors, max absolute difference from the clean run {worst:.3g}")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # fp32 on CPU: bit-identical (seen: 0 difference)
    ledger("kill -9 training (torchrun and 2 gloo ranks, then `pretrain train`) between checkpoints",
           "`--resume` repeats the clean run: every step once, same losses, bit-identical weights",
           processes_killed=len(tree), killed_at_step=logged_at_kill, resumed_at_step=resume_step,
           steps_compared=len(got), tensors_compared=len(ours))
