"""Training with DeepSpeed: data stream, generated DeepSpeed config, launcher, entry point.

``run_training(cfg, resume, log_callback)`` (tasks.train.launch) is what the CLI and
the Prefect flow call; ``python -m tasks.train.main --config RUN_DIR/train_config.json``
is what the launcher runs in every process.
"""
