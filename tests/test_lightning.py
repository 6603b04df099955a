"""`epochgraph.lightning.EpochgraphCallback` in 2-epoch fits of a tiny LeNet on Fashion-MNIST."""

import lightning.pytorch as pl
import mlflow
import optuna
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader, TensorDataset

from epochgraph import graph_signature
from epochgraph.lightning import EpochgraphCallback
from epochgraph.models import build_model
from epochgraph.search.trial_attrs import EPOCH_ATTR
from epochgraph.training.data import load_data


class TinyLeNet(pl.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.net = build_model("lenet", in_channels=1, image_size=28, width=0.5)
        self.lr = lr

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        out = self.net(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@pytest.fixture(scope="module")
def loaders():
    torch.manual_seed(0)
    s = load_data(train_size=200, val_size=100, test_size=100, seed=0)
    return (DataLoader(TensorDataset(s.x_train, s.y_train), batch_size=50, shuffle=True),
            DataLoader(TensorDataset(s.x_val, s.y_val), batch_size=100))


def _fit(loaders, callback, tracking_uri, epochs=2):
    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=tracking_uri)
    module = TinyLeNet()
    trainer = pl.Trainer(max_epochs=epochs, logger=logger, callbacks=[callback], accelerator="cpu", devices=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    try:
        trainer.fit(module, *loaders)
    finally:
        run_id = logger.run_id
    return module, trainer, run_id


def test_signatures_reach_the_mlflow_logger_run_and_the_trial(loaders, tracking_uri):
    study = optuna.create_study(direction="maximize")
    out = {}

    def objective(trial):
        module, trainer, out["run_id"] = _fit(loaders, EpochgraphCallback(trial, model="net"), tracking_uri)
        out["module"] = module
        return trainer.callback_metrics["val_acc"].item()

    study.optimize(objective, n_trials=1)
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.COMPLETE
    assert sorted(frozen.intermediate_values) == [1, 2]  # epochs from 1, the sanity check not reported
    assert frozen.intermediate_values[2] == pytest.approx(frozen.value)
    client = mlflow.MlflowClient(tracking_uri)
    history = client.get_metric_history(out["run_id"], "sig/degree/mean")
    assert [m.step for m in history] == [1, 2]
    records = [frozen.system_attrs[EPOCH_ATTR.format(e)] for e in (1, 2)]
    assert [m.value for m in history] == pytest.approx([r["sig/degree/mean"] for r in records])
    # the last validation ran on the final weights: its signature is theirs
    final = graph_signature(out["module"].net)
    assert records[1]["sig/eigenvector/std"] == pytest.approx(final["sig/eigenvector/std"])
    assert records[0]["sig/degree/mean"] != pytest.approx(records[1]["sig/degree/mean"])  # the weights moved
    # the curve of each epoch: val_* at validation end, the epoch's own train_loss at its end, the LR
    val_loss = client.get_metric_history(out["run_id"], "val_loss")
    assert [r["val_loss"] for r in records] == pytest.approx([m.value for m in val_loss])
    train_loss = [m.value for m in client.get_metric_history(out["run_id"], "train_loss")]
    assert [r["train_loss"] for r in records] == pytest.approx(train_loss) and len(train_loss) == 2
    assert [r["lr"] for r in records] == [0.01, 0.01]


def test_the_trials_pruner_stops_the_fit_with_trial_pruned(loaders, tracking_uri):
    # a bar no 2-epoch fit reaches, checked from epoch 2 on: pruned there, after two reports
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=0.99, n_warmup_steps=2))
    out = {}

    def objective(trial):
        callback = EpochgraphCallback(trial, model="net")
        try:
            _fit(loaders, callback, tracking_uri, epochs=4)
        finally:
            out["callback"] = callback
        return 1.0

    study.optimize(objective, n_trials=1)
    frozen = study.trials[0]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert sorted(frozen.intermediate_values) == [1, 2] and out["callback"].pruned_at_epoch == 2
    run = mlflow.MlflowClient(tracking_uri).search_runs(
        [mlflow.MlflowClient(tracking_uri).get_experiment_by_name("lightning").experiment_id])[0]
    assert run.data.tags["pruned"] == "true" and run.data.tags["pruned_at_epoch"] == "2"
    assert "sig/degree/mean" in run.data.metrics


