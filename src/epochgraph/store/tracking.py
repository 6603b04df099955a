"""MLflow: the embedded store, one run per training, per-epoch metrics and weights artifacts.

The embedded store is ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts`` (MLflow 3
deprecates the plain file store). Runs are driven through `MlflowClient` rather than the fluent API,
so several runs (a sweep's parent and its trials) can be open in one process without a global stack.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from epochgraph.errors import EpochgraphError, Terminated, note_interrupt, sigterm_as_exception
from epochgraph.hooks import EpochState
from epochgraph.store.storage import redact, sqlite_init_lock, while_locked

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
WEIGHTS_DIR = "weights"
WEIGHTS_RE = re.compile(r"weights/epoch_(\d+)\.safetensors$")


def weights_artifact(epoch: int) -> str:
    """Artifact path of the weights after ``epoch``: ``weights/epoch_003.safetensors``."""
    return f"{WEIGHTS_DIR}/epoch_{epoch:03d}.safetensors"


# A run's outcome goes first in its name: the runs table shows only the first ~16 characters of a trial's
# name at its default column width (``trial-027 · pruned@1`` showed as ``trial-027 · prune…``), and every
# FINISHED run shows the same green status icon, pruned or not. The tags (``state``, ``pruned``,
# ``pruned_at_epoch``) stay for filtering and sorting.
COMPLETE_MARK = "✓"
PRUNED_MARK = "✂"
PAUSED_MARK = "‖"
DIVERGED_MARK = "NaN"


def trial_outcome(*, pruned_at_epoch: int | None = None, diverged_at_epoch: int | None = None,
                  paused: bool = False) -> str:
    """The short outcome of a trial that ran to its end: ``✂@1`` (pruned after epoch 1), ``‖@4`` (paused after
    epoch 4: it may resume), ``NaN@3`` (diverged at epoch 3: a non-finite loss) or ``✓`` (complete)."""
    if pruned_at_epoch is not None:
        return f"{PAUSED_MARK if paused else PRUNED_MARK}@{pruned_at_epoch}"
    if diverged_at_epoch is not None:
        return f"{DIVERGED_MARK}@{diverged_at_epoch}"
    return COMPLETE_MARK


def outcome_run_name(name: str, outcome: str) -> str:
    """``name`` with ``outcome`` first: ``✓ trial-003``, ``✂@1 trial-027``, ``killed trial-000``,
    ``failed pruned_sweep``."""
    return f"{outcome} {name}"


def trial_run_name(number: int, first: int | None = None) -> str:
    """A trial's run name while it trains: ``trial-027`` (`outcome_run_name` puts its outcome first); a trial
    that resumed paused trial ``first``'s run, in that run: ``trial-005→027``."""
    if first is not None and first != number:
        return f"trial-{first:03d}→{number:03d}"
    return f"trial-{number:03d}"


def resolve_tracking_uri(uri: str | None) -> str:
    """Absolute form of ``uri`` (relative SQLite paths are taken from the current directory)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):]).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    return uri


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a local SQLite db; a server decides for itself."""
    if uri.startswith("sqlite:///"):
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts" / folder).as_uri()
    return None


# the MLflow UI opens an experiment on its GenAI overview unless asked for the classic runs table: the
# UI of MLflow 3.x reads the workflow type from the link (``?workflowType=machine_learning``); versions
# that read it from the experiment instead honour the ``mlflow.experimentKind`` tag
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_QUERY = "?workflowType=machine_learning"
DEFAULT_UI_URL = "http://127.0.0.1:5000"  # make ui


