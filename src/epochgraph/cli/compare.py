"""``epochgraph-compare``: Hydra entry point for `epochgraph.forecast.compare`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from epochgraph.errors import report_errors

# its own folder: conf/ has an `experiment` group (train presets), which would swallow experiment=<name>
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf" / "compare")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
@report_errors
def main(cfg: DictConfig) -> None:
    from epochgraph.forecast.compare import run_compare

    run_compare(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
