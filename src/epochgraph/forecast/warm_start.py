"""The recorded trainings a forecast pruner starts warm from: population tables, read once per machine.

`warm_populations` reads the tables a ``pruner.warm_start`` names (files, or folders of ``*.parquet``; paths
relative to the checkout work from any folder), keeps the populations selected, and gives each training its
planned epochs and LR schedule (`with_plan`). The read is kept on disk, keyed by the tables' contents
(`epochgraph.forecast.warm_cache`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.forecaster import EPOCHS_KEY, SCHEDULE_KEY, History
from epochgraph.forecast.warm_cache import disk_cached, tables_digest
from epochgraph.paths import project_path

__all__ = ["as_list", "warm_histories", "warm_populations", "warm_tables", "with_plan"]


def warm_histories(sources: Sequence[str], experiments: Sequence[str] | None = None,
                   exclude: Sequence[str] = ()) -> list[History]:
    """The trainings of population tables ``sources`` (files, or folders of ``*.parquet``), those of
    ``experiments`` only when given, never those of ``exclude``."""
    return [h for _, h in warm_populations(sources, experiments, exclude)]


def warm_tables(sources: Sequence[str]) -> list[Path]:
    """The population tables ``sources`` name (files, or folders of ``*.parquet``)."""
    paths: list[Path] = []
    for src in sources:
        p = project_path(src)  # the project's committed tables, wherever the command runs
        if not p.exists():
            raise EpochgraphError(f"pruner.warm_start names {src!r}, which does not exist; point it at a population "
                                  f"table or a folder of them (bench/results/populations), or set pruner.warm_start=[]")
        if p.is_dir():
            paths += sorted(p.glob("*.parquet"))
        else:
            paths.append(p)
    if not paths:
        raise EpochgraphError(f"warm_start={list(sources)} holds no population table; point it at a .parquet "
                              f"file or a folder of them (make bench exports bench/results/populations/)")
    return paths


def warm_populations(sources: Sequence[str], experiments: Sequence[str] | None = None,
                     exclude: Sequence[str] = (), digest: str | None = None) -> list[tuple[str, History]]:
    """`warm_histories` with the population (experiment) of each training (read once per machine and tables'
    contents: `epochgraph.forecast.warm_cache`; ``digest``: the tables' `tables_digest`, when already taken)."""
    paths = warm_tables(sources)
    key = {"tables": digest or tables_digest(paths), "experiments": sorted(experiments or ()),
           "exclude": sorted(exclude)}
    histories = disk_cached("warm_populations", key, lambda: _read_populations(paths, experiments, exclude))
    if not histories:
        raise EpochgraphError(f"warm_start={list(sources)} with experiments={list(experiments or [])} and "
                              f"exclude={list(exclude)} leaves no training; widen the selection")
    return histories


def _read_populations(paths: Sequence[Path], experiments: Sequence[str] | None,
                      exclude: Sequence[str]) -> list[tuple[str, History]]:
    from epochgraph.forecast.population import from_table, read_table

    histories: list[tuple[str, History]] = []
    for path in paths:
        df = read_table(path)
        keep = df["experiment"].isin(experiments) if experiments else np.ones(len(df), dtype=bool)
        df = df[keep & ~df["experiment"].isin(list(exclude))]
        if len(df):
            for name in df["experiment"].unique():
                histories += [(str(name), with_plan(r.history, r.params.get("trainer.epochs")))
                              for r in from_table(df, [name])]
    return histories


def with_plan(history: History, epochs: Any = None, schedule: Sequence[float] | None = None) -> dict[str, Any]:
    """``history`` with its planned epochs T and LR schedule (`forecaster.EPOCHS_KEY`, `SCHEDULE_KEY`): the
    schedule given, else the LR it logged at every epoch 1..T (a training that ran to its end), else none."""
    out = dict(history)
    try:
        T = int(float(epochs)) if epochs is not None else None
    except (TypeError, ValueError):
        T = None
    if T:
        out[EPOCHS_KEY] = T
    if schedule is None and T:
        logged = [float(v) for v in (history.get("lr") or [])[:T] if v is not None]
        schedule = logged if len(logged) == T and all(math.isfinite(v) and v > 0 for v in logged) else None
    if schedule:
        out[SCHEDULE_KEY] = list(schedule)
    return out


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """A source or a list of them as a list (None: none)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]
