"""The graph stage of a training run: after every epoch, rolled graph -> centralities -> signature.

`GraphStage` is an epoch hook; it adds ``sig/<centrality>/<aggregator>``, ``sig/nonfinite`` and
``time/graph_s`` to the epoch's metrics, which the MLflow logger then records with ``step=epoch``, and
tags the run with the engine that computed them (``graph_engine``). It keeps one
`SignatureEngine` per model: with the default graph-tool engine, one `graph_tool.Graph` built at
the first epoch and given new weights in place at every later one.

`GraphPictures` draws what the stage computed: ``graph/epoch_NNN.png`` for the epochs whose weights
are kept (titled with the run's name, the epoch and its val_acc, on one colour scale for the whole run),
and ``graph/centrality_distributions.png`` at the end of the run (see `epochgraph.graph.graph_drawing`).

`epochgraph.cli.graph_stage` does the same afterwards for an existing MLflow run, from its
``weights/epoch_NNN.safetensors`` artifacts.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from epochgraph.errors import choice_error
from epochgraph.graph.centrality import CENTRALITIES
from epochgraph.graph.graph_drawing import (
    CentralityDistributions,
    ConnectionWeights,
    GraphDrawing,
    draw_rolled_graph,
    epoch_title,
)
from epochgraph.graph.rolled_graph import block_graph
from epochgraph.graph.signature import (
    AGGREGATORS,
    BACKENDS,
    NONFINITE,
    SignatureEngine,
    check_centralities,
    metric_name,
)
from epochgraph.graph.tracing import topology_of
from epochgraph.hooks import EpochState

log = logging.getLogger("epochgraph")
PICTURES_DIR = "graph"
DISTRIBUTIONS_PICTURE = "centrality_distributions.png"
ENGINE_TAG = "graph_engine"


def picture_artifact(epoch: int) -> str:
    """Artifact path of the rolled-graph picture of ``epoch``: ``graph/epoch_003.png``."""
    return f"{PICTURES_DIR}/epoch_{epoch:03d}.png"


class GraphStage:
    """Epoch hook: after every epoch, the snapshot signature of the model's rolled graph.

    It adds ``sig/<centrality>/<aggregator>`` and ``sig/nonfinite`` (see
    `epochgraph.graph.signature.SignatureEngine`) and ``time/graph_s`` to ``state.metrics``, tags the run
    ``graph_engine=<engine>`` at its first epoch, and ``nonfinite_weights=true`` when the weights hold
    NaN or inf. A numerical failure of the graph stage never ends the training: the epoch's signature
    is then NaN and the tag ``graph_error`` names the cause. The centralities of every epoch are kept
    per layer in `distributions` (for `GraphPictures`).

    Args:
        centralities: which centralities to summarise (``degree``, ``eigenvector``).
        backend: ``auto``, ``graph_tool``, ``arrays`` or ``blocks`` (same numbers, different speed).
    """

    def __init__(self, centralities: Sequence[str] = CENTRALITIES, backend: str = "auto") -> None:
        self.centralities = check_centralities(centralities)
        if backend not in BACKENDS:
            raise choice_error("graph backend", backend, BACKENDS, key="graph.backend")
        self.backend = backend
        self.engine: SignatureEngine | None = None
        self.distributions: CentralityDistributions | None = None
        self.last_epoch: int | None = None  # the epoch `engine.vectors` belongs to

    def on_epoch_end(self, state: EpochState) -> None:
        start = time.perf_counter()
        topology = topology_of(state.model)
        if self.engine is None or self.engine.topology is not topology:
            # one engine (one persistent graph) per model: a new topology gets a new one
            self.engine = SignatureEngine(topology, self.centralities, self.backend)
            self.distributions = CentralityDistributions(topology)
            state.tags[ENGINE_TAG] = self.engine.engine
        engine = self.engine
        try:
            sig = engine.signature(state.model.state_dict())
        except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as err:
            # a numerical failure must not end the training: the epoch gets an undefined signature
            log.warning("epoch %d: graph stage failed (%s); signature left undefined", state.epoch, err)
            sig = {metric_name(c, a): float("nan") for c in self.centralities for a in AGGREGATORS}
            sig[NONFINITE] = 0.0
            engine.vectors = {}
            state.tags["graph_error"] = str(err)[:250]
        self.last_epoch = state.epoch
        state.metrics.update(sig)
        state.metrics["time/graph_s"] = time.perf_counter() - start
        if self.distributions is not None:
            self.distributions.add(state.epoch, engine.vectors)
        if sig[NONFINITE]:
            state.tags["nonfinite_weights"] = "true"


def drawn_connections(engine: SignatureEngine, state_dict: Mapping[str, torch.Tensor]) -> list[ConnectionWeights]:
    """Every connection's current weights for `draw_rolled_graph`: views into the persistent graph's
    ``weight`` property, or the blocks (built here for the arrays engine)."""
    if engine.graph is not None:
        return [(s_off, d_off, engine.graph.connection_matrix(i))
                for i, (_, _, _, _, s_off, d_off) in enumerate(engine.graph.connection_spans)]
    blocks = engine.blocks if engine.blocks is not None else block_graph(engine.topology, state_dict)
    return list(blocks.blocks)


def draw_epoch(engine: SignatureEngine, state_dict: Mapping[str, torch.Tensor], path: str | Path,
               title: str, *, subtitle: str = "", vmax: float | None = None,
               scale_note: str = "") -> GraphDrawing | None:
    """Draw the rolled graph of the snapshot ``engine`` last computed to ``path`` (`draw_rolled_graph`,
    nodes coloured by eigenvector centrality, else the first centrality computed); None (nothing drawn)
    when that snapshot had no finite centralities."""
    if not engine.vectors:
        return None
    name = "eigenvector" if "eigenvector" in engine.vectors else next(iter(engine.vectors))
    return draw_rolled_graph(engine.topology, drawn_connections(engine, state_dict), engine.vectors[name], path,
                             title=title, subtitle=subtitle, value_name=f"{name} centrality", vmax=vmax,
                             scale_note=scale_note)


class SharedScale(Protocol):
    """A colour scale kept beyond one run (a sweep keeps one per study and model: `epochgraph.search.trial`)."""

    def get(self) -> tuple[float, str] | None:
        """The scale's top and the note that says where it was fixed; None while no run has fixed it."""

    def put(self, vmax: float, epoch: int) -> tuple[float, str]:
        """Fix the scale at ``vmax`` (this run's picture of ``epoch``) unless another run did first; the scale
        in force and its note."""


