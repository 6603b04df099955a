# epochgraph: setup / run / test / ui / bench.  Every target installs what it needs first (idempotent).
SHELL := /bin/bash
PY := .venv/bin/python
HOST ?= 127.0.0.1
PORT ?= 5000
MLFLOW_DB ?= mlruns/mlflow.db

.PHONY: setup run test test-fast ui dashboard server bench lint clean population compare slurm slurm-stop docs docs-serve

setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m epochgraph.cli.train +experiment=pruned_sweep

# the suite on TEST_WORKERS processes (pytest-xdist; each test gets a free one as it goes), the 20 slowest listed
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=20

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

ui: setup
	@mkdir -p mlruns/artifacts
	@echo "MLflow UI on http://$(HOST):$(PORT) (store: sqlite:///$(MLFLOW_DB), artifacts: mlruns/artifacts)"
	@$(PY) -m epochgraph.cli.browse links --ui http://$(HOST):$(PORT) --tracking-uri sqlite:///$(MLFLOW_DB)
	.venv/bin/mlflow server --backend-store-uri sqlite:///$(MLFLOW_DB) \
		--default-artifact-root $(CURDIR)/mlruns/artifacts --host $(HOST) --port $(PORT)

# optuna-dashboard on the sweeps' study storage: EPOCHGRAPH_STORAGE_URL (storage=postgres) when set, else
# the embedded mlruns/optuna.db; trials, intermediate values (pruned ones too), parameter importances; the
# trials' notes link their MLflow runs through the dashboard, forwarded to the UI of make ui (HOST, PORT)
DASHBOARD_PORT ?= 8080
dashboard: setup
	$(PY) -m epochgraph.cli.browse dashboard --host $(HOST) --port $(DASHBOARD_PORT) --mlflow-ui http://$(HOST):$(PORT)

# an MLflow tracking server for workers on other machines (set MLFLOW_BACKEND to a PostgreSQL URL to
# use one); commands then take mlflow.tracking_uri=http://$(HOST):$(PORT)
MLFLOW_BACKEND ?= sqlite:///mlruns/mlflow.db
server: setup
	@mkdir -p mlruns/artifacts
	@echo "MLflow tracking server on http://$(HOST):$(PORT) (backend: $(MLFLOW_BACKEND)); use mlflow.tracking_uri=http://$(HOST):$(PORT)"
	.venv/bin/mlflow server --backend-store-uri $(MLFLOW_BACKEND) --artifacts-destination $(CURDIR)/mlruns/artifacts \
		--serve-artifacts --host $(HOST) --port $(PORT)

# a one-node SLURM cluster on 127.0.0.1 (state, config and logs in .slurm/): then
#   export SLURM_CONF=$(CURDIR)/.slurm/slurm.conf
#   epochgraph-train +experiment=pruned_sweep hydra/launcher=slurm hydra.launcher.cpus_per_task=1 ...
slurm: setup
	@bash scripts/slurm.sh start

slurm-stop:
	@bash scripts/slurm.sh stop

# the recorded LeNet population and the comparison of forecasters on it (paper Q1)
population: setup
	$(PY) -m epochgraph.cli.train +experiment=population_lenet

compare: setup
	$(PY) -m epochgraph.cli.compare experiment=population_lenet epochs=5

# the pruning benchmark (conf/bench/bench.yaml): graph stage vs training, the recorded populations (resumable),
# predictor tables, pruner replay, summary.  make bench ARGS="bench.quick=true" is the CI-sized run.
bench: setup
	@$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('syne_tune') is None)" \
		|| $(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/bench.py $(ARGS)

# the documentation site (mkdocs.yml, docs/): built with --strict into site/ (a broken link or a reference to a
# missing name fails), or served with live reload on http://$(HOST):$(DOCS_PORT)
DOCS_PORT ?= 8000
docs: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d site

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve --strict -a $(HOST):$(DOCS_PORT)

lint: setup
	.venv/bin/ruff check src tests bench examples

clean:
	rm -rf outputs multirun .pytest_cache
