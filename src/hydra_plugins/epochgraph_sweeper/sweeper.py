"""The epochgraph sweeper: ask Optuna trials, launch them as Hydra jobs, tell their outcome.

Unlike hydra-optuna-sweeper, a job can be *pruned*: each job reconnects to its trial through the
study's storage (`epochgraph.search.trial`), reports every epoch and stops when the pruner says so; it returns
``{"state": "COMPLETE" | "PRUNED", "value": ...}`` and this sweeper is the one side that tells Optuna.
Every trial is an MLflow run nested under the sweep's parent run, which receives the summary and a
plot of all val-accuracy curves at the end.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from functools import partial
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
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from epochgraph.errors import EpochgraphError, JobKilled, Terminated, check_interrupt, note_interrupt
from epochgraph.store import optuna_internals
from epochgraph.store.storage import while_locked

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
    worker died: its trial was failed as stale). Returns how many were closed.

    A run its job closed itself on the way out (KILLED on SIGTERM, as ``scancel`` sends, or FAILED) before
    the sweeper failed its trial gets the trial's state tag here too."""
    from epochgraph.store import tracking

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    runs = client.search_runs([exp.experiment_id], f"tags.study = '{study.study_name}' and "
                              "attributes.status != 'FINISHED' and tags.trial != ''")
    closed = 0
    for run in runs:
        state = states.get(int(run.data.tags["trial"]))
        if state is None or state == TrialState.RUNNING:
            continue
        run_id = run.info.run_id
        # on the way out of an interrupt the dying trial still writes to a SQLite store: tried again while locked
        if run.info.status != "RUNNING":
            if "state" not in run.data.tags:
                while_locked(partial(client.set_tag, run_id, "state", state.name))
            continue
        while_locked(partial(tracking.set_tags, client, run_id, {
            "state": state.name, "error": "its worker stopped; the trial was failed as stale"}))
        name = tracking.outcome_run_name(tracking.trial_run_name(int(run.data.tags["trial"])), "killed")
        while_locked(partial(client.update_run, run_id, name=name))
        while_locked(partial(client.set_terminated, run_id, status="KILLED"))
        log.warning("trial %d: MLflow run %s was left RUNNING by a dead worker; closed as KILLED",
                    int(run.data.tags["trial"]), run.info.run_id)
        closed += 1
    return closed


