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

from epochgraph import _moved
from epochgraph._lazy import lazy_exports

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
