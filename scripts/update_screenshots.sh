#!/usr/bin/env bash
# Regenerate the MLflow UI screenshots of docs/comparing-runs.md (run by hand; tests never write
# into the repository). Starts the real services of tests/services, runs the browser test (a tiny
# workflow, a real 4-trial sweep and a real 4-trial NAS: about 10 minutes on 2 cores) with
# DETFLOW_SCREENSHOT_DIR pointing at a temp dir, then copies the PNGs to docs/img/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/services.sh
out=$(mktemp -d /tmp/detflow-screenshots-XXXXXX)
# RAY_AUTH_MODE=disabled as in scripts/test.sh: this runs the test suite's fixtures, which start their
# Ray without token authentication (tests/services/conftest.py sets the same).
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
DETFLOW_SCREENSHOT_DIR="$out" .venv/bin/python -m pytest -q -p no:cacheprovider tests/services/test_mlflow_ui.py "$@"
mkdir -p docs/img
for png in workflow-runs step-run registered-model compare-sweep-trials sweep-param_importances \
           compare-nas-trials nas-pareto nas-param_importances training-run system-metrics \
           step-run-models runs-grouped-by-workflow; do
  cp "$out/$png.png" "docs/img/mlflow-$png.png"
done
rm -rf "$out"
echo "updated: $(ls docs/img/mlflow-*.png | tr '\n' ' ')"
