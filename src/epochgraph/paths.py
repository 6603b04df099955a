"""Where the project's files are: the Hydra configs and the committed benchmark results.

Commands run from any folder (a Hydra job changes into its run directory), so paths the product reads
from the checkout, such as the committed population tables a warm start names, resolve against it.
"""

from __future__ import annotations

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
