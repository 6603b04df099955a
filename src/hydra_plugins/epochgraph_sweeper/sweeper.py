"""The epochgraph sweeper: ask Optuna trials, launch them as Hydra jobs, tell their outcome.

Unlike hydra-optuna-sweeper, a job can be *pruned*: each job reconnects to its trial through the
study's storage (`epochgraph.trial`), reports every epoch and stops when the pruner says so; it returns
``{"state": "COMPLETE" | "PRUNED", "value": ...}`` and this sweeper is the one side that tells Optuna.
Every trial is an MLflow run nested under the sweep's parent run, which receives the summary and a
plot of all val-accuracy curves at the end.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from epochgraph.errors import EpochgraphError

log = logging.getLogger("epochgraph")


def distribution(override: Override) -> BaseDistribution | str:
    """An Optuna distribution for a sweep override, or the plain value of a fixed one."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if value.shuffle:
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - int(value.step), step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_ = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_)
        return FloatDistribution(float(value.start), float(value.end), log=log_)
    raise EpochgraphError(f"the search-space entry {override.input_line!r} is not supported; use choice(...), "
                          f"range(...) or interval(...) (tag(log, interval(...)) for a log scale)")


def flat_params(params: Any) -> dict[str, str]:
    """``hydra.sweeper.params`` as ``{"optim.lr": "tag(log, interval(...))"}``.

    YAML gives dotted keys (``optim.lr: ...``) while a command-line override
    ``hydra.sweeper.params.optim.lr=...`` nests (``optim: {lr: ...}``); both name the same entry, a
    later one wins over an earlier one, and a null value removes the entry.
    """
    if params is None:
        return {}
    container = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else dict(params)
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:  # a later entry wins; null removes one (hydra.sweeper.params.optim.momentum=null)
                out.pop(f"{prefix}{key}", None)
                if value is not None:
                    out[f"{prefix}{key}"] = str(value)

    walk(container, "")
    return out


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
    except Exception as err:
        raise EpochgraphError(f"malformed search space: {str(err).splitlines()[0]}; e.g. "
                              f"hydra.sweeper.params.optim.lr='tag(log, interval(0.001, 1.0))'") from None
    space, fixed = {}, {}
    for o in parsed:
        try:
            d = distribution(o)
        except ValueError as err:  # Optuna's own checks: low > high, log scale from 0, ...
            raise EpochgraphError(f"malformed search space entry {o.input_line!r}: {err}") from None
        (space if isinstance(d, BaseDistribution) else fixed)[o.get_key_element()] = d
    return space, fixed


