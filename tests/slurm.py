"""A throwaway one-node SLURM cluster (Debian's slurm-wlm and munge, `scripts/slurm.sh`), for tests that
submit real jobs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm.sh"


def available() -> bool:
    return all(shutil.which(tool) or Path("/usr/sbin", tool).exists() for tool in ("munged", "slurmctld", "slurmd"))


@contextlib.contextmanager
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Start a cluster in a temporary folder; yields the environment its commands and jobs need
    (``SLURM_CONF``); stops it afterwards."""
    # a short path: munge's socket path must fit in a UNIX socket address (108 bytes)
    tmp = Path(tempfile.mkdtemp(prefix="eg-slurm-"))
    try:
        start = subprocess.run(["bash", str(SCRIPT), "start", str(tmp)], capture_output=True, text=True,
                               timeout=300)
        assert start.returncode == 0, f"the SLURM cluster did not start:\n{start.stdout}{start.stderr}"
        yield {**os.environ, "SLURM_CONF": str(tmp / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(tmp)], capture_output=True, timeout=300)
        shutil.rmtree(tmp, ignore_errors=True)
