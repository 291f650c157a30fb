#!/usr/bin/env bash
# End-to-end check of the GPU path (TensorRT) on a machine with an NVIDIA GPU, TensorRT >= 10.1 and
# cuda-python (`pip install -e '.[tensorrt]'`). Research use only, not for diagnosis.
#
# 1. FP16 models from the shipped FP32 models (`sonograde calibrate fp16`);
# 2. engines: FP16 (from the FP16 ONNX) and INT8 (from the shipped TensorRT-target Q/DQ models,
#    models/*.int8.trt.onnx), strongly typed, with sidecars and a timing cache;
# 3. the accuracy gate of each engine against ONNX Runtime FP32 on the CPU (`sonograde calibrate verify`)
#    on held-out images (DATA, the BUS-BRA test side) or, where the data is absent, phantom frames;
# 4. the live benchmark on the engines (`sonograde bench pipeline --backend tensorrt`);
# 5. one table: every step's status, then model, precision, gate, agreement, ms per frame (ORT FP32 CPU vs
#    TensorRT), pipeline fps/p99.
# Every step runs even when an earlier one failed; the exit status is 0 only when all of them passed.
#
#   scripts/gpu-check.sh --cuda
# checks only the CUDA half of the TensorRT backend, on a GPU machine with cuda-python but without
# TensorRT (a stand-in TensorRT runs the models with ONNX Runtime on real device memory): driver,
# contexts from several threads, pinned and device buffers, copies on a stream. About a minute.
#
# Usage: scripts/gpu-check.sh [WORK_DIR] | --cuda
#        (env: MODELS=models DATA=DIR SECONDS_BENCH=20 COUNT=100 PYTHON=python3)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
SONOGRADE=("$PYTHON" -m sonograde.cli)

if [ "${1:-}" = "--cuda" ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PYTHON" -c "import cuda.bindings.driver, cuda.bindings as b; print('cuda-bindings', \
getattr(b, '__version__', '?'))" || { echo "gpu-check: cuda-python is not importable; pip install cuda-bindings" >&2; exit 2; }
  "$PYTHON" tests/fakes/device_checks.py
  exit $?
fi

MODELS=${MODELS:-models}
DATA=${DATA:-../shared/data/busbra}
SECONDS_BENCH=${SECONDS_BENCH:-20}
COUNT=${COUNT:-100}
WORK=${1:-$(mktemp -d -t sonograde-gpu-XXXXXX)}
mkdir -p "$WORK"
: > "$WORK/steps.tsv"

# run_step NAME COMMAND...: stdout to WORK/NAME.out, stderr to WORK/NAME.err, status to WORK/steps.tsv.
run_step() {
  local name=$1
  shift
  "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  local status=$?
  printf '%s\t%s\n' "$name" "$status" >> "$WORK/steps.tsv"
  if [ "$status" -eq 0 ]; then
    echo "gpu-check: $name ok" >&2
  else
    echo "gpu-check: $name FAILED ($status): $(tail -n 1 "$WORK/$name.err")" >&2
  fi
  return 0
}

if ! "$PYTHON" -c "import tensorrt, cuda.bindings.driver" 2>/dev/null; then
  echo "gpu-check: TensorRT and cuda-python are not importable here; install them with:" \
       "pip install -e '.[tensorrt]' (or run scripts/gpu-check.sh --cuda for the CUDA half alone)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c "from engine.backends.tensorrt_sidecar import detect_environment as d; e = d(0); \
print('TensorRT', e.tensorrt_version, '(CUDA', e.cuda_major or '?', 'build) |', e.gpu_name, 'cc', e.compute_capability)"

if [ -f "$DATA/manifest.csv" ]; then
  FRAMES=(--data "$DATA" --split test --count "$COUNT")
else
  echo "gpu-check: $DATA not found; verifying on phantom frames instead" >&2
  FRAMES=(--source "phantom:seed=11" --count "$COUNT")
fi

# The FP32 models sit beside the engines so `bench pipeline --models $WORK` finds every file it needs.
cp "$MODELS/roi_cnn.onnx" "$MODELS/g_cnn.onnx" "$WORK/"
for stem in roi_cnn g_cnn; do
  run_step "fp16.$stem" "${SONOGRADE[@]}" calibrate fp16 --model "$MODELS/$stem.onnx" --out "$WORK/$stem.fp16.onnx"
  if [ -f "$WORK/$stem.fp16.onnx" ]; then
    run_step "build.$stem.fp16" "${SONOGRADE[@]}" build-engine --onnx "$WORK/$stem.fp16.onnx" \
      --out "$WORK/$stem.fp16.plan"
  fi
  if [ -f "$MODELS/$stem.int8.trt.onnx" ]; then
    run_step "build.$stem.int8" "${SONOGRADE[@]}" build-engine --onnx "$MODELS/$stem.int8.trt.onnx" \
      --out "$WORK/$stem.int8.plan"
  else
    echo "gpu-check: $MODELS/$stem.int8.trt.onnx missing; make it with: sonograde calibrate int8 --model" \
         "$MODELS/$stem.onnx --data DIR --target tensorrt --out $MODELS/$stem.int8.trt.onnx" >&2
  fi
done

for stem in roi_cnn g_cnn; do
  for precision in fp16 int8; do
    engine="$WORK/$stem.$precision.plan"
    [ -f "$engine" ] || continue
    run_step "verify.$stem.$precision" "${SONOGRADE[@]}" calibrate verify --reference "$MODELS/$stem.onnx" \
      --candidate "$engine" --roi-model "$MODELS/roi_cnn.onnx" "${FRAMES[@]}" --json
  done
done

for precision in fp16 int8; do
  if [ -f "$WORK/roi_cnn.$precision.plan" ] && [ -f "$WORK/g_cnn.$precision.plan" ]; then
    run_step "bench.$precision" "${SONOGRADE[@]}" bench pipeline --models "$WORK" --backend tensorrt \
      --precision "$precision" --seconds "$SECONDS_BENCH" --json
  fi
done

echo
"$PYTHON" -m calibration.gpu_check "$WORK"
