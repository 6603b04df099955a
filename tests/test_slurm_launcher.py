"""How the SLURM launcher reads a job's end from squeue (no cluster: squeue's answers are played back)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from hydra_plugins.epochgraph_sweeper import slurm_launcher
from hydra_plugins.epochgraph_sweeper.slurm_launcher import SlurmLauncher


def _job(tmp_path: Path, job_id: str) -> SimpleNamespace:
    return SimpleNamespace(job_id=job_id, paths=SimpleNamespace(result_pickle=tmp_path / f"{job_id}_result.pkl"))


def _play(monkeypatch, answers: list, on_poll=None) -> list:
    """squeue answers these states, one per poll (the last one from then on); ``on_poll(i)`` runs before poll i."""
    asked: list = []

    def states(job_ids):
        asked.append(list(job_ids))
        if on_poll is not None:
            on_poll(len(asked) - 1)
        return answers[min(len(asked), len(answers)) - 1]

    monkeypatch.setattr(slurm_launcher, "queue_states", states)
    monkeypatch.setattr(slurm_launcher, "POLL_S", 0.0)
    return asked


def test_a_job_squeue_has_not_listed_yet_is_waited_for_not_taken_for_ended(tmp_path, monkeypatch):
    job = _job(tmp_path, "3_0")
    # a controller under load: "Invalid job id" (no job listed) for the array it just accepted, then the job runs,
    # writes its result and leaves the queue
    def finish(i):
        if i == 4:
            job.paths.result_pickle.write_bytes(b"done")

    asked = _play(monkeypatch, [{}, {}, {"3_0": "PENDING"}, {"3_0": "RUNNING"}, {}], finish)
    assert SlurmLauncher._wait([job]) == {"3_0": "ENDED"}  # its result is there: the launcher reads it
    assert len(asked) == 5 and job.paths.result_pickle.exists()


def test_a_listed_job_that_leaves_the_queue_without_a_result_has_ended(tmp_path, monkeypatch):
    job = _job(tmp_path, "3_0")
    _play(monkeypatch, [{"3_0": "RUNNING"}, {}])
    assert SlurmLauncher._wait([job]) == {"3_0": "ENDED"}  # the launcher then reports it killed (no outcome)


@pytest.mark.parametrize("state", ["CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY"])
def test_a_job_listed_in_an_end_state_has_ended_in_it(tmp_path, monkeypatch, state):
    jobs = [_job(tmp_path, "3_0"), _job(tmp_path, "3_1")]
    jobs[1].paths.result_pickle.write_bytes(b"done")
    _play(monkeypatch, [{"3_0": "RUNNING", "3_1": "RUNNING"}, {"3_0": state, "3_1": "COMPLETED"}])
    assert SlurmLauncher._wait(jobs) == {"3_0": state, "3_1": "COMPLETED"}


def test_a_job_never_listed_is_taken_for_ended_after_the_grace(tmp_path, monkeypatch):
    job = _job(tmp_path, "3_0")
    asked = _play(monkeypatch, [{}])
    monkeypatch.setattr(slurm_launcher, "UNSEEN_GRACE_S", 0.0)
    assert SlurmLauncher._wait([job]) == {"3_0": "ENDED"}
    assert len(asked) == 1
