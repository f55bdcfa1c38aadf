#!/usr/bin/env bash
# Set up (idempotent) and run the quickstart workflow on the embedded defaults:
# a local Ray started for the run, MLflow in SQLite under ./.detflow, local artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
exec .venv/bin/detflow run workflows/quickstart.yaml "$@"
