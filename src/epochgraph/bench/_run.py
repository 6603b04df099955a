"""What every benchmark step shares: running one of the project's commands as a step."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from epochgraph.errors import EpochgraphError

log = logging.getLogger("epochgraph")


def call(cmd: Sequence[str], what: str, hint: str = "") -> None:
    """Run ``cmd`` (its output goes to the terminal); a non-zero exit is one line naming ``what``."""
    log.info("running %s", " ".join(cmd))
    code = subprocess.call(list(cmd))
    if code != 0:
        raise EpochgraphError(f"{what} stopped with exit status {code} (see above){hint}")
