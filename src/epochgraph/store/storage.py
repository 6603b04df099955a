"""Optuna storage from the ``storage`` config group: SQLite embedded, PostgreSQL for many workers."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna

from epochgraph.errors import EpochgraphError


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and MLflow params."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def resolve_url(url: str) -> str:
    """Absolute SQLite paths (relative ones are taken from the current directory), folder created."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):]).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    return url


@contextlib.contextmanager
def sqlite_init_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite database while it is opened (a no-op for other URLs).

    Opening a new database creates its schema; two processes doing it at once (two first sweeps on a
    new store) fail with "table ... already exists" or "duplicate column name". Optuna and MLflow both
    create their schema on first use, so every process opens a SQLite store under this lock.
    """
    if not url.startswith("sqlite:///") or ":memory:" in url:
        yield
        return
    path = Path(url[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".init-lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


PG_SCHEMA_LOCK = 0x6570_6F63  # the advisory lock key workers on one PostgreSQL database create Optuna's schema under


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold a lock that every process of ours takes while it opens the Optuna storage at ``url``: a file lock
    beside a SQLite database (`sqlite_init_lock`), a PostgreSQL advisory lock on the server (two workers starting
    at once on a new database otherwise both create Optuna's tables, and one fails on "duplicate key value
    violates unique constraint"); nothing for other URLs."""
    if not url.startswith("postgresql"):
        with sqlite_init_lock(url):
            yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": PG_SCHEMA_LOCK})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": PG_SCHEMA_LOCK})
    finally:
        engine.dispose()


def make_storage(cfg: Mapping[str, Any]) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats, so a dead worker's trial does not stay RUNNING forever."""
    url = resolve_url(str(cfg["url"]))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes on one SQLite file: wait for the lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    heartbeat = cfg.get("heartbeat_interval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat and retry callback are marked experimental
        retry = optuna.storages.RetryFailedTrialCallback(max_retry=int(cfg.get("max_retry", 0))) if heartbeat else None
        try:
            with schema_lock(url):
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs,
                    heartbeat_interval=int(heartbeat) if heartbeat else None,
                    grace_period=int(cfg["grace_period"]) if heartbeat and cfg.get("grace_period") else None,
                    failed_trial_callback=retry,
                )
        except Exception as err:  # SQLAlchemy: bad URL, unreachable server, missing driver
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise EpochgraphError(f"cannot open the Optuna storage storage.url={redact(url)!r}: {first}; "
                                  f"check the URL (or EPOCHGRAPH_STORAGE_URL) and that the server is up") from None


def while_locked(write: Any, attempts: int = 8) -> Any:
    """``write()``, tried again while a SQLite store says "database is locked" (another writer, or one an
    interrupt cut short that is being released), waiting 0.25 s, 0.5 s, ... between tries."""
    for attempt in range(attempts):
        try:
            return write()
        except Exception as err:
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            gc.collect()  # a session an interrupt left behind, unreachable now: closed, its lock released
            time.sleep(0.25 * 2 ** min(attempt, 4))
