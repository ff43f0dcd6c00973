"""Parallel layouts of a training run: data parallel (ZeRO) and one model-parallel kind at a time,
tensor (``tensor.py``), sequence (Ulysses, ``sequence.py``) or pipeline (``pipeline.py``).
``layout.py`` places the ranks and checks a layout before launch; ``strategy.py`` is the
data-parallel base the others extend."""

from __future__ import annotations

from tasks.train.parallel.layout import Layout, LayoutError, check_layout, data_parallel_size  # noqa: F401


def strategy_for(layout: Layout):
    """The Strategy class of a layout's kind."""
    if layout.kind == "tensor":
        from tasks.train.parallel.tensor import TensorParallel

        return TensorParallel
    if layout.kind == "sequence":
        from tasks.train.parallel.sequence import SequenceParallel

        return SequenceParallel
    if layout.kind == "pipeline":
        from tasks.train.parallel.pipeline import PipelineParallel

        return PipelineParallel
    from tasks.train.parallel.strategy import Strategy

    return Strategy


def consolidate_fp32(folder, manifest: dict) -> dict | None:
    """The full fp32 state dict (our parameter names) of a checkpoint saved under a model-split layout;
    None when the layout does not split the parameters (data and sequence parallel: the ZeRO files
    consolidate as they are)."""
    kind = Layout(**manifest["parallel"]).kind if manifest.get("parallel") else "data"
    if kind == "tensor":
        from tasks.train.parallel.tensor import consolidate_fp32 as tensor_consolidate

        return tensor_consolidate(folder, manifest)
    if kind == "pipeline":
        from tasks.train.parallel.pipeline import consolidate_fp32 as pipeline_consolidate

        return pipeline_consolidate(folder, manifest)
    return None
