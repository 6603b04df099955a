"""Where the project's files are: the Hydra configs, the committed benchmark results, and the cache.

Commands run from any folder (a Hydra job changes into its run directory), so paths the product reads
from the checkout, such as the committed population tables a warm start names, resolve against it.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
CONF_DIR = str(PROJECT_DIR / "conf")
RESULTS_DIR = PROJECT_DIR / "bench" / "results"  # written by `make bench` only


def project_path(path: str | Path) -> Path:
    """``path`` as given when it exists or is absolute, else relative to the checkout if it is there."""
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (PROJECT_DIR / p).exists():
        return PROJECT_DIR / p
    return p


CACHE_ENV = "EPOCHGRAPH_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where results worth keeping between processes are kept (the warm start's, an empty MLflow schema):
    ``$EPOCHGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/epochgraph``, else ``~/.cache/epochgraph``; None when
    ``EPOCHGRAPH_CACHE_DIR`` is ``off``."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "epochgraph"
