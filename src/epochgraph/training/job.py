"""One training job: train a model from a config and log everything to one MLflow run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from epochgraph.hooks import EpochHook
from epochgraph.models import model_label
from epochgraph.store import tracking
from epochgraph.training.checkpoint import Checkpoint
from epochgraph.training.loop import TrainResult, check_config, train

log = logging.getLogger("epochgraph")


@dataclass
class JobResult:
    run_id: str
    result: TrainResult


def graph_hooks(cfg: Mapping[str, Any], client=None, run_id: str | None = None, shared_scale=None
                ) -> tuple[list[EpochHook], list[EpochHook]]:
    """The graph stage (rolled graph -> centralities -> signature) when ``graph.enabled``, and the hooks
    that draw it (``graph.pictures``, given the run to log to, on ``shared_scale`` when given: a
    `~epochgraph.graph.graph_stage.SharedScale`): ``(stage hooks, picture hooks)``."""
    graph = cfg.get("graph") or {}
    if not graph.get("enabled", False):
        return [], []
    from epochgraph.graph.graph_stage import GraphPictures, GraphStage

    stage = GraphStage(centralities=tuple(graph.get("centralities", ("degree", "eigenvector"))),
                       backend=str(graph.get("backend", "auto")))
    if not graph.get("pictures", True) or client is None or run_id is None:
        return [stage], []
    keep = keep_weights_epochs(cfg) if cfg["mlflow"].get("log_weights", True) else set()
    pictures = GraphPictures(stage, client, run_id, epochs=int(cfg["trainer"]["epochs"]), keep=keep,
                             title=f"{model_label(cfg['model'])} on {cfg['data']['name']}",
                             run_name=client.get_run(run_id).info.run_name or run_id, shared_scale=shared_scale)
    return [stage], [pictures]


def keep_weights_epochs(cfg: Mapping[str, Any]) -> set[int] | None:
    keep = cfg["mlflow"].get("keep_weights")
    if keep is None:
        return None
    return {int(e) for e in keep} | {int(cfg["trainer"]["epochs"])}


def run_job(cfg: DictConfig, *, extra_hooks: Sequence[EpochHook] = (), parent_run_id: str | None = None,
            tags: Mapping[str, str] | None = None, run_name: str | None = None, run_id: str | None = None,
            resume: Checkpoint | None = None, shared_scale=None) -> JobResult:
    """Train ``cfg`` with the graph stage and ``extra_hooks`` and log it all to a new MLflow run.

    The run ends FINISHED (a diverged training too: it is a result, tagged ``diverged=true``), FAILED
    on an error, KILLED on an interrupt. Exceptions raised by hooks (``optuna.TrialPruned``) propagate
    after the run is closed. With ``resume`` (a `Checkpoint` of this training) and ``run_id`` (the run that
    logged its first epochs), the training goes on in that run, reopened: one curve, each epoch logged once,
    tag ``resumed_from_epoch``.
    """
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    splits = check_config(plain)
    graph_hooks(plain)  # a bad graph.* value fails here, before a run exists
    client = tracking.get_client(cfg["mlflow"]["tracking_uri"])
    all_tags = {"model": model_label(cfg["model"]), "dataset": str(cfg["data"]["name"]), **(tags or {})}
    name = run_name or cfg["mlflow"].get("run_name")
    if resume is not None:
        all_tags["resumed_from_epoch"] = str(resume.epoch)
    reopen = run_id
    with tracking.mlflow_run(client, cfg["mlflow"]["experiment"], run_name=name, tags=all_tags,
                             parent_run_id=parent_run_id, run_id=reopen) as run_id:
        if reopen is None:  # a reopened run has its params and config already
            tracking.log_config(client, run_id, cfg)
        logger = tracking.MlflowEpochLogger(client, run_id, bool(cfg["mlflow"].get("log_weights", True)),
                                            keep_weights_epochs(cfg))
        # the logger runs last so that it sees the metrics and tags the other hooks added; the
        # pictures run after the extra hooks so that they see an epoch that is pruned
        stage_hooks, picture_hooks = graph_hooks(cfg, client, run_id, shared_scale)
        hooks = [*stage_hooks, *extra_hooks, *picture_hooks, logger]
        exp_id = client.get_run(run_id).info.experiment_id
        url = tracking.run_url(client.tracking_uri, exp_id, run_id)
        log.info("MLflow run %s in experiment %r (%s): %s", run_id, cfg["mlflow"]["experiment"],
                 client.tracking_uri, url)
        for hook in hooks:  # hooks that want to know their run (a sweep's trial links to it)
            start = getattr(hook, "on_run_start", None)
            if start is not None:
                start(run_id, url)
        result = train(plain, hooks=hooks, splits=splits, resume=resume)
        final = {"test_acc": result.test_acc, "test_loss": result.test_loss, "epochs_run": result.epochs_run,
                 "weights_bytes": logger.weights_bytes}
        if logger.skipped_epochs:
            final["weights_saved_bytes"] = logger.weights_saved_bytes
            log.info("weights kept for %d epochs, %d skipped (mlflow.keep_weights): %.1f MB stored, %.1f MB saved",
                     logger.kept, logger.skipped_epochs, logger.weights_bytes / 2**20,
                     logger.weights_saved_bytes / 2**20)
        if result.history:  # a pruned (or paused) trial's last value is not a final one: its own name
            final["last_val_acc" if result.pruned_at_epoch is not None else "final_val_acc"] = \
                result.history[-1]["val_acc"]
        tracking.log_metrics(client, run_id, final, step=result.epochs_run)
        end_tags = {"diverged": str(result.diverged).lower()}
        if result.pruned_at_epoch is not None:
            end_tags.update(pruned="true", pruned_at_epoch=str(result.pruned_at_epoch))
        elif reopen is not None:  # paused before, complete now: the run is a whole training again
            end_tags["pruned"] = "false"
            for stale in ("pruned_at_epoch", "paused_at_epoch"):
                with contextlib.suppress(Exception):
                    client.delete_tag(run_id, stale)
        tracking.set_tags(client, run_id, end_tags)
        log.info("test_acc %.4f after %d epochs%s", result.test_acc, result.epochs_run,
                 " (diverged)" if result.diverged else "")
        if parent_run_id is None:
            log.info("runs of experiment %r: %s (make ui)", cfg["mlflow"]["experiment"],
                     tracking.runs_url(client.tracking_uri, exp_id))
    return JobResult(run_id=run_id, result=result)
