"""``python -m epochgraph.cli.graph_stage RUN_ID``: the graph stage run afterwards on a logged MLflow run.

`recompute_signatures` computes the signature of every ``weights/epoch_NNN.safetensors`` artifact of
the run, logging only the values the run does not hold yet, and draws its graph pictures::

    python -m epochgraph.cli.graph_stage <run_id> [--tracking-uri URI] [--centralities degree,eigenvector]
        [--backend auto] [--no-pictures] [--pictures-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from epochgraph.errors import EpochgraphError, choice_error, report_errors
from epochgraph.graph.centrality import CENTRALITIES
from epochgraph.graph.graph_drawing import CentralityDistributions, epoch_title
from epochgraph.graph.graph_stage import (
    DISTRIBUTIONS_PICTURE,
    ENGINE_TAG,
    PICTURES_DIR,
    RunColourScale,
    picture_artifact,
)
from epochgraph.graph.signature import (
    AGGREGATORS,
    BACKENDS,
    NONFINITE,
    SignatureEngine,
    check_centralities,
    metric_name,
)
from epochgraph.graph.tracing import topology_of
from epochgraph.models import model_from_params
from epochgraph.store import tracking


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
    centralities = check_centralities(centralities)
    if backend not in BACKENDS:
        raise choice_error("graph backend", backend, BACKENDS, key="--backend")
    client = tracking.get_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise EpochgraphError(f"no MLflow run {run_id!r} in {client.tracking_uri}; check the run id") from None
    topology = topology_of(model_from_params(run.data.params))
    engine = SignatureEngine(topology, centralities, backend)  # one persistent graph for all snapshots
    distributions = CentralityDistributions(topology)
    keys = [*(metric_name(c, a) for c in centralities for a in AGGREGATORS), NONFINITE]
    logged = _logged_steps(client, run_id, keys)
    out_dir = Path(pictures_dir) if pictures_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    run_name = run.info.run_name or run_id
    about = " on ".join(v for v in (run.data.params.get("model.name"), run.data.params.get("data.name")) if v)
    val_acc = {m.step: m.value for m in client.get_metric_history(run_id, "val_acc")}
    scale = RunColourScale()  # one colour scale for all the run's pictures, as during training
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for epoch, path in tracking.weights_epochs(client, run_id).items():
            try:
                state_dict = tracking.load_weights(client, run_id, path, str(Path(tmp) / str(epoch)))
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
                if scale.draw(engine, state_dict, picture, epoch=epoch, subtitle=about,
                              title=epoch_title(run_name, epoch, val_acc.get(epoch))):
                    _keep_picture(client, run_id, picture, out_dir)
            kept = len(sig) - len(new)
            print(f"epoch {epoch:3d}: {len(new)} signature values logged"
                  + (f", {kept} already in the run kept" if kept else ""), file=sys.stderr)
            done += 1
        tracking.set_tags(client, run_id, {ENGINE_TAG: engine.engine})
        if pictures and distributions.epochs:
            picture = Path(tmp, DISTRIBUTIONS_PICTURE)
            distributions.plot(picture, title=" · ".join(t for t in (run_name, about) if t))
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
    parser = argparse.ArgumentParser(prog="python -m epochgraph.cli.graph_stage",
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
