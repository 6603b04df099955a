"""Hydra sweeper plugin: an Optuna study whose trials are Hydra jobs that can be pruned every epoch."""
