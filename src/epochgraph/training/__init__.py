"""One training: the data, the loop with its epoch hooks, and the job that wires tracking and the
graph stage around it."""

from epochgraph._lazy import lazy_exports

_EXPORTS = {
    "train": "epochgraph.training.loop",
    "check_config": "epochgraph.training.loop",
    "TrainResult": "epochgraph.training.loop",
    "load_data": "epochgraph.training.data",
    "Splits": "epochgraph.training.data",
    "run_job": "epochgraph.training.job",
    "JobResult": "epochgraph.training.job",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
