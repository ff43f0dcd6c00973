"""A small real training run made in-process, for the export tests.

A few AdamW steps of ``models.transformer`` (the ``tiny`` size) on windows of the real
tokenize stage's shards (``train_fixtures.build_token_shards``), written as the run folder
``pretrain train`` leaves with ZeRO-0: ``train_config.json``, ``summary.json`` and
``checkpoints/stepN/`` with ``mp_rank_00_model_states.pt`` (``{"module": state_dict}``) and
its ``client.json`` manifest. Launching torchrun and DeepSpeed for two steps took 290 s on
the shared test machine; this takes seconds, and ``pretrain export-hf`` reads the folder
the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.sizes import model_config
from models.transformer import Transformer
from pretrain.config import TrainConfig
from tasks.train.checkpoint import COMPLETE_MARKER, checkpoint_root, file_sizes, tag_for
from tasks.train.data import TokenWindows

SEQ_LEN, BATCH = 64, 4


def train_steps(shards: Path, steps: int) -> tuple[Transformer, list[float]]:
    """The tiny model after ``steps`` optimizer steps on the train split; the losses."""
    windows = TokenWindows(shards, "train", SEQ_LEN, seed=0)
    torch.manual_seed(0)
    model = Transformer(model_config("tiny", windows.vocab_size, SEQ_LEN))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        batch = torch.from_numpy(np.stack([windows.sample(step * BATCH + i) for i in range(BATCH)]).astype(np.int64))
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def tiny_run(shards: Path, run_dir: Path, steps: int = 8) -> tuple[Path, Transformer, list[float]]:
    """Train and write ``run_dir`` as a finished ZeRO-0 run; (run_dir, the model, its losses)."""
    model, losses = train_steps(shards, steps)
    cfg = TrainConfig(data_dir=str(shards), output_dir=str(run_dir), model_size="tiny", seq_len=SEQ_LEN,
                      micro_batch_size=BATCH, num_procs=1, max_steps=steps, zero_stage=0, precision="fp32")
    folder = checkpoint_root(run_dir) / tag_for(steps)
    folder.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, folder / "mp_rank_00_model_states.pt")
    shape = model.cfg.model_dump(mode="json")
    files = file_sizes(folder)
    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": steps, "model": shape, "files": files}) + "\n")
    (run_dir / "train_config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"completed": True, "steps": steps, "model": shape,
                                                      "final_loss": losses[-1]}) + "\n")
    return run_dir, model, losses


def tiny_book_run(root: Path, vocab_size: int = 512):
    """(run folder, model, losses, token shards): tiny_run on a real book tokenized by the real tokenize stage."""
    from conftest import shared_data
    from train_fixtures import build_token_shards

    book = shared_data("reference", "en", "Pride_and_Prejudice_JaneAusten.txt.gz")
    shards = build_token_shards([book], root / "shards", vocab_size=vocab_size)
    run_dir, model, losses = tiny_run(shards, root / "run")
    return run_dir, model, losses, shards
