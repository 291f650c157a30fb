#!/usr/bin/env bash
# End-to-end check of the GPU path (TensorRT) on a machine with an NVIDIA GPU, TensorRT >= 10.1 and pycuda
# (`pip install -e '.[tensorrt]'`). Research use only, not for diagnosis.
#
# 1. FP16 models from the shipped FP32 models (`sonograde calibrate fp16`);
# 2. engines: FP16 (from the FP16 ONNX) and INT8 (from the shipped TensorRT-target Q/DQ models,
#    models/*.int8.trt.onnx), strongly typed, with sidecars and a timing cache;
# 3. the accuracy gate of each engine against ONNX Runtime FP32 (`sonograde calibrate verify`) on held-out
#    images (../shared/data/busbra test side) or, where the data is absent, phantom frames;
# 4. the live benchmark on the engines (`sonograde bench pipeline --backend tensorrt`);
# 5. one table: model, precision, gate, agreement, ms per frame (ORT FP32 CPU vs TensorRT), pipeline fps/p99.
#
# Usage: scripts/gpu-check.sh [WORK_DIR]      (env: MODELS=models DATA=../shared/data/busbra SECONDS_BENCH=20)
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=${MODELS:-models}
DATA=${DATA:-../shared/data/busbra}
SECONDS_BENCH=${SECONDS_BENCH:-20}
COUNT=${COUNT:-100}
WORK=${1:-$(mktemp -d -t sonograde-gpu-XXXXXX)}
mkdir -p "$WORK"

if ! python -c "import tensorrt, pycuda.driver" 2>/dev/null; then
  echo "gpu-check: TensorRT and pycuda are not importable here; install them with: pip install -e '.[tensorrt]'" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import tensorrt as t, pycuda.driver as c; c.init(); d=c.Device(0); print('TensorRT', t.__version__, '|', d.name(), 'cc', '.'.join(map(str, d.compute_capability())))"

if [ -f "$DATA/manifest.csv" ]; then
  FRAMES=(--data "$DATA" --split test --count "$COUNT")
else
  echo "gpu-check: $DATA not found; verifying on phantom frames instead" >&2
  FRAMES=(--source "phantom:seed=11" --count "$COUNT")
fi

# The FP32 models sit beside the engines so `bench pipeline --models $WORK` finds every file it needs.
cp "$MODELS/roi_cnn.onnx" "$MODELS/g_cnn.onnx" "$WORK/"
for stem in roi_cnn g_cnn; do
  sonograde calibrate fp16 --model "$MODELS/$stem.onnx" --out "$WORK/$stem.fp16.onnx"
  sonograde build-engine --onnx "$WORK/$stem.fp16.onnx" --out "$WORK/$stem.fp16.plan" > "$WORK/$stem.fp16.build.json"
  if [ -f "$MODELS/$stem.int8.trt.onnx" ]; then
    sonograde build-engine --onnx "$MODELS/$stem.int8.trt.onnx" --out "$WORK/$stem.int8.plan" \
      > "$WORK/$stem.int8.build.json"
  else
    echo "gpu-check: $MODELS/$stem.int8.trt.onnx missing; make it with: sonograde calibrate int8 --model" \
         "$MODELS/$stem.onnx --data ../shared/data/busbra --target tensorrt --out $MODELS/$stem.int8.trt.onnx" >&2
  fi
done

for stem in roi_cnn g_cnn; do
  for precision in fp16 int8; do
    engine="$WORK/$stem.$precision.plan"
    [ -f "$engine" ] || continue
    sonograde calibrate verify --reference "$MODELS/$stem.onnx" --candidate "$engine" \
      --roi-model "$MODELS/roi_cnn.onnx" "${FRAMES[@]}" --json > "$WORK/verify.$stem.$precision.json" || true
  done
done

for precision in fp16 int8; do
  if [ -f "$WORK/roi_cnn.$precision.plan" ] && [ -f "$WORK/g_cnn.$precision.plan" ]; then
    sonograde bench pipeline --models "$WORK" --backend tensorrt --precision "$precision" \
      --seconds "$SECONDS_BENCH" --json > "$WORK/bench.$precision.json" || true
  fi
done

python - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])

def load(name):
    path = work / name
    try:
        return json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

print()
print(f"{'model':<8} {'prec':<5} {'gate':<7} {'agreement':<28} {'ORT fp32 ms':>11} {'TRT ms':>8} {'speedup':>8}")
for stem, kind in (("roi_cnn", "roi"), ("g_cnn", "grader")):
    for precision in ("fp16", "int8"):
        v = load(f"verify.{stem}.{precision}.json")
        if v is None:
            print(f"{kind:<8} {precision:<5} {'n/a':<7} (no engine or verify failed to run)")
            continue
        agree = (f"DSC mean {v['dsc_agreement_mean']:.4f} min {v['dsc_agreement_min']:.3f}" if kind == "roi"
                 else f"top1 {v['top1_agreement']:.4f} dp {v['max_prob_diff']:.4f}")
        print(f"{kind:<8} {precision:<5} {'PASS' if v['passed'] else 'REFUSED':<7} {agree:<28} "
              f"{v['reference_ms']:>11.2f} {v['candidate_ms']:>8.2f} {v['speedup']:>8.2f}")
print()
print(f"{'pipeline':<14} {'fps':>6} {'e2e p50':>8} {'e2e p99':>8} {'dropped':>8}")
for precision in ("fp16", "int8"):
    b = load(f"bench.{precision}.json")
    if b is None:
        print(f"tensorrt {precision:<5} n/a")
        continue
    e2e = b.get("e2e_ms", {})
    print(f"tensorrt {precision:<5} {b.get('fps', float('nan')):>6.1f} {e2e.get('p50', float('nan')):>8.2f} "
          f"{e2e.get('p99', float('nan')):>8.2f} {b.get('dropped', 'n/a'):>8}")
print(f"\n(work files in {work}; research use only, not for diagnosis)")
PY
