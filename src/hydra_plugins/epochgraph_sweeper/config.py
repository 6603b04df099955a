"""Structured config (schema) of the epochgraph sweeper.

Users select ``hydra/sweeper=epochgraph``: the YAML file ``conf/hydra/sweeper/epochgraph.yaml`` extends
this schema (``defaults: [epochgraph_schema, sampler: tpe]``), so every value a user sets is type-checked
here, and the samplers are the ``hydra/sweeper/sampler`` group (``conf/hydra/sweeper/sampler/*.yaml``).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional  # noqa: UP035 - OmegaConf structured configs need them

from hydra.core.config_store import ConfigStore


@dataclass
class EpochgraphSweeperConf:
    _target_: str = "hydra_plugins.epochgraph_sweeper.sweeper.EpochgraphSweeper"
    # the search space, in Hydra's override grammar (as in hydra-optuna-sweeper); keys may be dotted
    # (``optim.lr: ...`` in YAML) or nested (``hydra.sweeper.params.optim.lr=...`` on the command line):
    #   optim.lr: tag(log, interval(0.001, 1.0))   model.dropout: interval(0, 0.5)
    #   trainer.batch_size: choice(32, 64, 128)     model.width: range(0.5, 1.5, 0.25)
    params: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006 - OmegaConf needs typing types
    direction: str = "maximize"  # the job returns the final val_acc
    n_trials: int = 20  # finished trials (complete or pruned) the study should reach
    n_jobs: int = 1  # trials asked and launched together (parallel with a parallel launcher)
    study_name: Optional[str] = None  # noqa: UP045  # default: <mlflow.experiment>-sweep
    # an Optuna sampler (``_target_`` + arguments); presets in the hydra/sweeper/sampler group
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    max_failure_rate: float = 0.25  # abort when a batch fails more often than this


ConfigStore.instance().store(group="hydra/sweeper", name="epochgraph_schema", node=EpochgraphSweeperConf,
                             provider="epochgraph")
