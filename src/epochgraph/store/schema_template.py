"""An empty MLflow SQLite store, made once per machine and MLflow version and copied for each new store.

A new embedded store costs MLflow's whole chain of Alembic migrations (2-3 s): in every new ``mlruns/``, every
test and every worker's first run. The first store made keeps a copy of itself, still empty, in the cache folder
(`epochgraph.paths.cache_dir`), named by MLflow's version; later stores are copies of it, with the default
experiment's artifact location set to what MLflow itself would have set there (``./mlruns/0`` of the process
that creates it). A copy that is not a complete store (no schema revision) is ignored and made again.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import mlflow

from epochgraph.paths import cache_dir

log = logging.getLogger("epochgraph")


def template_path() -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"mlflow-{mlflow.__version__}-empty-store.db"


def _complete(path: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return bool(row and row[0]) and runs == 0


def build_store(built: Path, migrate: Callable[[Path], None]) -> None:
    """Make an empty MLflow store at ``built``: a copy of the template when there is one, else ``migrate(built)``
    (MLflow's migrations), kept as the template for the next store."""
    template = template_path()
    if template is not None and template.exists() and _complete(template):
        shutil.copyfile(template, built)
        con = sqlite3.connect(built)
        try:
            with con:  # the default experiment's artifacts where MLflow puts them: ./mlruns/0 of this process
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                            (str(Path("mlruns").resolve() / "0"),))
        finally:
            con.close()
        return
    migrate(built)
    if template is None:
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(built, tmp)
        os.replace(tmp, template)
    except OSError as err:  # a cache folder that cannot be written: every store is migrated
        log.debug(f"could not keep an empty MLflow store in {template.parent}: {err}")
