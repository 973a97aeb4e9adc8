"""The library behind the scripts at the repository's root: data and shards, checkpoints, the training step,
runtime (device, precision, DDP), accounting, optimizers, evaluation data, and the run log. The scaling-law
code (fits, sweeps, critical batch, hyperparameter laws, plots) lives in `pretrain.scaling`."""
