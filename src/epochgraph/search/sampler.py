"""A sampler seeded per trial: reproducible in one process, never replaying a sequence across processes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


class TrialSeededSampler(BaseSampler):
    """Samples each trial with a sampler seeded by ``(seed, trial number)``.

    A sampler seeded once replays the same random sequence in every process that builds it: a resumed sweep
    would propose the configurations of the first trials again, and two workers on one study would propose
    the same ones side by side. Optuna reseeds each worker's sampler for ``n_jobs > 1`` for that reason
    (`BaseSampler.reseed_rng`), which gives up reproducibility. Seeding by trial number keeps both: the
    storage hands out each number once per study, so restarts and parallel workers draw fresh random
    streams, while a sweep in one process, started on a new study, gets the same trial numbers, hence the
    same seeds and the same configurations, every time.

    The sampler is rebuilt for each trial (`before_trial`), so only samplers that keep their state in the
    study suit it (TPE, random, GP, CMA-ES, NSGA-II); QMC's sequence is already shared through the storage
    and wants one seed for all workers.

    Example::

        import functools
        sampler = TrialSeededSampler(functools.partial(optuna.samplers.TPESampler, n_startup_trials=10), seed=0)
        study = optuna.create_study(sampler=sampler)

    Args:
        make: builds the sampler for one seed, e.g. ``lambda s: optuna.samplers.TPESampler(seed=s)``.
        seed: the study's seed, a non-negative integer.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative integer")
        self._make, self._seed = make, int(seed)
        self._sampler = self._build(self._seed)

    @property
    def sampler(self) -> BaseSampler:
        """The sampler of the current trial."""
        return self._sampler

    def trial_seed(self, number: int) -> int:
        """The seed of trial ``number``: well mixed, so that nearby numbers give unrelated streams."""
        return int(np.random.SeedSequence([self._seed, int(number)]).generate_state(1)[0])

    def _build(self, seed: int) -> BaseSampler:
        with warnings.catch_warnings():  # several samplers are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return self._make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler = self._build(self.trial_seed(trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()
