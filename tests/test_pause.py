"""Pause, don't kill: a paused trial resumes from its checkpoint, in its own MLflow run, to the same weights."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from safetensors.torch import load_file

from epochgraph.search import pause
from epochgraph.search.trial import run_trial
from epochgraph.search.trial_attrs import CHECKPOINT_ATTR, PAUSED_ATTR, RESUMED_FROM_ATTR, paused_epoch
from epochgraph.store.storage import make_storage
from epochgraph.training.loop import train
from tests.conftest import TINY, compose_train
from tests.pausing import PauseOdd

pytestmark = pytest.mark.slow  # trainings through real MLflow stores, end to end: make test runs them

EPOCHS = 3


def _cfg(tmp_path: Path, tracking_uri: str, number: int):
    return compose_train([*TINY, f"trainer.epochs={EPOCHS}", "optim.momentum=0.9", "model.dropout=0.3",
                          f"storage.url=sqlite:///{tmp_path / 'optuna.db'}", "optuna.study_name=s",
                          f"optuna.trial_number={number}", "pruner=none",
                          "+pruner.at=1", "+pruner.after=0", "+pruner.parity=0",
                          "pruner._target_=tests.pausing.PauseOdd", "mlflow.keep_weights=null"], tracking_uri)


def _paused_study(tmp_path: Path, tracking_uri: str) -> tuple[optuna.Study, dict]:
    """A study whose trial 0 the pruner paused after epoch 1 (its job stored the checkpoint)."""
    cfg = _cfg(tmp_path, tracking_uri, 0)
    study = optuna.create_study(study_name="s", storage=make_storage(cfg.storage), pruner=PauseOdd(1, 0, 0),
                                direction="maximize")
    study.ask()
    out = run_trial(cfg)
    assert out["state"] == "PRUNED" and out["paused"] and out["epochs"] == 1
    study.tell(0, state=optuna.trial.TrialState.PRUNED)  # what the sweeper does with the job's outcome
    return study, out


def _final_weights(client: MlflowClient, run_id: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    return load_file(client.download_artifacts(run_id, f"weights/epoch_{EPOCHS:03d}.safetensors", str(tmp_path)))


def _uninterrupted(tmp_path: Path, tracking_uri: str) -> dict[str, torch.Tensor]:
    whole = train(OmegaConf.to_container(_cfg(tmp_path, tracking_uri, 0), resolve=True))
    assert whole.epochs_run == EPOCHS
    return whole.model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_a_paused_trial_resumes_in_its_own_run_and_reaches_the_weights_of_an_uninterrupted_training(
        tmp_path, tracking_uri):
    study, paused_out = _paused_study(tmp_path, tracking_uri)
    client = MlflowClient(tracking_uri)
    paused = study.trials[0]
    assert paused.state == optuna.trial.TrialState.PRUNED and paused_epoch(paused) == 1
    assert paused.system_attrs[CHECKPOINT_ATTR] == f"runs:/{paused_out['run_id']}/checkpoint/epoch_001.pt"
    run = client.get_run(paused_out["run_id"])
    assert run.info.run_name == "‖@1 trial-000" and run.data.tags["state"] == "PAUSED"
    assert pause.paused_trials(study)[0].number == 0 and pause.checkpoint_bytes(study) > 0

    trial = pause.resume(study, paused)
    assert trial.user_attrs[RESUMED_FROM_ATTR] == 0 and pause.paused_trials(study) == []
    out = run_trial(_cfg(tmp_path, tracking_uri, trial.number))
    assert out["state"] == "COMPLETE" and out["epochs"] == EPOCHS and out["resumed_from"] == 0
    # the same MLflow run goes on: one curve, each epoch logged once, marked as resumed and now complete
    assert out["run_id"] == paused_out["run_id"]
    run = client.get_run(out["run_id"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]
    assert run.info.run_name == "✓ trial-000→001" and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] == "1" and run.data.tags["pruned"] == "false"
    assert "pruned_at_epoch" not in run.data.tags and PAUSED_ATTR not in run.data.tags
    # its chain ended: the checkpoint is gone; the weights of every epoch stay
    assert client.list_artifacts(run.info.run_id, "checkpoint") == []
    assert len(client.list_artifacts(run.info.run_id, "weights")) == EPOCHS
    # the trial carries the paused epoch (its record and value) and trained the others once
    resumed = study.trials[trial.number]
    assert sorted(resumed.intermediate_values) == [1, 2, 3]
    assert resumed.intermediate_values[1] == paused.intermediate_values[1]
    assert resumed.system_attrs["epoch_001"] == paused.system_attrs["epoch_001"]
    # and the weights are those of a training that never stopped
    _same(_final_weights(client, out["run_id"], tmp_path), _uninterrupted(tmp_path, tracking_uri))


def test_a_killed_resumed_trial_is_requeued_and_resumes_from_the_same_checkpoint(tmp_path, tracking_uri):
    study, paused_out = _paused_study(tmp_path, tracking_uri)
    trial = pause.resume(study, study.trials[0])
    # its worker dies before the trial ends: failed and re-queued with the same parameters, as a stale trial is
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryFailedTrialCallback(max_retry=1)(study, study.trials[trial.number])
    retried = study.ask()
    assert retried.user_attrs[RESUMED_FROM_ATTR] == 0
    out = run_trial(_cfg(tmp_path, tracking_uri, retried.number))
    assert out["resumed_from"] == 0 and out["run_id"] == paused_out["run_id"] and out["epochs"] == EPOCHS
    client = MlflowClient(tracking_uri)
    _same(_final_weights(client, out["run_id"], tmp_path), _uninterrupted(tmp_path, tracking_uri))


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_corrupt_checkpoint_restarts_the_trial_from_scratch_with_one_warning(
        damage, tmp_path, tracking_uri, caplog):
    study, paused_out = _paused_study(tmp_path, tracking_uri)
    client = MlflowClient(tracking_uri)
    run = client.get_run(paused_out["run_id"])
    local = Path(run.info.artifact_uri.removeprefix("file://"), "checkpoint", "epoch_001.pt")
    assert local.is_file()
    if damage == "missing":
        local.unlink()
    else:
        local.write_bytes(local.read_bytes()[:100])
    trial = pause.resume(study, study.trials[0])
    with caplog.at_level(logging.WARNING, logger="epochgraph"):
        out = run_trial(_cfg(tmp_path, tracking_uri, trial.number))
    warnings = [r.getMessage() for r in caplog.records if "trains from scratch" in r.getMessage()]
    assert len(warnings) == 1 and ("missing" in warnings[0] or "unreadable" in warnings[0]), warnings
    # a new run trains every epoch; the paused run stays as it was (nothing lost)
    assert out["state"] == "COMPLETE" and out["epochs"] == EPOCHS and out["resumed_from"] is None
    assert out["run_id"] != paused_out["run_id"]
    assert client.get_run(paused_out["run_id"]).info.run_name == "‖@1 trial-000"
    assert [m.step for m in client.get_metric_history(out["run_id"], "val_acc")] == [1, 2, 3]
    _same(_final_weights(client, out["run_id"], tmp_path), _uninterrupted(tmp_path, tracking_uri))
