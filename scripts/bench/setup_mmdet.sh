#!/usr/bin/env bash
# Create the separate virtual environment that `detflow bench ... --against mmdet` runs
# OpenMMLab mmdetection 3.3 in (never the project's .venv).
#
#   scripts/bench/setup_mmdet.sh [VENV_DIR]
#
# VENV_DIR defaults to $DETFLOW_HOME/mmdet-venv, or ~/.cache/detflow/mmdet-venv when DETFLOW_HOME is unset
# (the same default as `detflow bench --mmdet-venv`). Idempotent: a marker file records a finished
# install with these exact pins; a second run returns at once.
set -euo pipefail

if [[ -n "${DETFLOW_HOME:-}" ]]; then DEFAULT_DIR="$DETFLOW_HOME/mmdet-venv"; else DEFAULT_DIR="$HOME/.cache/detflow/mmdet-venv"; fi
VENV_DIR="${1:-$DEFAULT_DIR}"
PY="${PYTHON311:-python3.11}"
TORCH_PIN="torch==2.13.0"
OPENMMLAB_PINS="mmengine==0.10.7 mmcv-lite==2.1.0 mmdet==3.3.0"
# Pure-Python needs of mmengine/mmcv-lite/mmdet (they are installed --no-deps so nothing pulls another torch).
NEEDS="numpy addict yapf termcolor rich pyyaml opencv-python-headless matplotlib packaging pillow
pycocotools scipy shapely six terminaltables tqdm"
MARKER="$VENV_DIR/.detflow-mmdet-ready"
STAMP="$TORCH_PIN $OPENMMLAB_PINS"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$STAMP" ]]; then
    echo "mmdet venv already set up: $VENV_DIR"
    exit 0
fi

start=$(date +%s)
echo "Creating the mmdetection 3.3 venv in $VENV_DIR"
"$PY" -m venv "$VENV_DIR"
PIP=("$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check)
# The CPU torch first, pinned: an unpinned torch would download a CUDA build.
"${PIP[@]}" "$TORCH_PIN"
# shellcheck disable=SC2086
"${PIP[@]}" $NEEDS "$TORCH_PIN"
# Last and without their declared deps (opencv-python, not -headless, would come along otherwise).
# shellcheck disable=SC2086
"${PIP[@]}" --no-deps $OPENMMLAB_PINS
"$VENV_DIR/bin/python" -c "import torch, mmdet, mmengine, mmcv; print('mmdet', mmdet.__version__, 'torch', torch.__version__)"
echo "$STAMP" > "$MARKER"
echo "mmdet venv ready in $(( $(date +%s) - start )) s: $VENV_DIR"
