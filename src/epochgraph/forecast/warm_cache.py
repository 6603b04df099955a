"""What a warm start learns from the recorded populations, kept on disk and learnt once per machine.

A forecast pruner that starts warm reads the population tables (about 2 s), makes their pairs of epochs
(2 s), fits its prior and learns its recalibration (5 s): the same work in every process that starts a study,
every sweep job in its own process (SLURM, several workers) and every run of ``make run``. `disk_cached` keeps
each result in a file (``$EPOCHGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/epochgraph``, else
``~/.cache/epochgraph``), keyed by everything it depends on: the tables' contents (`tables_digest`), the
settings, and the code and library versions that compute it (`code_digest`). A result that cannot be read
back is computed again; a cache folder that cannot be written leaves the work to be done in each process.
``EPOCHGRAPH_CACHE_DIR=off`` turns the disk cache off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from epochgraph.paths import cache_dir

T = TypeVar("T")
log = logging.getLogger("epochgraph")


@functools.cache
def code_digest() -> str:
    """A hash of the code a warm start's results depend on: this package's forecasting and pruning modules,
    and the versions of the libraries that fit and pickle the models."""
    import numpy
    import sklearn

    import epochgraph

    root = Path(epochgraph.__file__).parent
    h = hashlib.sha256(f"numpy {numpy.__version__} sklearn {sklearn.__version__}".encode())
    for path in sorted([*root.glob("forecast/*.py"), root / "search" / "forecast_pruner.py"]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def tables_digest(paths: Iterable[Path]) -> str:
    """A hash of the tables' contents (not their names or times: a copied checkout hits the same entries)."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def disk_cached(kind: str, key: Mapping[str, Any], make: Callable[[], T]) -> T:
    """``make()``, or its result kept on disk for the same ``kind`` and ``key`` (small, JSON-like values) and
    the same `code_digest`. Written with `joblib.dump` to a new file moved into place (two processes making
    the same entry at once both succeed), read with `joblib.load`."""
    import json

    import joblib

    folder = cache_dir()
    if folder is None:
        return make()
    text = json.dumps({"kind": kind, **key, "code": code_digest()}, sort_keys=True, default=str)
    path = folder / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.joblib"
    if path.exists():
        try:
            return joblib.load(path)
        except Exception as err:  # cut short or from elsewhere: made again below
            log.warning(f"the cached {kind} in {path} is unreadable ({type(err).__name__}); making it again")
    value = make()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        joblib.dump(value, tmp)
        os.replace(tmp, path)
    except OSError as err:  # a folder that cannot be written: the work is done in each process
        log.debug(f"could not keep the {kind} in {folder}: {err}")
    return value
