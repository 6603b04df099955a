"""The warm start's results kept on disk: read once per machine, keyed by the tables' contents."""

import numpy as np
import pytest

from epochgraph.forecast.warm_cache import disk_cached
from epochgraph.paths import CACHE_ENV
from epochgraph.search import forecast_pruner
from epochgraph.search.forecast_pruner import ForecastPruner
from tests.test_forecast import EPOCHS, _study, _table, _trial, curve, population


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def test_a_result_is_computed_once_per_key_and_again_for_another(cache):
    calls = []

    def make(value):
        return lambda: calls.append(value) or {"value": value}

    assert disk_cached("thing", {"a": 1}, make(1)) == {"value": 1}
    assert disk_cached("thing", {"a": 1}, make(99)) == {"value": 1}  # read back, not made again
    assert disk_cached("thing", {"a": 2}, make(2)) == {"value": 2}
    assert disk_cached("other", {"a": 1}, make(3)) == {"value": 3}
    assert calls == [1, 2, 3] and len(list(cache.glob("*.joblib"))) == 3


def test_turned_off_it_computes_every_time(monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    calls = []
    for _ in range(2):
        disk_cached("thing", {"a": 1}, lambda: calls.append(1))
    assert calls == [1, 1]


def _fresh_process(monkeypatch):
    """As in a new process: nothing learnt in memory."""
    for name in ("_WARM_CACHE", "_PRIOR_CACHE", "_RECAL_CACHE"):
        monkeypatch.setattr(forecast_pruner, name, {})


def _forecast(tmp_path):
    pruner = ForecastPruner(max_epoch=EPOCHS, warm_start=str(tmp_path / "tables"), min_rank_corr=None)
    study = _study(pruner, [curve(0.85, 0.6)])
    trial = _trial(curve(0.5, 0.3), 2)
    pruner.prune(study, trial)
    return pruner.last_forecast[trial.number], pruner.recalibration()


def test_a_new_process_forecasts_the_same_from_the_disk_without_reading_the_tables(cache, tmp_path, monkeypatch):
    (tmp_path / "tables").mkdir()
    _table(tmp_path / "tables", population(30, seed=1), "a")
    _table(tmp_path / "tables", population(30, seed=2), "b")
    _fresh_process(monkeypatch)
    first = _forecast(tmp_path)
    made = []
    real = forecast_pruner.fit_recalibration
    monkeypatch.setattr(forecast_pruner, "fit_recalibration", lambda *a, **k: made.append(1) or real(*a, **k))
    monkeypatch.setattr("epochgraph.forecast.warm_start._read_populations",
                        lambda *a: pytest.fail("the tables were read again"))
    _fresh_process(monkeypatch)
    again = _forecast(tmp_path)
    assert again == first and not made
    # changed tables are read again, and learnt from again
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    _table(tmp_path / "tables", population(30, seed=3), "b")
    _fresh_process(monkeypatch)
    changed = _forecast(tmp_path)
    assert changed[0] != pytest.approx(first[0])
    assert np.isfinite(changed[0])


def test_an_unreadable_entry_is_made_again_and_said_in_one_line(cache, caplog):
    disk_cached("thing", {"a": 1}, lambda: [1, 2, 3])
    (entry,) = cache.glob("thing-*.joblib")
    entry.write_bytes(b"cut short")
    assert disk_cached("thing", {"a": 1}, lambda: [4]) == [4]
    assert disk_cached("thing", {"a": 1}, lambda: [5]) == [4]  # the entry made again is read back
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert line.startswith("the cached thing in ") and line.endswith("; making it again")


def test_a_new_mlflow_store_is_a_copy_of_an_empty_one_with_the_default_experiment_where_mlflow_puts_it(
        cache, tmp_path, monkeypatch):
    from epochgraph.store import schema_template
    from epochgraph.store.tracking import get_client

    migrated = []
    real = schema_template.build_store
    monkeypatch.setattr(schema_template, "build_store",
                        lambda built, migrate: real(built, lambda p: migrated.append(p) or migrate(p)))
    for name in ("a", "b"):
        monkeypatch.chdir(tmp_path / name if (tmp_path / name).mkdir() is None else tmp_path)
        client = get_client(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
        exp = client.get_experiment("0")
        assert exp.artifact_location == str(tmp_path / name / "mlruns" / "0")
        run = client.create_run(client.create_experiment(f"exp-{name}"))
        client.log_metric(run.info.run_id, "val_acc", 0.5, step=1)
    assert len(migrated) == 1  # the second store was copied from the first, still empty one
    template = schema_template.template_path()
    assert template.parent == cache and template.exists()
    again = get_client(f"sqlite:///{tmp_path / 'c.db'}")
    assert [e.name for e in again.search_experiments()] == ["Default"]  # nothing of a or b in it
