"""Promotion-type ASHA as Syne Tune runs it, on recorded curves: the peer that pauses and resumes outside Optuna.

Each drawn study becomes a Syne Tune tabulated blackbox (`BlackboxTabular`: one configuration per recorded
training, its val_acc at every epoch) simulated by Syne Tune's own backend (`UserBlackboxBackend`, one worker,
one time unit an epoch). Its ASHA scheduler with ``type="promotion"`` (reduction factor η, rungs at T/η², T/η and
T) pauses a trial at a rung and resumes it from its checkpoint when it is promoted; the draw's trainings are
started in the draw's order (``points_to_evaluate``), and the study ends when none is left to start or promote.
It is scored as our replay scores a pruner (`epochgraph.search.score_pruners.score`): the share of the epochs
trained (each once), the regret, whether the best trial completed, and when.

Syne Tune is a benchmark-only dependency (the ``bench`` extra, installed by ``make bench``): 0.13.0, whose
schedulers still have the promotion type.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any
from unittest import mock

import numpy as np

from epochgraph.forecast.records import RunRecord
from epochgraph.search.replay import run_length

SYNE_TUNE_REQUIREMENT = "syne-tune==0.13.0"


def available() -> bool:
    """Whether Syne Tune (with its tabulated-blackbox simulator) can be imported here."""
    try:
        with _quiet():
            import syne_tune.blackbox_repository.simulated_tabular_backend  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet():
    """Syne Tune prints its status tables and optional-dependency notes; a replay of hundreds of studies does not."""
    logger = logging.getLogger("syne_tune")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _curves(runs: Sequence[RunRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Every run's val_acc at epochs 1..T (T: the longest run; a shorter one held at its last value after its end,
    epochs that are never counted) and each run's length."""
    lengths = np.array([run_length(r) for r in runs])
    acc = np.zeros((len(runs), int(lengths.max())))
    for i, r in enumerate(runs):
        v = np.nan_to_num(np.array([np.nan if x is None else float(x) for x in r.history["val_acc"][:lengths[i]]]),
                          nan=0.0)
        acc[i, :len(v)] = v
        acc[i, len(v):] = v[-1]
    return acc, lengths


def asha_promotion(runs: Sequence[RunRecord], eta: float = 3.0, seed: int = 0) -> dict[str, float]:
    """One study of ``runs`` (in this order) under Syne Tune's promotion-type ASHA: ``epochs_frac``, ``regret``,
    ``best_done_frac`` (NaN if the best never completed) and ``resumed`` (promotions of a paused trial)."""
    import pandas as pd

    with _quiet():
        from syne_tune import StoppingCriterion, Tuner
        from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
        from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular
        from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
        from syne_tune.config_space import choice, randint
        from syne_tune.optimizer.baselines import ASHA
        from syne_tune.tuner_callback import TunerCallback

    acc, lengths = _curves(runs)
    n, T = acc.shape
    finals = np.nan_to_num(np.array([r.final_acc for r in runs]))
    best = int(np.argmax(finals))
    table = np.zeros((n, 1, T, 2))
    table[:, 0, :, 0] = acc
    table[:, 0, :, 1] = np.arange(1, T + 1)  # elapsed time: one unit an epoch
    blackbox = BlackboxTabular(hyperparameters=pd.DataFrame({"run": np.arange(n)}),
                               configuration_space={"run": choice(list(range(n)))},
                               fidelity_space={"epoch": randint(1, T)}, objectives_evaluations=table,
                               fidelity_values=np.arange(1, T + 1), objectives_names=["val_acc", "elapsed"])

    class Clock(TunerCallback):
        """Counts the epochs trained (a resumed trial reports only the epochs after its checkpoint)."""

        def __init__(self) -> None:
            self.trained, self.best_done, self.reached, self.resumed = 0, math.nan, {}, 0
            self.paused: set[int] = set()

        def on_trial_result(self, trial, status, result, decision) -> None:
            run, epoch = int(trial.config["run"]), int(result["epoch"])
            if run in self.paused:  # promoted: it goes on from its checkpoint
                self.paused.discard(run)
                self.resumed += 1
            if epoch <= lengths[run] and epoch > self.reached.get(run, 0):
                self.trained += 1
                self.reached[run] = epoch
                if run == best and epoch == lengths[run]:
                    self.best_done = self.trained
            if str(decision).upper().endswith("PAUSE") and epoch < lengths[run]:
                self.paused.add(run)

    clock = Clock()
    scheduler = ASHA(blackbox.configuration_space, metric="val_acc", mode="max", resource_attr="epoch", max_t=T,
                     grace_period=max(1, round(T / eta ** 2)), reduction_factor=eta, type="promotion",
                     points_to_evaluate=[{"run": i} for i in range(n)], random_seed=seed)
    # Syne Tune's own files (results, metadata) go to a folder that is gone afterwards
    with tempfile.TemporaryDirectory() as folder, _quiet(), mock.patch.dict(os.environ, {"SYNETUNE_FOLDER": folder}):
        Tuner(trial_backend=UserBlackboxBackend(blackbox=blackbox, elapsed_time_attr="elapsed"),
              scheduler=scheduler, n_workers=1, sleep_time=0, callbacks=[SimulatorCallback(), clock],
              stop_criterion=StoppingCriterion(max_wallclock_time=float(2 * T * n)), results_update_interval=1e9,
              print_update_interval=1e9, save_tuner=False, tuner_name="epochgraph-asha", metadata={}).run()
    completed = [i for i in range(n) if clock.reached.get(i, 0) >= lengths[i]]
    budget = float(lengths.sum())
    return {"epochs_frac": clock.trained / budget, "regret": float(finals[best] - max(finals[completed], default=0.0)),
            "best_done_frac": clock.best_done / budget, "resumed": float(clock.resumed)}


def score_asha(runs: Sequence[RunRecord], draws: Sequence[np.ndarray], eta: float = 3.0) -> dict[str, Any]:
    """Promotion-type ASHA over ``draws`` (studies of ``runs``, each in its drawn order), in the shape of
    `epochgraph.search.score_pruners.score`."""
    from epochgraph.search.score_pruners import summarise

    return summarise([asha_promotion([runs[i] for i in d], eta=eta, seed=k) for k, d in enumerate(draws)])
