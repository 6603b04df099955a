from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# One cache folder for the session (`epochgraph.paths.cache_dir`), empty at its start, shared by every test, worker
# and subprocess (they inherit the environment): the warm start is learnt and the empty MLflow store migrated once
# per session, not once per process, and nothing is read from or left in the user's own cache.
# The process that makes the folder (pytest itself, or its xdist controller) removes it when it exits: a run of the
# suite leaves nothing behind in the temporary folder (its warm start and store add up to ~90 MB a run).
if "EPOCHGRAPH_CACHE_DIR" not in os.environ:
    os.environ["EPOCHGRAPH_CACHE_DIR"] = tempfile.mkdtemp(prefix="epochgraph-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EPOCHGRAPH_CACHE_DIR"], ignore_errors=True)


def compose_train(overrides: list[str], tracking_uri: str | None = None) -> DictConfig:
    """The real `conf/train.yaml` with ``overrides``, as `epochgraph-train` would see it."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        extra = [f"mlflow.tracking_uri={tracking_uri}"] if tracking_uri else []
        return compose(config_name="train", overrides=[*overrides, *extra])


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh embedded MLflow store (SQLite + artifacts) in a temporary folder."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


TINY = ["data.train_size=200", "data.val_size=100", "data.test_size=100", "trainer.epochs=2",
        "trainer.batch_size=50", "trainer.threads=1"]


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` (a minute each, some of it waiting on servers and clusters) first: spread over
    the xdist workers from the start, they do not leave one worker finishing a long test while the others are
    idle at the end (the order of the rest is kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
