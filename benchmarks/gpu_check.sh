#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md, one device call per part (each meant to stay under 5 minutes):
#   bash benchmarks/fetch_gpu_wheels.sh          # here, once
#   device run: bash benchmarks/gpu_check.sh targets|data|epoch|all     carry: [".gpu-wheels"]
# targets: the CUDA tests, then stages.bench at the issue's target sizes (U-Net-32 and U-Net-64,
#          batch 32, compiled, flip+affine through the real data path, seed-style baseline);
# data:    what the data path costs: eager, augmentation on the CPU in loader processes, heavier
#          augmentation, batch 128;
# epoch:   one full BraTS-shaped epoch (57,195 generated slices) through stages.training.fit.
# Everything lands in $OUT (JSON per run, logs); the tables are printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}              # the device image's python holds torch
BENCH_EXTRA=${BENCH_EXTRA:-}   # appended to every bench (a dry run elsewhere: tiny sizes)
PART=${1:-targets}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ -d .gpu-wheels ] && [ -z "${NO_WHEELS:-}" ]; then
  "$PY" -m pip install --no-index --no-deps --quiet .gpu-wheels/*.whl 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
bench() {  # name, then stages.bench options
  local name=$1; shift
  timeout "${LIMIT:-300}" "$PY" -m stages.bench --json "$OUT/$name.json" "$@" $BENCH_EXTRA > "$OUT/$name.log" 2>&1
  echo "== $name (exit $?): $*"; grep -A12 "^NVIDIA\|^CPU" "$OUT/$name.log" | grep -v "^INFO" || tail -5 "$OUT/$name.log"
}
case "$PART" in targets|all)
  timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_speed.py tests/test_training.py \
    > "$OUT/cuda-tests.log" 2>&1; echo "== CUDA tests (exit $?)"; tail -3 "$OUT/cuda-tests.log"
  bench u32-b32 --base-channels 32 --batch 32 --compile --steps 100
  bench u64-b32 --base-channels 64 --batch 32 --compile --steps 60 ;;
esac
case "$PART" in data|all)
  bench u32-b32-eager --base-channels 32 --batch 32 --steps 100 --skip-baseline
  bench u32-b32-cpuaug --base-channels 32 --batch 32 --compile --steps 100 --skip-baseline --augment-on cpu
  bench u32-b32-heavy --base-channels 32 --batch 32 --compile --steps 100 --skip-baseline \
    --augment hflip=0.5,affine=0.5,brightness_contrast=0.5,elastic=0.2
  bench u32-b128 --base-channels 32 --batch 128 --compile --steps 40 --skip-baseline ;;
esac
case "$PART" in epoch|all)
  LIMIT=540 bench epoch --base-channels 32 --batch 32 --compile --steps 20 --skip-baseline --epoch-slices 57195 ;;
esac
