#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, the real-service tests included.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not services"`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash .ci/services.sh   # PostgreSQL and Chromium for tests/services, installed only when missing
# Token auth off for the tests only: every Ray they start (local, and the two-node test cluster) runs
# as this user on loopback, and `ray start` processes, drivers and Jobs API clients would otherwise
# each need the same token file. The quickstart keeps Ray's token-auth default (scripts/quickstart.sh).
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONHASHSEED=0
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 "$@"
