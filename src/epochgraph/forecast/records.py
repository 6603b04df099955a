"""Recorded trainings as the forecasters see them: `RunRecord`, read from MLflow runs.

`load_runs` reads the finished, unpruned runs of one or several MLflow experiments (metric histories,
and with ``weight_sources`` the paper's weight baselines computed from the weights artifacts); the
population tables (`epochgraph.forecast.population`) hold the same records in one file.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.predictor import CURVE_METRICS
from epochgraph.graph.baselines import OverBudget, b_what, b_wl, b_wprime, unrolled_degree
from epochgraph.graph.signature import AGGREGATORS, NONFINITE, aggregate, metric_name
from epochgraph.graph.tracing import topology_of
from epochgraph.models import model_from_params
from epochgraph.store.tracking import load_weights, weights_epochs

__all__ = ["RunRecord", "experiment_names", "load_runs", "matches", "trained_epochs"]


@dataclass
class RunRecord:
    """One recorded training: its params, tags, per-epoch history and final accuracy."""

    run_id: str
    params: dict[str, str]
    tags: dict[str, str]
    history: dict[str, list[Any]]
    final_acc: float
    notes: dict[str, str] = field(default_factory=dict)  # why a weight baseline is unavailable


def trained_epochs(history: Mapping[str, Sequence[Any]]) -> int:
    """Epochs a run trained: up to its last finite val_acc (a diverged run stops early), 0 without any."""
    values = history.get("val_acc", [])
    return max((i + 1 for i, v in enumerate(values) if v is not None and math.isfinite(v)), default=0)


def _history_keys(centralities: Sequence[str]) -> list[str]:
    return [metric_name(c, a) for c in centralities for a in AGGREGATORS] + [NONFINITE, *CURVE_METRICS]


def _same(have: str, want: Any) -> bool:
    try:
        return math.isclose(float(have), float(want))
    except (TypeError, ValueError):
        return str(have) == str(want)


def matches(run: RunRecord, flt: Mapping[str, Any] | None) -> bool:
    """Whether every ``key: value`` of ``flt`` holds for the run's params or tags (a list: any of them)."""
    if not flt:
        return True
    for key, want in flt.items():
        have = run.params.get(key, run.tags.get(key))
        if have is None:
            return False
        wants = want if isinstance(want, (list, tuple)) else [want]
        if not any(_same(have, w) for w in wants):
            return False
    return True


def experiment_names(experiment: str | Sequence[str]) -> list[str]:
    """``experiment=<name>`` or ``experiment=[a,b]`` (runs pooled, e.g. two architectures for Q2)."""
    return [experiment] if isinstance(experiment, str) else [str(e) for e in experiment]


def experiment_ids(client: Any, experiment: str | Sequence[str]) -> list[str]:
    """The ids of the MLflow experiments named (a name or a list); one line naming an unknown one."""
    ids = []
    for name in experiment_names(experiment):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise EpochgraphError(f"unknown MLflow experiment {name!r}; existing: {', '.join(names) or 'none'} "
                                  f"(set experiment=<name>)")
        ids.append(exp.experiment_id)
    return ids


