"""Compare forecasters on recorded runs (paper Q1, Q2): classifiers x features x t, plus baselines.

Reads finished runs of one or several MLflow experiments (metric histories and weights artifacts;
nothing is retrained), or the same runs from an exported population table (``table=<parquet>``, seconds
instead of minutes), labels them high / low by final accuracy (``final_val_acc`` by default: the
validation accuracy after the run's last epoch), and scores every variant with stratified k-fold
cross-validation (or, with ``train_on`` / ``test_on``, fitted on one subset and scored on another).
Output: a long CSV, markdown tables (balanced accuracy and ROC-AUC, mean +- std over folds), and
plots of balanced accuracy vs. t, logged to a comparison MLflow run and saved under ``output_dir``.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_validate
from tqdm import tqdm

from epochgraph.errors import EpochgraphError, choice_error
from epochgraph.forecast.predictor import (
    CLASSIFIERS,
    SOURCES,
    WEIGHT_SOURCES,
    FeatureSpec,
    LabelRule,
    SignaturePredictor,
    make_classifier,
)
from epochgraph.forecast.records import RunRecord, experiment_names, load_runs, matches
from epochgraph.graph.centrality import CENTRALITIES
from epochgraph.graph.signature import VARIANTS
from epochgraph.store import tracking

log = logging.getLogger("epochgraph")


def _has_weight_features(run: RunRecord, spec: FeatureSpec) -> bool:
    """Whether ``run`` carries ``spec``'s weight features: epoch t (B_*), or every epoch 1..t (unrolled)."""
    values = run.history.get(spec.source)
    if values is None or len(values) < spec.t:
        return False
    needed = values[: spec.t] if spec.source == "unrolled" else [values[spec.t - 1]]
    return all(v is not None for v in needed)


def feature_specs(cfg: Mapping[str, Any], t: int) -> list[FeatureSpec]:
    """The feature sets of one t: each centrality alone and all together x variants, then the baselines."""
    cents = list(cfg["centralities"])
    sets = [[c] for c in cents] + ([cents] if len(cents) > 1 else [])
    specs = [FeatureSpec("signature", tuple(c), t, v, float(cfg["alpha"])) for c in sets for v in cfg["variants"]]
    for b in cfg["baselines"]:
        specs.append(FeatureSpec(b, tuple(cents), t, "plain", float(cfg["alpha"])))
    return specs


