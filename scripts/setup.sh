#!/usr/bin/env bash
# Idempotent setup: .venv with the CPU torch first (so nothing pulls CUDA wheels), then detflow.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${DETFLOW_EXTRAS:-dev,services,video}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null
if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build) first"
  "$VPY" -m pip install -q "torch==2.13.0"
fi
stamp=.venv/.detflow-installed
want="$(cat pyproject.toml | sha1sum | cut -c1-12)-$EXTRAS"
if [[ ! -f $stamp || "$(cat $stamp)" != "$want" ]]; then
  echo "[setup] installing detflow[$EXTRAS] (editable)"
  "$VPY" -m pip install -q -e ".[$EXTRAS]"
  # torchao's PT2E quantization flow; --no-deps so it can never pull another torch.
  "$VPY" -m pip install -q --no-deps "torchao==0.18.0"
  echo "$want" > $stamp
fi
