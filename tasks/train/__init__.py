"""Training with DeepSpeed: data stream, generated DeepSpeed config, launcher, entry point.

``run_training(cfg, resume, log_callback)`` (tasks.train.launch) is what the CLI and
the Prefect flow call; ``python -m tasks.train.main --config RUN_DIR/train_config.json``
is what the launcher runs in every process.
"""

# The code a trained model depends on: its cache keys (the pretrain stage, sweep runs) hash these.
TRAIN_MODULES = ("flows.train", "tasks.train.main", "tasks.train.data", "tasks.train.ds_config", "tasks.train.launch",
                 "tasks.train.checkpoint", "models.transformer", "models.attention", "models.sizes", "models.export_hf")
