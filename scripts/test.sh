#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONHASHSEED=0
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
