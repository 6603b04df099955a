"""The hyperparameter search: Optuna pruners (forecast, signature, top-k), the per-epoch record a trial
carries (`report_epoch` writes it), the job side of a sweep, the per-trial sampler and the sweep's report."""

from epochgraph._lazy import lazy_exports

_EXPORTS = {
    "ForecastPruner": "epochgraph.search.forecast_pruner",
    "SignaturePruner": "epochgraph.search.pruner",
    "TopKPruner": "epochgraph.search.topk_pruner",
    "fit_forecaster": "epochgraph.forecast.registry",
    "log_forecaster": "epochgraph.forecast.registry",
    "load_forecaster": "epochgraph.forecast.registry",
    "TrialSeededSampler": "epochgraph.search.sampler",
    "TrialReporter": "epochgraph.search.trial",
    "report_epoch": "epochgraph.search.epoch_report",
    "trial_history": "epochgraph.search.trial_attrs",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
