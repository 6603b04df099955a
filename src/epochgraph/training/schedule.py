"""Learning-rate schedules (``optim.schedule``) and training-set augmentation (``data.augment``).

The schedules are torch's own (`torch.optim.lr_scheduler`): ``step`` (`MultiStepLR`: the LR times
``gamma`` after each of ``milestones``), ``cosine`` (`CosineAnnealingLR` down to ``min_lr``), ``one_cycle``
(`OneCycleLR`, stepped every batch, peaking at ``optim.lr``) and ``none``; ``warmup_epochs`` ramps the LR
up linearly first (`LinearLR` then the schedule, in `SequentialLR`). Milestones below 1 are fractions
of ``trainer.epochs`` (``[0.5, 0.75]`` of 30 epochs: drops after epochs 15 and 22).

`planned_lrs` is the schedule known in advance: the LR every epoch of the training will run at, from the
same torch schedulers run on a stand-in optimizer. A training declares it to its Optuna trial
(``lr_schedule``), so a forecaster can expect the jump an LR drop brings before the curve shows it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from epochgraph.errors import EpochgraphError, choice_error

SCHEDULES = ("none", "step", "cosine", "one_cycle")
PER_BATCH = ("one_cycle",)


def _setting(cfg: Mapping[str, Any] | str | None) -> dict[str, Any]:
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg or {})  # optim.schedule=cosine: the name alone
    name = str(cfg.get("name", "none"))
    if name not in SCHEDULES:
        raise choice_error("learning-rate schedule", name, SCHEDULES, key="optim.schedule.name")
    warmup = cfg.get("warmup_epochs", 0) or 0
    if not isinstance(warmup, int) or warmup < 0:
        raise EpochgraphError(f"optim.schedule.warmup_epochs={warmup} must be a non-negative integer")
    gamma = float(cfg.get("gamma", 0.1))
    if not 0 < gamma <= 1:
        raise EpochgraphError(f"optim.schedule.gamma={gamma} must be in (0, 1], e.g. 0.1")
    min_lr = float(cfg.get("min_lr", 0.0))
    if min_lr < 0:
        raise EpochgraphError(f"optim.schedule.min_lr={min_lr} must be >= 0")
    return {"name": name, "warmup": warmup, "gamma": gamma, "min_lr": min_lr,
            "milestones": list(cfg.get("milestones") or [])}


def milestone_epochs(milestones: Sequence[float], epochs: int) -> list[int]:
    """Epoch numbers after which the LR drops: integers as given, fractions (< 1) of ``epochs``."""
    out = []
    for m in milestones:
        value = float(m)
        if value <= 0:
            raise EpochgraphError(f"optim.schedule.milestones={list(milestones)}: {m} must be > 0 (an epoch, "
                                  f"or a fraction of trainer.epochs below 1)")
        out.append(int(math.floor(value * epochs)) if value < 1 else int(value))
    if out != sorted(out) or len(set(out)) != len(out):
        raise EpochgraphError(f"optim.schedule.milestones={list(milestones)} must be increasing "
                              f"(epochs {out} of trainer.epochs={epochs})")
    return out


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any] | None, epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The torch scheduler of ``cfg`` (``optim.schedule``), or None for a constant LR.

    Stepped once an epoch (``step``, ``cosine``) or once a batch (``one_cycle``, see `PER_BATCH`)."""
    s = _setting(cfg)
    sched = torch.optim.lr_scheduler
    per_batch = s["name"] in PER_BATCH
    unit = steps_per_epoch if per_batch else 1
    warmup = s["warmup"] * unit
    if s["warmup"] >= epochs and s["name"] != "none":
        raise EpochgraphError(f"optim.schedule.warmup_epochs={s['warmup']} leaves no epoch of trainer.epochs="
                              f"{epochs} for the schedule; use fewer warm-up epochs")
    if s["name"] == "none":
        main = None
    elif s["name"] == "step":
        drops = [m - s["warmup"] for m in milestone_epochs(s["milestones"], epochs)]
        if not drops:
            raise EpochgraphError("optim.schedule.name=step needs milestones, "
                                  "e.g. optim.schedule.milestones=[0.5,0.75]")
        main = sched.MultiStepLR(optimizer, milestones=[d for d in drops if d > 0], gamma=s["gamma"])
    elif s["name"] == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs - s["warmup"]), eta_min=s["min_lr"])
    else:
        peak = [g["lr"] for g in optimizer.param_groups]
        main = sched.OneCycleLR(optimizer, max_lr=peak, total_steps=max(2, (epochs - s["warmup"]) * unit))
    if not warmup:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    if main is None:
        return ramp
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def is_per_batch(cfg: Mapping[str, Any] | None) -> bool:
    return _setting(cfg)["name"] in PER_BATCH


def planned_lrs(cfg: Mapping[str, Any] | None, lr: float, epochs: int, steps_per_epoch: int = 1) -> list[float]:
    """The LR of each epoch 1..``epochs`` (the LR its first batch runs at), as the training will run it."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=float(lr))
    scheduler = build_scheduler(optimizer, cfg, epochs, steps_per_epoch)
    per_batch = is_per_batch(cfg)
    out = []
    for _ in range(epochs):
        out.append(float(optimizer.param_groups[0]["lr"]))
        if scheduler is not None:
            for _ in range(steps_per_epoch if per_batch else 1):
                optimizer.step()
                scheduler.step()
    return out


def augment_batch(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding of 1/8 of the side, e.g. 4 pixels of 32) and horizontal flip, per image."""
    n, _, h, w = xb.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(xb, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # [n, 1, h, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # [n, 1, 1, w]
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(xb.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]