def probe_points(space: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Points of the search space that reach every bound and every choice at least once (``max`` of their
    counts points in all), for checking the values a sweep will train before it starts."""
    values: dict[str, list[Any]] = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            values[key] = list(d.choices)
        elif isinstance(d, (FloatDistribution, IntDistribution)):
            values[key] = [d.low, d.high] if d.high != d.low else [d.low]
    n = max((len(v) for v in values.values()), default=0)
    return [{k: v[i % len(v)] for k, v in values.items()} for i in range(n)]


def make_sampler(node: Any) -> optuna.samplers.BaseSampler | None:
    """The sampler of ``hydra.sweeper.sampler``: a seeded one draws each trial with a seed of its own
    (`epochgraph.search.sampler.TrialSeededSampler`), so that resumed sweeps and parallel workers never replay the
    same configurations; QMC keeps one seed (its sequence is shared through the storage)."""
    from epochgraph.search.sampler import TrialSeededSampler

    if node is None or isinstance(node, optuna.samplers.BaseSampler):
        return node
    seed = node.get("seed")
    if seed is None or str(node.get("_target_", "")).endswith("QMCSampler"):
        return instantiate(node)
    if not isinstance(seed, int) or seed < 0:
        raise EpochgraphError(f"hydra.sweeper.sampler.seed={seed!r} must be a non-negative integer or null")
    return TrialSeededSampler(lambda s: instantiate(node, seed=s), seed)


def _sampler_name(sampler: optuna.samplers.BaseSampler) -> str:
    return type(getattr(sampler, "sampler", sampler)).__name__


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
        self._interrupted = ""  # what an interrupt left behind, for the last line
        self._peak_checkpoint = 0  # the most bytes the paused trials' checkpoints held at once

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        from epochgraph.errors import report_errors

        report_errors(self._sweep)(arguments)

    def _sweep(self, arguments: list[str]) -> None:
        from epochgraph.search import pause, sweep_report
        from epochgraph.search.trial import build_pruner
        from epochgraph.store import tracking
        from epochgraph.store.storage import make_storage, redact

        cfg = self.config
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if not space:
            raise EpochgraphError("the search space is empty; set hydra.sweeper.params "
                                  "(e.g. +experiment=pruned_sweep) or pass sweep overrides like optim.lr=0.01,0.1")
        # everything that can be checked is checked before a study, a trial or a run exists
        client = tracking.get_client(cfg.mlflow.tracking_uri)
        self._check_values(space, fixed)
        pruner = build_pruner(cfg)
        sampler = make_sampler(OmegaConf.select(cfg, "hydra.sweeper.sampler") if isinstance(cfg, DictConfig)
                               else self.sampler_cfg)
        storage = make_storage(cfg.storage)
        name = self.study_name or f"{cfg.mlflow.experiment}-sweep"
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=self.direction, load_if_exists=True)
        if not study.metric_names:  # optuna-dashboard names the objective instead of "Objective 0"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(["val_acc"])
        experiment = str(cfg.mlflow.experiment)
        self._fail_stale(study, client, experiment)
        parent = study.user_attrs.get("mlflow_parent_run_id")
        exp_id = tracking.experiment_id(client, experiment)
        if parent is not None and self._finished(study) >= self.n_trials:
            # nothing to train: report what the study holds and leave the runs as they are
            log.info("study %r already holds %d finished trials (hydra.sweeper.n_trials=%d); nothing to train",
                     name, self._finished(study), self.n_trials)
            sweep_report.report(study, client, parent, int(cfg.trainer.epochs), Path(cfg.hydra.sweep.dir),
                                record=False, links=self._links(client, exp_id, parent))
            return
        try:
            with tracking.mlflow_run(client, experiment, run_name=name, run_id=parent,
                                     tags={"epochgraph.role": "sweep", "study": name, "sweep": name,
                                           "pruner": _choice(cfg, "pruner", str(cfg.pruner._target_)),
                                           "sampler": _sampler_name(study.sampler)}) as parent_id:
                if parent is None:
                    study.set_user_attr("mlflow_parent_run_id", parent_id)
                    tracking.log_config(client, parent_id, {
                        "study": name, "storage": redact(str(cfg.storage.url)), "n_trials": self.n_trials,
                        "direction": self.direction, "pruner": OmegaConf.to_container(cfg.pruner, resolve=True),
                        "search_space": {k: repr(v) for k, v in space.items()}, "epochs": cfg.trainer.epochs})
                log.info("study %r in %s: %d trials, pruner %s, MLflow parent run %s", name,
                         redact(str(cfg.storage.url)), self.n_trials, cfg.pruner._target_, parent_id)
                log.info("runs as they finish: %s", tracking.runs_url(client.tracking_uri, exp_id))
                self._loop(study, space, fixed, parent_id, client, experiment)
                sweep_report.report(study, client, parent_id, int(cfg.trainer.epochs), Path(cfg.hydra.sweep.dir),
                                    links=self._links(client, exp_id, parent_id),
                                    checkpoint_peak_bytes=self._peak_checkpoint if pause.pauses(pruner) else None)
        except (KeyboardInterrupt, Terminated) as err:
            note_interrupt(err, f"{self._interrupted} the sweep's MLflow runs closed as KILLED; run the same "
                                f"command again to resume study {name!r}")
            raise

    @staticmethod
    def _links(client, exp_id: str, parent_id: str) -> list[str]:
        from epochgraph.store import tracking

        return [f"Runs: {tracking.runs_url(client.tracking_uri, exp_id)}",
                f"Sweep run: {tracking.run_url(client.tracking_uri, exp_id, parent_id)}"]

    def _check_values(self, space: dict[str, BaseDistribution], fixed: dict[str, str]) -> None:
        """Build the job config at every bound and choice of the search space and check it as a training
        would (data, model, optimizer), so that a bad value fails now, in one line, not inside a trial."""
        from epochgraph.training.loop import check_config

        checked: dict[str, Any] = {}
        for point in probe_points(space) or [{}]:
            overrides = [f"{k}={v}" for k, v in {**point, **fixed}.items()]
            try:
                job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            except Exception as err:
                raise EpochgraphError(f"the sweep overrides {' '.join(overrides)} do not compose: "
                                      f"{str(err).splitlines()[0][:200]}") from None
            with open_dict(job_cfg):
                del job_cfg["hydra"]
            plain = OmegaConf.to_container(job_cfg, resolve=True)
            data_key = json.dumps([plain["data"], plain["seed"]], sort_keys=True, default=str)
            try:
                checked[data_key] = check_config(plain, checked.get(data_key))
            except EpochgraphError as err:
                # name the search-space entries the message is about (a bound or a choice), if any
                reached = [f"{k}={v}" for k, v in point.items() if k not in fixed and f"{k}=" in str(err)]
                where = f" (the search space reaches {', '.join(reached)})" if reached else ""
                raise EpochgraphError(f"{err}{where}") from None

    @staticmethod
    def _finished(study: optuna.Study) -> int:
        """Finished configurations (`epochgraph.search.pause.finished_configurations`)."""
        from epochgraph.search.pause import finished_configurations

        return finished_configurations(study)

    def _fail_stale(self, study: optuna.Study, client, experiment: str) -> None:
        """Fail the trials whose worker stopped beating (re-queued up to ``storage.max_retry``) and close
        their MLflow runs as KILLED."""
        optuna.storages.fail_stale_trials(study)
        close_orphan_runs(study, client, experiment)

    def _abandon(self, study: optuna.Study, batch: list[optuna.trial.Trial], client, experiment: str) -> str:
        """End the batch's unfinished trials FAIL at once (an interrupt, an error in the launcher) and re-queue
        them as a stale trial would be (``storage.max_retry``); returns what was done, for the last line."""
        retry = optuna_internals.stale_trial_callback(study)
        failed, queued = [], []
        for trial in batch:
            if optuna_internals.frozen_trial(study, trial).state != TrialState.RUNNING:
                continue
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(trial.number)
            waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            if retry is not None:
                retry(study, optuna_internals.frozen_trial(study, trial))
                if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > waiting:
                    queued.append(trial.number)
        close_orphan_runs(study, client, experiment)
        if not failed:
            return ""
        outcome = [f"trial {n}: FAIL" + (", re-queued with the same parameters" if n in queued else "")
                   for n in failed]
        return "; ".join(outcome) + ";"

    def _resumable(self, study: optuna.Study, candidates: list[FrozenTrial], last_pass: bool = False
                   ) -> list[FrozenTrial]:
        """The ``candidates`` (paused trials) the pruner says should resume, at most ``n_jobs``: asked one by one,
        the likeliest first, so that a batch holds no more than it launches."""
        from epochgraph.search import pause

        out: list[FrozenTrial] = []
        for trial in candidates:
            if len(out) >= self.n_jobs:
                break
            out += pause.resumable(study, [trial], last_pass)
        return out

    def _wait_message(self, study: optuna.Study, running: list[int]) -> str:
        storage = optuna_internals.rdb_storage(study)
        grace = getattr(storage, "grace_period", None) or 2 * (getattr(storage, "heartbeat_interval", None) or 0)
        ages = optuna_internals.heartbeat_ages(study)
        trials = ", ".join(str(n) for n in running)
        msg = f"waiting for trial {trials}, still RUNNING in the study (another worker's, or one whose process died)"
        if grace:
            left = [max(0.0, grace - ages[n]) for n in running if n in ages]
            by = f", at the latest in {max(left):.0f} s" if left else ""
            msg += (f"; a trial without a heartbeat for {grace:.0f} s (storage.grace_period) is failed and retried "
                    f"here{by}")
        return msg

    def _loop(self, study: optuna.Study, space: dict[str, BaseDistribution], fixed: dict[str, str],
              parent_id: str, client, experiment: str) -> None:
        """Ask, launch, tell until the study holds ``n_trials`` finished trials.

        Trials RUNNING elsewhere (other workers on a shared storage, or a killed run whose heartbeat is
        not stale yet) count towards the budget; the loop waits for them, saying so and for how long, failing
        stale ones and closing their MLflow runs, so several sweep processes can work one study and a restarted
        sweep neither re-runs nor overshoots. An interrupt ends the trials it stopped FAIL at once.
        """
        from epochgraph.search import pause
        from epochgraph.search.trial_attrs import paused_epoch

        self._interrupted = ""
        waited_for: list[int] = []
        pausing = pause.pauses(study.pruner)
        while True:
            n_running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            # a paused trial that was resumed goes on as another trial: one configuration, counted once
            finished = self._finished(study)
            to_go = self.n_trials - finished - n_running  # (`pause.open_slots`, with the counts the loop needs anyway)
            resumes: list[FrozenTrial] = []
            if pausing:
                self._peak_checkpoint = max(self._peak_checkpoint, pause.checkpoint_bytes(study))
                if finished < self.n_trials:  # promotion first: a paused trial that should go on before a new one
                    resumes = self._resumable(study, pause.paused_trials(study))
                elif not n_running:
                    # the budget is spent: the paused trials are asked again, the best placed at their epoch first,
                    # until none should resume (what each resumed one finishes at is evidence for the others)
                    resumes = self._resumable(study, pause.by_standing(study, pause.paused_trials(study)),
                                              last_pass=True)
            if finished >= self.n_trials and not resumes and not (pausing and n_running):
                return  # (a sweep that pauses waits for the running trials: their pauses may still resume)
            if to_go <= 0 and not resumes:
                running = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if running != waited_for:
                    log.info(self._wait_message(study, running))
                    waited_for = running
                self._fail_stale(study, client, experiment)
                time.sleep(2.0)
                continue
            waited_for = []
            resumes = [t for t in resumes[:self.n_jobs] if pause.claim(study, t)]  # one worker resumes each
            batch = [pause.resume(study, t) for t in resumes]
            for paused, trial in zip(resumes, batch):
                log.info("trial %3d RESUMES trial %d from epoch %d", trial.number, paused.number, paused_epoch(paused))
            with warnings.catch_warnings():  # heartbeats are meant for study.optimize; our jobs beat
                warnings.simplefilter("ignore", UserWarning)
                asked = [study.ask(space) for _ in range(min(self.n_jobs - len(batch), max(to_go, 0)))]
            # another worker may have asked for the same open slot: the later asks stand down, untrained
            batch += [t for t in asked if not pause.withdraw_surplus(study, t, self.n_trials)]
            if not batch:
                continue
            overrides = [
                tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items())
                + (f"optuna.study_name={study.study_name}", f"optuna.trial_number={t.number}",
                   f"optuna.parent_run_id={parent_id}")
                for t in batch
            ]
            try:
                check_interrupt()  # one that landed where Python drops exceptions (a finalizer): stop here
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException:
                self._interrupted = self._abandon(study, batch, client, experiment)
                raise
            self.job_idx += len(returns)
            failures = 0
            for trial, ret in zip(batch, returns):
                if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, dict):
                    out = ret.return_value
                    if out["state"] == "PRUNED":
                        study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
                    else:
                        study.tell(trial.number, out["value"], skip_if_finished=True)
                    # what the pruner decided last and why (the rule's P against δ, the bound against the best)
                    fc = f"  {out['decision']}" if out.get("decision") else (
                        f"  forecast P {out['forecast']:.2f}" if out.get("forecast") is not None else "")
                    word = "PAUSED" if out.get("paused") else out["state"]
                    log.info("trial %3d %-8s val_acc %.4f after %d epochs%s", trial.number, word,
                             out["value"], out["epochs"], fc)
                elif ret.status == JobStatus.FAILED and isinstance(ret._return_value, JobKilled):
                    # its job was killed (scancel, a lost node): as for a dead worker, FAIL, re-queue, close its run
                    said = self._abandon(study, [trial], client, experiment)
                    if "re-queued" not in said:  # a re-queued trial is not lost; one out of retries is
                        failures += 1
                    log.warning("trial %3d: %s; %s", trial.number, ret._return_value, said.rstrip(";") or "FAIL")
                else:
                    failures += 1
                    err = ret._return_value if ret.status == JobStatus.FAILED else "no outcome returned"
                    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                    log.warning("trial %3d FAIL: %s", trial.number, str(err).splitlines()[0] if str(err) else err)
            if returns and failures / len(returns) > self.max_failure_rate:
                raise EpochgraphError(f"{failures} of {len(returns)} trials failed (max_failure_rate="
                                      f"{self.max_failure_rate}); see the job logs under {self.config.hydra.sweep.dir}")