def ui_base(tracking_uri: str) -> str:
    """Where a user browses ``tracking_uri``: the server itself, or ``make ui`` (``EPOCHGRAPH_UI_URL``)
    for the embedded store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return os.environ.get("EPOCHGRAPH_UI_URL", DEFAULT_UI_URL).rstrip("/")


def runs_url(tracking_uri: str, experiment_id: str, base: str | None = None) -> str:
    """The MLflow UI's runs table of an experiment (``base``: the UI's address, default `ui_base`)."""
    return f"{(base or ui_base(tracking_uri)).rstrip('/')}/#/experiments/{experiment_id}/runs{UI_QUERY}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, base: str | None = None) -> str:
    """The MLflow UI's page of one run."""
    return f"{(base or ui_base(tracking_uri)).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{UI_QUERY}"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """One request, no retries, to an MLflow tracking server: an unreachable or failing server is reported in
    seconds, before any training (MLflow's own client retries for minutes)."""
    from mlflow.tracking._tracking_service.utils import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    fix = "start it (make server) or fix the URI"
    try:
        resp = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                            max_retries=0, timeout=timeout, raise_on_status=False, params={"max_results": 1})
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Connection refused" in reason:
            reason = "connection refused"
        elif "timed out" in reason.lower():
            reason = f"no answer within {timeout:g} s"
        raise EpochgraphError(f"cannot reach the MLflow tracking server at mlflow.tracking_uri={redact(uri)!r}: "
                              f"{reason[:200]}; {fix}") from None
    if resp.status_code != 200:
        raise EpochgraphError(f"the MLflow tracking server at mlflow.tracking_uri={redact(uri)!r} answered HTTP "
                              f"{resp.status_code} to a search of experiments; {fix}")


# what opening a SQLite store says while another process is creating its schema (MLflow migrates a new
# store in many steps): the store is fine a moment later
_SCHEMA_RACE = ("already exists", "duplicate column", "database is locked", "no such table", "no such column",
                "out-of-date database schema", "alembic", "circular dependency")
OPEN_ATTEMPTS = 8  # ~18 s of waiting in all: a schema migration on a loaded machine takes seconds
NEW_STORE_S = 120  # a SQLite file written this recently may be a schema still being created
STALE_SCHEMA_S = 30  # a schema short of MLflow's head, untouched this long, is no longer being created
SCHEMA_WAIT_S = 600  # the longest wait for another process's schema creation, however busy the machine


def _schema_race(err: BaseException, uri: str) -> bool:
    """Whether ``err`` may be a store caught mid-creation by another process: a SQLite file written in the
    last `NEW_STORE_S` seconds, or an error (or one it was raised from) that says so."""
    path = _sqlite_path(uri)
    if path is not None and path.is_file() and time.time() - path.stat().st_mtime < NEW_STORE_S:
        return True
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, KeyError) or any(m in str(err).lower() for m in _SCHEMA_RACE):
            return True
        err = err.__cause__ or err.__context__
    return False


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") and ":memory:" not in uri else None


@functools.cache
def _head_revision() -> str:
    """The schema revision this MLflow creates (the head of its Alembic migrations; ~0.8 s to read them)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations")).get_current_head()


def _schema_of(path: Path) -> tuple[str | None, set[str], int]:
    """A SQLite store's schema revision, its tables and its number of runs, read without writing to it."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
        runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    finally:
        con.close()
    return revision, tables, runs


def _last_write(path: Path) -> float:
    """When the store (or its journal) was last written."""
    times = [p.stat().st_mtime for p in (path, path.with_name(path.name + "-journal"),
                                          path.with_name(path.name + "-wal")) if p.exists()]
    return max(times, default=0.0)


def _build_schema(path: Path) -> Path:
    """A complete MLflow schema in a new file beside ``path`` (no other process knows of it)."""
    from epochgraph.store.schema_template import build_store

    built = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.new")  # a new name: MLflow caches stores by URI
    try:  # no WAL: all in the file
        build_store(built, lambda p: MlflowClient(tracking_uri=f"sqlite:///{p}").search_experiments(max_results=1))
    except BaseException:
        built.unlink(missing_ok=True)
        raise
    return built


