"""SLURM launcher for the epochgraph sweeper: hydra-submitit-launcher's, with every job's end read on its own.

hydra-submitit-launcher ends its ``launch`` with ``[job.results()[0] for job in jobs]``, which fails a sweep
twice over when a job is killed (``scancel``, a lost node, the time or memory limit):

* the first job that ended without an outcome raises, while the batch's other jobs still train, and the
  sweeper cannot tell which trial died;
* submitit learns that such a job ended from ``sacct``; on a cluster without accounting (no slurmdbd) the
  job stays "UNKNOWN" and is waited for forever.

This launcher submits the same job array, then follows it with ``squeue`` (SLURM lists an ended job for
``MinJobAge`` seconds, 300 by default) and reads each job's outcome once it has ended. A job that ended
without one comes back as a failed `JobReturn` holding `epochgraph.errors.JobKilled`, so the sweeper
fails that trial, re-queues it (``storage.max_retry``) and closes its MLflow run, as for a dead worker.

Signals: ``scancel`` sends SIGTERM to the job's processes, then SIGKILL after the cluster's ``KillWait``
(30 s by default). A trial's training turns SIGTERM into an interrupt (`epochgraph.store.tracking.mlflow_run`):
its MLflow run ends KILLED at once, and the trial is left RUNNING for the sweeper to fail. Submitit's own
SIGTERM handling (ignore it, checkpoint on USR2 and requeue) does not apply: a trial is re-queued in the
study, not resubmitted with its old trial number.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf

from epochgraph.errors import EXIT_SIGINT, EXIT_SIGTERM, JobKilled, Terminated

log = logging.getLogger("epochgraph")

# squeue states of a job that has not ended yet (COMPLETING: its processes are still being stopped)
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
POLL_S = 2.0
# a job squeue has never listed is not taken for ended before this long (a controller slow to answer for a job it
# just accepted, under load, says "Invalid job id"); once listed, a job that is no longer listed has ended
UNSEEN_GRACE_S = 120.0
# a job's result file may show up a little after SLURM says the job ended (shared file systems)
RESULT_GRACE_S = 30.0


def queue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """``{"12_0": "RUNNING", ...}`` for the jobs SLURM still lists (a job it no longer lists has ended long
    ago); None when squeue did not answer (a controller restarting), so that the caller asks again."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        proc = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T",
                               "--jobs", ",".join(arrays)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # every job of the list has left the controller's memory: squeue calls their ids invalid
        return {} if "Invalid job id" in proc.stderr else None
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.strip()
    return states


class SlurmLauncher(SubmititSlurmLauncher):
    """``hydra/launcher=slurm``: each trial a task of one SLURM job array per batch (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """In the SLURM job: run the trial; an interrupt ends the job with one line, not a traceback."""
        try:
            return super().__call__(*args, **kwargs)
        except (KeyboardInterrupt, Terminated) as err:
            said = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
            note = f"; {err.args[0]}" if err.args and err.args[0] else ""
            print(f"epochgraph: {said}{note}; the sweep fails this trial and re-queues it", file=sys.stderr)
            sys.exit(EXIT_SIGTERM if isinstance(err, Terminated) else EXIT_SIGINT)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        # the executor exactly as hydra-submitit-launcher builds it from hydra.launcher.*
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         **{f"slurm_{k}": v for k, v in self.params.items() if k == "max_num_timeout"})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        log.info("SLURM jobs %s (logs: %s)", ", ".join(j.job_id for j in jobs), jobs[0].paths.folder)
        try:
            ended = self._wait(jobs)
        except BaseException:  # an interrupted sweep (Ctrl-C, SIGTERM) leaves no job training a trial it failed
            for job in jobs:
                if not job.paths.result_pickle.exists():
                    job.cancel(check=False)
            log.warning("cancelled SLURM jobs %s", ", ".join(j.job_id for j in jobs))
            raise
        return [self._outcome(job, list(overrides), ended[job.job_id]) for job, overrides in zip(jobs, job_overrides)]

    @staticmethod
    def _wait(jobs: Sequence[Any]) -> dict[str, str]:
        """Wait until every job has written its result or SLURM says it ended; returns each job's end state
        (``COMPLETED``, ``CANCELLED``, ...; ``ENDED`` for one SLURM no longer lists)."""
        ended: dict[str, str] = {}
        seen: set[str] = set()
        since = time.monotonic()
        while len(ended) < len(jobs):
            states = queue_states([j.job_id for j in jobs if j.job_id not in ended])
            seen |= set(states or ())
            for job in jobs:
                if job.job_id in ended:
                    continue
                state = None if states is None else states.get(job.job_id, "ENDED")
                if state == "ENDED" and job.job_id not in seen and time.monotonic() - since < UNSEEN_GRACE_S:
                    state = None  # not listed yet: ask again
                if job.paths.result_pickle.exists() and state not in ACTIVE_STATES:
                    ended[job.job_id] = state or "COMPLETED"
                elif state is not None and state not in ACTIVE_STATES:
                    ended[job.job_id] = state
            if len(ended) < len(jobs):
                time.sleep(POLL_S)
        return ended

    @staticmethod
    def _outcome(job: Any, overrides: list[str], state: str) -> JobReturn:
        deadline = time.monotonic() + RESULT_GRACE_S
        while not job.paths.result_pickle.exists() and time.monotonic() < deadline:
            time.sleep(1.0)
        if job.paths.result_pickle.exists():
            try:
                return job.results()[0]
            except Exception as err:  # the job's process failed outside the task (hydra catches the task's errors)
                ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
                ret.return_value = err
                return ret
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        ret.return_value = JobKilled(f"SLURM job {job.job_id} ended {state} without an outcome (scancel, a lost "
                                     f"node, its time or memory limit); its log: {job.paths.stderr}")
        return ret
