"""The graph stage of a training run: after every epoch, rolled graph -> centralities -> signature.

`GraphStage` is an epoch hook; it adds ``sig/<centrality>/<aggregator>``, ``sig/nonfinite`` and
``time/graph_s`` to the epoch's metrics, which the MLflow logger then records with ``step=epoch``, and
tags the run with the engine that computed them (``graph_engine``). It keeps one
`SignatureEngine` per model: with the default graph-tool engine, one `graph_tool.Graph` built at
the first epoch and given new weights in place at every later one.

`GraphPictures` draws what the stage computed: ``graph/epoch_NNN.png`` for the epochs whose weights
are kept, and ``graph/centrality_distributions.png`` at the end of the run (see `epochgraph.graph_drawing`).

`recompute_signatures` does the same afterwards for an existing MLflow run, from its
``weights/epoch_NNN.safetensors`` artifacts, logging only the values the run does not hold yet::

    python -m epochgraph.graph_stage <run_id> [--tracking-uri URI] [--centralities degree,eigenvector]
        [--backend auto] [--no-pictures] [--pictures-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from epochgraph.centrality import CENTRALITIES
from epochgraph.errors import EpochgraphError, choice_error, report_errors
from epochgraph.graph_drawing import CentralityDistributions, ConnectionWeights, draw_rolled_graph
from epochgraph.hooks import EpochState
from epochgraph.rolled_graph import block_graph
from epochgraph.signature import (
    AGGREGATORS,
    BACKENDS,
    NONFINITE,
    SignatureEngine,
    check_centralities,
    metric_name,
)

log = logging.getLogger("epochgraph")
WEIGHTS_RE = re.compile(r"weights/epoch_(\d+)\.safetensors$")
PICTURES_DIR = "graph"
DISTRIBUTIONS_PICTURE = "centrality_distributions.png"
ENGINE_TAG = "graph_engine"


def picture_artifact(epoch: int) -> str:
    """Artifact path of the rolled-graph picture of ``epoch``: ``graph/epoch_003.png``."""
    return f"{PICTURES_DIR}/epoch_{epoch:03d}.png"


class GraphStage:
    """Epoch hook: after every epoch, the snapshot signature of the model's rolled graph.

    It adds ``sig/<centrality>/<aggregator>`` and ``sig/nonfinite`` (see
    `epochgraph.signature.SignatureEngine`) and ``time/graph_s`` to ``state.metrics``, tags the run
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
        topology = state.model.topology()
        if self.engine is None or self.engine.topology != topology:
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
               title: str) -> bool:
    """Draw the rolled graph of the snapshot ``engine`` last computed to ``path``; False (nothing drawn)
    when that snapshot had no finite centralities."""
    if not engine.vectors:
        return False
    name = "eigenvector" if "eigenvector" in engine.vectors else next(iter(engine.vectors))
    draw_rolled_graph(engine.topology, drawn_connections(engine, state_dict), engine.vectors[name], path,
                      title=title, value_name=f"{name} centrality")
    return True


class GraphPictures:
    """Epoch hook, after `GraphStage` and the pruner: pictures of the graph stage as MLflow artifacts.

    ``graph/epoch_NNN.png`` (`draw_rolled_graph`) for the epochs whose weights are kept (``keep``:
    those epochs, ``None``: all; a pruned or diverged epoch too, as the weights logger does), and
    ``graph/centrality_distributions.png`` when the run ends (its last epoch, a prune or a divergence).
    Drawing time is added to ``time/graph_pictures_s``; a picture that fails is a warning, never the end
    of the training.
    """

    def __init__(self, stage: GraphStage, client, run_id: str, *, epochs: int, keep: set[int] | None = None,
                 title: str = "") -> None:
        self.stage, self.client, self.run_id = stage, client, run_id
        self.epochs, self.keep, self.title = epochs, keep, title

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
                    title = f"{self.title} epoch {state.epoch}".strip()
                    if draw_epoch(engine, state.model.state_dict(), path, title):
                        self.client.log_artifact(self.run_id, str(path), artifact_path=PICTURES_DIR)
                if last and self.stage.distributions is not None and self.stage.distributions.epochs:
                    path = Path(tmp, DISTRIBUTIONS_PICTURE)
                    self.stage.distributions.plot(path, title=self.title)
                    self.client.log_artifact(self.run_id, str(path), artifact_path=PICTURES_DIR)
            except (OSError, ValueError, RuntimeError, MemoryError) as err:
                log.warning("epoch %d: graph picture failed (%s)", state.epoch, err)
        state.metrics["time/graph_pictures_s"] = time.perf_counter() - start


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(value, value)


def model_from_params(params: Mapping[str, str]):
    """Rebuild a run's (untrained) model from its logged params (``model.*``, ``data.*``)."""
    from epochgraph.models import build_model

    if "model.name" not in params:
        raise EpochgraphError("the run has no 'model.name' param; was it logged by epochgraph-train?")
    kwargs = {k[len("model."):]: _parse(v) for k, v in params.items()
              if k.startswith("model.") and k != "model.name"}
    return build_model(params["model.name"], in_channels=int(params.get("data.in_channels", 1)),
                       image_size=int(params.get("data.image_size", 28)), **kwargs)


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