def _create_sqlite_store(path: Path, uri: str) -> None:
    """Make sure ``path`` holds MLflow's whole schema before this process opens it, without ever migrating a
    schema that another process is creating.

    Two processes migrating one new SQLite store at once break it for good (MLflow's tracking store takes
    no lock: ``mlflow ui`` and a script started together leave "table _alembic_tmp_tags already exists").
    Processes of ours exclude each other with `sqlite_init_lock`; against the others, a new store is built
    in a file of its own and linked into place only if the path is still free, and a store that another
    process is creating is waited for, read-only, until its schema reaches MLflow's head. One left short of
    the head for `STALE_SCHEMA_S` (its creator failed) is rebuilt when it holds no run, and named otherwise.
    """
    if not path.exists():
        built = _build_schema(path)
        try:
            os.link(built, path)  # atomic: fails if another process created the file meanwhile
            return
        except FileExistsError:
            pass
        finally:
            built.unlink(missing_ok=True)
    deadline = time.monotonic() + SCHEMA_WAIT_S
    while True:
        idle = time.time() - _last_write(path)
        try:
            revision, tables, runs = _schema_of(path)
        except Exception:  # not (yet) a database, or locked by a writer: MLflow says what it is once it is old
            if idle > NEW_STORE_S or time.monotonic() > deadline:
                return
            time.sleep(0.5)
            continue
        half_made = not tables or any(t.startswith("_alembic_tmp_") for t in tables) or revision is None
        if not half_made and idle > NEW_STORE_S:
            return  # a store in use (or an older MLflow's): MLflow opens it, or says what to do with it
        head = _head_revision()  # only for a store that may still be being created
        if revision == head or not _mlflow_tables(tables):
            return  # complete, or not a store of MLflow's: MLflow says what is wrong with it
        if idle > STALE_SCHEMA_S or time.monotonic() > deadline:
            if runs:
                raise EpochgraphError(
                    f"the MLflow store at mlflow.tracking_uri={redact(uri)!r} holds {runs} runs but its schema "
                    f"stopped at revision {revision or 'none'} (MLflow's is {head}); back it up and run "
                    f"'mlflow db upgrade {redact(uri)}'")
            log.warning("the new MLflow store %s was left half-created by another process (schema at %s): "
                        "creating it again", path, revision or "none")
            os.replace(_build_schema(path), path)
            return
        time.sleep(0.5)


def _mlflow_tables(tables: set[str]) -> bool:
    """Whether a database with these tables is (a start of) an MLflow store: nothing but MLflow's tables."""
    from mlflow.store.db import utils  # noqa: F401  (registers every table of MLflow's models)
    from mlflow.store.db.base_sql_model import Base

    known = set(Base.metadata.tables)
    return all(t in known or t.startswith(("alembic_", "_alembic_tmp_")) for t in tables)


def _open_client(uri: str) -> MlflowClient:
    with sqlite_init_lock(uri):
        path = _sqlite_path(uri)
        if path is not None:
            _create_sqlite_store(path, uri)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    return client


