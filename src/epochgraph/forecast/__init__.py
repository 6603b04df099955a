"""Forecasts from recorded trainings (paper S4, Q1/Q2): the high/low predictor, the final-accuracy
forecaster, run records and population tables, and the comparison of predictor variants."""

from epochgraph._lazy import lazy_exports

_EXPORTS = {
    "FinalAccuracyForecaster": "epochgraph.forecast.forecaster",
    "SignaturePredictor": "epochgraph.forecast.predictor",
    "FeatureSpec": "epochgraph.forecast.predictor",
    "LabelRule": "epochgraph.forecast.predictor",
    "load_predictor": "epochgraph.forecast.predictor",
    "RunRecord": "epochgraph.forecast.records",
    "load_runs": "epochgraph.forecast.records",
    "read_table": "epochgraph.forecast.population",
    "from_table": "epochgraph.forecast.population",
    "write_table": "epochgraph.forecast.population",
    "run_compare": "epochgraph.forecast.compare",
    "fit_forecaster": "epochgraph.forecast.registry",
    "log_forecaster": "epochgraph.forecast.registry",
    "load_forecaster": "epochgraph.forecast.registry",
    "Recalibration": "epochgraph.forecast.recalibration",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
