"""Errors of training's checkpoints, apart so that the checkpoint readers of every layout
(``tasks.train.checkpoint``, ``tasks.train.parallel``) share them without importing each other."""


class CheckpointDamaged(ValueError):
    """A checkpoint's files do not match its manifest, or do not load."""