def get_client(tracking_uri: str | None) -> MlflowClient:
    """A client for the tracking URI, checked once: a server answers within seconds, and a new embedded store
    is created under a lock (two first runs at once would race on its schema).

    A process that does not take the lock (``mlflow ui`` or a script started on the same new store) can
    be creating the schema when this one opens it: this one then waits for it (`_create_sqlite_store`), and
    opening is retried while MLflow's errors say that the schema is still being created.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    attempts = 0
    while True:
        try:
            return _open_client(uri)
        except EpochgraphError:
            raise
        except Exception as err:  # a bad URI or a broken store: one line, not a wall
            attempts += 1
            if uri.startswith("sqlite:") and attempts < OPEN_ATTEMPTS and _schema_race(err, uri):
                time.sleep(0.5 * attempts)
                continue
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise EpochgraphError(f"cannot open the MLflow store at mlflow.tracking_uri={redact(uri)!r}: {first}; "
                                  f"fix the URI or the store") from None


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (or restored) when needed, tagged to open on its runs."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_root(client.tracking_uri, name),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:  # created meanwhile by another worker
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"width": 1}}`` -> ``{"model.width": 1}``."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def mlflow_run(client: MlflowClient, experiment: str, *, run_name: str | None = None,
               tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
               run_id: str | None = None) -> Iterator[str]:
    """Open (or reopen, with ``run_id``) a run and always close it: FINISHED, FAILED or KILLED.

    An exception ends the run FAILED, an interrupt KILLED (noted in the interrupt's message); a named run
    then carries its status first in its name (``killed trial-006``, `outcome_run_name`).
    """
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if run_id is None:
        run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
    else:
        client.update_run(run_id, status="RUNNING", name=run_name)
        for k, v in all_tags.items():
            client.set_tag(run_id, k, v)
    status = "FINISHED"
    try:
        with sigterm_as_exception():
            yield run_id
    except (KeyboardInterrupt, Terminated) as err:
        status = "KILLED"
        note_interrupt(err, f"MLflow run {run_id} closed as KILLED")
        # an interrupt that landed inside a write leaves that write's session (and, on SQLite, the database's
        # write lock) alive in the frames it unwound through: free them before this run is closed
        traceback.clear_frames(err.__traceback__)
        raise
    except BaseException as err:
        status = "FAILED"
        with contextlib.suppress(Exception):
            client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:500])
        raise
    finally:
        if run_name and status != "FINISHED":  # the outcome shows in the runs table, before the name
            with contextlib.suppress(Exception):
                client.update_run(run_id, name=outcome_run_name(run_name, status.lower()))
        try:
            while_locked(lambda: client.set_terminated(run_id, status=status))
        except Exception as err:
            if status == "FINISHED":
                raise
            # the error or interrupt that ends the run stays what the user sees; the sweeper's stale-run
            # check closes a run left RUNNING
            log.warning("MLflow run %s could not be closed as %s: %s", run_id, status, str(err).splitlines()[0][:200])


def log_config(client: MlflowClient, run_id: str, cfg: DictConfig | Mapping[str, Any]) -> None:
    """Params (flattened, once) and the resolved config as ``config.yaml``."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    # credentials in URLs (storage.url, tracking URIs) never reach MLflow
    params = [Param(k, redact(str(v))[:6000]) for k, v in flatten(container).items() if not k.startswith("hydra.")]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "config.yaml")
        path.write_text(redact(OmegaConf.to_yaml(OmegaConf.create(container))))
        client.log_artifact(run_id, str(path))


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log ``metrics`` at ``step``, leaving out non-finite values: the MLflow UI drops a metric whose
    latest value is NaN from the run page (a diverged run would lose its whole loss curve); divergence is
    recorded by the ``diverged`` tag and metric instead."""
    ts = mlflow.utils.time.get_current_time_millis()
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if math.isfinite(float(v))]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


class MlflowEpochLogger:
    """Epoch hook: logs every metric in the state with ``step=epoch`` and the weights as safetensors.

    ``keep_weights`` limits which epochs' weights are stored (``None``: all).
    """

    def __init__(self, client: MlflowClient, run_id: str, log_weights: bool = True,
                 keep_weights: set[int] | None = None) -> None:
        self.client, self.run_id = client, run_id
        self.log_weights, self.keep_weights = log_weights, keep_weights
        self.weights_bytes = 0
        self.skipped_epochs = 0
        self.kept = 0

    @property
    def weights_saved_bytes(self) -> int:
        """Storage the skipped snapshots would have taken (every snapshot has the same size)."""
        kept = max(1, self.kept)
        return self.skipped_epochs * self.weights_bytes // kept

    def on_epoch_end(self, state: EpochState) -> None:
        log_metrics(self.client, self.run_id, {k: v for k, v in state.metrics.items()
                                               if isinstance(v, (int, float)) and not isinstance(v, bool)},
                    step=state.epoch)
        set_tags(self.client, self.run_id, state.tags)
        if self.log_weights and (self.keep_weights is None or state.epoch in self.keep_weights
                                 or state.diverged or state.prune):
            self.weights_bytes += log_weights(self.client, self.run_id, state.model, state.epoch)
            self.kept += 1
        elif self.log_weights:
            self.skipped_epochs += 1


def log_weights(client: MlflowClient, run_id: str, model, epoch: int) -> int:
    """Store ``model``'s state_dict as ``weights/epoch_NNN.safetensors``; returns its size in bytes."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, Path(weights_artifact(epoch)).name)
        save_file(tensors, str(path), metadata={"epoch": str(epoch)})
        client.log_artifact(run_id, str(path), artifact_path=WEIGHTS_DIR)
        return path.stat().st_size


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def weights_epochs(client, run_id: str) -> dict[int, str]:
    """``{epoch: artifact path}`` of a run's weights artifacts."""
    out = {}
    for f in client.list_artifacts(run_id, "weights"):
        m = WEIGHTS_RE.search(f.path)
        if m:
            out[int(m.group(1))] = f.path
    return dict(sorted(out.items()))


def load_weights(client, run_id: str, path: str, dst: str):
    """Download and read one weights artifact; a missing or corrupt file raises `EpochgraphError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        Path(dst).mkdir(parents=True, exist_ok=True)
        local = client.download_artifacts(run_id, path, dst)
        return load_file(local)
    except (SafetensorError, OSError, ValueError) as err:
        raise EpochgraphError(f"run {run_id}: weights artifact {path} is unreadable ({err})") from None
    except Exception as err:  # MLflow raises its own exception types for missing artifacts
        raise EpochgraphError(f"run {run_id}: weights artifact {path} is missing ({str(err)[:120]})") from None
