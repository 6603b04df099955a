"""epochgraph: forecast a CNN training's final accuracy from the rolled graph of its early epochs, and prune
hyperparameter searches with that forecast.

The public API (``__all__``), each name imported on first use::

    from epochgraph import ForecastPruner, graph_signature, report_epoch

The package's folders follow the pipeline: ``graph`` (rolled graph, centralities, signatures: paper S1-S3),
``forecast`` (predictors, the final-accuracy forecaster, recorded populations: S4, Q1/Q2), ``search``
(Optuna pruners, the per-epoch trial report, sampler, sweep report), ``training`` (data, loop, job),
``store`` (MLflow tracking, Optuna storage), ``models``, ``cli`` (entry points) and ``bench`` (the
benchmark, which the product never imports).
"""

import os
from typing import TYPE_CHECKING

from epochgraph import _moved
from epochgraph._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, seen statically (type checkers, the API reference); imported lazily below
    from epochgraph.errors import EpochgraphError as EpochgraphError
    from epochgraph.forecast.forecaster import FinalAccuracyForecaster as FinalAccuracyForecaster
    from epochgraph.forecast.population import read_table as read_table
    from epochgraph.forecast.predictor import SignaturePredictor as SignaturePredictor
    from epochgraph.forecast.records import RunRecord as RunRecord
    from epochgraph.forecast.registry import fit_forecaster as fit_forecaster
    from epochgraph.forecast.registry import load_forecaster as load_forecaster
    from epochgraph.forecast.registry import log_forecaster as log_forecaster
    from epochgraph.graph.graph_stage import GraphStage as GraphStage
    from epochgraph.graph.signature import TemporalSignature as TemporalSignature
    from epochgraph.graph.signature import graph_signature as graph_signature
    from epochgraph.search.epoch_report import report_epoch as report_epoch
    from epochgraph.search.forecast_pruner import ForecastPruner as ForecastPruner
    from epochgraph.search.optimize import optimize as optimize
    from epochgraph.search.optimize import resume_state as resume_state
    from epochgraph.search.pruner import SignaturePruner as SignaturePruner
    from epochgraph.search.topk_pruner import TopKPruner as TopKPruner

# our commands show their own progress; MLflow's per-artifact download bars would drown it
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"

_EXPORTS = {
    # search: the Optuna pruners
    "ForecastPruner": "epochgraph.search.forecast_pruner",
    "SignaturePruner": "epochgraph.search.pruner",
    "TopKPruner": "epochgraph.search.topk_pruner",
    # search: what a training loop calls each epoch to feed them
    "report_epoch": "epochgraph.search.epoch_report",
    # search: a study loop whose paused trials resume (your own objective)
    "optimize": "epochgraph.search.optimize",
    "resume_state": "epochgraph.search.optimize",
    # forecast: the forecaster and what it learns from
    "FinalAccuracyForecaster": "epochgraph.forecast.forecaster",
    "fit_forecaster": "epochgraph.forecast.registry",
    "log_forecaster": "epochgraph.forecast.registry",
    "load_forecaster": "epochgraph.forecast.registry",
    "SignaturePredictor": "epochgraph.forecast.predictor",
    "read_table": "epochgraph.forecast.population",
    "RunRecord": "epochgraph.forecast.records",
    # graph: the signature of a model, and the graph stage of a training
    "graph_signature": "epochgraph.graph.signature",
    "TemporalSignature": "epochgraph.graph.signature",
    "GraphStage": "epochgraph.graph.graph_stage",
    # the one exception family for user errors
    "EpochgraphError": "epochgraph.errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
_moved.install()
