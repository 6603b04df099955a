"""``epochgraph-export``: Hydra entry point for `epochgraph.forecast.population.export_experiment`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from epochgraph.errors import report_errors

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf" / "export")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@report_errors
def main(cfg: DictConfig) -> None:
    from epochgraph.forecast.population import export_experiment

    c = OmegaConf.to_container(cfg, resolve=True)
    export_experiment(c["tracking_uri"], c["experiment"], c["output"], c.get("population"))


if __name__ == "__main__":
    main()
