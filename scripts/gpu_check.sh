#!/usr/bin/env bash
# GPU checks, on a machine with an NVIDIA GPU, the repo checked out and its venv (.venv; created by
# scripts/setup.sh when absent — for CUDA, install a CUDA torch build in .venv first). About 5–10 min:
#
#   1. the gpu-marked tests (tests/ -m gpu): AMP fp16 + GradScaler and bf16 steps, SyncBN/DDP in a
#      1-process NCCL group, onnxruntime's CUDA provider, the TensorRT runner and saved engine
#      directories (fp16 / int8 Q/DQ / int8 entropy: build, reload, predict, refusal; skipped when absent);
#   2. DDP training of rtmdet_tiny through `detflow train`: NCCL, 640 px, train.amp fp16, 2 epochs on
#      synthetic data, one worker per GPU (2 workers when there are 2 GPUs or more; NCCL refuses two
#      ranks on one GPU, so a 1-GPU machine trains 1 NCCL worker);
#   3. the quickstart's artifact benchmark rows (torch, onnxruntime, onnxruntime-cuda, tensorrt;
#      batch 1 and 8; backends not installed are recorded as such) on the trained checkpoint;
#   4. saved TensorRT engine directories of the trained checkpoint (`detflow export --format engine`:
#      fp16, int8 from the Q/DQ graph, int8 entropy-calibrated; profile 1,8,8), each scored with
#      `detflow val`, and one refused (exit 2) once its sidecar names another GPU (skipped without TensorRT).
#
# Figures go to ${OUT:-gpu_out} as JSON (gpu.json, tests.json, train.json, bench.json, engines.json) plus logs.
# Exit status: 0 all passed; 1 a check failed; 2 no GPU here (nvidia-smi absent or no device).
#
#   bash scripts/gpu_check.sh             # OUT=gpu_out
#   OUT=/tmp/gpu bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi absent or it lists no device); nothing to check" >&2
  exit 2
fi

OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ -x .venv/bin/python ]] || bash scripts/setup.sh
PY=.venv/bin/python
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 PYTHONHASHSEED=0
export DETFLOW_HOME=${DETFLOW_HOME:-$OUT/detflow_home}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: .venv's torch sees no CUDA device (a CPU build? install a CUDA torch in .venv)" >&2
  exit 2
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
WORKERS=$(( NGPU >= 2 ? 2 : 1 ))
failed=()
step() { echo "[gpu_check] $*"; }

"$PY" - "$OUT/gpu.json" <<'EOF'
import json, sys, torch
json.dump({"torch": torch.__version__, "cuda": torch.version.cuda, "devices": [torch.cuda.get_device_name(i)
           for i in range(torch.cuda.device_count())], "bf16": torch.cuda.is_bf16_supported(),
           "nccl": torch.distributed.is_nccl_available()}, open(sys.argv[1], "w"), indent=2)
EOF

# 1. gpu-marked tests ------------------------------------------------------------------------
step "gpu-marked tests"
t0=$SECONDS
if timeout 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1; then
  tests_rc=0
else
  tests_rc=$?; failed+=("gpu tests (rc $tests_rc, see $OUT/tests.log)")
fi
tail -n 5 "$OUT/tests.log"
"$PY" - "$OUT/tests.xml" "$OUT/tests.json" "$tests_rc" "$((SECONDS - t0))" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
xml, out, rc, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cases = []
try:
    for c in ET.parse(xml).iter("testcase"):
        status = "failed" if c.find("failure") is not None or c.find("error") is not None else \
            "skipped" if c.find("skipped") is not None else "passed"
        cases.append({"test": f"{c.get('classname')}::{c.get('name')}", "status": status, "s": float(c.get("time", 0))})
except (OSError, ET.ParseError):
    pass
json.dump({"rc": rc, "wall_s": secs, "tests": cases}, open(out, "w"), indent=2)
EOF

# 2. NCCL DDP training, AMP, 640 px ------------------------------------------------------------
step "rtmdet_tiny DDP training: $WORKERS NCCL worker(s), 640 px, amp fp16, 2 epochs"
t0=$SECONDS
train_ok=0
if "$PY" -m detflow data synth --out "$OUT/synth" --images 96 --image-size 640 --classes 4 --seed 0 >"$OUT/synth.log" 2>&1; then
  cat >"$OUT/train.yaml" <<EOF
kind: train
name: gpu-check-rtmdet-tiny
model: {name: rtmdet_tiny}
data:
  train: {annotations: $OUT/synth/train.json, images: $OUT/synth/images}
  val: {annotations: $OUT/synth/val.json, images: $OUT/synth/images}
  image_size: 640
  num_workers: 2
recipe: {name: rtmdet, mixup: {enabled: false}}
train: {epochs: 2, batch_size: 8, amp: fp16, sync_bn: true, eval_interval: 1,
        optimizer: {lr: 0.002, scale_lr_by_batch: false}, schedule: {warmup_iters: 10}}
scaling: {workers: $WORKERS, gpus_per_worker: 1, cpus_per_worker: 4}
checkpoint: {every: 1, keep_last: 1, max_failures: 0}
storage: $OUT/runs
EOF
  if timeout 420 "$PY" -m detflow train "$OUT/train.yaml" --json >"$OUT/train.log" 2>&1; then
    tail -n 1 "$OUT/train.log" >"$OUT/train_result.json"
    if "$PY" - "$OUT/train_result.json" "$OUT/train.json" "$WORKERS" "$((SECONDS - t0))" <<'EOF'
