"""The pruning benchmark behind ``make bench`` (`conf/bench/bench.yaml`): record populations of trainings,
export them as one table, compare forecasters on it, replay it through every pruner, and measure the
graph stage against training.

Each step reads what the previous one left (the MLflow store, then the table), so any step can be rerun
alone, and the population step only trains the seeds not yet FINISHED in the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from epochgraph.bench.calibration import calibration_all
from epochgraph.bench.draws import draws_all
from epochgraph.bench.forecast_scores import forecast_scores
from epochgraph.bench.hybrid import hybrid_scores
from epochgraph.bench.paper import paper_protocol
from epochgraph.bench.populations import build_population, compare_populations, export_table
from epochgraph.bench.pruning import replay_all
from epochgraph.bench.summary import summary
from epochgraph.bench.timing import graph_stage_bench, timing
from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.paths import CONF_DIR
from epochgraph.store import tracking

log = logging.getLogger("epochgraph")


STEPS = ("graph_stage", "population", "export", "compare", "paper", "forecast", "replay", "draws", "calibration",
         "hybrid", "timing", "summary")


def settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``bench`` section with ``quick_settings`` merged in when ``bench.quick`` (and checked)."""
    b = OmegaConf.create(dict(cfg["bench"]))
    uri = cfg["mlflow"]["tracking_uri"]
    if b.quick:
        quick = OmegaConf.to_container(b.quick_settings, resolve=True)
        uri = quick.pop("tracking_uri", uri)
        b.populations = quick.pop("populations")  # replaced, not merged: the quick run has its own list
        b = OmegaConf.merge(b, quick)
    out = OmegaConf.to_container(b, resolve=True)
    out["tracking_uri"] = uri
    out["experiment"] = cfg["mlflow"].get("experiment", "bench")
    for step in out["steps"]:
        if step not in STEPS:
            raise choice_error("bench step", step, STEPS, key="bench.steps")
    if out["quick"]:  # the graph-stage benchmark takes minutes: the quick run reads its committed results
        out["steps"] = [s for s in out["steps"] if s != "graph_stage"]
    if not out["populations"]:
        raise EpochgraphError("bench.populations is empty; name a preset and its size, "
                              "e.g. bench.populations={population_lenet: 64}")
    for name, n in out["populations"].items():
        if not (Path(CONF_DIR) / "experiment" / f"{name}.yaml").is_file():
            raise EpochgraphError(f"bench.populations names {name!r}, which is not a preset in "
                                  f"conf/experiment/; add conf/experiment/{name}.yaml or drop it")
        if int(n) < 1:
            raise EpochgraphError(f"bench.populations.{name}={n} must be >= 1 trainings")
    if int(out["workers"]) < 1:
        raise EpochgraphError(f"bench.workers={out['workers']} must be >= 1")
    return out


def run_steps(b: Mapping[str, Any], command: str) -> None:
    """The steps of ``bench.steps``, in the order of `STEPS`."""
    def finish(b: Mapping[str, Any]) -> None:
        summary(b, command)
        run_id = log_results(b)
        print(f"[bench] results in {b['results']}/ and MLflow run {run_id} (experiment {b['experiment']})")

    actions = {"graph_stage": graph_stage_bench, "population": build_population, "export": export_table,
               "compare": compare_populations, "paper": paper_protocol,
               "forecast": forecast_scores, "replay": replay_all, "draws": draws_all, "calibration": calibration_all,
               "hybrid": hybrid_scores,
               "timing": timing, "summary": finish}
    for step in STEPS:
        if step in b["steps"]:
            actions[step](b)


def log_results(b: Mapping[str, Any]) -> str:
    """One MLflow run in experiment ``bench`` holding the result files (tables, plots, JSON)."""
    import mlflow

    client = tracking.get_client(b["tracking_uri"])
    exp_id = tracking.experiment_id(client, b["experiment"])
    results = Path(b["results"])
    name = "pruning-benchmark" + ("-quick" if b["quick"] else "")
    with mlflow.start_run(experiment_id=exp_id, run_name=name) as run:
        mlflow.set_tags({"epochgraph.role": "bench", "populations": ",".join(b["populations"])})
        mlflow.log_params({"populations": json.dumps(b["populations"]), "orders": b["replay"]["orders"],
                           "compare.epochs": b["compare"]["epochs"], "tables": b["tables"]})
        for f in sorted([*results.glob("*.md"), *results.glob("*.png")]):
            mlflow.log_artifact(str(f))
        for sub in ("replay", "paper", "draws", "calibration", "hybrid"):
            if (results / sub).is_dir():
                mlflow.log_artifacts(str(results / sub), artifact_path=sub)
        return run.info.run_id
