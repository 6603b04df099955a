"""``make bench``: the pruning benchmark (conf/bench/bench.yaml; the steps live in `epochgraph.bench.benchmark`).

    .venv/bin/python bench/bench.py                        # or: make bench
    .venv/bin/python bench/bench.py bench.quick=true       # a handful of 3-epoch trainings (CI)
    .venv/bin/python bench/bench.py 'bench.steps=[compare,replay,summary]'
"""

from __future__ import annotations

import shlex
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from epochgraph.bench import benchmark
from epochgraph.errors import report_errors

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf" / "bench")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
@report_errors
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    b = benchmark.settings(OmegaConf.to_container(cfg, resolve=True))
    # what reproduces the results: the steps chosen to rerun part of them are left out
    args = [a for a in sys.argv[1:] if not a.startswith("bench.steps=")]
    command = "make bench" + (f' ARGS="{shlex.join(args)}"' if args else "")
    benchmark.run_steps(b, command)


if __name__ == "__main__":
    main()
