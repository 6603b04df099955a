"""Where results go: MLflow tracking (runs, metrics, weights artifacts) and the Optuna study storage."""

from epochgraph._lazy import lazy_exports

_EXPORTS = {
    "make_storage": "epochgraph.store.storage",
    "get_client": "epochgraph.store.tracking",
    "mlflow_run": "epochgraph.store.tracking",
    "weights_artifact": "epochgraph.store.tracking",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
