"""The persistent graph-tool rolled graph (one per run, weights rewritten in place) against graphs built
from scratch, networkx, and the signatures computed the reference way on every zoo model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from graph_tool.spectral import adjacency

from epochgraph.graph.centrality import (
    eigenvector_centrality,
    eigenvector_centrality_persistent,
    weighted_degree,
    weighted_degree_persistent,
)
from epochgraph.graph.graph_drawing import (
    CentralityDistributions,
    _edge_budgets,
    draw_rolled_graph,
    drawn_nodes,
    epoch_title,
    strongest_edges,
)
from epochgraph.graph.graph_stage import GraphPictures, GraphStage, drawn_connections
from epochgraph.graph.rolled_graph import PersistentRolledGraph, edge_arrays, rolled_graph
from epochgraph.graph.signature import (
    AGGREGATORS,
    AUTO_BLOCKS_EDGES,
    SignatureEngine,
    aggregate,
    metric_name,
    resolve_backend,
)
from epochgraph.graph.tracing import topology_of
from epochgraph.hooks import EpochState
from epochgraph.models import ZOO, build_model
from tests.test_centrality import _chain, _nx_reference
from tests.test_rolled_graph import residual


def _perturbed(sd: dict, seed: int) -> dict:
    """Another snapshot of the same model: every float tensor changed (BatchNorm statistics included)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=gen, dtype=v.dtype)
            out[k] = v.abs() + 0.5 + 0.1 * noise.abs() if k.endswith("running_var") else v + 0.3 * noise
        else:
            out[k] = v
    return out


def _same_graph(persistent: PersistentRolledGraph, fresh) -> None:
    w_p, w_f = persistent.weight, fresh.edge_properties["weight"]
    assert np.array_equal(persistent.graph.get_edges([w_p]), fresh.get_edges([w_f]))
    assert np.array_equal(persistent.graph.vertex_properties["bias"].a, fresh.vertex_properties["bias"].a)
    kept, built = persistent.adjacency(), sp.csr_matrix(adjacency(fresh, weight=w_f))
    assert np.array_equal(kept.indptr, built.indptr) and np.array_equal(kept.indices, built.indices)
    assert np.array_equal(kept.data, built.data)


@pytest.mark.parametrize("case", ["resnet20", "residual"])
def test_weights_written_in_place_equal_a_freshly_built_graph(case):
    if case == "residual":  # a conv and a projection shortcut join the same pairs: parallel edges
        topo, sd1 = residual()
    else:
        model = build_model("resnet20", in_channels=3, image_size=32, width=0.25)
        topo, sd1 = topology_of(model), model.state_dict()
    sd2, sd3 = _perturbed(sd1, 1), _perturbed(sd1, 2)
    graph = PersistentRolledGraph(topo, sd1)
    first = graph.graph
    graph.adjacency()
    for sd in (sd2, sd3):
        graph.update(sd)
        assert graph.graph is first  # the same graph object, not a rebuild
        _same_graph(graph, rolled_graph(topo, sd))
    # the new weights really differ from the first snapshot's (the comparison above is not vacuous)
    assert not np.allclose(graph.weight.a, edge_arrays(topo, sd1).weight)


def test_how_the_adjacency_values_are_rewritten():
    topo, sd = residual()
    graph = PersistentRolledGraph(topo, sd)
    graph.adjacency()
    # b -> c holds a conv edge and a projection edge per pair: a new matrix from graph-tool each time
    assert graph._block_writes is None and graph._entry_edge is None
    model = build_model("resnet20", in_channels=1, image_size=28, width=0.25)  # identity shortcuts too
    graph = PersistentRolledGraph(topology_of(model), model.state_dict())
    adj = graph.adjacency()
    assert graph._block_writes is not None
    # the entry-to-edge map (the fallback for other layouts) gives the same values
    entry_edge = graph._find_entry_edges(adj)
    assert entry_edge is not None and len(entry_edge) == 2 * graph.num_edges
    assert np.array_equal(graph.weight.a[entry_edge], adj.data)


@pytest.mark.parametrize("seed", range(3))
def test_persistent_centralities_match_networkx_after_updates(seed):
    topo, sd = _chain([4, 7, 5, 3], seed)
    graph = PersistentRolledGraph(topo, _perturbed(sd, 10 + seed))
    graph.adjacency()
    graph.update(sd)
    e = edge_arrays(topo, sd)
    degree = np.bincount(e.src, e.weight, e.num_nodes) + np.bincount(e.dst, e.weight, e.num_nodes)
    assert np.allclose(weighted_degree_persistent(graph), degree, rtol=1e-12)
    ref = _nx_reference(e)
    got = eigenvector_centrality_persistent(graph)
    assert np.abs(got - ref).max() < 1e-6 and got.min() >= -1e-12
    topo, sd = residual()
    graph = PersistentRolledGraph(topo, _perturbed(sd, 3))
    graph.adjacency()
    graph.update(sd)
    assert np.abs(eigenvector_centrality_persistent(graph) - _nx_reference(edge_arrays(topo, sd))).max() < 1e-6