class RunColourScale:
    """One node colour scale for all pictures of a run: the top of the first picture's scale, kept for
    the later ones (so that a colour means the same value at every epoch of the run). With ``shared``, one
    scale for every run that shares it (a sweep's trials of one model): the first picture of the first run fixes
    it, and the pictures of two trials compare colour for colour."""

    def __init__(self, shared: SharedScale | None = None) -> None:
        self.vmax: float | None = None
        self.note = ""  # where the scale was fixed, written under the colour bar
        self.shared = shared

    def draw(self, engine: SignatureEngine, state_dict: Mapping[str, torch.Tensor], path: str | Path, *,
             epoch: int, title: str, subtitle: str = "") -> GraphDrawing | None:
        """`draw_epoch` on this run's (or the shared) scale, fixing it at the first picture drawn."""
        if self.vmax is None and self.shared is not None:
            self.vmax, self.note = self.shared.get() or (None, "")
        note = self.note or f"fixed at epoch {epoch}"
        drawing = draw_epoch(engine, state_dict, path, title, subtitle=subtitle, vmax=self.vmax, scale_note=note)
        if drawing is not None and self.vmax is None:
            self.vmax, self.note = drawing.vmax, note
            if self.shared is not None:
                self.vmax, self.note = self.shared.put(drawing.vmax, epoch)
        return drawing


class GraphPictures:
    """Epoch hook, after `GraphStage` and the pruner: pictures of the graph stage as MLflow artifacts.

    ``graph/epoch_NNN.png`` (`draw_rolled_graph`) for the epochs whose weights are kept (``keep``:
    those epochs, ``None``: all; a pruned or diverged epoch too, as the weights logger does), titled with
    the run's name, the epoch and its val_acc, on one colour scale for the run (`RunColourScale`), and
    ``graph/centrality_distributions.png`` when the run ends (its last epoch, a prune or a divergence).
    ``title`` describes the training (``lenet on fashion_mnist``). Drawing time is added to
    ``time/graph_pictures_s``; a picture that fails is a warning, never the end of the training.
    """

    def __init__(self, stage: GraphStage, client, run_id: str, *, epochs: int, keep: set[int] | None = None,
                 title: str = "", run_name: str = "", shared_scale: SharedScale | None = None) -> None:
        self.stage, self.client, self.run_id = stage, client, run_id
        self.epochs, self.keep, self.title, self.run_name = epochs, keep, title, run_name
        self.scale = RunColourScale(shared_scale)
        self.last: GraphDrawing | None = None  # what the latest picture shows (title, scale, labels)

    def on_epoch_end(self, state: EpochState) -> None:
        engine = self.stage.engine
        if engine is None or self.stage.last_epoch != state.epoch:
            return
        start = time.perf_counter()
        last = state.epoch >= self.epochs or state.prune or state.diverged
        with tempfile.TemporaryDirectory() as tmp:
            try:
                if self.keep is None or state.epoch in self.keep or last:
                    path = Path(tmp, Path(picture_artifact(state.epoch)).name)
                    title = epoch_title(self.run_name, state.epoch, state.metrics.get("val_acc"))
                    drawing = self.scale.draw(engine, state.model.state_dict(), path, epoch=state.epoch,
                                              title=title, subtitle=self.title)
                    if drawing is not None:
                        self.last = drawing
                        self.client.log_artifact(self.run_id, str(path), artifact_path=PICTURES_DIR)
                if last and self.stage.distributions is not None and self.stage.distributions.epochs:
                    path = Path(tmp, DISTRIBUTIONS_PICTURE)
                    self.stage.distributions.plot(path, title=" · ".join(t for t in (self.run_name, self.title) if t))
                    self.client.log_artifact(self.run_id, str(path), artifact_path=PICTURES_DIR)
            except (OSError, ValueError, RuntimeError, MemoryError) as err:
                log.warning("epoch %d: graph picture failed (%s)", state.epoch, err)
        state.metrics["time/graph_pictures_s"] = time.perf_counter() - start
