"""A recorded population as one compact table: a row per (training run, epoch).

Reading a population back from MLflow means a metric-history query per run and metric and a weights
download per epoch (minutes); the table holds what the comparison and the pruner replay read, so that
they rerun in seconds without retraining:

* run columns (repeated on each row): ``experiment``, ``run_id``, ``run_name``, the searched
  hyperparameters (``optim.lr``, ``optim.momentum``, ``optim.weight_decay``, ``model.dropout``,
  ``trainer.batch_size``, ``seed``), ``model``, ``model.width``, ``dataset``, ``final_acc`` (the label
  metric, ``final_val_acc`` by default), ``test_acc``, ``diverged``;
* epoch columns: ``epoch`` (1-based), the learning curve (``val_acc``, ``val_loss``, ``train_acc``,
  ``train_loss``), the signature (``sig/<centrality>/<aggregator>``, ``sig/nonfinite``), the timings
  (``time/epoch_s``, ``time/graph_s``) and the paper's weight baselines as float lists (``b_wl``,
  ``b_what``, ``b_wprime``, ``unrolled``; empty where unavailable).

Written as Parquet (list columns, float32 lists for the weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.predictor import CURVE_METRICS, VALUE_CLIP, WEIGHT_SOURCES
from epochgraph.forecast.records import RunRecord, trained_epochs
from epochgraph.graph.signature import AGGREGATORS, NONFINITE, metric_name

SEARCHED = ("optim.lr", "optim.momentum", "optim.weight_decay", "model.dropout", "trainer.batch_size", "seed")
DESCRIBED = ("model.name", "model.width", "data.name", "data.train_size", "trainer.epochs")
TIMINGS = ("time/epoch_s", "time/graph_s")
CENTRALITY_COLUMNS = tuple(metric_name(c, a) for c in ("degree", "eigenvector") for a in AGGREGATORS)
LR = "lr"  # the LR each epoch ran at (optim.schedule), logged by the trainer
EXTRA_METRICS = (*TIMINGS, "test_acc", LR)  # read from MLflow beside the signature and the curve
EPOCH_COLUMNS = (*CURVE_METRICS, *CENTRALITY_COLUMNS, NONFINITE, *TIMINGS, LR)


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _value(values: Sequence[Any], i: int) -> float:
    v = values[i] if i < len(values) else None
    return math.nan if v is None else float(v)


def _float32(values: Any) -> list[float]:
    """float32 values; finite ones beyond the predictor's clip (a diverged run's weights) are clipped
    first, so that casting never turns them into inf: the predictor sees what it sees from MLflow."""
    a = np.array(values, dtype=float).reshape(-1)
    finite = np.isfinite(a)
    a[finite] = np.clip(a[finite], -VALUE_CLIP, VALUE_CLIP)
    return a.astype(np.float32).tolist()


def _is_sequence(value: Any) -> bool:
    """A weight-baseline cell: a list or array (a table without that column reads NaN when concatenated)."""
    return value is not None and not isinstance(value, (float, int)) and hasattr(value, "__len__")


def _last(values: Sequence[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return finite[-1] if finite else math.nan


def to_table(runs: Iterable[RunRecord], experiment: str) -> pd.DataFrame:
    """The long table of ``runs`` (from `epochgraph.forecast.compare.load_runs` with ``extra_metrics=EXTRA_METRICS``),
    epochs 1 to the last with a val_acc."""
    rows = []
    for run in runs:
        length = trained_epochs(run.history)
        head = {"experiment": experiment, "run_id": run.run_id, "run_name": run.tags.get("mlflow.runName", ""),
                "model": run.tags.get("model", run.params.get("model.name", "")),
                "dataset": run.tags.get("dataset", run.params.get("data.name", "")),
                **{k: _number(run.params.get(k)) for k in (*SEARCHED, *DESCRIBED)},
                "final_acc": run.final_acc, "test_acc": _last(run.history.get("test_acc", [])),
                "diverged": run.tags.get("diverged") == "true"}
        for i in range(length):
            row = {**head, "epoch": i + 1}
            for key in EPOCH_COLUMNS:
                row[key] = _value(run.history.get(key, []), i)
            for source in WEIGHT_SOURCES:
                per_epoch = run.history.get(source)
                v = per_epoch[i] if per_epoch is not None and i < len(per_epoch) else None
                row[source] = [] if v is None else _float32(v)
            rows.append(row)
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as Parquet (``path`` gets a ``.parquet`` suffix); returns the path written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path).with_suffix(".parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    floats = pa.list_(pa.float32())
    for source in WEIGHT_SOURCES:  # the weights are float32: storing them as such halves the file
        if source in table.column_names:
            i = table.schema.get_field_index(source)
            table = table.set_column(i, pa.field(source, floats), table.column(source).cast(floats))
    pq.write_table(table, path, compression="zstd", compression_level=19)
    return path


def table_paths(path: str | Path) -> list[Path]:
    """The Parquet files of a table: the file itself, or every ``*.parquet`` of a folder (one per population)."""
    path = Path(path)
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by `write_table`, or a folder of them (one file per population, concatenated);
    one-line error when it is missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        files = table_paths(path)
        if not files:
            raise EpochgraphError(f"population folder {str(path)!r} holds no .parquet table; export some with "
                                  f"'make bench' (bench.steps=[export])")
        return pd.concat([read_table(f) for f in files], ignore_index=True)
    if not path.is_file():
        raise EpochgraphError(f"population table {str(path)!r} does not exist; export one with "
                              f"'make bench' (bench.steps=[export]) or point table=<path> at it")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several kinds for a truncated or foreign file
        raise EpochgraphError(f"population table {str(path)!r} is not readable Parquet "
                              f"({str(err).splitlines()[0][:120]}); export it again") from None


def from_table(df: pd.DataFrame, experiments: Sequence[str] | None = None) -> list[RunRecord]:
    """`RunRecord`s rebuilt from the table (the runs of ``experiments`` only, when given), in table order."""
    if experiments is not None:
        known = sorted(set(df["experiment"]))
        missing = [e for e in experiments if e not in known]
        if missing:
            raise EpochgraphError(f"experiment {missing[0]!r} is not in the population table; it holds "
                                  f"{', '.join(known) or 'none'} (set experiment=<one of them>)")
        df = df[df["experiment"].isin(list(experiments))]
    records = []
    n_epochs = int(df["epoch"].max()) if len(df) else 0
    for run_id, g in df.groupby("run_id", sort=False):
        g = g.sort_values("epoch")
        first = g.iloc[0]
        params = {k: str(int(first[k]) if isinstance(first[k], float) and float(first[k]).is_integer() else first[k])
                  for k in (*SEARCHED, *DESCRIBED) if k in g and not pd.isna(first[k])}
        tags = {"model": str(first.get("model", "")), "dataset": str(first.get("dataset", "")),
                "mlflow.runName": str(first.get("run_name", run_id)),
                "diverged": str(bool(first.get("diverged", False))).lower()}
        # as `load_runs` reads MLflow: epochs after a run's end are NaN, its weight baselines repeat the
        # last snapshot
        pad = [math.nan] * (n_epochs - len(g))
        history: dict[str, list[Any]] = {k: g[k].astype(float).tolist() + pad for k in EPOCH_COLUMNS if k in g}
        history["test_acc"] = [math.nan] * (len(g) - 1) + [float(first.get("test_acc", math.nan))] + pad
        notes: dict[str, str] = {}
        for source in WEIGHT_SOURCES:
            if source in g:
                values = [np.asarray(v, dtype=float) if _is_sequence(v) and len(v) else None for v in g[source]]
                if any(v is not None for v in values):
                    history[source] = values + [values[-1]] * len(pad)
                else:
                    notes[source] = "no weights"
        records.append(RunRecord(str(run_id), params, tags, history, float(first["final_acc"]), notes))
    if not records:
        raise EpochgraphError("the population table holds no runs; record some with 'make bench'")
    return records


def export_experiment(tracking_uri: str, experiment: str | Sequence[str], output: str | Path,
                      population: str | None = None) -> Path:
    """Write the trainings of an MLflow experiment (or several, pooled) that ran to their end as a population
    table (``epochgraph-export``): a sweep's complete trials, resumed ones included; pruned and paused trials
    are left out (a population holds final accuracies) and counted in the line printed."""
    from epochgraph.forecast.records import experiment_ids, experiment_names, load_runs
    from epochgraph.store import tracking

    client = tracking.get_client(tracking_uri)
    names = experiment_names(experiment)
    ids = experiment_ids(client, names)
    finished = client.search_runs(ids, "attributes.status = 'FINISHED'", max_results=50000)
    trainings = [r for r in finished if r.data.tags.get("epochgraph.role") != "sweep"]
    left_out = sum(r.data.tags.get("pruned") == "true" for r in trainings)
    epochs = max((int(float(r.data.params.get("trainer.epochs", 0) or 0)) for r in trainings), default=0)
    epochs = max(epochs, max((int(r.data.metrics.get("epochs_run", 0)) for r in trainings), default=0), 1)
    runs = load_runs(client, names, epochs, extra_metrics=EXTRA_METRICS)
    df = to_table(runs, population or "+".join(names))
    path = write_table(df, output)
    print(f"{path}: {len(runs)} trainings of {'+'.join(names)} (up to {epochs} epochs) as population "
          f"{population or '+'.join(names)!r}; {left_out} pruned or paused trials left out", flush=True)
    return path