def close_orphan_runs(study: optuna.Study, client, experiment: str) -> int:
    """End as KILLED the MLflow trial runs still RUNNING whose Optuna trial is no longer running (their
    worker died: its trial was failed as stale). Returns how many were closed."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    runs = client.search_runs([exp.experiment_id], f"tags.study = '{study.study_name}' and "
                              "attributes.status = 'RUNNING' and tags.trial != ''")
    closed = 0
    for run in runs:
        state = states.get(int(run.data.tags["trial"]))
        if state is not None and state != TrialState.RUNNING:
            client.set_tag(run.info.run_id, "state", state.name)
            client.set_tag(run.info.run_id, "error", "its worker stopped; the trial was failed as stale")
            client.set_terminated(run.info.run_id, status="KILLED")
            log.warning("trial %d: MLflow run %s was left RUNNING by a dead worker; closed as KILLED",
                        int(run.data.tags["trial"]), run.info.run_id)
            closed += 1
    return closed


def _choice(cfg: DictConfig, group: str, default: str) -> str:
    """The option picked for a config group (``pruner=signature`` -> ``signature``), else ``default``."""
    choice = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    return str(choice.get(group) or default) if choice is not None else default


class EpochgraphSweeper(Sweeper):
    """Hydra sweeper driving an Optuna study; see the module docstring and ``conf/hydra/sweeper/epochgraph.yaml``.

    Args:
        params: the search space (``{"optim.lr": "tag(log, interval(0.001, 1.0))", ...}``).
        direction: ``maximize`` (val_acc) or ``minimize``.
        n_trials: finished (complete or pruned) trials the study should hold at the end.
        n_jobs: trials asked and launched together, in parallel with a parallel launcher.
        study_name: the Optuna study (default ``<mlflow.experiment>-sweep``); an existing one is resumed.
        sampler: an Optuna sampler or its ``_target_`` config.
        max_failure_rate: abort when a larger share of a batch's trials fails.
    """

    def __init__(self, params: DictConfig | None = None, direction: str = "maximize", n_trials: int = 20,
                 n_jobs: int = 1, study_name: str | None = None, sampler: Any = None,
                 max_failure_rate: float = 0.25) -> None:
        if n_trials < 1:
            raise EpochgraphError(f"hydra.sweeper.n_trials={n_trials} must be >= 1")
        if n_jobs < 1:
            raise EpochgraphError(f"hydra.sweeper.n_jobs={n_jobs} must be >= 1")
        if direction not in ("maximize", "minimize"):
            raise EpochgraphError(f"hydra.sweeper.direction={direction!r}; use maximize or minimize")
        self.params = flat_params(params)
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, n_jobs
        self.study_name, self.sampler_cfg, self.max_failure_rate = study_name, sampler, max_failure_rate
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        from epochgraph.errors import report_errors

        report_errors(self._sweep)(arguments)

    def _sweep(self, arguments: list[str]) -> None:
        from epochgraph import sweep_report, tracking
        from epochgraph.storage import make_storage, redact
        from epochgraph.trial import build_pruner

        cfg = self.config
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if not space:
            raise EpochgraphError("the search space is empty; set hydra.sweeper.params "
                                  "(e.g. +experiment=pruned_sweep) or pass sweep overrides like optim.lr=0.01,0.1")
        storage = make_storage(cfg.storage)
        name = self.study_name or f"{cfg.mlflow.experiment}-sweep"
        # Hydra instantiates the sweeper's config recursively: the sampler may already be built
        sampler = self.sampler_cfg
        if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
            sampler = instantiate(sampler)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=build_pruner(cfg),
                                    direction=self.direction, load_if_exists=True)
        optuna.storages.fail_stale_trials(study)
        client = tracking.get_client(cfg.mlflow.tracking_uri)
        close_orphan_runs(study, client, str(cfg.mlflow.experiment))
        parent = study.user_attrs.get("mlflow_parent_run_id")
        with tracking.mlflow_run(client, cfg.mlflow.experiment, run_name=name, run_id=parent,
                                 tags={"epochgraph.role": "sweep", "study": name, "sweep": name,
                                       "pruner": _choice(cfg, "pruner", str(cfg.pruner._target_)),
                                       "sampler": type(study.sampler).__name__}) as parent_id:
            if parent is None:
                study.set_user_attr("mlflow_parent_run_id", parent_id)
                tracking.log_config(client, parent_id, {
                    "study": name, "storage": redact(str(cfg.storage.url)), "n_trials": self.n_trials,
                    "direction": self.direction, "pruner": OmegaConf.to_container(cfg.pruner, resolve=True),
                    "search_space": {k: repr(v) for k, v in space.items()}, "epochs": cfg.trainer.epochs})
            log.info("study %r in %s: %d trials, pruner %s, MLflow parent run %s", name,
                     redact(str(cfg.storage.url)), self.n_trials, cfg.pruner._target_, parent_id)
            self._loop(study, space, fixed, parent_id)
            sweep_report.report(study, client, parent_id, int(cfg.trainer.epochs),
                                Path(cfg.hydra.sweep.dir))

    def _loop(self, study: optuna.Study, space: dict[str, BaseDistribution], fixed: dict[str, str],
              parent_id: str) -> None:
        """Ask, launch, tell until the study holds ``n_trials`` finished trials.

        Trials RUNNING elsewhere (other workers on a shared storage, or a crashed run whose heartbeat is
        not stale yet) count towards the budget; the loop waits for them, failing stale ones, so several
        sweep processes can work one study and a restarted sweep neither re-runs nor overshoots.
        """
        while True:
            counts = {s: len(study.get_trials(deepcopy=False, states=(s,)))
                      for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)}
            finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            to_go = self.n_trials - finished - counts[TrialState.RUNNING]
            if finished >= self.n_trials:
                return
            if to_go <= 0:
                optuna.storages.fail_stale_trials(study)
                time.sleep(2.0)
                continue
            with warnings.catch_warnings():  # heartbeats are meant for study.optimize; our jobs beat
                warnings.simplefilter("ignore", UserWarning)
                batch = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
            overrides = [
                tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items())
                + (f"optuna.study_name={study.study_name}", f"optuna.trial_number={t.number}",
                   f"optuna.parent_run_id={parent_id}")
                for t in batch
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            failures = 0
            for trial, ret in zip(batch, returns):
                if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, dict):
                    out = ret.return_value
                    if out["state"] == "PRUNED":
                        study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
                    else:
                        study.tell(trial.number, out["value"], skip_if_finished=True)
                    fc = f"  P(high) {out['forecast']:.2f}" if out.get("forecast") is not None else ""
                    log.info("trial %3d %-8s val_acc %.4f after %d epochs%s", trial.number, out["state"],
                             out["value"], out["epochs"], fc)
                else:
                    failures += 1
                    err = ret._return_value if ret.status == JobStatus.FAILED else "no outcome returned"
                    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                    log.warning("trial %3d FAIL: %s", trial.number, str(err).splitlines()[0] if str(err) else err)
            if returns and failures / len(returns) > self.max_failure_rate:
                raise EpochgraphError(f"{failures} of {len(returns)} trials failed (max_failure_rate="
                                      f"{self.max_failure_rate}); see the job logs under {self.config.hydra.sweep.dir}")
