#!/usr/bin/env bash
# Set up (idempotent) and run the quickstart workflow on the embedded defaults:
# a local Ray started for the run, MLflow in SQLite under ./.detflow, local artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Ray token authentication, stated rather than left to the default (Ray 2.60 does the same for a local
# ray.init(), with a warning at every start): Ray writes a token to ~/.ray/auth_token on
# first use. The local dashboard listens on 127.0.0.1.
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
exec .venv/bin/detflow run workflows/quickstart.yaml "$@"
