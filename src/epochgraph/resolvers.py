"""OmegaConf resolvers for seeded random search inside a plain Hydra multirun.

``${eg.loguniform:1e-3,1.0,${seed},lr}`` (also ``eg.uniform``, ``eg.randint``, ``eg.choice``) draws one value per
(seed, name) pair, reproducibly, so that
``epochgraph-train -m seed=range(0,60) +experiment=population_lenet`` is a random search of 60 runs
with Hydra's own basic sweeper.

``${eg.pythonpath:}`` is this process's ``PYTHONPATH`` with the folder epochgraph is imported from (a
checkout's ``src``) first, for jobs started elsewhere (SLURM) that must import the same code:
``conf/hydra/launcher/slurm.yaml``.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def loguniform(low: float, high: float, seed: int, name: str) -> float:
    u = _rng(seed, name).random()
    return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))


def uniform(low: float, high: float, seed: int, name: str) -> float:
    return float(low + _rng(seed, name).random() * (high - low))


def randint(low: int, high: int, seed: int, name: str) -> int:
    """``${eg.randint:20,100,${seed},epochs}``: an integer from ``low`` to ``high``, both included."""
    if int(high) < int(low):
        raise ValueError(f"eg.randint: high={high} is below low={low}")
    return int(_rng(seed, name).integers(int(low), int(high) + 1))


def choice(*args):
    """``${eg.choice:a,b,c,${seed},name}``: one of the options."""
    *options, seed, name = args
    return options[int(_rng(seed, name).integers(len(options)))]


def pythonpath() -> str:
    """The folder holding the imported ``epochgraph`` package (and ``hydra_plugins`` beside it), then the
    entries of ``PYTHONPATH``."""
    import epochgraph

    first = str(Path(epochgraph.__file__).resolve().parents[1])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != first]
    return os.pathsep.join([first, *rest])


def register() -> None:
    for fname, fn in (("eg.loguniform", loguniform), ("eg.uniform", uniform), ("eg.randint", randint),
                      ("eg.choice", choice),
                      ("eg.pythonpath", pythonpath)):
        if not OmegaConf.has_resolver(fname):
            OmegaConf.register_new_resolver(fname, fn)


register()
