"""``epochgraph-worker``: join a pruned sweep's study and work its trials until the budget is used.

A worker is the same Hydra multirun as the sweep itself (``-m hydra/sweeper=epochgraph``) pointed at a
shared storage: every worker asks trials from one Optuna study by name, and the sweeper counts the trials
running elsewhere, so N workers on N machines together finish ``hydra.sweeper.n_trials`` trials::

    EPOCHGRAPH_STORAGE_URL=postgresql+psycopg2://... epochgraph-worker +experiment=pruned_sweep storage=postgres
"""

from __future__ import annotations

import sys

from epochgraph.cli.train import main as train_main


def main() -> None:
    args = sys.argv[1:]
    extra = [] if any(a.startswith("hydra/sweeper=") for a in args) else ["hydra/sweeper=epochgraph"]
    mode = [] if any(a in ("-m", "--multirun") for a in args) else ["--multirun"]
    sys.argv = [sys.argv[0], *mode, *extra, *args]
    train_main()


if __name__ == "__main__":
    main()
