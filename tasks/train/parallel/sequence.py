"""Ulysses sequence parallelism: the ranks of a sequence group split every sequence into slices.

Sequence rank r of s takes tokens [r T/s, (r+1) T/s) of each sequence of the micro batch (the
ranks of a group read the same samples: the base's ``data_rank``) and runs the whole model on
that slice, its RoPE positions starting at r T/s (``Transformer.position_offset``). Only
attention needs the other slices: DeepSpeed's ``DistributedAttention`` wraps our attention
function in two all-to-alls, from (B, T/s, H, D) to (B, T, H/s, D) before it, so each rank
attends over the full sequence with 1/s of the heads, and back after it. So each rank's
activations hold T/s tokens (and attention's, the whole sequence for 1/s of the heads);
``summary()`` records the bytes each rank saved for backward in one micro batch, measured.

The loss and its gradient. Each rank's loss is the mean over its slice; with equal slices (every
target counted: training windows have no ignored targets) the full sequence's mean is the mean
over the group. DeepSpeed is given no mpu, so its data-parallel world is all d x s ranks: it
averages the gradients over them, and the backward of each rank's slice mean (whose gradient
reaches the other ranks' activations through the all-to-alls' backward) summed over the group is
s times the gradient of the full-sequence mean; the average over d x s is then the one-process
gradient. ZeRO partitions the (replicated) parameters over those d x s ranks as it would for
data parallel, so checkpoints consolidate and export as a data-parallel run's do.
"""

from __future__ import annotations

import torch

from tasks.train.parallel.strategy import Strategy

BATCH_DIM, SCATTER_HEADS, GATHER_SEQUENCE = 0, 2, 1  # our attention layout is (B, S, H, D)


class SequenceParallel(Strategy):
    benchmarks_unsupported = ("the in-loop benchmarks score whole variable-length sequences one rank at a time, "
                              "and a sequence-parallel rank holds a fixed slice of every sequence")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.activations: dict | None = None  # measured in the first training micro batch

    # ---------------------------------------------------------------- engine
    def ds_config(self, config: dict) -> dict:
        """DeepSpeed, given no mpu, counts all d x s ranks as data parallel: its batch check is
        micro x accum x d x s (the global batch in sequences is still micro x accum x d)."""
        return {**config, "train_batch_size": config["train_batch_size"] * self.layout.sequence}

    def build_engine(self, ds_config: dict, say) -> tuple[object, dict]:
        """The base's engine (the whole model from the seed, ZeRO over all ranks), each layer's attention
        wrapped in the sequence group's all-to-alls."""
        from deepspeed.sequence.layer import DistributedAttention

        from models.attention import attention

        engine, fp8 = super().build_engine(ds_config, say)
        ulysses = DistributedAttention(attention, self.groups["sequence"], scatter_idx=SCATTER_HEADS,
                                       gather_idx=GATHER_SEQUENCE)

        def attend(q, k, v, backend):  # (B, T/s, H, D) -> (B, T/s, H, D); attention itself sees (B, T, H/s, D)
            return ulysses(q, k, v, BATCH_DIM, None, backend)

        for layer in engine.module.layers:
            layer.self_attn.attend = attend  # a plain function: adds no module, the state dict is unchanged
        return engine, fp8

    # ---------------------------------------------------------------- steps
    def token_slice(self, seq_len: int) -> slice:
        """This rank's tokens of a seq_len sequence."""
        per_rank = seq_len // self.layout.sequence
        start = self.coords.sequence * per_rank
        return slice(start, start + per_rank)

    def loss(self, engine, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss over this rank's slice of every sequence; x, y (B, T) as read."""
        if x.shape[1] % self.layout.sequence:
            raise ValueError(f"sequence length {x.shape[1]} is not a multiple of parallel.sequence "
                             f"{self.layout.sequence}")
        part = self.token_slice(x.shape[1])
        engine.module.position_offset = part.start
        return super().loss(engine, x[:, part], y[:, part])  # (B, T/s) each

    def train_step(self, engine, stream, accum: int) -> float:
        """The base's step (the mean over ranks of the slice means is the full sequences' mean); the first
        micro batch of a run is measured (``activations``)."""
        if self.activations is not None:
            return super().train_step(engine, stream, accum)
        total = 0.0
        for index in range(accum):
            x, y = stream.next_batch()  # (B, T) each
            if index == 0:
                loss, self.activations = measure_activations(engine.module, lambda: self.loss(engine, x, y))
                self.activations["sequence_tokens"] = x.shape[1]
            else:
                loss = self.loss(engine, x, y)
            engine.backward(loss)
            engine.step()
            total += loss.item()
        return self.dist.mean(total / accum)

    # ---------------------------------------------------------------- what a rank holds
    def holds(self) -> str:
        part = self.token_slice(self.cfg.seq_len)
        return (f", tokens {part.start}-{part.stop - 1} of {self.cfg.seq_len} (heads "
                f"{self._heads_held()} inside attention), the whole model")

    def _heads_held(self) -> str:
        per_rank = self.model_cfg.n_heads // self.layout.sequence
        first = self.coords.sequence * per_rank
        return f"{first}-{first + per_rank - 1} of {self.model_cfg.n_heads}"

    def summary(self) -> dict:
        """"activations": per rank, the tokens entering the first layer and the bytes saved for backward in
        one training micro batch (every rank calls this: it gathers)."""
        measured = self.dist.gather(self.activations)
        if any(m is None for m in measured):
            return {"activations": None}
        return {"activations": {
            "sequence_tokens": measured[0]["sequence_tokens"],
            "tokens_per_rank": [m["tokens"] for m in measured],
            "saved_bytes_per_rank": [m["saved_bytes"] for m in measured],
            "micro_batch_size": self.cfg.micro_batch_size,
        }}


def measure_activations(model: torch.nn.Module, forward) -> tuple[object, dict]:
    """Run ``forward()`` (a training forward of ``model``) and measure it: (its result, {"tokens": the sequence
    length entering model.layers[0], "saved_bytes": the bytes of the distinct tensors autograd saved for
    backward, parameters excluded}).

    Storage is counted once however many ops save it (q/k/v's projections save the same input)."""
    storages: dict[int, int] = {}
    tokens: list[int] = []

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def seen(module, args):
        tokens.append(args[0].shape[1])  # x (B, T, C)

    hook = model.layers[0].register_forward_pre_hook(seen)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = forward()
    finally:
        hook.remove()
    return result, {"tokens": tokens[0], "saved_bytes": sum(storages.values())}