def test_without_a_trial_it_only_logs_and_bad_arguments_name_the_fix(loaders, tracking_uri):
    _, _, run_id = _fit(loaders, EpochgraphCallback(model="net"), tracking_uri)
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, "sig/nonfinite")
    assert [(m.step, m.value) for m in history] == [(1, 0.0), (2, 0.0)]
    with pytest.raises(ValueError, match="metrics names 'accuracy'"):
        EpochgraphCallback(metrics={"accuracy": "acc"})
    with pytest.raises(TypeError, match="must be the optuna.trial.Trial"):
        EpochgraphCallback(trial="trial-1")
    with pytest.raises(ValueError, match="model='network' is not an attribute of TinyLeNet"):
        _fit(loaders, EpochgraphCallback(model="network"), tracking_uri)


def test_paused_trials_resume_from_lightnings_own_checkpoint_to_the_weights_of_an_uninterrupted_fit(tmp_path):
    from collections import Counter

    import epochgraph
    from epochgraph.lightning import resume_checkpoint
    from epochgraph.search.trial_attrs import RESUMED_FROM_ATTR
    from tests.pausing import PauseOdd

    s = load_data(train_size=200, val_size=100, test_size=100, seed=0)
    # in a fixed order: a resumed fit sees the batches the uninterrupted one would
    train = DataLoader(TensorDataset(s.x_train, s.y_train), batch_size=50)
    val = DataLoader(TensorDataset(s.x_val, s.y_val), batch_size=100)
    trained, finals, epochs = Counter(), {}, 4

    class Count(pl.Callback):
        def __init__(self, lr):
            self.lr = lr

        def on_train_epoch_end(self, trainer, pl_module):
            trained[self.lr] += 1

    def fit(lr, trial=None, ckpt_path=None):
        torch.manual_seed(0)
        module = TinyLeNet(lr=lr)
        callbacks = [Count(lr)] + ([EpochgraphCallback(trial, model="net")] if trial is not None else [])
        trainer = pl.Trainer(max_epochs=epochs, logger=False, callbacks=callbacks, accelerator="cpu", devices=1,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, train, val, ckpt_path=ckpt_path)
        return module, trainer

    def objective(trial):
        lr = trial.suggest_float("lr", 0.001, 0.01, log=True)
        module, trainer = fit(lr, trial, resume_checkpoint(trial, tmp_path))
        finals[lr] = {k: v.clone() for k, v in module.state_dict().items()}
        return trainer.callback_metrics["val_acc"].item()

    study = optuna.create_study(direction="maximize", pruner=PauseOdd(at=2, after=1),
                                sampler=optuna.samplers.RandomSampler(0))
    epochgraph.optimize(study, objective, n_trials=3, checkpoint_dir=tmp_path / "ckpt")
    resumed = [t for t in study.trials if RESUMED_FROM_ATTR in t.user_attrs]
    # 0 completes, 1 pauses at epoch 2 and resumes as 2, 3 pauses and resumes as 4 (in the last pass)
    assert [t.user_attrs[RESUMED_FROM_ATTR] for t in resumed] == [1, 3]
    for t in resumed:
        paused = study.trials[t.user_attrs[RESUMED_FROM_ATTR]]
        assert paused.state.name == "PRUNED" and t.state.name == "COMPLETE" and t.params == paused.params
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]  # the paused epochs carried over, then 3 and 4
        assert trained[t.params["lr"]] == epochs  # epochs 1-2 before the pause, 3-4 after it: none twice
    lr = resumed[0].params["lr"]
    assert not list((tmp_path / "ckpt").rglob("*.pt"))
    # the paused and resumed fit ends at the weights of the same fit without a pause
    module, _ = fit(lr)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(finals[lr][k], v, atol=1e-6, rtol=0)
