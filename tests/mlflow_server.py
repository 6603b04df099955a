"""A throwaway MLflow tracking server that serves artifacts, as ``make server`` starts it, for tests of workers
that reach MLflow (runs and artifacts, checkpoints among them) through HTTP only."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = 180.0) -> Iterator[str]:
    """``mlflow server`` on a free port of 127.0.0.1, its runs in ``folder/mlflow.db`` and the artifacts it serves
    in ``folder/artifacts`` (``make server``'s flags); yields its URI once it answers ``/health``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
           f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
           "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = folder / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            assert proc.poll() is None, f"mlflow server ended (status {proc.returncode}):\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            assert time.time() < deadline, f"mlflow server not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
