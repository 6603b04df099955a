"""Graph signatures (paper S3): five aggregators of each centrality per snapshot, and their temporal
concatenation up to epoch t in three variants.

Aggregators, per centrality vector x (one value per node): median, mean, std (population, ddof=0),
skewness and kurtosis (``scipy.stats.skew`` / ``scipy.stats.kurtosis`` with their defaults: biased
moment estimators, ``bias=True``, and Fisher's kurtosis, so a normal distribution has 0). A vector
with zero spread (std <= 1e-12 * max(1, |mean|)) has skewness and kurtosis 0 instead of scipy's NaN.

Weights with NaN or inf give a defined signature, never an exception: every value NaN and the flag
``sig/nonfinite`` = 1.0 (0.0 otherwise).

Temporal signature up to epoch t (`TemporalSignature`): s^t = s^(1) (+) ... (+) s^(t), where s^(tau)
is, per variant,

* ``plain``: the snapshot signature of epoch tau;
* ``wavg``: sum_{j<=tau} j s^(j) / sum_{j<=tau} j (linearly weighted average);
* ``expavg``: alpha s^(tau) + (1 - alpha) s^(tau-1), recursively over the already averaged s^(tau-1),
  starting from s^(1).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.graph.centrality import (
    CENTRALITIES,
    eigenvector_centrality_arrays,
    eigenvector_centrality_blocks,
    eigenvector_centrality_persistent,
    weighted_degree_arrays,
    weighted_degree_blocks,
    weighted_degree_persistent,
)
from epochgraph.graph.rolled_graph import BlockGraph, PersistentRolledGraph, block_graph, edge_arrays
from epochgraph.graph.topology import Topology
from epochgraph.graph.tracing import topology_of

AGGREGATORS = ("median", "mean", "std", "skewness", "kurtosis")
VARIANTS = ("plain", "wavg", "expavg")
NONFINITE = "sig/nonfinite"
BACKENDS = ("auto", "graph_tool", "arrays", "blocks")
# "auto" uses the graph-tool engine up to this many edges, the blocks engine above: every zoo model
# at widths up to 2 stays on graph-tool (the largest, VGG-16 at width 2, has 7.6M edges), while at
# 14M-20M edges the blocks path is several times faster per epoch and needs no graph in memory
# (bench/results/graph_stage.md, "Choosing the engine by size")
AUTO_BLOCKS_EDGES = 10_000_000


def metric_name(centrality: str, aggregator: str) -> str:
    """The metric key of one signature value: ``sig/<centrality>/<aggregator>``."""
    return f"sig/{centrality}/{aggregator}"


def aggregate(values: np.ndarray) -> np.ndarray:
    """The five aggregators of a centrality vector, in `AGGREGATORS` order."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return np.full(len(AGGREGATORS), np.nan)
    std = values.std()
    if std <= 1e-12 * max(1.0, abs(values.mean())):
        skew = kurt = 0.0
    else:
        skew, kurt = float(stats.skew(values)), float(stats.kurtosis(values))
    return np.array([np.median(values), values.mean(), std, skew, kurt])


def check_centralities(centralities: Sequence[str]) -> tuple[str, ...]:
    """The centralities as a tuple; an unknown or empty choice is an `EpochgraphError`."""
    if isinstance(centralities, str):
        centralities = (centralities,)
    for c in centralities:
        if c not in CENTRALITIES:
            raise choice_error("centrality", c, CENTRALITIES, key="graph.centralities")
    if not centralities:
        raise EpochgraphError("graph.centralities is empty; use e.g. graph.centralities=[degree,eigenvector]")
    return tuple(centralities)


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the BLAS libraries numpy and scipy loaded (None without threadpoolctl)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return None
    return ThreadpoolController()


def one_blas_thread() -> contextlib.AbstractContextManager:
    """Run the graph stage's BLAS calls on one thread: its matrices are small or memory-bound, and idle
    OpenBLAS threads spinning beside torch's own thread pool slowed it several-fold (see the bench)."""
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller is not None else contextlib.nullcontext()


