"""The benchmark (`make bench`): recording populations, replaying studies through pruners, the paper's
protocol, forecast scores, timing and the summary. Product code never imports it."""

from epochgraph._lazy import lazy_exports

_EXPORTS = {
    "run_steps": "epochgraph.bench.benchmark",
    "settings": "epochgraph.bench.benchmark",
    "replay_orders": "epochgraph.search.replay",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
