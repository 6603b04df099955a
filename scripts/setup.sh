#!/usr/bin/env bash
# Idempotent setup: Debian packages, a .venv on the system Python with graph-tool linked in,
# and the project installed in editable mode with its dev and docs extras (the tests, make docs). Quick when
# already done (stamp files).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-graph-tool python3-cairo python3-venv dataset-fashion-mnist)
# the servers the test-suite starts for real: PostgreSQL (tests/pg.py) and a one-node SLURM cluster
# (scripts/slurm.sh: slurmctld, slurmd, munge); an image that only runs sweeps skips them (SETUP_TEST_SERVERS=0)
if [ "${SETUP_TEST_SERVERS:-1}" = 1 ]; then
  APT_PACKAGES+=(postgresql slurm-wlm munge)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# graph-tool from Debian is built for Debian's Python 3.11 and numpy 1.x: the venv must use that
# interpreter (not a pyenv/conda one) and pin numpy<2.
PY=/usr/bin/python3.11
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  $PY -m venv .venv
fi
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$SITE/graph_tool" ] || ln -s /usr/lib/python3/dist-packages/graph_tool "$SITE/graph_tool"
# pycairo: graph-tool's drawing (graph_tool.draw) needs Debian's build of it, linked the same way
[ -e "$SITE/cairo" ] || ln -s /usr/lib/python3/dist-packages/cairo "$SITE/cairo"

stamp=.venv/.epochgraph-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing Python dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev,docs]'
  echo "$want" > "$stamp"
fi
# graph-tool's drawing is imported the way the graph stage imports it (without its GTK warning: we draw
# with cairo only, no GTK windows)
.venv/bin/python -c "import graph_tool, torch, mlflow, optuna; from epochgraph.graph.graph_drawing import graph_tool_cairo_draw; graph_tool_cairo_draw()" \
  || { echo "[setup] the environment does not import; remove .venv and run 'make setup' again" >&2; exit 1; }
