"""Snapshot signatures (S3), temporal signatures, the graph-stage epoch hook and the model rebuilt
from logged params."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mlflow.entities import Metric
from scipy import stats

from epochgraph.errors import EpochgraphError
from epochgraph.graph.centrality import eigenvector_centrality, weighted_degree
from epochgraph.graph.graph_stage import GraphStage
from epochgraph.graph.rolled_graph import rolled_graph
from epochgraph.graph.signature import AGGREGATORS, NONFINITE, TemporalSignature, aggregate, snapshot_signature
from epochgraph.graph.tracing import topology_of
from epochgraph.hooks import EpochState
from epochgraph.models import build_model, model_from_params
from tests.test_rolled_graph import residual

ZOO = ["lenet", "alexnet", "vgg11", "resnet20"]


def test_aggregators_match_numpy_and_scipy():
    x = np.random.default_rng(1).gamma(2.0, size=101)
    want = [np.median(x), x.mean(), x.std(ddof=0), stats.skew(x, bias=True), stats.kurtosis(x, fisher=True, bias=True)]
    assert np.allclose(aggregate(x), want, rtol=1e-12)
    assert aggregate(np.full(5, 2.0)).tolist() == [2.0, 2.0, 0.0, 0.0, 0.0]  # no spread: 0, not NaN
    assert np.isnan(aggregate(np.array([1.0, np.inf]))).all()
    assert np.isnan(aggregate(np.array([]))).all()


@pytest.mark.parametrize("backend", ["graph_tool", "arrays", "blocks", "auto"])
def test_snapshot_signature_is_the_aggregators_of_the_centralities(backend):
    topo, sd = residual()
    g = rolled_graph(topo, sd)
    sig = snapshot_signature(topo, sd, backend=backend)
    assert set(sig) == {f"sig/{c}/{a}" for c in ("degree", "eigenvector") for a in AGGREGATORS} | {NONFINITE}
    assert sig[NONFINITE] == 0.0
    for c, values in (("degree", weighted_degree(g)), ("eigenvector", eigenvector_centrality(g))):
        want = aggregate(values)
        for a, v in zip(AGGREGATORS, want):
            assert sig[f"sig/{c}/{a}"] == pytest.approx(v, rel=1e-9, abs=1e-12)
    only = snapshot_signature(topo, sd, centralities=("degree",), backend=backend)
    assert set(only) == {f"sig/degree/{a}" for a in AGGREGATORS} | {NONFINITE}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_flagged_not_raised(bad):
    topo, sd = residual()
    sd["b.weight"][0, 0, 0, 0] = bad
    sig = snapshot_signature(topo, sd)
    assert sig[NONFINITE] == 1.0
    assert all(math.isnan(v) for k, v in sig.items() if k != NONFINITE)
    ts = TemporalSignature()
    ts.append(sig)
    assert ts.nonfinite and np.isnan(ts.vector(1)).all()


def test_huge_but_finite_weights_are_not_flagged():
    topo, sd = residual()
    sd["fc.weight"] = torch.full_like(sd["fc.weight"], 3e38)  # the sum overflows float32, no entry does
    sig = snapshot_signature(topo, sd)
    assert sig[NONFINITE] == 0.0 and all(math.isfinite(v) for v in sig.values())


def test_unknown_centrality_or_backend_is_one_line():
    topo, sd = residual()
    with pytest.raises(EpochgraphError, match="unknown centrality 'pagerank'"):
        snapshot_signature(topo, sd, centralities=("pagerank",))
    with pytest.raises(EpochgraphError, match="unknown graph backend 'networkx'"):
        snapshot_signature(topo, sd, backend="networkx")


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_every_zoo_model_has_a_finite_signature(name, channels, size):
    model = build_model(name, in_channels=channels, image_size=size, width=0.5)
    sig = snapshot_signature(topology_of(model), model.state_dict())
    assert len(sig) == 11 and sig[NONFINITE] == 0.0
    assert all(math.isfinite(v) for v in sig.values())


def _three_epochs() -> TemporalSignature:
    """Epoch tau has degree aggregator i = tau_value * (i + 1) and eigenvector aggregator i = -that."""
    ts = TemporalSignature()
    for v in (1.0, 4.0, 7.0):
        snap = {f"sig/degree/{a}": v * (i + 1) for i, a in enumerate(AGGREGATORS)}
        snap.update({f"sig/eigenvector/{a}": -v * (i + 1) for i, a in enumerate(AGGREGATORS)})
        ts.append(snap)
    return ts


def test_temporal_variants_on_a_hand_worked_example():
    ts = _three_epochs()
    # median of degree (column 0) at tau = 1, 2, 3: 1, 4, 7
    plain = ts.matrix(3, "plain")[:, 0]
    wavg = ts.matrix(3, "wavg")[:, 0]  # (1*1) / 1, (1*1 + 2*4) / 3, (1*1 + 2*4 + 3*7) / 6
    expavg = ts.matrix(3, "expavg", alpha=0.5)[:, 0]  # 1, 0.5*4 + 0.5*1, 0.5*7 + 0.5*2.5
    assert plain.tolist() == [1.0, 4.0, 7.0]
    assert wavg.tolist() == pytest.approx([1.0, 3.0, 5.0])
    assert expavg.tolist() == pytest.approx([1.0, 2.5, 4.75])
    assert ts.matrix(3, "expavg", alpha=0.25)[:, 0].tolist() == pytest.approx([1.0, 1.75, 3.0625])
    # s^t is the concatenation of the rows: 10 values per epoch, epoch-major
    v = ts.vector(2, "wavg")
    assert v.shape == (20,)
    assert v[10:15].tolist() == pytest.approx([3.0 * (i + 1) for i in range(5)])
    assert v[15:20].tolist() == pytest.approx([-3.0 * (i + 1) for i in range(5)])
    names = ts.feature_names(2)
    assert len(names) == 20 and names[0] == "sig/degree/median@1" and names[15] == "sig/eigenvector/median@2"


def test_temporal_signature_of_a_subset_of_centralities():
    ts = _three_epochs()
    v = ts.vector(3, "expavg", centralities=("eigenvector",))
    assert v.shape == (15,) and v[[0, 5, 10]].tolist() == pytest.approx([-1.0, -2.5, -4.75])
    assert ts.feature_names(1, centralities=["eigenvector"])[0] == "sig/eigenvector/median@1"
    only_degree = TemporalSignature(["degree"])
    only_degree.append({"sig/degree/median": 1.0})
    with pytest.raises(EpochgraphError, match="'eigenvector' was not recorded"):
        only_degree.vector(1, centralities=("eigenvector",))


def test_temporal_signature_errors_are_one_line():
    ts = _three_epochs()
    with pytest.raises(EpochgraphError, match="t=4 is outside the 3 recorded epochs"):
        ts.vector(4)
    with pytest.raises(EpochgraphError, match="unknown signature variant 'ema'"):
        ts.vector(2, "ema")
    with pytest.raises(EpochgraphError, match="alpha=0 must be in"):
        ts.vector(2, "expavg", alpha=0)


def test_rebuilt_from_metric_history():
    ts = _three_epochs()
    rows = ts.matrix(3)
    keys = [f"sig/{c}/{a}" for c in ("degree", "eigenvector") for a in AGGREGATORS]
    # (step, value) pairs in any order, a step logged twice (recomputed) keeps its last value
    pairs = {k: [(3, rows[2, j]), (1, -99.0), (2, rows[1, j]), (1, rows[0, j])] for j, k in enumerate(keys)}
    assert np.array_equal(TemporalSignature.from_metric_history(pairs).vector(3, "wavg"), ts.vector(3, "wavg"))
    # MLflow Metric objects, as MlflowClient.get_metric_history returns them
    metrics = {k: [Metric(k, float(rows[i, j]), 0, i + 1) for i in range(3)] for j, k in enumerate(keys)}
    assert np.array_equal(TemporalSignature.from_metric_history(metrics).vector(3), ts.vector(3))
    # bare values: index 0 is epoch 1
    values = {k: rows[:, j].tolist() for j, k in enumerate(keys)}
    assert np.array_equal(TemporalSignature.from_metric_history(values).vector(3), ts.vector(3))
    # a missing epoch is NaN; the nonfinite flag comes back
    gap = {k: [(1, 1.0), (3, 3.0)] for k in keys} | {NONFINITE: [(1, 0.0), (3, 1.0)]}
    rebuilt = TemporalSignature.from_metric_history(gap)
    assert len(rebuilt) == 3 and np.isnan(rebuilt.matrix(3)[1]).all() and rebuilt.nonfinite
    with pytest.raises(EpochgraphError, match="step 0"):
        TemporalSignature.from_metric_history({keys[0]: [(0, 1.0)]})


def test_graph_stage_adds_the_signature_to_the_epoch_metrics():
    model = build_model("lenet", in_channels=1, image_size=28, width=0.5)
    state = EpochState(epoch=1, model=model, metrics={"val_acc": 0.5})
    GraphStage(centralities=("degree", "eigenvector")).on_epoch_end(state)
    want = snapshot_signature(topology_of(model), model.state_dict())
    assert {k: state.metrics[k] for k in want} == want
    assert state.metrics["time/graph_s"] > 0 and "nonfinite_weights" not in state.tags
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    state = EpochState(epoch=2, model=model, metrics={})
    GraphStage().on_epoch_end(state)
    assert state.metrics[NONFINITE] == 1.0 and state.tags["nonfinite_weights"] == "true"


def test_model_from_logged_params():
    params = {"model.name": "resnet20", "model.width": "0.5", "model.dropout": "0.0", "data.in_channels": "3",
              "data.image_size": "32", "optim.lr": "0.1"}
    model = model_from_params(params)
    ref = build_model("resnet20", in_channels=3, image_size=32, width=0.5)
    assert topology_of(model) == topology_of(ref)
    with pytest.raises(EpochgraphError, match="no 'model.name' param"):
        model_from_params({"model.width": "1"})
