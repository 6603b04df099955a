"""The end of a sweep: its summary (printed and on the MLflow parent run) and a plot of every trial."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

from epochgraph.search.pause import configurations
from epochgraph.search.trial_attrs import (
    FORECAST_EPOCH_ATTR,
    FORECAST_FINAL_ATTR,
    paused_epoch,
    planned_epochs,
    resumed_trials,
)
from epochgraph.store import tracking

log = logging.getLogger("epochgraph")
COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "PAUSED": "tab:purple", "FAIL": "tab:red"}


def shown(value: object) -> object:
    """A float to 4 significant digits, as the MLflow UI shows it to people (``0.45999999999999996`` -> 0.46);
    anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    return value


def summary(study: optuna.Study, epochs: int, checkpoint_peak_bytes: int | None = None) -> dict[str, float]:
    """Counts by outcome (a paused trial that resumed counted once, as the trial that went on), the epochs trained
    (each once) against every configuration's planned epochs, the best value, the forecasts of the pruned."""
    trials = configurations(study)
    paused = {t.number for t in trials if paused_epoch(t) is not None}
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    trained = sum(len(t.intermediate_values) for t in finished)
    budget = sum(planned_epochs(t) or epochs for t in finished)
    out = {"trials_complete": count[TrialState.COMPLETE], "trials_pruned": count[TrialState.PRUNED] - len(paused),
           "trials_paused": len(paused), "trials_resumed": len(resumed_trials(study)),
           "trials_failed": count[TrialState.FAIL], "epochs_trained": trained, "epochs_budget": budget,
           "epochs_saved_frac": 1 - trained / budget if budget else 0.0}
    if checkpoint_peak_bytes is not None:
        out["checkpoint_peak_bytes"] = int(checkpoint_peak_bytes)
    if count[TrialState.COMPLETE]:
        out["best_value"] = study.best_value
    forecasts = [t.user_attrs[FORECAST_FINAL_ATTR] for t in trials
                 if t.state == TrialState.PRUNED and FORECAST_FINAL_ATTR in t.user_attrs]
    if forecasts:
        out["pruned_forecast_median"] = float(sorted(forecasts)[len(forecasts) // 2])
        out["pruned_forecast_max"] = float(max(forecasts))
        out["pruned_with_forecast"] = len(forecasts)
    return out


def plot_curves(study: optuna.Study, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    seen = set()
    for t in configurations(study):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        state = "PAUSED" if paused_epoch(t) is not None else t.state.name
        ax.plot(steps, [t.intermediate_values[s] for s in steps], color=COLORS.get(state, "grey"), lw=1.1,
                alpha=0.8, marker="o" if state in ("PRUNED", "PAUSED") else None, ms=3,
                label=state.lower() if state not in seen else None)
        seen.add(state)
    done = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if done:  # the bar every forecast was judged against at the end
        ax.axhline(max(done), color="black", lw=0.8, ls="--", label=f"best complete {max(done):.3f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{study.study_name}: every trial, coloured by state (a resumed trial: one curve)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_trial(trial: optuna.trial.FrozenTrial, path: Path) -> Path | None:
    """One trial's val_acc per epoch beside what the pruner forecast at each epoch (the median final, the upper
    bound it compared with the best so far, and that best), the epoch it stopped at marked; None without a
    forecast."""
    prefix = FORECAST_EPOCH_ATTR.split("{")[0]
    made = {int(k[len(prefix):]): v for k, v in trial.system_attrs.items()
            if k.startswith(prefix) and k[len(prefix):].isdigit() and isinstance(v, dict)}
    if not made or not trial.intermediate_values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    steps = sorted(trial.intermediate_values)
    ax.plot(steps, [trial.intermediate_values[e] for e in steps], "o-", color="tab:blue", label="val_acc")
    epochs = sorted(made)
    for key, style, label in (("final", "s--", "forecast final (median)"), ("upper", "^:", "forecast upper bound"),
                              ("best", "_-", "best so far (the bar)")):
        pts = [(e, made[e][key]) for e in epochs if made[e].get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, lw=1, label=label)
    stop = paused_epoch(trial) or (trial.last_step if trial.state == TrialState.PRUNED else None)
    if stop is not None:
        ax.axvline(stop, color="tab:red", lw=0.8, label=f"{'paused' if paused_epoch(trial) else 'pruned'} at {stop}")
    ax.set_ylim(0, 1.02)
    # the whole planned training on the x axis: where it stopped shows against where it would have ended
    ax.set_xlim(0.5, max(planned_epochs(trial) or 0, steps[-1]) + 0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"trial {trial.number}: the curve and what the pruner forecast at each epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SUMMARY_FILE = "summary.txt"  # beside sweep_curves.png: the summary the sweep printed


def report(study: optuna.Study, client, parent_run_id: str, epochs: int, out_dir: Path, record: bool = True,
           links: list[str] | None = None, checkpoint_peak_bytes: int | None = None) -> dict[str, float]:
    """Log the summary and the curve plot on the parent run (unless ``record`` is false: a rerun that
    trained nothing changes no run), and print them with ``links`` to the MLflow UI, also into ``out_dir``'s
    `SUMMARY_FILE`."""
    s = summary(study, epochs, checkpoint_peak_bytes)
    png = plot_curves(study, out_dir / "sweep_curves.png")
    if record:
        # what people read in the UI, to 4 significant digits (the study holds the full values)
        tracking.log_metrics(client, parent_run_id, {k: shown(v) for k, v in s.items()}, step=0)
        if s.get("trials_complete"):
            best = study.best_trial
            tracking.set_tags(client, parent_run_id, {f"best.{k}": shown(v) for k, v in best.params.items()})
            tracking.set_tags(client, parent_run_id, {"best.trial": best.number})
        client.log_artifact(parent_run_id, str(png))
    lines = [
        f"Sweep {study.study_name}: {s['trials_complete']} complete, {s['trials_pruned']} pruned, "
        + (f"{s['trials_paused']} paused, {s['trials_resumed']} resumed, " if s["trials_paused"] or s["trials_resumed"]
           else "") + f"{s['trials_failed']} failed",
        f"Epochs trained {s['epochs_trained']} of {s['epochs_budget']} without pruning "
        f"({100 * s['epochs_saved_frac']:.0f}% saved)",
    ]
    if s.get("checkpoint_peak_bytes"):
        lines.append(f"Checkpoints of paused trials: {s['checkpoint_peak_bytes'] / 2**20:.1f} MB at their peak "
                     f"(mlflow.keep_checkpoints=false deletes them once a trial's training ends)")
    if "pruned_with_forecast" in s:
        how = {(True, False): "paused", (True, True): "paused or pruned"}.get(
            (bool(s["trials_paused"]), bool(s["trials_pruned"])), "pruned")  # stopped last: paused, or for good
        lines.append(f"Forecast final val_acc of the {s['pruned_with_forecast']} trials {how} by the forecast: "
                     f"median {s['pruned_forecast_median']:.4f}, highest {s['pruned_forecast_max']:.4f}")
    if "best_value" in s and math.isfinite(s["best_value"]):
        lines.append(f"Best val_acc {s['best_value']:.4f} (trial {study.best_trial.number}): {study.best_trial.params}")
    lines += [f"Curves: {png}", f"Summary: {out_dir / SUMMARY_FILE}", f"MLflow parent run {parent_run_id}",
              *(links or []), "Browse the runs: make ui"]
    (out_dir / SUMMARY_FILE).write_text("\n".join(lines) + "\n")  # what the docs include, as the command said it
    print("\n".join(lines), flush=True)
    return s
