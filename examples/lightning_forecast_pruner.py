"""The same search with PyTorch Lightning: `EpochgraphCallback` prunes through the trial, as Optuna's own
Lightning callback does, and logs the graph signatures through the trainer's MLflowLogger.

    pip install 'epochgraph[lightning]'
    python examples/lightning_forecast_pruner.py --trials 20 --epochs 10
    python examples/lightning_forecast_pruner.py --pause     # pause instead: paused trials resume (epochgraph.optimize)

At every validation end the callback computes the network's signature, logs it (``sig/...``, step = epoch
from 1) to each of the trainer's loggers, records the epoch in the trial (val_acc, val_loss, lr; the
epoch's train_loss once Lightning has reduced it), reports val_acc and raises ``optuna.TrialPruned`` when
the pruner says so, which ``trainer.fit`` passes on to Optuna. Each trial is one MLflow run of the
MLflowLogger (Lightning's own metrics at its global step, the signatures at step = epoch).

With ``--pause`` the pruner pauses instead of pruning: the callback hands the paused epoch's Lightning checkpoint
to ``epochgraph.optimize``, which resumes paused trials before asking new ones; a resumed trial's fit goes on from
``resume_checkpoint(trial)`` (``trainer.fit(..., ckpt_path=...)``) in the paused trial's MLflow run.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import optuna
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import MLFlowLogger
from optuna_forecast_pruner import SmallCNN, summary
from torch.utils.data import DataLoader, TensorDataset

import epochgraph
from epochgraph import ForecastPruner
from epochgraph.lightning import EpochgraphCallback, resume_checkpoint
from epochgraph.training import load_data


class LitCNN(pl.LightningModule):
    def __init__(self, width: int, lr: float) -> None:
        super().__init__()
        self.net = SmallCNN(width)
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
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def make_objective(args: argparse.Namespace, data):
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=1000)

    # --8<-- [start:objective]
    def objective(trial: optuna.Trial) -> float:
        pl.seed_everything(trial.number, verbose=False)
        module = LitCNN(trial.suggest_categorical("width", [4, 8, 16]), trial.suggest_float("lr", 1e-3, 0.3, log=True))
        # --pause: a resumed trial goes on in the MLflow run of the trial it resumes (user attr resumed_from)
        resumes = trial.user_attrs.get("resumed_from")
        run_id = trial.study.trials[resumes].user_attrs.get("mlflow_run_id") if resumes is not None else None
        logger = MLFlowLogger(experiment_name=args.experiment, tracking_uri=args.tracking_uri,
                              run_name=f"trial-{trial.number:03d}", tags={"study": args.study_name}, run_id=run_id)
        if run_id is None:
            logger.log_hyperparams(trial.params)
        trial.set_user_attr("mlflow_run_id", logger.run_id)
        trainer = pl.Trainer(max_epochs=args.epochs, logger=logger, accelerator="cpu", devices=1,
                             callbacks=[EpochgraphCallback(trial, monitor="val_acc", model="net")],
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             log_every_n_steps=1)
        # raises optuna.TrialPruned when the pruner stops the trial; a resumed trial starts from its checkpoint
        trainer.fit(module, train, val, ckpt_path=resume_checkpoint(trial))
        return trainer.callback_metrics["val_acc"].item()
    # --8<-- [end:objective]

    return objective


def main(argv: list[str] | None = None) -> optuna.Study:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--warm-start", default=None,
                   help="population tables for the forecaster's warm start (default: none, a cold start)")
    p.add_argument("--storage", default=None, help="an Optuna RDB URL shared by several workers; default: in memory")
    p.add_argument("--study-name", default="examples-lightning")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    p.add_argument("--experiment", default="examples")
    p.add_argument("--pause", action="store_true", help="pause instead of prune: paused trials keep Lightning's "
                                                        "checkpoint and resume when the evidence turns")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where paused trials' checkpoints are kept")
    p.add_argument("--seed", type=int, default=None, help="the sampler's seed (TPE), for a search that repeats")
    args = p.parse_args(argv)

    data = load_data("fashion_mnist", train_size=args.train_size, val_size=args.val_size, test_size=100)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = ForecastPruner(max_epoch=args.epochs, warm_start=args.warm_start, pause=args.pause,
                            min_progress=0.11 if args.pause else 0.0)
    study = optuna.create_study(direction="maximize", storage=args.storage, study_name=args.study_name,
                                load_if_exists=True, pruner=pruner, sampler=optuna.samplers.TPESampler(seed=args.seed))
    if args.pause:  # Optuna's loop, plus: paused trials resume before new ones are asked
        epochgraph.optimize(study, make_objective(args, data), n_trials=args.trials, checkpoint_dir=args.checkpoint_dir)
    else:
        study.optimize(make_objective(args, data), n_trials=args.trials)
    print(summary(study))
    return study


if __name__ == "__main__":
    main()
