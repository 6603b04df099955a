"""epochgraph: forecast a CNN training's final accuracy from the rolled graph of its early epochs."""

import os

# our commands show their own progress; MLflow's per-artifact download bars would drown it
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"
