"""A plain Optuna search over a CNN of one's own, pruned by epochgraph's `ForecastPruner`.

    python examples/optuna_forecast_pruner.py --trials 20 --epochs 10
    python examples/optuna_forecast_pruner.py --warm-start bench/results/populations   # prune from trial 2 on
    python examples/optuna_forecast_pruner.py --pause      # pause instead: paused trials resume (epochgraph.optimize)

The objective is ordinary Optuna code; each epoch it makes one call, ``epochgraph.report_epoch``, which
records the epoch's curve and the network's graph signature in the trial (what the pruner reads, in this
process or in any worker sharing ``--storage``), reports val_acc, and logs the same values with
``step=epoch`` to the active MLflow run: here one run per trial, nested under the search's run. With
``--pause`` it also hands ``report_epoch`` what the training resumes from (``checkpoint=``), asks
``epochgraph.resume_state`` at its start, and the search runs through ``epochgraph.optimize``.
Browse them with ``make ui`` (the default ``--tracking-uri`` is the project's embedded store).
"""

from __future__ import annotations

import argparse

import mlflow
import optuna
import torch
import torch.nn.functional as F
from torch import nn

import epochgraph
from epochgraph import ForecastPruner, report_epoch
from epochgraph.training import load_data


class SmallCNN(nn.Module):
    """conv3-pool-conv3-pool-linear for 1x28x28 images (its rolled graph is traced from the model)."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net.eval()
    out = net(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def train_epoch(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, gen: torch.Generator) -> float:
    net.train()
    total = 0.0
    for idx in torch.randperm(len(x), generator=gen).split(batch_size):
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(x)


def make_objective(args: argparse.Namespace, data):
    # --8<-- [start:objective]
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 0.3, log=True)
        width = trial.suggest_categorical("width", [4, 8, 16])
        torch.manual_seed(trial.number)
        gen = torch.Generator().manual_seed(trial.number)
        net = SmallCNN(width)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        # --pause: a trial the pruner paused goes on from what it saved (None for a fresh trial)
        state, first = epochgraph.resume_state(trial), 1
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["data_order"])
            first = state["epoch"] + 1
        with mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True):
            mlflow.log_params(trial.params)
            for epoch in range(first, args.epochs + 1):
                train_loss = train_epoch(net, opt, data.x_train, data.y_train, args.batch_size, gen)
                val_loss, val_acc = evaluate(net, data.x_val, data.y_val)
                checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(), "data_order": gen.get_state(),
                              "epoch": epoch} if args.pause else None
                report_epoch(trial, epoch, val_acc=val_acc, model=net, val_loss=val_loss, train_loss=train_loss,
                             lr=lr, checkpoint=checkpoint)
                if trial.should_prune():
                    mlflow.set_tags({"pruned": "true", "pruned_at_epoch": str(epoch)})
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return val_acc
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
    p.add_argument("--storage", default=None, help="an Optuna RDB URL (sqlite:///..., postgresql://...) shared "
                                                  "by several workers; default: in memory")
    p.add_argument("--study-name", default="examples-forecast-pruner")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    p.add_argument("--experiment", default="examples")
    p.add_argument("--pause", action="store_true", help="pause instead of prune: paused trials keep a checkpoint "
                                                        "and resume when the evidence turns (epochgraph.optimize)")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where paused trials' checkpoints are kept")
    p.add_argument("--seed", type=int, default=None, help="the sampler's seed (TPE), for a search that repeats")
    args = p.parse_args(argv)

    data = load_data("fashion_mnist", train_size=args.train_size, val_size=args.val_size, test_size=100)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # --8<-- [start:study]
    pruner = ForecastPruner(max_epoch=args.epochs, warm_start=args.warm_start, pause=args.pause,
                            min_progress=0.11 if args.pause else 0.0)
    study = optuna.create_study(direction="maximize", pruner=pruner, storage=args.storage,
                                study_name=args.study_name, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=args.seed))
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run(run_name=args.study_name):
        if args.pause:  # Optuna's loop, plus: paused trials resume before new ones are asked
            epochgraph.optimize(study, make_objective(args, data), n_trials=args.trials,
                                checkpoint_dir=args.checkpoint_dir)
        else:
            study.optimize(make_objective(args, data), n_trials=args.trials)
    # --8<-- [end:study]
    print(summary(study))
    return study


def summary(study: optuna.Study) -> str:
    states = [t.state for t in study.trials]
    complete, pruned = states.count(optuna.trial.TrialState.COMPLETE), states.count(optuna.trial.TrialState.PRUNED)
    line = f"{len(states)} trials: {complete} complete, {pruned} pruned"
    resumed = sum("resumed_from" in t.user_attrs for t in study.trials)
    if resumed:
        line += f" ({resumed} of them resumed a paused trial)"
    if complete:
        best = study.best_trial
        line += f"; best val_acc {best.value:.4f} (trial {best.number}, {best.params})"
    return line


if __name__ == "__main__":
    main()