import json, math, sys
from detflow.engine import checkpoint as ck
result = json.loads(open(sys.argv[1]).read())
meta = ck.read_meta(result["last_checkpoint"])
history = meta.get("history", [])
losses = [h.get("train/loss") for h in history]
out = {"workers": int(sys.argv[3]), "backend": "nccl", "amp": "fp16", "image_size": 640, "epochs": len(history),
       "wall_s": int(sys.argv[4]), "checkpoint": result["last_checkpoint"], "train_loss": losses,
       "images_per_s": [h.get("train/images_per_s") for h in history],
       "val_bbox_mAP50": [h.get("val/bbox_mAP50") for h in history]}
json.dump(out, open(sys.argv[2], "w"), indent=2)
assert len(history) == 2 and all(l is not None and math.isfinite(l) for l in losses), out
print(json.dumps(out))
EOF
    then train_ok=1; else failed+=("training result (see $OUT/train.log)"); fi
  else
    failed+=("detflow train (rc $?, see $OUT/train.log)"); tail -n 20 "$OUT/train.log"
  fi
else
  failed+=("detflow data synth (see $OUT/synth.log)")
fi

# 3. artifact benchmark rows ---------------------------------------------------------------
if [[ $train_ok == 1 ]]; then
  step "benchmark rows of the trained checkpoint (torch, onnxruntime[-cuda], tensorrt)"
  if ! timeout 300 "$PY" - "$OUT/train.json" "$OUT/bench.json" "$OUT/bench_work" >"$OUT/bench.log" 2>&1 <<'EOF'
import dataclasses, json, sys
from detflow.bench.matrix import run_benchmark
ckpt = json.load(open(sys.argv[1]))["checkpoint"]
table = run_benchmark([ckpt], backends=["torch", "onnxruntime", "onnxruntime-cuda", "tensorrt"],
                      batch_sizes=[1, 8], input_size=640, warmup=5, iters=20, missing_backend="skip",
                      work_dir=sys.argv[3])
rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(vars(r)) for r in table.rows]
json.dump({"protocol": table.protocol, "rows": rows}, open(sys.argv[2], "w"), indent=2, default=str)
print(table.to_markdown())
EOF
  then failed+=("benchmark (see $OUT/bench.log)"); fi
  cat "$OUT/bench.log"
fi

# 4. saved engine directories --------------------------------------------------------------
if [[ $train_ok == 1 ]] && "$PY" -c "import tensorrt" >/dev/null 2>&1; then
  step "saved TensorRT engines of the trained checkpoint (fp16, int8 qdq, int8 entropy)"
  CKPT=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['checkpoint'])" "$OUT/train.json")
  for kind in fp16 int8-qdq int8-entropy; do
    case $kind in
      fp16) args=() ;;
      int8-qdq) args=(--precision int8 --calib "$OUT/train.yaml") ;;
      int8-entropy) args=(--precision int8 --int8 entropy --calib "$OUT/train.yaml") ;;
    esac
    if timeout 300 "$PY" -m detflow export "$CKPT" --format engine "${args[@]}" --dynamic-batch 1,8,8 \
        --out "$OUT/engine-$kind" --overwrite >"$OUT/engine-$kind.log" 2>&1 &&
       timeout 300 "$PY" -m detflow val "$OUT/engine-$kind" --data "$OUT/train.yaml" --json \
        >"$OUT/engine-$kind.val.json" 2>>"$OUT/engine-$kind.log"; then
      echo "[gpu_check] engine $kind: $(tail -n 1 "$OUT/engine-$kind.val.json" | cut -c1-200)"
    else
      failed+=("engine $kind (see $OUT/engine-$kind.log)"); tail -n 5 "$OUT/engine-$kind.log"
    fi
  done
  if ! "$PY" - "$OUT" >"$OUT/engines.log" 2>&1 <<'EOF'
import json, shutil, subprocess, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for kind in ("fp16", "int8-qdq", "int8-entropy"):
    folder = out / f"engine-{kind}"
    if not (folder / "model.engine.json").is_file():
        continue
    info = json.loads((folder / "model.engine.json").read_text())
    val = (out / f"engine-{kind}.val.json").read_text().strip().splitlines()
    metrics = json.loads(val[-1]) if val else {}
    rows[kind] = {"precision": info["precision"], "int8_method": info["int8_method"], "profile": info["profile"],
                  "environment": info["environment"], "engine_bytes": (folder / "model.engine").stat().st_size,
                  "AP": metrics.get("AP"), "AP50": metrics.get("AP50")}
# refusal: a copy whose sidecar names another GPU exits 2 with one line
src = out / "engine-fp16"
if src.is_dir():
    other = out / "engine-other-gpu"
    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(src, other)
    info = json.loads((other / "model.engine.json").read_text())
    info["environment"]["gpu_name"] = "Some Other GPU"
    (other / "model.engine.json").write_text(json.dumps(info))
    done = subprocess.run([sys.executable, "-m", "detflow", "val", str(other), "--data", str(out / "train.yaml")],
                          capture_output=True, text=True)
    rows["refusal"] = {"rc": done.returncode, "stderr": done.stderr.strip()}
json.dump(rows, open(out / "engines.json", "w"), indent=2)
print(json.dumps(rows, indent=2))
assert set(rows) >= {"fp16", "int8-qdq", "int8-entropy", "refusal"}, sorted(rows)
assert rows["refusal"]["rc"] == 2 and "engine refused" in rows["refusal"]["stderr"], rows["refusal"]
EOF
  then failed+=("engine summary/refusal (see $OUT/engines.log)"); fi
  cat "$OUT/engines.log"
elif [[ $train_ok == 1 ]]; then
  step "saved TensorRT engines: skipped (import tensorrt fails in .venv)"
fi

if (( ${#failed[@]} )); then
  printf '[gpu_check] FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
step "all GPU checks passed; figures in $OUT"
