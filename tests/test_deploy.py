"""The deployment files agree with the code: the container stack (docker/compose.yaml, docker/Dockerfile) and
the SLURM preset (conf/hydra/launcher/slurm.yaml). The SLURM sweeps themselves run in tests/test_slurm.py."""

import re
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from epochgraph import resolvers  # noqa: F401 - registers ${eg.*}
from tests.conftest import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_compose_workers_reach_the_services_it_declares():
    stack = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = stack["services"]
    assert set(services) == {"postgres", "mlflow", "worker"}
    port = re.search(r"--port (\d+)", services["mlflow"]["command"]).group(1)
    worker = services["worker"]
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"
    storage = worker["environment"]["EPOCHGRAPH_STORAGE_URL"]
    assert storage.startswith("postgresql+psycopg2://") and "@postgres:5432/optuna" in storage
    # the databases the workers and the server use are the ones PostgreSQL's init script creates
    init = (ROOT / "docker" / "initdb" / "10-databases.sql").read_text().lower()
    assert "create database optuna" in init and "create database mlflow" in init
    assert "@postgres:5432/mlflow" in services["mlflow"]["command"]
    assert worker["command"][:2] == ["epochgraph-worker", "storage=postgres"]
    assert worker["deploy"]["replicas"] == 2
    # the conf reads the URLs from exactly these variables
    train = (ROOT / "conf" / "train.yaml").read_text() + (ROOT / "conf" / "storage" / "postgres.yaml").read_text()
    assert "oc.env:MLFLOW_TRACKING_URI" in train and "oc.env:EPOCHGRAPH_STORAGE_URL" in train


def test_image_skips_the_test_servers_and_keeps_its_own_venv():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "RUN SETUP_TEST_SERVERS=0 bash scripts/setup.sh" in dockerfile
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'if [ "${SETUP_TEST_SERVERS:-1}" = 1 ]; then\n  APT_PACKAGES+=(postgresql slurm-wlm munge)' in setup
    # `COPY . .` after make setup: a checkout's .venv (or its stores) must not replace the image's
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "mlruns", ".slurm", ".git"} <= set(ignored)


def test_slurm_preset_uses_our_launcher_and_the_sweeps_code():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=pruned_sweep", "hydra/launcher=slurm"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.epochgraph_sweeper.slurm_launcher.SlurmLauncher"
    assert launcher["setup"][0].startswith(f"export PYTHONPATH={ROOT / 'src'}")
    assert launcher["max_num_timeout"] == 0  # a trial is re-queued in the study, never resubmitted by submitit
