"""Structured config of the epochgraph sweeper (``hydra/sweeper=epochgraph``)."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional  # noqa: UP035 - OmegaConf structured configs need them

from hydra.core.config_store import ConfigStore


@dataclass
class EpochgraphSweeperConf:
    _target_: str = "hydra_plugins.epochgraph_sweeper.sweeper.EpochgraphSweeper"
    # the search space, in Hydra's override grammar (as in hydra-optuna-sweeper):
    #   optim.lr: tag(log, interval(0.001, 1.0))   model.dropout: interval(0, 0.5)
    #   trainer.batch_size: choice(32, 64, 128)     model.width: range(0.5, 1.5, 0.25)
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045 - OmegaConf needs typing types
    direction: str = "maximize"  # the job returns the final val_acc
    n_trials: int = 20  # finished trials (complete or pruned) the study should reach
    n_jobs: int = 1  # trials asked and launched together (parallel with a parallel launcher)
    study_name: Optional[str] = None  # noqa: UP045  # default: <mlflow.experiment>-sweep
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    max_failure_rate: float = 0.25  # abort when a batch fails more often than this


ConfigStore.instance().store(group="hydra/sweeper", name="epochgraph", node=EpochgraphSweeperConf,
                             provider="epochgraph")
