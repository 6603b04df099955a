"""``epochgraph-replay``: Hydra entry point for `epochgraph.search.score_pruners` (score pruners on recorded curves)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from epochgraph.errors import report_errors

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf" / "replay")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="replay")
@report_errors
def main(cfg: DictConfig) -> None:
    from epochgraph.search.score_pruners import score_tables

    score_tables(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
