"""``epochgraph-train``: Hydra entry point; composes the config and hands it to `epochgraph.training.job`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from epochgraph import resolvers  # noqa: F401 - registers ${eg.*} for the config
from epochgraph.errors import report_errors
from epochgraph.paths import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | dict | None:
    if cfg.get("optuna") and cfg.optuna.get("trial_number") is not None:
        from epochgraph.search.trial import run_trial

        # a sweep's job: errors and interrupts go to the sweeper, which ends the trial and reports them
        return run_trial(cfg)
    return train_one(cfg)


@report_errors
def train_one(cfg: DictConfig) -> float | None:
    """One training, as a command: bad input, Ctrl-C and SIGTERM end with one line (exit 2, 130, 143)."""
    from epochgraph.training.job import run_job

    job = run_job(cfg)
    return job.result.history[-1]["val_acc"] if job.result.history else None


if __name__ == "__main__":
    main()