def _logged_steps(client, run_id: str, keys: Sequence[str]) -> dict[str, set[int]]:
    """``{metric key: the steps it has a point at}`` for ``keys`` of ``run_id``."""
    return {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}


def recompute_signatures(run_id: str, tracking_uri: str | None = None,
                         centralities: Sequence[str] = CENTRALITIES, backend: str = "auto", *,
                         pictures: bool = True, pictures_dir: str | Path | None = None) -> int:
    """Recompute the signature of every weights snapshot of ``run_id``; returns how many snapshots.

    A value is logged only where the run has no point of that metric at that epoch yet (MLflow cannot
    replace a point, and a second one would make the epoch's history ambiguous), so a rerun adds
    nothing and a run trained with ``graph.enabled=false`` or fewer centralities is completed.
    With ``pictures``, the rolled graph of every snapshot and the distributions plot are drawn and
    logged as ``graph/*.png`` artifacts (replacing earlier ones), and copied to ``pictures_dir`` if
    given. A missing or corrupt artifact is named in one line on stderr and skipped.
    """
    from epochgraph import tracking

    centralities = check_centralities(centralities)
    if backend not in BACKENDS:
        raise choice_error("graph backend", backend, BACKENDS, key="--backend")
    client = tracking.get_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise EpochgraphError(f"no MLflow run {run_id!r} in {client.tracking_uri}; check the run id") from None
    topology = model_from_params(run.data.params).topology()
    engine = SignatureEngine(topology, centralities, backend)  # one persistent graph for all snapshots
    distributions = CentralityDistributions(topology)
    keys = [*(metric_name(c, a) for c in centralities for a in AGGREGATORS), NONFINITE]
    logged = _logged_steps(client, run_id, keys)
    out_dir = Path(pictures_dir) if pictures_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{run.data.params.get('model.name', '')} {run.info.run_name or run_id}".strip()
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for epoch, path in weights_epochs(client, run_id).items():
            try:
                state_dict = load_weights(client, run_id, path, str(Path(tmp) / str(epoch)))
                sig = engine.signature(state_dict)
            except (EpochgraphError, KeyError, RuntimeError) as err:
                print(f"epochgraph: skipped: {err}", file=sys.stderr)
                continue
            distributions.add(epoch, engine.vectors)
            new = {k: v for k, v in sig.items() if epoch not in logged[k]}
            if new:
                tracking.log_metrics(client, run_id, new, step=epoch)
            if sig[NONFINITE]:
                tracking.set_tags(client, run_id, {"nonfinite_weights": "true"})
            if pictures:
                picture = Path(tmp, Path(picture_artifact(epoch)).name)
                if draw_epoch(engine, state_dict, picture, f"{title} epoch {epoch}"):
                    _keep_picture(client, run_id, picture, out_dir)
            kept = len(sig) - len(new)
            print(f"epoch {epoch:3d}: {len(new)} signature values logged"
                  + (f", {kept} already in the run kept" if kept else ""), file=sys.stderr)
            done += 1
        tracking.set_tags(client, run_id, {ENGINE_TAG: engine.engine})
        if pictures and distributions.epochs:
            picture = Path(tmp, DISTRIBUTIONS_PICTURE)
            distributions.plot(picture, title=title)
            _keep_picture(client, run_id, picture, out_dir)
    return done


def _keep_picture(client, run_id: str, picture: Path, out_dir: Path | None) -> None:
    client.log_artifact(run_id, str(picture), artifact_path=PICTURES_DIR)
    if out_dir is not None:
        (out_dir / picture.name).write_bytes(picture.read_bytes())


def _centralities_argument(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    for name in names:
        if name not in CENTRALITIES:
            raise argparse.ArgumentTypeError(
                f"unknown centrality {name!r}; valid choices: {', '.join(CENTRALITIES)} (comma-separated)")
    if not names:
        raise argparse.ArgumentTypeError(f"no centrality given; use e.g. --centralities {','.join(CENTRALITIES)}")
    return names


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m epochgraph.graph_stage",
                                     description="Recompute rolled-graph signatures and pictures of an MLflow run.")
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--centralities", type=_centralities_argument, default=CENTRALITIES,
                        help=f"comma-separated, from {','.join(CENTRALITIES)} (default: all)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="the engine (same numbers; auto: graph-tool up to 10M edges, blocks above)")
    parser.add_argument("--no-pictures", action="store_true", help="skip the graph/*.png pictures")
    parser.add_argument("--pictures-dir", default=None, help="also write the pictures to this folder")
    args = parser.parse_args(argv)
    n = recompute_signatures(args.run_id, args.tracking_uri, args.centralities, args.backend,
                             pictures=not args.no_pictures, pictures_dir=args.pictures_dir)
    print(f"{n} snapshots recomputed for run {args.run_id}")


if __name__ == "__main__":
    main()
