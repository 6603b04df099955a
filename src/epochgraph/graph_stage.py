"""The graph stage of a training run: after every epoch, rolled graph -> centralities -> signature.

`GraphStage` is an epoch hook; it adds ``sig/<centrality>/<aggregator>``, ``sig/nonfinite`` and
``time/graph_s`` to the epoch's metrics, which the MLflow logger then records with ``step=epoch``.

`recompute_signatures` does the same afterwards for an existing MLflow run, from its
``weights/epoch_NNN.safetensors`` artifacts::

    python -m epochgraph.graph_stage <run_id> [--tracking-uri URI]
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

from epochgraph.centrality import CENTRALITIES
from epochgraph.errors import EpochgraphError, report_errors
from epochgraph.hooks import EpochState
from epochgraph.signature import AGGREGATORS, NONFINITE, check_centralities, metric_name, snapshot_signature

log = logging.getLogger("epochgraph")
WEIGHTS_RE = re.compile(r"weights/epoch_(\d+)\.safetensors$")


class GraphStage:
    """Epoch hook: after every epoch, the snapshot signature of the model's rolled graph.

    It adds ``sig/<centrality>/<aggregator>`` and ``sig/nonfinite`` (see
    `epochgraph.signature.snapshot_signature`) and ``time/graph_s`` to ``state.metrics``, and sets the
    run tag ``nonfinite_weights=true`` when the weights hold NaN or inf. A numerical failure of the
    graph stage never ends the training: the epoch's signature is then NaN and the tag ``graph_error``
    names the cause.

    Args:
        centralities: which centralities to summarise (``degree``, ``eigenvector``).
        backend: ``auto``, ``graph_tool``, ``arrays`` or ``blocks`` (same numbers, different speed).
    """

    def __init__(self, centralities: Sequence[str] = CENTRALITIES, backend: str = "auto") -> None:
        self.centralities = check_centralities(centralities)
        self.backend = backend

    def on_epoch_end(self, state: EpochState) -> None:
        start = time.perf_counter()
        try:
            sig = snapshot_signature(state.model.topology(), state.model.state_dict(), self.centralities,
                                     backend=self.backend)
        except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as err:
            # a numerical failure must not end the training: the epoch gets an undefined signature
            log.warning("epoch %d: graph stage failed (%s); signature left undefined", state.epoch, err)
            sig = {metric_name(c, a): float("nan") for c in self.centralities for a in AGGREGATORS}
            sig[NONFINITE] = 0.0
            state.tags["graph_error"] = str(err)[:250]
        state.metrics.update(sig)
        state.metrics["time/graph_s"] = time.perf_counter() - start
        if sig[NONFINITE]:
            state.tags["nonfinite_weights"] = "true"


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


def recompute_signatures(run_id: str, tracking_uri: str | None = None,
                         centralities: Sequence[str] = CENTRALITIES, backend: str = "auto") -> int:
    """Recompute and log the signature of every weights snapshot of ``run_id``; returns how many.

    A missing or corrupt artifact is named in one line on stderr and skipped.
    """
    from epochgraph import tracking

    client = tracking.get_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise EpochgraphError(f"no MLflow run {run_id!r} in {client.tracking_uri}; check the run id") from None
    model = model_from_params(run.data.params)
    topology = model.topology()
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for epoch, path in weights_epochs(client, run_id).items():
            try:
                state_dict = load_weights(client, run_id, path, str(Path(tmp) / str(epoch)))
                sig = snapshot_signature(topology, state_dict, centralities, backend=backend)
            except (EpochgraphError, KeyError, RuntimeError) as err:
                print(f"epochgraph: skipped: {err}", file=sys.stderr)
                continue
            tracking.log_metrics(client, run_id, sig, step=epoch)
            if sig[NONFINITE]:
                tracking.set_tags(client, run_id, {"nonfinite_weights": "true"})
            print(f"epoch {epoch:3d}: {len(sig) - 1} signature values logged", file=sys.stderr)
            done += 1
    return done


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m epochgraph.graph_stage",
                                     description="Recompute rolled-graph signatures of an MLflow run.")
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--centralities", default=",".join(CENTRALITIES))
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    n = recompute_signatures(args.run_id, args.tracking_uri, args.centralities.split(","), args.backend)
    print(f"{n} snapshots recomputed for run {args.run_id}")


if __name__ == "__main__":
    main()