def load_runs(client: Any, experiment: str | Sequence[str], epochs: int, label_metric: str = "final_val_acc",
              centralities: Sequence[str] = ("degree", "eigenvector"), weight_sources: Sequence[str] = (),
              unrolled_budget: int = 2 * 1024**3, extra_metrics: Sequence[str] = ()) -> list[RunRecord]:
    """The finished, unpruned training runs of ``experiment`` (a name or a list) with their first ``epochs`` epochs.

    Sweep parent runs (tag ``epochgraph.role=sweep``), pruned trials and runs without ``val_acc`` are
    skipped. A run's final accuracy is its ``label_metric`` (default ``final_val_acc``, the validation
    accuracy after its last epoch), or its last ``val_acc`` when that metric is absent. ``extra_metrics``
    (e.g. ``time/epoch_s``) are read into the history beside the signature and the learning curve.
    """
    ids = experiment_ids(client, experiment)
    runs = client.search_runs(ids, filter_string="attributes.status = 'FINISHED'", max_results=50000)
    records = []
    keys = [*_history_keys(centralities), *extra_metrics]
    for run in tqdm(runs, desc="reading runs", unit="run", file=sys.stderr):
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get("pruned") == "true" or tags.get("epochgraph.role") == "sweep" or "val_acc" not in metrics:
            continue
        history: dict[str, list[Any]] = {}
        for key in keys:
            values = [math.nan] * epochs
            for m in client.get_metric_history(run.info.run_id, key):
                if 1 <= m.step <= epochs:
                    values[m.step - 1] = m.value
            history[key] = values
        final = metrics.get(label_metric, metrics.get("val_acc"))
        rec = RunRecord(run.info.run_id, dict(run.data.params), dict(tags), history, float(final))
        if weight_sources:
            _add_weight_features(client, rec, epochs, weight_sources, unrolled_budget)
        records.append(rec)
    if not records:
        name = "+".join(experiment_names(experiment))
        raise EpochgraphError(f"experiment {name!r} has no finished training runs; "
                              f"record some with epochgraph-train mlflow.experiment={experiment_names(experiment)[0]}")
    return records


def _add_weight_features(client: Any, rec: RunRecord, epochs: int, sources: Sequence[str], budget: int) -> None:
    """Per-epoch B_Wl, B_What, B_W' and unrolled-degree aggregates from the weights artifacts.

    Stored in ``rec.history[source]`` (None for an epoch without a snapshot). Epochs after the run's last
    snapshot (a run that stopped early, e.g. diverged) repeat that snapshot; an epoch before it whose
    weights were not kept (``mlflow.keep_weights``) stays None. A run whose model cannot be rebuilt or
    whose weights artifact is missing or corrupt is named in one line on stderr and gets no weight
    features.
    """
    def skip(err: Exception) -> None:
        rec.notes.update({s: "no weights" for s in sources})
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        msg = msg.removeprefix(f"run {rec.run_id}: ")
        print(f"epochgraph: run {rec.run_id} skipped for the weight baselines: {msg}", file=sys.stderr)

    try:
        available = weights_epochs(client, rec.run_id)
        model = model_from_params(rec.params)
    except EpochgraphError as err:
        skip(err)
        return
    if not available:
        skip(EpochgraphError("it has no weights artifacts (trained with mlflow.log_weights=false?)"))
        return
    topo = topology_of(model)
    per_source: dict[str, list[Any]] = {s: [None] * epochs for s in sources}
    unrolled_ok = "unrolled" in sources
    last_snapshot = max(available)
    last: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(1, epochs + 1):
            if epoch not in available:
                if epoch > last_snapshot:
                    for s in sources:
                        per_source[s][epoch - 1] = last.get(s)
                continue
            try:
                sd = load_weights(client, rec.run_id, available[epoch], str(Path(tmp) / str(epoch)))
            except EpochgraphError as err:
                skip(err)
                return
            feats = {"b_wl": b_wl, "b_what": b_what, "b_wprime": b_wprime}
            for s in sources:
                if s in feats:
                    per_source[s][epoch - 1] = last[s] = feats[s](topo, sd)
            if unrolled_ok:
                try:
                    model.load_state_dict(sd)
                    deg = unrolled_degree(model, int(rec.params.get("data.in_channels", 1)),
                                          int(rec.params.get("data.image_size", 28)), budget)
                    per_source["unrolled"][epoch - 1] = last["unrolled"] = aggregate(deg)
                except OverBudget:
                    unrolled_ok, rec.notes["unrolled"] = False, "over budget"
                except EpochgraphError:  # a layer or wiring the unrolled graph does not cover
                    unrolled_ok, rec.notes["unrolled"] = False, "unsupported"
    for s in sources:
        if s != "unrolled" or unrolled_ok:
            rec.history[s] = per_source[s]
