"""``make bench``: the pruning benchmark (conf/bench/bench.yaml; the steps live in `epochgraph.benchmark`).

    .venv/bin/python bench/bench.py                        # or: make bench
    .venv/bin/python bench/bench.py bench.quick=true       # a handful of 3-epoch trainings (CI)
    .venv/bin/python bench/bench.py 'bench.steps=[compare,replay,summary]'
"""

from __future__ import annotations

import logging
import shlex
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from epochgraph import benchmark
from epochgraph.errors import report_errors

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf" / "bench")
log = logging.getLogger("epochgraph")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="bench")
@report_errors
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    b = benchmark.settings(OmegaConf.to_container(cfg, resolve=True))
    steps = b["steps"]
    if "graph_stage" in steps:
        benchmark.graph_stage_bench(b)
    if "population" in steps:
        benchmark.build_population(b)
    if "export" in steps:
        benchmark.export_table(b)
    if "compare" in steps:
        benchmark.compare_populations(b)
    if "replay" in steps:
        benchmark.replay_all(b)
    if "timing" in steps:
        benchmark.timing(b)
    if "summary" in steps:
        command = "make bench" + (f' ARGS="{shlex.join(sys.argv[1:])}"' if sys.argv[1:] else "")
        benchmark.summary(b, command)
        run_id = benchmark.log_results(b)
        print(f"[bench] results in {b['results']}/ and MLflow run {run_id} (experiment {b['experiment']})")


if __name__ == "__main__":
    main()
