"""When a paused trial resumes: standings by each trial's best value so far, promotion, and the last pass."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from epochgraph.search import pause
from epochgraph.search.trial_attrs import PAUSED_ATTR
from tests.pausing import dashboard_note

DIST = {"x": FloatDistribution(0, 1)}


def _study(curves: list[tuple[list[float], float | None]]) -> optuna.Study:
    """A study of trials with these val_acc curves: a final value completes the trial, None pauses it at its last
    epoch."""
    study = optuna.create_study(direction="maximize")
    for i, (curve, final) in enumerate(curves):
        values = {e + 1: v for e, v in enumerate(curve)}
        if final is None:
            study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": i / 100}, distributions=DIST,
                                         intermediate_values=values, system_attrs={PAUSED_ATTR: len(curve)}))
        else:
            study.add_trial(create_trial(value=final, params={"x": i / 100}, distributions=DIST,
                                         intermediate_values=values))
    return study


def test_a_dip_at_the_paused_epoch_is_not_its_standing():
    # trial 4 led at epoch 2 and dipped at epoch 3, where it was paused: by its value at epoch 3 alone it is last of
    # five, by its best so far it leads
    study = _study([([0.5, 0.6, 0.62], 0.80), ([0.5, 0.55, 0.6], 0.78), ([0.4, 0.5, 0.55], 0.7),
                    ([0.3, 0.4, 0.45], 0.6), ([0.5, 0.7, 0.3], None)])
    dipped = study.trials[4]
    assert pause.level(dipped, 3) == 0.7 and pause.level(study.trials[0], 3) == 0.62
    assert pause.level(dipped, 4) is None  # it never reached epoch 4
    assert pause.standing(study, dipped) == 0.0
    assert pause.promoted(study, dipped, eta=3)
    # one that never stood high is not promoted, and stands behind every other configuration
    low = _study([([0.5, 0.6, 0.62], 0.80), ([0.5, 0.55, 0.6], 0.78), ([0.4, 0.5, 0.55], 0.7),
                  ([0.3, 0.4, 0.45], 0.6), ([0.2, 0.3, 0.35], None)])
    assert pause.standing(low, low.trials[4]) == 1.0 and not pause.promoted(low, low.trials[4], eta=3)


def test_could_lead_compares_with_where_the_winners_stood():
    # the winner (final 0.9) stood third of five at epoch 2 (two ahead of it): a pause standing third may still
    # win; one standing fifth may not
    curves = [([0.6, 0.70], 0.70), ([0.6, 0.68], 0.72), ([0.5, 0.60], 0.9), ([0.4, 0.50], 0.5)]
    third = _study([*curves, ([0.5, 0.65], None)])
    fifth = _study([*curves, ([0.3, 0.40], None)])
    assert pause.could_lead(third, third.trials[4], top=1)
    assert not pause.could_lead(fifth, fifth.trials[4], top=1)
    assert pause.could_lead(_study([([0.3, 0.4], None)]), _study([([0.3, 0.4], None)]).trials[0], top=3)  # no winner


def test_a_resumed_pause_is_counted_once_in_the_standings():
    study = _study([([0.5, 0.6], 0.8), ([0.4, 0.5], None), ([0.3, 0.45], None)])
    # trial 1 went on as trial 3: its epochs are counted in trial 3 alone
    study.add_trial(create_trial(value=0.85, params={"x": 0.01}, distributions=DIST,
                                 intermediate_values={1: 0.4, 2: 0.5, 3: 0.7}))
    from epochgraph.search.trial_attrs import mark_resumed

    mark_resumed(study, 1, 3)
    assert [t.number for t in pause.configurations(study)] == [0, 2, 3]
    assert pause.standing(study, study.trials[2]) == 1.0  # behind trials 0 and 3, not behind trial 1 twice


def _pruner(p: float | None, ranks: bool) -> SimpleNamespace:
    return SimpleNamespace(delta=0.05, prob_beat_best=lambda study, trial, recalibrated=False: p,
                           ranks_end=lambda study, step: ranks, promote_eta=3.0, resume_top=1, min_complete=3)


@pytest.mark.parametrize(("p", "ranks", "last_pass", "resumes"), [
    (0.2, True, False, True),    # the refitted forecast gives it a chance again
    (0.01, True, True, False),   # the epoch ranks the end and the forecast says no: the pause stands
    (0.01, False, False, True),  # the epoch does not rank the end: promoted (top third there)
    (0.01, False, True, True),   # the last pass promotes it too, although it stands below where the winner stood
])
def test_should_resume(p, ranks, last_pass, resumes):
    # the paused trial (4) stands second of five at epoch 2, the winner (0) stood first there
    study = _study([([0.6, 0.8], 0.9), ([0.5, 0.55], 0.7), ([0.4, 0.5], 0.6), ([0.3, 0.4], 0.5),
                    ([0.5, 0.6], None)])
    paused = study.trials[4]
    assert not pause.could_lead(study, paused, top=1) and pause.promoted(study, paused, eta=3)
    assert pause.should_resume(_pruner(p, ranks), study, paused, last_pass=last_pass) is resumes


def test_the_last_pass_leaves_a_pause_neither_promoted_nor_placed_as_a_winner_was():
    study = _study([([0.6, 0.8], 0.9), ([0.5, 0.75], 0.7), ([0.4, 0.7], 0.6), ([0.3, 0.65], 0.5),
                    ([0.2, 0.3], None)])
    assert not pause.should_resume(_pruner(0.01, False), study, study.trials[4], last_pass=True)
    # with fewer completed trials than it needs, a study has shown no ranking at all: every pause resumes
    few = _study([([0.6, 0.8], 0.9), *[([0.2, 0.3 - i / 100], None) for i in range(5)]])
    assert pause.completions_needed(few, _pruner(0.01, False)) == 2  # 6 configurations / eta 3, below min_complete
    assert pause.should_resume(_pruner(0.01, False), few, few.trials[5], last_pass=True)
    assert not pause.should_resume(_pruner(0.01, False), few, few.trials[5], last_pass=False)  # not promoted


def test_completions_needed_is_min_complete_or_a_third_of_the_configurations():
    pruner = SimpleNamespace(min_complete=6, promote_eta=3.0)
    assert [pause.completions_needed(_study([([0.5], None)] * n), pruner) for n in (1, 3, 10, 16, 18, 64)] == \
        [1, 1, 4, 6, 6, 6]


def test_resuming_writes_who_resumed_a_paused_trial_into_its_dashboard_note():
    study = _study([([0.5, 0.6], 0.8), ([0.4, 0.5], None)])
    paused = study.trials[1]
    pause.add_note(study, paused._trial_id, "MLflow run of trial 1")
    trial = pause.resume(study, paused)
    assert dashboard_note(study, paused._trial_id) == \
        f"MLflow run of trial 1\n\n**Resumed** by trial {trial.number}, from epoch 2."
    assert trial.number == 2 and trial.user_attrs["resumed_from"] == 1
