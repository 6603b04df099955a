"""Learning curves for tests: synthetic long trainings and the development populations with val_acc alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epochgraph.forecast.records import RunRecord

# the development populations recorded elsewhere, as committed beside ours (their README: sources, licences)
TABLES = Path(__file__).resolve().parents[1] / "bench" / "results" / "populations"
EXTERNAL = [TABLES / f"{name}.parquet" for name in ("baker_metaqnn_cifar10", "baker_resnet_cifar10",
                                                     "garbin_mlp_mnist_e50")]


def synthetic_runs(n: int, epochs: int = 500, seed: int = 0) -> list[RunRecord]:
    """``n`` trainings of ``epochs`` epochs that report val_acc alone: saturating curves with their own
    speed and ceiling, a step LR drop at 60 % of the epochs (a jump, larger for some), noise; a few stay at
    chance level."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, epochs + 1)
    runs = []
    for i in range(n):
        top, tau, jump = rng.uniform(0.4, 0.85), rng.uniform(0.02, 0.4) * epochs, rng.uniform(0.0, 0.12)
        acc = 0.1 + (top - 0.1) * (1 - np.exp(-t / tau)) + jump * (t > 0.6 * epochs)
        acc = np.clip(acc + rng.normal(0, 0.01, epochs), 0.0, 1.0)
        if rng.uniform() < 0.1:
            acc = np.clip(0.1 + rng.normal(0, 0.005, epochs), 0.0, 1.0)
        runs.append(RunRecord(f"syn-{i}", {}, {}, {"val_acc": acc.tolist()}, float(acc[-1])))
    return runs


def val_acc_only(runs: list[RunRecord]) -> list[RunRecord]:
    """``runs`` as an objective that reports val_acc alone would record them."""
    return [RunRecord(r.run_id, {}, {}, {"val_acc": list(r.history["val_acc"])}, r.final_acc) for r in runs]
