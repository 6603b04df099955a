#!/usr/bin/env bash
# A pruned Optuna sweep of epochgraph-train over your own network (mynets.MyNet), with the Hydra app as is:
#   bash examples/user_model/run.sh                      (30 trials, about 5 minutes on 2 cores)
#   bash examples/user_model/run.sh hydra.sweeper.n_trials=4 trainer.epochs=3     (any override)
# Each trial is an MLflow run with its signatures and graph pictures; `make ui` shows them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"   # where mynets.py is importable from
exec epochgraph-train +experiment=pruned_sweep model=custom model._target_=mynets.MyNet +model.width=16 \
  mlflow.experiment=user_model hydra.sweeper.study_name=user_model "$@"
