"""Training: the loop, AdamW and schedules, DCP checkpoints, metrics, and the train/eval/plot commands.

    from hybridcore.train import TrainConfig, train
    train(TrainConfig(out="runs/debug", preset="debug", steps=50))

Modules: config (TrainConfig), trainer (train), step (the one training step and evaluation, for every
layout), schedule, optim, loss, checkpoint (writing; load_model, ...), metrics, data, model_setup (config
and init), parallel_layout (the layout flags, checked up front), run_lock (one process per run directory),
resume (which checkpoint a resume starts from), watchdog (which rank stopped answering), cli / evaluate /
plot / check (subcommands).
Names load on first use, so `hybridcore plot` does not pay for torch.distributed's imports.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "config", "train": "trainer", "check_run": "trainer", "TrainResult": "trainer",
    "TrainingDiverged": "trainer", "Schedule": "schedule", "build_optimizer": "optim", "param_groups": "optim",
    "split_by_decay": "optim", "token_losses": "loss", "train_step": "step", "evaluate": "step", "Batch": "step",
    "load_model": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "latest_checkpoint": "checkpoint", "read_metrics": "metrics",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
