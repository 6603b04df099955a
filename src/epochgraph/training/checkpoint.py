"""A checkpoint a training resumes from exactly: the model, the optimizer, the LR scheduler, the RNG states.

Pausing a trial instead of pruning it is worth something only if the resumed training is the training that
would have run: the same weights at every later epoch. Besides the model's weights that takes the optimizer's
state (momentum buffers, Adam's moments), the LR scheduler's (its step count), every random number generator
the loop draws from (torch's global one, which dropout uses; the data order's own `torch.Generator`; numpy's and
Python's, which users' code may use) and the epoch. `Checkpoint.capture` takes them after an epoch,
`Checkpoint.save` writes them with `torch.save` (one file), `Checkpoint.load` reads one back (a file that is
missing or cut short raises `EpochgraphError`, one line, so that the caller restarts from scratch instead), and
`Checkpoint.restore` puts them back into a freshly built model, optimizer, scheduler and generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from epochgraph.errors import EpochgraphError

FORMAT = 1  # the layout of the saved dictionary


@dataclass
class Checkpoint:
    """The state of a training right after ``epoch`` (1-based) finished; ``history``: its epochs' metrics."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def capture(cls, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                generator: torch.Generator, history: list[dict[str, float]] | None = None) -> Checkpoint:
        """The training's state now (copies: the training may go on)."""
        rng = {"torch": torch.get_rng_state(), "data": generator.get_state(), "numpy": np.random.get_state(),
               "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return cls(epoch=int(epoch), model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                   optimizer=_copy(optimizer.state_dict()),
                   scheduler=None if scheduler is None else _copy(scheduler.state_dict()), rng=rng,
                   history=[dict(h) for h in (history or [])])

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                generator: torch.Generator) -> None:
        """Put the state back into a model, optimizer, scheduler and generator built as the training built them."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        if (scheduler is None) != (self.scheduler is None):
            raise EpochgraphError(f"the checkpoint of epoch {self.epoch} was written "
                                  f"{'without' if self.scheduler is None else 'with'} an LR schedule and the "
                                  f"training resumed {'with' if scheduler is not None else 'without'} one; resume "
                                  f"with the trial's own optim.schedule")
        if scheduler is not None:
            scheduler.load_state_dict(self.scheduler)
        torch.set_rng_state(self.rng["torch"])
        generator.set_state(self.rng["data"])
        np.random.set_state(self.rng["numpy"])
        random.setstate(self.rng["python"])
        if "cuda" in self.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.rng["cuda"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"format": FORMAT, **self.__dict__}, tmp)
        tmp.replace(path)  # never a half-written checkpoint under the real name
        return path

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """The checkpoint in ``path``; `EpochgraphError` (one line) when it is missing or unreadable."""
        path = Path(path)
        if not path.is_file():
            raise EpochgraphError(f"checkpoint {path} is missing")
        try:
            # our own file: RNG states are numpy objects and tuples, which weights_only=True refuses
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise EpochgraphError(f"checkpoint {path} is unreadable ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise EpochgraphError(f"checkpoint {path} is not one this version writes (format {FORMAT})")
        saved.pop("format")
        try:
            return cls(**saved)
        except TypeError as err:
            raise EpochgraphError(f"checkpoint {path} is incomplete ({err})") from None


def _copy(state: Any) -> Any:
    """A deep copy of a state dict whose tensors no longer share memory with the live training."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {k: _copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_copy(v) for v in state)
    return state
