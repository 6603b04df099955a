"""The benchmark's populations: trainings recorded through the real commands (resumable: only the seeds
not yet FINISHED in the store are trained), exported as one table per population, and compared (Q1)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from epochgraph.bench._run import call
from epochgraph.errors import EpochgraphError
from epochgraph.forecast.predictor import WEIGHT_SOURCES
from epochgraph.forecast.records import load_runs
from epochgraph.store import tracking

MAX_EPOCHS = 1000  # read window for the MLflow histories; the table keeps each run's own epochs


def recorded_seeds(client: Any, experiment: str) -> set[int]:
    """Seeds of the FINISHED, unpruned trainings already in ``experiment`` (none if it does not exist)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=50000)
    return {int(float(r.data.params["seed"])) for r in runs
            if "seed" in r.data.params and r.data.tags.get("pruned") != "true"
            and r.data.tags.get("epochgraph.role") != "sweep"}


def train_command(preset: str, seeds: Sequence[int], b: Mapping[str, Any]) -> list[str]:
    """The ``epochgraph-train`` multirun that records ``seeds`` of ``preset``."""
    workers = int(b["workers"])
    launcher = (["hydra/launcher=local_workers", f"hydra.launcher.n_jobs={workers}", "trainer.threads=1"]
                if workers > 1 else [])
    return [sys.executable, "-m", "epochgraph.cli.train", "-m", f"+experiment={preset}",
            f"seed={','.join(str(s) for s in seeds)}", f"mlflow.tracking_uri={b['tracking_uri']}",
            f"hydra.sweep.dir=multirun/bench/{preset}/${{now:%Y-%m-%d_%H-%M-%S}}", *launcher,
            *b["train_overrides"]]


def population_table(b: Mapping[str, Any], preset: str) -> Path:
    """Where the table of one population lives: ``<bench.tables>/<preset>.parquet``."""
    return Path(b["tables"]) / f"{preset}.parquet"


def table_seeds(b: Mapping[str, Any], preset: str) -> set[int]:
    """Seeds of ``preset`` already in its committed table (none when there is no table)."""
    from epochgraph.forecast.population import read_table

    path = population_table(b, preset)
    if not path.is_file():
        return set()
    return {int(s) for s in read_table(path)["seed"].dropna().unique()}


def build_population(b: Mapping[str, Any]) -> dict[str, int]:
    """Train the missing seeds of every population; returns preset -> trainings recorded."""
    # the store and experiments are created here: parallel workers would race to create their tables
    client = tracking.get_client(b["tracking_uri"])
    counts = {}
    for preset, n in b["populations"].items():
        tabled = table_seeds(b, preset)
        if all(s in tabled for s in range(int(n))):
            print(f"[bench] {preset}: all {n} trainings are in {population_table(b, preset)}; nothing to train "
                  f"(delete the file to record it again)", flush=True)
            counts[preset] = int(n)
            continue
        tracking.experiment_id(client, preset)
        have = recorded_seeds(client, preset)
        missing = [s for s in range(int(n)) if s not in have]
        print(f"[bench] {preset}: {int(n) - len(missing)} of {n} trainings recorded, "
              f"{len(missing)} to train", flush=True)
        if missing:
            call(train_command(preset, missing, b), f"the trainings of {preset}",
                  "; run make bench again to resume with the seeds still missing")
        lost = sorted(set(range(int(n))) - recorded_seeds(client, preset))
        if lost:
            raise EpochgraphError(f"{preset}: seeds {lost[:10]} did not finish (FAILED or KILLED in the MLflow "
                                  f"store); run make bench again to retry them")
        counts[preset] = int(n)
    return counts


def trim_weights(df: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """The weight baselines kept for epochs 1..``epochs`` only (the forecasts read t <= compare.epochs): a
    wide last layer (AlexNet's 5,130 weights) would otherwise take a table past what a repository holds."""
    from epochgraph.forecast.predictor import WEIGHT_SOURCES

    df = df.copy()
    for source in WEIGHT_SOURCES:
        if source in df:
            df[source] = [v if e <= epochs else [] for v, e in zip(df[source], df["epoch"])]
    return df


def export_table(b: Mapping[str, Any]) -> pd.DataFrame:
    """Read every population from MLflow (histories and weights) and write its table; a population with
    no FINISHED training in the store keeps the table it has (recorded elsewhere, committed)."""
    from epochgraph.forecast.population import EXTRA_METRICS, read_table, to_table, write_table

    client = tracking.get_client(b["tracking_uri"])
    frames = []
    for preset, n in b["populations"].items():
        path = population_table(b, preset)
        if not recorded_seeds(client, preset):
            if not path.is_file():
                raise EpochgraphError(f"{preset}: no training in the MLflow store {b['tracking_uri']} and no "
                                      f"table {path}; record it first (bench.steps=[population])")
            print(f"[bench] {preset}: kept {path} (nothing of it in the MLflow store)", flush=True)
            frames.append(read_table(path))
            continue
        runs = load_runs(client, preset, MAX_EPOCHS, weight_sources=WEIGHT_SOURCES, extra_metrics=EXTRA_METRICS)
        runs = [r for r in runs if int(float(r.params.get("seed", -1))) < int(n)]
        df = trim_weights(to_table(runs, preset), int(b["weight_epochs"]))
        path = write_table(df, path)
        print(f"[bench] table {path}: {df['run_id'].nunique()} runs, {len(df)} rows, "
              f"{path.stat().st_size / 2**20:.1f} MB", flush=True)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def compare_populations(b: Mapping[str, Any]) -> None:
    """``epochgraph-compare`` on the table, one population at a time, t = 1..compare.epochs."""
    for preset in b["populations"]:
        cmd = [sys.executable, "-m", "epochgraph.cli.compare", f"experiment={preset}",
               f"table={population_table(b, preset)}",
               f"epochs={b['compare']['epochs']}", f"output_dir={Path(b['results']) / 'compare' / preset}",
               f"mlflow.tracking_uri={b['tracking_uri']}", f"n_jobs={b['workers']}", *b["compare"]["overrides"]]
        call(cmd, f"epochgraph-compare on {preset}")
