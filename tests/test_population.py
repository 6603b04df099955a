"""The population table: what the comparison and the replay read must survive the round trip."""

import math

import numpy as np
import pytest

from epochgraph.errors import EpochgraphError
from epochgraph.forecast.population import EPOCH_COLUMNS, from_table, read_table, to_table, write_table
from epochgraph.forecast.predictor import FeatureSpec
from epochgraph.forecast.records import RunRecord

EPOCHS = 4


def _record(run_id: str, length: int, seed: int, rng: np.random.Generator, huge: bool = False) -> RunRecord:
    """A run as `load_runs` returns it for a 4-epoch window: NaN after its last epoch, weight
    baselines repeating its last snapshot."""
    history: dict[str, list] = {}
    for key in EPOCH_COLUMNS:
        values = list(rng.normal(size=length)) + [math.nan] * (EPOCHS - length)
        history[key] = values
    history["test_acc"] = [math.nan] * (length - 1) + [0.7] + [math.nan] * (EPOCHS - length)
    wl = [rng.normal(size=15) for _ in range(length)]
    if huge:
        wl[-1][0] = 1e300  # a diverged run's weights do not fit in float32
    history["b_wl"] = wl + [wl[-1]] * (EPOCHS - length)
    history["b_what"] = [rng.normal(size=7) for _ in range(length)]
    history["b_what"] += [history["b_what"][-1]] * (EPOCHS - length)
    history["b_wprime"] = [rng.normal(size=5) for _ in range(length)]
    history["b_wprime"] += [history["b_wprime"][-1]] * (EPOCHS - length)
    history["unrolled"] = [rng.normal(size=5) for _ in range(length)]
    history["unrolled"] += [history["unrolled"][-1]] * (EPOCHS - length)
    params = {"seed": str(seed), "optim.lr": "0.05", "model.name": "lenet", "trainer.batch_size": "64",
              "model.width": "0.5"}
    tags = {"model": "lenet", "dataset": "fashion_mnist", "mlflow.runName": f"lenet-seed{seed}",
            "diverged": str(huge).lower()}
    return RunRecord(run_id, params, tags, history, float(rng.random()))


@pytest.fixture
def records():
    rng = np.random.default_rng(0)
    return [_record("a", EPOCHS, 0, rng), _record("b", 2, 1, rng, huge=True), _record("c", 3, 2, rng)]


def test_round_trip_keeps_every_feature_the_predictor_reads(records, tmp_path):
    df = to_table(records, "pop")
    assert len(df) == EPOCHS + 2 + 3  # a row per epoch the run trained
    path = write_table(df, tmp_path / "pop")
    assert path.suffix == ".parquet"
    back = from_table(read_table(path), ["pop"])
    assert [r.run_id for r in back] == ["a", "b", "c"]
    for orig, got in zip(records, back):
        assert got.params["seed"] == orig.params["seed"] and got.params["trainer.batch_size"] == "64"
        assert got.params["optim.lr"] == "0.05" and got.tags["model"] == "lenet"
        assert got.final_acc == pytest.approx(orig.final_acc)
        for t in range(1, EPOCHS + 1):
            for spec in (FeatureSpec("signature", t=t), FeatureSpec("curve", t=t), FeatureSpec("hybrid", t=t),
                         FeatureSpec("b_what", t=t), FeatureSpec("b_wprime", t=t), FeatureSpec("unrolled", t=t)):
                np.testing.assert_allclose(spec.vector(got.history), spec.vector(orig.history), rtol=1e-6,
                                           atol=1e-6, equal_nan=True, err_msg=f"{spec.label} t={t}")


def test_weights_beyond_float32_are_clipped_as_the_predictor_clips_them(records, tmp_path):
    back = from_table(read_table(write_table(to_table(records, "pop"), tmp_path / "t")))
    b = back[1]
    # the diverged run's huge weight: the predictor clips it to 1e6; the table stores that, not inf
    assert b.history["b_wl"][1][0] == pytest.approx(1e6)
    assert b.history["b_wl"][3][0] == pytest.approx(1e6)  # repeated after the run's end, as load_runs does
    assert math.isnan(b.history["val_acc"][2]) and len(b.history["val_acc"]) == EPOCHS
    assert b.tags["diverged"] == "true"
    assert b.history["test_acc"][1] == pytest.approx(0.7)


def test_unknown_experiment_and_missing_file_are_one_line_errors(records, tmp_path):
    df = to_table(records, "pop")
    with pytest.raises(EpochgraphError, match="'other' is not in the population table; it holds pop"):
        from_table(df, ["other"])
    with pytest.raises(EpochgraphError, match="does not exist"):
        read_table(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(EpochgraphError, match="is not readable Parquet"):
        read_table(bad)



def test_the_length_population_draws_each_trainings_own_length_and_warm_up_reproducibly():
    # conf/experiment/population_lenet_length.yaml: trainer.epochs and the warm-up are drawn per seed, inclusive
    # of both ends, the same on every draw
    from epochgraph.resolvers import randint
    from tests.conftest import compose_train

    drawn = [randint(10, 30, seed, "epochs") for seed in range(200)]
    assert min(drawn) == 10 and max(drawn) == 30 and drawn == [randint(10, 30, s, "epochs") for s in range(200)]
    with pytest.raises(ValueError, match="high=1 is below low=2"):
        randint(2, 1, 0, "x")
    cfgs = [compose_train(["+experiment=population_lenet_length", f"seed={s}"]) for s in range(8)]
    lengths = {int(c.trainer.epochs) for c in cfgs}
    warmups = {int(c.optim.schedule.warmup_epochs) for c in cfgs}
    assert len(lengths) > 1 and lengths <= set(range(10, 31)) and warmups <= set(range(1, 7))
    assert [int(c.trainer.epochs) for c in cfgs] == [randint(10, 30, s, "epochs") for s in range(8)]