def _finite(t: torch.Tensor) -> bool:
    # a NaN or inf entry makes the sum non-finite, so a finite sum proves every entry finite without
    # the full-size boolean mask; only a sum that overflowed needs the entrywise check
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _all_finite(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when every floating-point tensor of the snapshot holds only finite values."""
    tensors = (torch.as_tensor(v) for v in state_dict.values())
    return all(_finite(t) for t in tensors if t.is_floating_point())


def resolve_backend(topology: Topology, backend: str = "auto") -> str:
    """The engine that computes the signatures: ``backend`` itself, or for ``auto`` the graph-tool
    engine up to `AUTO_BLOCKS_EDGES` edges (every zoo model at widths up to 2) and the blocks above."""
    if backend not in BACKENDS:
        raise choice_error("graph backend", backend, BACKENDS, key="graph.backend")
    if backend != "auto":
        return backend
    return "blocks" if topology.num_edges > AUTO_BLOCKS_EDGES else "graph_tool"


class SignatureEngine:
    """Computes the snapshot signatures of one model's epochs, keeping its rolled graph between them.

    ``engine`` is what computes them (``backend`` resolved by `resolve_backend`):

    * ``graph_tool``: a `PersistentRolledGraph` built at the first snapshot and given each later
      snapshot's weights in place; weighted degree from graph-tool, eigenvector centrality by Lanczos on
      graph-tool's adjacency matrix (kept, values rewritten);
    * ``arrays``: the edge arrays and a scipy CSR adjacency, rebuilt every snapshot;
    * ``blocks``: one dense weight block per layer pair, rebuilt every snapshot (Lanczos on block
      products: the fastest on very large graphs).

    All agree with a graph-tool graph built from scratch to 1e-9 (tests); see
    bench/results/graph_stage.md for their speed.

    >>> from epochgraph.graph.tracing import topology_of
    >>> from epochgraph.models import build_model
    >>> model = build_model("lenet", in_channels=1, image_size=28)
    >>> engine = SignatureEngine(topology_of(model))
    >>> engine.engine
    'graph_tool'
    >>> sig = engine.signature(model.state_dict())  # epoch 1 builds the graph; later ones update it
    >>> sorted(engine.vectors), len(engine.vectors["degree"])
    (['degree', 'eigenvector'], 237)

    Args:
        topology: the model's `Topology` (every snapshot must be of this model).
        centralities: which centralities to summarise (``degree``, ``eigenvector``).
        backend: ``auto``, ``graph_tool``, ``arrays`` or ``blocks``.
    """

    def __init__(self, topology: Topology, centralities: Sequence[str] = CENTRALITIES,
                 backend: str = "auto") -> None:
        self.topology = topology
        self.centralities = check_centralities(centralities)
        self.engine = resolve_backend(topology, backend)
        self.graph: PersistentRolledGraph | None = None
        self.blocks: BlockGraph | None = None
        self.vectors: dict[str, np.ndarray] = {}  # the centralities of the last snapshot (empty if non-finite)

    def centrality_vectors(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """``{centrality: value per node}`` of a snapshot with finite weights."""
        if self.engine == "graph_tool":
            if self.graph is None:
                self.graph = PersistentRolledGraph(self.topology, state_dict)
            else:
                self.graph.update(state_dict)
            graph = self.graph
            funcs = {"degree": lambda: weighted_degree_persistent(graph),
                     "eigenvector": lambda: eigenvector_centrality_persistent(graph)}
        elif self.engine == "blocks":
            blocks = self.blocks = block_graph(self.topology, state_dict)
            funcs = {"degree": lambda: weighted_degree_blocks(blocks),
                     "eigenvector": lambda: eigenvector_centrality_blocks(blocks)}
        else:
            edges = edge_arrays(self.topology, state_dict)
            funcs = {"degree": lambda: weighted_degree_arrays(edges),
                     "eigenvector": lambda: eigenvector_centrality_arrays(edges)}
        with one_blas_thread():
            return {c: funcs[c]() for c in self.centralities}

    def signature(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """``{"sig/<centrality>/<aggregator>": value, ..., "sig/nonfinite": 0.0 or 1.0}`` of a snapshot;
        its centrality vectors are kept in `vectors`."""
        out = {metric_name(c, a): float("nan") for c in self.centralities for a in AGGREGATORS}
        self.vectors = {}
        if not _all_finite(state_dict):
            out[NONFINITE] = 1.0
            return out
        self.vectors = self.centrality_vectors(state_dict)
        for c, values in self.vectors.items():
            for a, v in zip(AGGREGATORS, aggregate(values)):
                out[metric_name(c, a)] = float(v)
        out[NONFINITE] = 0.0
        return out


def snapshot_signature(topology: Topology, state_dict: Mapping[str, torch.Tensor],
                       centralities: Sequence[str] = CENTRALITIES, backend: str = "auto") -> dict[str, float]:
    """``{"sig/<centrality>/<aggregator>": value, ..., "sig/nonfinite": 0.0 or 1.0}`` of one snapshot,
    on its own (a training keeps one `SignatureEngine` for all its epochs instead)."""
    return SignatureEngine(topology, centralities, backend).signature(state_dict)


_ENGINES: weakref.WeakKeyDictionary[torch.nn.Module, SignatureEngine] = weakref.WeakKeyDictionary()


def graph_signature(model: torch.nn.Module, example_input: torch.Tensor | None = None,
                    centralities: Sequence[str] = CENTRALITIES, backend: str = "auto") -> dict[str, float]:
    """The signature of ``model``'s rolled graph at its current weights, as the graph stage logs it each
    epoch: ``{"sig/<centrality>/<aggregator>": value, ..., "sig/nonfinite": 0.0 or 1.0}``.

    Any feed-forward PyTorch network: its rolled graph is traced from the model (`topology_of`; an
    ``example_input`` batch gives the shapes, default: the first of `example_inputs_for` it runs on).
    The engine is the graph stage's: one persistent graph per model, built at the first call, its
    weights rewritten in place at every later call. A model outside the rolled graph's rules raises
    `UntraceableModel` (one line).

    Examples:
        >>> from epochgraph.models import build_model
        >>> model = build_model("lenet", in_channels=1, image_size=28)
        >>> sorted(graph_signature(model))[:2]
        ['sig/degree/kurtosis', 'sig/degree/mean']
    """
    topology = topology_of(model, example_input)
    engine = _ENGINES.get(model)
    if (engine is None or engine.topology is not topology or engine.centralities != check_centralities(centralities)
            or engine.engine != resolve_backend(topology, backend)):
        engine = _ENGINES[model] = SignatureEngine(topology, centralities, backend)
    return engine.signature(model.state_dict())


def _step_value(item: Any) -> tuple[int | None, float]:
    """(step, value) of one history entry: an MLflow ``Metric``, a ``(step, value)`` pair, or a bare
    value (step None: its position decides its epoch)."""
    if hasattr(item, "step") and hasattr(item, "value"):
        return int(item.step), float(item.value)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return int(item[0]), float(item[1])
    return None, float(item) if item is not None else float("nan")


def _by_epoch(entries: Sequence[Any]) -> dict[int, float]:
    """``{epoch: value}`` of one metric's history; with steps, the last value logged at a step wins."""
    out: dict[int, float] = {}
    for pos, item in enumerate(entries):
        step, value = _step_value(item)
        epoch = pos + 1 if step is None else step
        if epoch < 1:
            raise EpochgraphError(f"signature metric logged at step {epoch}; epochs are numbered from 1")
        out[epoch] = value
    return out


class TemporalSignature:
    """The signatures s^(1), s^(2), ... of one training run, built epoch by epoch.

    It decides what a forecaster sees at epoch t: `vector` is the temporal signature s^t of the paper
    (section 3, S3) under one of the variants ``plain``, ``wavg``, ``expavg``.

    >>> ts = TemporalSignature(["degree"])
    >>> for v in (1.0, 4.0, 7.0):
    ...     ts.append({f"sig/degree/{a}": v for a in AGGREGATORS})
    >>> ts.vector(3, "wavg")[::5].round(3).tolist()   # the median column at tau = 1, 2, 3
    [1.0, 3.0, 5.0]

    Args:
        centralities: the centralities every appended snapshot carries (a subset can be asked of
            `vector` later).
    """

    def __init__(self, centralities: Sequence[str] = CENTRALITIES) -> None:
        self.centralities = check_centralities(centralities)
        self._rows: list[np.ndarray] = []
        self._nonfinite: list[bool] = []

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, signature: Mapping[str, float]) -> None:
        """Add the snapshot signature of the next epoch (missing keys count as NaN)."""
        row = np.array([float(signature.get(metric_name(c, a), np.nan))
                        for c in self.centralities for a in AGGREGATORS])
        self._rows.append(row)
        self._nonfinite.append(bool(signature.get(NONFINITE, 0.0)) or not np.all(np.isfinite(row)))

    @property
    def nonfinite(self) -> bool:
        """True when any snapshot so far came from non-finite weights (or has a missing value)."""
        return any(self._nonfinite)

    @classmethod
    def from_metric_history(cls, history: Mapping[str, Sequence[Any]],
                            centralities: Sequence[str] = CENTRALITIES) -> TemporalSignature:
        """Rebuild from per-metric histories, e.g. read back from MLflow.

        ``history[key]`` is a list of ``(step, value)`` pairs or MLflow ``Metric`` objects (step =
        epoch, 1-based; a step logged twice keeps its last value), or of bare values (index 0 =
        epoch 1). An epoch missing from a metric's history is NaN there.
        """
        ts = cls(centralities)
        keys = [metric_name(c, a) for c in ts.centralities for a in AGGREGATORS]
        series = {k: _by_epoch(history.get(k, ())) for k in [*keys, NONFINITE]}
        length = max((max(series[k], default=0) for k in keys), default=0)
        for epoch in range(1, length + 1):
            snap = {k: series[k].get(epoch, np.nan) for k in keys}
            if epoch in series[NONFINITE]:
                snap[NONFINITE] = series[NONFINITE][epoch]
            ts.append(snap)
        return ts

    def _columns(self, centralities: Sequence[str] | None) -> np.ndarray:
        if centralities is None:
            return np.arange(len(self.centralities) * len(AGGREGATORS))
        chosen = check_centralities(centralities)
        missing = [c for c in chosen if c not in self.centralities]
        if missing:
            raise EpochgraphError(f"centrality {missing[0]!r} was not recorded; this signature holds "
                                  f"{', '.join(self.centralities)}")
        k = len(AGGREGATORS)
        return np.concatenate([np.arange(k) + k * self.centralities.index(c) for c in chosen])

    def matrix(self, t: int, variant: str = "plain", alpha: float = 0.5,
               centralities: Sequence[str] | None = None) -> np.ndarray:
        """``[t, 5 * len(centralities)]``: row tau - 1 is s^(tau) under ``variant`` (module docstring).

        ``centralities`` picks a subset (default: all recorded) in the given order.
        """
        if variant not in VARIANTS:
            raise choice_error("signature variant", variant, VARIANTS, key="variant")
        if not 0 < alpha <= 1:
            raise EpochgraphError(f"alpha={alpha} must be in (0, 1], e.g. alpha=0.5")
        if t < 1 or t > len(self._rows):
            raise EpochgraphError(f"t={t} is outside the {len(self._rows)} recorded epochs")
        s = np.vstack(self._rows[:t])[:, self._columns(centralities)]
        if variant == "plain":
            return s
        if variant == "wavg":
            j = np.arange(1, t + 1, dtype=float)[:, None]
            return np.cumsum(j * s, axis=0) / np.cumsum(j, axis=0)
        out = np.empty_like(s)
        out[0] = s[0]
        for tau in range(1, t):
            out[tau] = alpha * s[tau] + (1 - alpha) * out[tau - 1]
        return out

    def vector(self, t: int, variant: str = "plain", alpha: float = 0.5,
               centralities: Sequence[str] | None = None) -> np.ndarray:
        """The temporal signature s^t = s^(1) (+) ... (+) s^(t) (concatenation) under ``variant``,
        ``5 * len(centralities) * t`` values ordered as `feature_names`."""
        return self.matrix(t, variant, alpha, centralities).reshape(-1)

    def feature_names(self, t: int, centralities: Sequence[str] | None = None) -> list[str]:
        """Names of the entries of `vector`: ``sig/<centrality>/<aggregator>@<tau>``."""
        chosen = self.centralities if centralities is None else check_centralities(centralities)
        return [f"{metric_name(c, a)}@{tau}" for tau in range(1, t + 1) for c in chosen for a in AGGREGATORS]
