"""The training loop: deterministic given the seed, hooks at every epoch end, clean stop on divergence."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from epochgraph.errors import EpochgraphError, check_interrupt, choice_error
from epochgraph.hooks import EpochHook, EpochState
from epochgraph.models import build_from_config
from epochgraph.training.checkpoint import Checkpoint
from epochgraph.training.data import Splits, load_data
from epochgraph.training.schedule import augment_batch, build_scheduler, is_per_batch

log = logging.getLogger("epochgraph")

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainResult:
    """What a finished (or diverged) training run produced."""

    epochs_run: int
    diverged: bool
    history: list[dict[str, float]] = field(default_factory=list)
    test_acc: float = float("nan")
    test_loss: float = float("nan")
    model: nn.Module | None = None
    pruned_at_epoch: int | None = None


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def build_optimizer(params, name: str = "sgd", lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 0.0, nesterov: bool = False, betas=(0.9, 0.999),
                    **_: Any) -> torch.optim.Optimizer:
    """SGD or Adam from the ``optim`` config group, with the values checked."""
    if name not in OPTIMIZERS:
        raise choice_error("optimizer", name, OPTIMIZERS, key="optim")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise EpochgraphError(f"optim.lr={lr} must be a positive number, e.g. optim.lr=0.01")
    if weight_decay < 0:
        raise EpochgraphError(f"optim.weight_decay={weight_decay} must be >= 0, e.g. optim.weight_decay=5e-4")
    if not 0 <= momentum < 1:
        raise EpochgraphError(f"optim.momentum={momentum} must be in [0, 1), e.g. optim.momentum=0.9")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               nesterov=bool(nesterov and momentum > 0))
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise EpochgraphError(f"trainer.device={name!r} is not a torch device; use auto, cpu or cuda") from None


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = model(xb)
        loss_sum += nn.functional.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
    return loss_sum / len(x), correct / len(x)


def check_config(cfg: Mapping[str, Any], splits: Splits | None = None) -> Splits:
    """Load the data and build the model and optimizer once, so bad input fails before anything is logged.

    ``splits``, when given, are the data ``cfg`` loads (checked before with the same ``data`` and ``seed``).
    """
    for key in ("epochs", "batch_size"):
        value = cfg["trainer"][key]
        if not isinstance(value, int) or value < 1:
            raise EpochgraphError(f"trainer.{key}={value} must be a positive integer")
    if splits is None:
        data = dict(cfg["data"])
        # ``+data.seed=N`` draws the data subsets with their own seed; the top-level ``seed`` otherwise
        data_seed = data.pop("seed", None)
        splits = load_data(**data, seed=int(cfg["seed"] if data_seed is None else data_seed))
    model = build_from_config(cfg["model"], in_channels=splits.in_channels, image_size=splits.image_size,
                              num_classes=splits.num_classes)
    if (cfg.get("graph") or {}).get("enabled", False):
        from epochgraph.graph.tracing import topology_of

        topology_of(model)  # a network outside the rolled graph's rules fails here, before any run
    optimizer = build_optimizer(model.parameters(), **dict(cfg["optim"]))
    build_scheduler(optimizer, cfg["optim"].get("schedule"), int(cfg["trainer"]["epochs"]),
                    steps_per_epoch(len(splits.x_train), int(cfg["trainer"]["batch_size"])))
    resolve_device(str(cfg["trainer"].get("device", "auto")))
    return splits


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


def train(cfg: Mapping[str, Any], hooks: Sequence[EpochHook] = (), splits: Splits | None = None,
          resume: Checkpoint | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.trainer.epochs`` epochs, calling ``hooks`` after each.

    A non-finite training loss stops the run: the epoch is reported with ``diverged=True`` (so the hooks
    can log it) and no further epoch runs. A hook that sets ``state.prune`` stops the run after that
    epoch (``pruned_at_epoch``); ``state.checkpoint()`` gives the hooks what to resume from.
    ``resume``: a `Checkpoint` of this training (same config and seed) to go on from, its epochs not run again:
    the weights at every later epoch are those of a training that never stopped.
    """
    trainer = cfg["trainer"]
    seed = int(cfg["seed"])
    torch.set_num_threads(int(trainer.get("threads") or torch.get_num_threads()))
    epochs, batch_size = int(trainer["epochs"]), int(trainer["batch_size"])
    device = resolve_device(str(trainer.get("device", "auto")))

    if splits is None:
        splits = check_config(cfg)
    gen = seed_everything(seed)
    model = build_from_config(cfg["model"], in_channels=splits.in_channels, image_size=splits.image_size,
                              num_classes=splits.num_classes).to(device)
    optimizer = build_optimizer(model.parameters(), **dict(cfg["optim"]))
    schedule = cfg["optim"].get("schedule")
    scheduler = build_scheduler(optimizer, schedule, epochs, steps_per_epoch(len(splits.x_train), batch_size))
    per_batch = scheduler is not None and is_per_batch(schedule)
    augment = bool(cfg["data"].get("augment", False))
    x, y = splits.x_train, splits.y_train
    result = TrainResult(epochs_run=0, diverged=False, model=model)
    first = 1
    if resume is not None:
        resume.restore(model, optimizer, scheduler, gen)
        result.history, result.epochs_run, first = [dict(h) for h in resume.history], resume.epoch, resume.epoch + 1
        log.info("resumed after epoch %d of %d", resume.epoch, epochs)

    for epoch in range(first, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum, correct, seen, diverged = 0.0, 0, 0, False
        lr = float(optimizer.param_groups[0]["lr"])  # the LR this epoch starts at (optim.schedule)
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            check_interrupt()  # a Ctrl-C or SIGTERM whose exception was dropped (in a finalizer) stops it here
            idx = order[i:i + batch_size]
            xb = augment_batch(x[idx], gen) if augment else x[idx]
            xb, yb = xb.to(device), y[idx].to(device)
            out = model(xb)
            loss = nn.functional.cross_entropy(out, yb)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_batch:
                scheduler.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
            seen += len(idx)
        if scheduler is not None and not per_batch:
            scheduler.step()
        train_time = time.perf_counter() - start
        val_loss, val_acc = evaluate(model, splits.x_val, splits.y_val, 1024, device)
        metrics = {
            "train_loss": loss_sum / seen if seen and not diverged else float("nan"),
            "train_acc": correct / seen if seen else float("nan"),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "time/epoch_s": train_time,
        }
        diverged = diverged or not math.isfinite(val_loss)
        state = EpochState(epoch=epoch, model=model, metrics=metrics, diverged=diverged,
                           # called by a hook, after this epoch joined the history
                           checkpoint=lambda e=epoch: Checkpoint.capture(e, model, optimizer, scheduler, gen,
                                                                         result.history))
        if diverged:
            state.metrics["diverged"] = 1.0
            state.tags["diverged"] = "true"
        result.epochs_run = epoch
        result.diverged = diverged
        result.history.append(state.metrics)
        _log_epoch(epoch, epochs, state)
        for hook in hooks:
            hook.on_epoch_end(state)
        if state.prune:
            result.pruned_at_epoch = epoch
            log.info("epoch %d: pruned", epoch)
            break
        if diverged:
            log.warning("epoch %d: the loss is no longer finite; the run diverged and stops here", epoch)
            break

    result.test_loss, result.test_acc = evaluate(model, splits.x_test, splits.y_test, 1024, device)
    return result


def _log_epoch(epoch: int, epochs: int, state: EpochState) -> None:
    m = state.metrics
    log.info("epoch %*d/%d  train_loss %.4f  train_acc %.4f  val_loss %.4f  val_acc %.4f  lr %.3g  %.2fs",
             len(str(epochs)), epoch, epochs, m["train_loss"], m["train_acc"], m["val_loss"], m["val_acc"],
             m["lr"], m["time/epoch_s"])