def _reference_signature(topo, sd) -> dict[str, float]:
    """The signature as computed before the persistent graph: a graph-tool graph built from scratch."""
    g = rolled_graph(topo, sd)
    out = {}
    for name, values in (("degree", weighted_degree(g)), ("eigenvector", eigenvector_centrality(g))):
        out.update({metric_name(name, a): float(v) for a, v in zip(AGGREGATORS, aggregate(values))})
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_persistent_signatures_equal_the_reference_on_every_zoo_model(name):
    model = build_model(name, in_channels=3, image_size=32, width=0.5)
    topo = topology_of(model)
    engine = SignatureEngine(topo)
    assert engine.engine == "graph_tool"
    for sd in (model.state_dict(), _perturbed(model.state_dict(), 4)):
        sig = engine.signature(sd)
        ref = _reference_signature(topo, sd)
        assert all(sig[k] == pytest.approx(v, rel=1e-9, abs=1e-12) for k, v in ref.items()), name
        assert sig["sig/nonfinite"] == 0.0


def test_auto_uses_graph_tool_for_every_zoo_model_up_to_width_2():
    for name in ZOO:
        for channels, size in ((1, 28), (3, 32)):
            topo = topology_of(build_model(name, in_channels=channels, image_size=size, width=2))
            assert topo.num_edges <= AUTO_BLOCKS_EDGES
            assert resolve_backend(topo, "auto") == "graph_tool"
    topo = topology_of(build_model("alexnet", in_channels=3, image_size=32, width=3))  # 14M edges
    assert resolve_backend(topo, "auto") == "blocks"
    assert topo.num_edges == 14_076_480


def test_strongest_edges_share_the_budget_and_keep_the_strongest():
    assert _edge_budgets([6, 96, 1920, 10080, 840], 3000) == [6, 96, 1029, 1029, 840]
    assert sum(_edge_budgets([5, 5, 5], 100)) == 15
    w = np.array([[1.0, 5.0, 2.0], [4.0, 0.5, 3.0]])
    src, dst, strength = strongest_edges([(0, 3, w), (3, 6, np.ones(2))], max_edges=4)
    # both identity edges, and the 2 strongest of the matrix: 5 (row 0, col 1) and 4 (row 1, col 0)
    got = sorted(zip(src.tolist(), dst.tolist(), strength.tolist()))
    assert got == [(0, 4, 0.8), (1, 3, 1.0), (3, 6, 1.0), (4, 7, 1.0)]


def test_a_drawn_epoch_and_the_distributions_plot(tmp_path):
    model = build_model("resnet20", in_channels=1, image_size=28, width=0.25)
    engine = SignatureEngine(topology_of(model))
    engine.signature(model.state_dict())
    path = tmp_path / "epoch_001.png"
    drawn = draw_rolled_graph(engine.topology, drawn_connections(engine, model.state_dict()),
                              engine.vectors["eigenvector"], path, title="resnet20 epoch 1", max_edges=500)
    assert drawn.edges == 500 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dist = CentralityDistributions(topology_of(model))
    for epoch in (1, 2):
        dist.add(epoch, engine.vectors)
    medians = dist.quantiles["degree"][0][:, 2]
    offsets = topology_of(model).offsets()
    first = topology_of(model).groups["conv1"]
    conv1 = engine.vectors["degree"][offsets["conv1"]:offsets["conv1"] + first]
    assert medians[list(topology_of(model).groups).index("conv1")] == pytest.approx(np.median(conv1))
    fig = dist.plot(tmp_path / "dist.png")
    assert (tmp_path / "dist.png").stat().st_size > 10_000
    # the legend names every layer, in forward order
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == list(topology_of(model).groups)


def test_large_layers_are_drawn_with_an_even_sample_of_their_nodes(tmp_path):
    model = build_model("lenet", in_channels=1, image_size=28)
    engine = SignatureEngine(topology_of(model))
    engine.signature(model.state_dict())
    topo = topology_of(model)  # input 1, conv1 6, conv2 16, fc1 120, fc2 84, fc3 10
    drawn = drawn_nodes(topo, 40)
    fc1 = drawn[(drawn >= 23) & (drawn < 143)]
    assert len(drawn) == 1 + 6 + 16 + 40 + 40 + 10 and len(fc1) == 40
    assert fc1[0] == 23 and fc1[-1] == 142 and np.all(np.diff(fc1) >= 3)  # first, last, evenly spread
    drawing = draw_rolled_graph(topo, drawn_connections(engine, model.state_dict()), engine.vectors["eigenvector"],
                                tmp_path / "lenet.png", max_nodes=40, max_edges=10_000)
    # every edge between drawn nodes: input-conv1, conv1-conv2, conv2-fc1, fc1-fc2, fc2-fc3
    assert (drawing.nodes, drawing.edges) == (113, 6 + 96 + 16 * 40 + 40 * 40 + 40 * 10)
    assert drawing.layer_labels == [("input", "1 node"), ("conv1", "6 nodes"), ("conv2", "16 nodes"),
                                    ("fc1", "40 of 120 drawn"), ("fc2", "40 of 84 drawn"), ("fc3", "10 nodes")]
    assert drawing.edge_legend == ["100% of the strongest", "70% of the strongest", "40% of the strongest"]
    with pytest.raises(ValueError, match="max_nodes=1 must be at least 2"):
        drawn_nodes(topo, 1)


