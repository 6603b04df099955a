"""The package's old module paths, kept importable after its modules moved into folders.

Forecasters and predictors registered in the MLflow Model Registry are pickles that name the module a
class was defined in (``epochgraph.predictor.SignaturePredictor``, ...); a user's code may import the old
paths too. Each old path resolves to the module that now holds the code: the same module object, so
classes and functions are identical under both names. ``epochgraph.forecast`` itself is now the folder,
which exports `FinalAccuracyForecaster` as the old module did.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED = {
    "epochgraph.topology": "epochgraph.graph.topology",
    "epochgraph.rolled_graph": "epochgraph.graph.rolled_graph",
    "epochgraph.centrality": "epochgraph.graph.centrality",
    "epochgraph.signature": "epochgraph.graph.signature",
    "epochgraph.baselines": "epochgraph.graph.baselines",
    "epochgraph.graph_drawing": "epochgraph.graph.graph_drawing",
    "epochgraph.graph_stage": "epochgraph.graph.graph_stage",
    "epochgraph.predictor": "epochgraph.forecast.predictor",
    "epochgraph.population": "epochgraph.forecast.population",
    "epochgraph.compare": "epochgraph.forecast.compare",
    "epochgraph.pruner": "epochgraph.search.pruner",
    "epochgraph.forecast_pruner": "epochgraph.search.forecast_pruner",
    "epochgraph.topk_pruner": "epochgraph.search.topk_pruner",
    "epochgraph.trial": "epochgraph.search.trial",
    "epochgraph.sampler": "epochgraph.search.sampler",
    "epochgraph.sweep_report": "epochgraph.search.sweep_report",
    "epochgraph.data": "epochgraph.training.data",
    "epochgraph.job": "epochgraph.training.job",
    "epochgraph.storage": "epochgraph.store.storage",
    "epochgraph.tracking": "epochgraph.store.tracking",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path (no second copy is executed)."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._specs = getattr(self, "_specs", {})
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the old path's spec on the module: give it back its own
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


_FINDER = _Alias()


def install() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