def _scores(y_true: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    bal = balanced_accuracy_score(y_true, (proba >= 0.5).astype(int))
    auc = roc_auc_score(y_true, proba) if len(np.unique(y_true)) == 2 else math.nan
    return bal, auc


def split_runs(runs: Sequence[RunRecord], train_on: Mapping[str, Any] | None,
               test_on: Mapping[str, Any] | None) -> tuple[list[RunRecord], list[RunRecord]]:
    """(training runs, test runs) of a Q2 split; a run is never in both, and an unset side is every other run."""
    train = [r for r in runs if (matches(r, train_on) if train_on else not matches(r, test_on))]
    fitted = {r.run_id for r in train}
    test = [r for r in runs if matches(r, test_on) and r.run_id not in fitted]
    if not train or not test:
        raise EpochgraphError(f"train_on={train_on} matches {len(train)} runs and test_on={test_on} "
                              f"{len(test)} others; both need runs (filters match params or tags, "
                              f"e.g. train_on='{{model.width: [0.5, 1.0]}}' test_on='{{model.width: 2.0}}')")
    return train, test


def evaluate(spec: FeatureSpec, kind: str, params: Mapping[str, Any], runs: Sequence[RunRecord],
             rule: LabelRule, folds: int, seed: int, train_on: Mapping[str, Any] | None = None,
             test_on: Mapping[str, Any] | None = None, cut: float | None = None, n_jobs: int = 1) -> dict[str, Any]:
    """Scores of one (classifier, features, t) cell: stratified k-fold CV (seeded), or with ``train_on`` /
    ``test_on`` one fit on the matching runs scored on the others (std 0).

    ``cut`` fixes the high / low boundary (default: ``rule`` on these runs, or on the training runs of a
    split), so that cells whose runs lack some weight features keep the population's labels. ``n_jobs``
    folds are fitted at once.
    """
    if spec.source in WEIGHT_SOURCES:
        all_runs, runs = runs, [r for r in runs if _has_weight_features(r, spec)]
        if not runs:
            notes = [r.notes[spec.source] for r in all_runs if spec.source in r.notes]
            return {"n_runs": 0, "note": max(set(notes), key=notes.count) if notes else "no weights"}
    if train_on or test_on:
        train, test = split_runs(runs, train_on, test_on)
        cut = rule.cut([r.final_acc for r in train]) if cut is None else cut
        y_tr = rule.labels([r.final_acc for r in train], cut)
        y_te = (np.nan_to_num([r.final_acc for r in test]) >= cut).astype(int)
        # each run's features once: their sizes say whether one classifier can read them all
        v_tr, v_te = [spec.vector(r.history) for r in train], [spec.vector(r.history) for r in test]
        sizes = {len(v) for v in (*v_tr, *v_te)}
        if len(sizes) > 1:  # e.g. B_Wl of another network: its last layer has another number of weights
            return {"n_runs": len(train) + len(test),
                    "note": f"feature sizes differ between the networks ({', '.join(map(str, sorted(sizes)))})"}
        X_tr, X_te = np.vstack(v_tr), np.vstack(v_te)
        model = make_classifier(kind, seed, **params).fit(X_tr, y_tr)
        bal, auc = _scores(y_te, model.predict_proba(X_te)[:, 1])
        return {"n_runs": len(train) + len(test), "bal_acc_mean": bal, "bal_acc_std": 0.0,
                "auc_mean": auc, "auc_std": 0.0}
    y = rule.labels([r.final_acc for r in runs], cut)
    n_splits = fold_count(y, folds)
    if n_splits < 2:
        return {"n_runs": len(runs), "note": "a class has < 2 runs"}
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    res = cross_validate(make_classifier(kind, seed, **params), spec.matrix([r.history for r in runs]), y, cv=cv,
                         scoring=["balanced_accuracy", "roc_auc"], error_score="raise", n_jobs=n_jobs)
    return {"n_runs": len(runs), "folds": n_splits, "bal_acc_mean": float(res["test_balanced_accuracy"].mean()),
            "bal_acc_std": float(res["test_balanced_accuracy"].std()),
            "auc_mean": float(res["test_roc_auc"].mean()), "auc_std": float(res["test_roc_auc"].std())}


def fold_count(y: np.ndarray, folds: int) -> int:
    """Folds a stratified cross-validation of labels ``y`` can use: ``folds``, or fewer when the smaller
    class has fewer runs."""
    return min(int(folds), int(np.bincount(np.asarray(y, dtype=int), minlength=2).min()))


def strict_cut(final_accs: Sequence[float], cut: float) -> float | None:
    """When "high = at or above ``cut``" labels every run high but "above ``cut``" gives two classes (many
    runs tied at the cut, e.g. half of them stuck at chance accuracy), the cut that labels "above ``cut``"
    high: the next float after it (``acc >= next`` is ``acc > cut`` for every run). None otherwise."""
    accs = np.nan_to_num(np.asarray(final_accs, dtype=float), nan=0.0)
    if len(accs) and (accs >= cut).all() and (accs > cut).any():
        return float(np.nextafter(cut, np.inf))
    return None


def population_cut(runs: Sequence[RunRecord], cfg: Mapping[str, Any]) -> tuple[LabelRule, float]:
    """The label rule of ``cfg`` and its cut: on all runs, or on the training runs of a Q2 split.

    A run is high at or above the cut; when that leaves one class because runs tie at the cut, runs above
    it are high (the cut returned is then the float just above the rule's cut, see `strict_cut`).
    Raises the one-line label error when a class would still be empty (in the training runs, for a split).
    """
    rule = LabelRule.from_config(cfg["label"].get("threshold"), cfg["label"].get("quantile"))
    if cfg.get("train_on") or cfg.get("test_on"):
        runs, _ = split_runs(runs, cfg.get("train_on"), cfg.get("test_on"))
    finals = [r.final_acc for r in runs]
    cut = rule.cut(finals)
    strict = strict_cut(finals, cut)
    rule.labels(finals, cut if strict is None else strict)
    return rule, cut if strict is None else strict


def label_text(runs: Sequence[RunRecord], cfg: Mapping[str, Any], rule: LabelRule, cut: float) -> str:
    """How runs were labelled: ``high = final_val_acc >= 0.8100``, or, after ties at the rule's cut,
    ``high = final_val_acc > 0.1000 (...)``."""
    metric = cfg["label"].get("metric", "final_val_acc")
    if cfg.get("train_on") or cfg.get("test_on"):
        runs, _ = split_runs(runs, cfg.get("train_on"), cfg.get("test_on"))
    nominal = rule.cut([r.final_acc for r in runs])
    if cut == nominal:
        return f"high = {metric} >= {cut:.4f}"
    rule_name = f"label.threshold={rule.threshold}" if rule.threshold is not None else f"label.quantile={rule.quantile}"
    tied = int(sum(np.nan_to_num(r.final_acc) == nominal for r in runs))
    return (f"high = {metric} > {nominal:.4f} ({tied} runs tie at the {rule_name} cut {nominal:.4f}, "
            f"so >= would label every run high)")


def folds_text(df: pd.DataFrame, asked: int, seed: int) -> str:
    """The cross-validation actually run: ``stratified 5-fold``, or fewer folds than asked and why."""
    used = sorted({int(f) for f in df["folds"].dropna()}) if "folds" in df else []
    if not used:
        return f"stratified cross-validation (seed {seed}) left no cell scored: a class has < 2 runs"
    k = f"{used[0]}-fold" if len(used) == 1 else f"{used[0]}- to {used[-1]}-fold"
    why = f" (folds={asked} asked; the smaller class has fewer runs)" if used[-1] < asked else ""
    return f"stratified {k} cross-validation{why} (seed {seed})"


def compare(runs: Sequence[RunRecord], cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The long table: one row per (classifier, features, t)."""
    rule, cut = population_cut(runs, cfg)  # fails early, with one line, if a class is empty
    cells = [(kind, spec) for t in range(1, int(cfg["epochs"]) + 1) for kind in cfg["classifiers"]
             for spec in feature_specs(cfg, t)]
    rows = []
    for kind, spec in tqdm(cells, desc="cross-validating", unit="cell", file=sys.stderr):
        params = dict(cfg["predictors"][kind].get("params") or {})
        scores = evaluate(spec, kind, params, runs, rule, int(cfg["folds"]), int(cfg["seed"]),
                          cfg.get("train_on"), cfg.get("test_on"), cut, int(cfg.get("n_jobs") or 1))
        rows.append({"classifier": kind, "features": spec.label, "t": spec.t, **scores})
    return pd.DataFrame(rows)


def _cell(mean: float, std: float) -> str:
    return "-" if mean is None or (isinstance(mean, float) and math.isnan(mean)) else f"{mean:.2f} ± {std:.2f}"


def markdown_tables(df: pd.DataFrame) -> str:
    out = []
    for metric, title in (("bal_acc", "Balanced accuracy"), ("auc", "ROC-AUC")):
        if f"{metric}_mean" not in df:
            continue
        table = df.assign(cell=[
            _cell(m, s) if isinstance(m, float) and not math.isnan(m) else (n if isinstance(n, str) else "-")
            for m, s, n in zip(df[f"{metric}_mean"], df[f"{metric}_std"], df.get("note", [None] * len(df)))
        ]).pivot_table(index=["classifier", "features"], columns="t", values="cell", aggfunc="first")
        table.columns = [f"t={c}" for c in table.columns]
        out.append(f"### {title} (mean ± std over folds)\n\n{table.reset_index().to_markdown(index=False)}\n")
    return "\n".join(out)


def _fmt(r: Mapping[str, Any] | None) -> str:
    return "-" if r is None else f"{r['classifier']} {r['features']} {r['bal_acc_mean']:.2f}"


def winners(df: pd.DataFrame) -> str:
    """Per t: the best cell overall, the best graph signature and the best learning-curve cell."""
    lines = ["| t | best overall | best graph signature | learning curve (best classifier) | signature - curve |",
             "|---|---|---|---|---|"]
    scored = df.dropna(subset=["bal_acc_mean"]) if "bal_acc_mean" in df else df.iloc[0:0]
    for t, g in scored.groupby("t"):
        best = g.loc[g["bal_acc_mean"].idxmax()]
        sig = g[g["features"].str.startswith("signature")]
        cur = g[g["features"] == "curve"]
        s = sig.loc[sig["bal_acc_mean"].idxmax()] if len(sig) else None
        c = cur.loc[cur["bal_acc_mean"].idxmax()] if len(cur) else None
        diff = f"{s['bal_acc_mean'] - c['bal_acc_mean']:+.2f}" if s is not None and c is not None else "-"
        lines.append(f"| {t} | {_fmt(best)} | {_fmt(s)} | {_fmt(c)} | {diff} |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path, title: str) -> Path:
    """Balanced accuracy vs. t, one panel per classifier, one line per feature set (paper Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classifiers = list(dict.fromkeys(df["classifier"]))
    fig, axes = plt.subplots(1, len(classifiers), figsize=(5.5 * len(classifiers), 4.2), sharey=True, squeeze=False)
    scored = df.dropna(subset=["bal_acc_mean"])
    for ax, kind in zip(axes[0], classifiers):
        sub = scored[scored["classifier"] == kind]
        for feat, g in sub.groupby("features", sort=False):
            style = "-" if feat.startswith("signature") else ("--" if feat in ("curve", "hybrid") else ":")
            ax.errorbar(g["t"], g["bal_acc_mean"], yerr=g["bal_acc_std"], ls=style, marker="o", ms=3,
                        capsize=2, label=feat, lw=1.2)
        ax.set_title(f"{title}: {kind}")
        ax.set_xlabel("epochs used (t)")
        ax.set_ylim(0.3, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("balanced accuracy (CV)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def register_predictor(runs: Sequence[RunRecord], cfg: Mapping[str, Any]) -> tuple[SignaturePredictor, str]:
    """Fit ``cfg.select`` on all runs and register it; returns the predictor and its models:/ URI."""
    import mlflow

    sel = cfg["select"]
    spec = FeatureSpec(sel["source"], tuple(sel["centralities"]), int(sel["t"]), sel["variant"],
                       float(cfg["alpha"]))
    kind = sel["classifier"]
    rule = LabelRule.from_config(cfg["label"].get("threshold"), cfg["label"].get("quantile"))
    pred = SignaturePredictor(spec, rule, kind, dict(cfg["predictors"][kind].get("params") or {}), int(cfg["seed"]))
    pred.fit([r.history for r in runs], [r.final_acc for r in runs])
    name, alias = cfg["registry"]["name"], cfg["registry"]["alias"]
    info = pred.log_model(registered_model_name=name)
    client = mlflow.tracking.MlflowClient()
    version = info.registered_model_version
    if version is None:
        version = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    client.set_registered_model_alias(name, alias, str(version))
    return pred, f"models:/{name}@{alias}"


def check_config(cfg: Mapping[str, Any]) -> None:
    """One-line errors for settings that would fail late (after reading every run)."""
    if int(cfg["epochs"]) < 1:
        raise EpochgraphError(f"epochs={cfg['epochs']} must be >= 1 (t = 1..epochs), e.g. epochs=5")
    if int(cfg["folds"]) < 2:
        raise EpochgraphError(f"folds={cfg['folds']} must be >= 2, e.g. folds=5")
    for kind in cfg["classifiers"]:
        if kind not in CLASSIFIERS:
            raise choice_error("classifier", kind, CLASSIFIERS, key="classifiers")
        if kind not in cfg["predictors"]:
            raise EpochgraphError(f"classifier {kind!r} has no predictors.{kind} config "
                                  f"(conf/compare/predictor/{kind}.yaml)")
    baselines = [s for s in SOURCES if s != "signature"]
    for b in cfg["baselines"]:
        if b not in baselines:
            raise choice_error("baseline", b, baselines, key="baselines")
    for c in cfg["centralities"]:
        if c not in CENTRALITIES:
            raise choice_error("centrality", c, CENTRALITIES, key="centralities")
    for v in cfg["variants"]:
        if v not in VARIANTS:
            raise choice_error("signature variant", v, VARIANTS, key="variants")


def _counts(runs: Sequence[RunRecord], cut: float) -> str:
    high = int(sum(np.nan_to_num(r.final_acc) >= cut for r in runs))
    return f"{len(runs)} runs ({high} high / {len(runs) - high} low)"


def _runs_from_table(cfg: Mapping[str, Any]) -> list[RunRecord]:
    """The runs of ``cfg.experiment`` from an exported population table (`epochgraph.forecast.population`)."""
    from epochgraph.forecast.population import from_table, read_table

    if cfg["label"].get("metric", "final_val_acc") != "final_val_acc":
        raise EpochgraphError(f"label.metric={cfg['label']['metric']!r} needs the MLflow runs; a population table "
                              f"is labelled by final_val_acc (drop table=... or label.metric)")
    return from_table(read_table(cfg["table"]), experiment_names(cfg["experiment"]))


def run_compare(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """The whole command: read runs, compare, write and log the tables and plots, optionally register."""
    import mlflow

    check_config(cfg)
    client = tracking.get_client(cfg["mlflow"]["tracking_uri"])
    sources = [b for b in cfg["baselines"] if b in WEIGHT_SOURCES]
    name = "+".join(experiment_names(cfg["experiment"]))
    if cfg.get("table"):
        runs = _runs_from_table(cfg)
    else:
        runs = load_runs(client, cfg["experiment"], int(cfg["epochs"]), cfg["label"].get("metric", "final_val_acc"),
                         tuple(cfg["centralities"]), sources, int(cfg["unrolled_budget_mb"]) * 2**20)
    rule, cut = population_cut(runs, cfg)
    labels = label_text(runs, cfg, rule, cut)
    split = bool(cfg.get("train_on") or cfg.get("test_on"))
    if split:
        train, test = split_runs(runs, cfg.get("train_on"), cfg.get("test_on"))
        summary = (f"{_counts(train, cut)} fitted (train_on={cfg.get('train_on')}), {_counts(test, cut)} scored "
                   f"(test_on={cfg.get('test_on')}), one split (std 0); {labels}")
    else:
        summary = f"{_counts(runs, cut)}; {labels}"
    log.info("%s: %s", name, summary)
    exp_id = tracking.experiment_id(client, cfg["mlflow"]["experiment"])
    out = Path(cfg.get("output_dir") or f"outputs/compare/{name}")  # the command passes its Hydra run dir
    out.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"compare-{name}") as run:
        mlflow.set_tags({"epochgraph.role": "compare", "population": name})
        mlflow.log_params({"experiment": name, "epochs": cfg["epochs"], "n_runs": len(runs), "table": cfg.get("table"),
                           "label.threshold": rule.threshold, "label.quantile": rule.quantile, "label.cut": cut,
                           "folds": cfg["folds"], "train_on": cfg.get("train_on"), "test_on": cfg.get("test_on")})
        df = compare(runs, cfg)
        if not split:
            summary += f"; {folds_text(df, int(cfg['folds']), int(cfg['seed']))}"
        md = (f"# Comparison on `{name}`\n\n{summary}.\n\n"
              f"## Which signal wins at each t\n\n{winners(df)}\n\n{markdown_tables(df)}")
        df.to_csv(out / "comparison.csv", index=False)
        (out / "comparison.md").write_text(md)
        plot(df, out / "balanced_accuracy_vs_t.png", name)
        for f in ("comparison.csv", "comparison.md", "balanced_accuracy_vs_t.png"):
            mlflow.log_artifact(str(out / f))
        for _, row in df.dropna(subset=["bal_acc_mean"]).iterrows():
            key = f"bal_acc/{row['classifier']}/{row['features']}".replace("@", "_")
            mlflow.log_metric(key, row["bal_acc_mean"], step=int(row["t"]))
        print(md)
        if cfg.get("register"):
            _, uri = register_predictor(runs, cfg)
            mlflow.set_tag("registered_model", uri)
            print(f"registered the predictor as {uri}")
        print(f"comparison run {run.info.run_id}; tables and plots in {out}/")
    return df