def test_sampled_edges_are_scaled_by_the_strongest_edge_of_the_whole_connection():
    from epochgraph.graph.topology import TopologyBuilder

    t = TopologyBuilder(1)
    t.add("fc", 5, "linear", "fc.weight")
    topo = t.build()  # input 1 -> fc 5
    w = np.array([[1.0], [2.0], [8.0], [4.0], [3.0]])  # the strongest edge goes to fc node 2, not drawn
    drawn = drawn_nodes(topo, 2)  # the input, fc's first and last node
    assert drawn.tolist() == [0, 1, 5]
    src, dst, strength = strongest_edges(*_sampled(topo, [(0, 1, w)], drawn))
    assert sorted(zip(dst.tolist(), strength.tolist())) == [(1, 1 / 8), (2, 3 / 8)]


def _sampled(topo, connections, drawn):
    from epochgraph.graph.graph_drawing import MAX_DRAWN_EDGES, _sampled_connections

    sampled, tops = _sampled_connections(topo, connections, drawn)
    return sampled, MAX_DRAWN_EDGES, tops


def test_a_runs_pictures_share_one_colour_scale_and_name_the_run_and_its_val_acc(tmp_path):
    model = build_model("lenet", in_channels=1, image_size=28)
    stage = GraphStage(backend="graph_tool")

    class Client:  # the MLflow client's one call the pictures make
        logged: list[str] = []

        def log_artifact(self, run_id, path, artifact_path=None):
            self.logged.append(f"{artifact_path}/{Path(path).name}")

    pictures = GraphPictures(stage, Client(), "run", epochs=3, title="lenet on fashion_mnist", run_name="trial-027")
    drawings, tops = [], []
    for epoch, (val_acc, factor) in enumerate(((0.5, 1.0), (0.61234, 3.0), (0.7, 0.5)), start=1):
        with torch.no_grad():
            model.conv2.weight.mul_(factor)  # moves the eigenvector: conv2's nodes grow, then shrink
        state = EpochState(epoch=epoch, model=model, metrics={"val_acc": val_acc})
        stage.on_epoch_end(state)
        pictures.on_epoch_end(state)
        drawings.append(pictures.last)
        tops.append(float(np.abs(stage.engine.vectors["eigenvector"]).max()))
    assert len({round(t, 6) for t in tops}) == 3  # each epoch's own scale would differ
    assert [d.vmax for d in drawings] == [tops[0]] * 3
    assert [d.scale_note for d in drawings] == ["fixed at epoch 1"] * 3
    assert drawings[1].above_scale > 0 and drawings[0].above_scale == 0
    assert [d.title for d in drawings] == ["trial-027 · epoch 1 · val_acc 0.5000",
                                           "trial-027 · epoch 2 · val_acc 0.6123",
                                           "trial-027 · epoch 3 · val_acc 0.7000"]
    assert {d.subtitle for d in drawings} == {"lenet on fashion_mnist"}
    assert Client.logged == ["graph/epoch_001.png", "graph/epoch_002.png", "graph/epoch_003.png",
                             "graph/centrality_distributions.png"]
    assert epoch_title("trial-001", 2, float("nan")) == "trial-001 · epoch 2"


def test_a_studys_trials_of_one_model_share_one_colour_scale_kept_in_the_study(tmp_path):
    import optuna

    from epochgraph.search.trial import StudyColourScale

    class Client:
        def log_artifact(self, run_id, path, artifact_path=None):
            pass

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    model = build_model("lenet", in_channels=1, image_size=28)
    drawings, tops = [], []
    for number, factor in ((0, 1.0), (1, 3.0)):  # two trials, the second one's conv2 nodes grown
        with torch.no_grad():
            model.conv2.weight.mul_(factor)
        stage = GraphStage(backend="graph_tool")
        pictures = GraphPictures(stage, Client(), f"run-{number}", epochs=1, run_name=f"trial-{number:03d}",
                                 shared_scale=StudyColourScale(study, number, "lenet"))
        state = EpochState(epoch=1, model=model, metrics={"val_acc": 0.5})
        stage.on_epoch_end(state)
        pictures.on_epoch_end(state)
        drawings.append(pictures.last)
        tops.append(float(np.abs(stage.engine.vectors["eigenvector"]).max()))
    assert round(tops[0], 6) != round(tops[1], 6)  # each trial's own scale would differ
    assert [d.vmax for d in drawings] == [tops[0]] * 2
    assert drawings[0].scale_note == "fixed at epoch 1"
    assert drawings[1].scale_note == "the study's, from trial 0 epoch 1" and drawings[1].above_scale > 0
    # kept in the study's storage, where another process reads it; another model gets a scale of its own
    again = optuna.load_study(study_name="s", storage=storage)
    assert StudyColourScale(again, 5, "lenet").get() == (tops[0], "the study's, from trial 0 epoch 1")
    assert StudyColourScale(again, 5, "resnet20").get() is None
