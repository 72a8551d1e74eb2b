#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md, one device call per part (each meant to stay under 5 minutes):
#   bash benchmarks/fetch_gpu_wheels.sh          # here, once
#   device run: bash benchmarks/gpu_check.sh targets|data|epoch|all|session     carry: [".gpu-wheels"]
# session: one device call for a 15-minute lease: the target benches (U-Net-32 with the seed-style
#          baseline and a profile, U-Net-64), eager plain vs one-process DDP, albumentations in loader
#          processes, the CUDA tests, then the full epoch, each skipped when BUDGET seconds
#          (default 450) would not cover it; results.tgz in $OUT is refreshed after each part.
# targets: the CUDA tests, then benchmarks/bench.py at the issue's target sizes (U-Net-32 and U-Net-64,
#          batch 32, compiled, flip+affine through the real data path, seed-style baseline);
# data:    what the data path costs: eager, augmentation on the CPU in loader processes, heavier
#          augmentation, batch 128;
# epoch:   one full BraTS-shaped epoch (57,195 generated slices) through btseg.training.loop.fit.
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
START=$SECONDS
fits() {  # seconds a part may take: false (and say so) when the budget would not cover it
  if [ $((SECONDS - START + $1)) -gt "${BUDGET:-450}" ]; then echo "== skipped (budget): $2"; return 1; fi
}
bench() {  # name, then benchmarks/bench.py options
  local name=$1; shift
  timeout "${LIMIT:-300}" "$PY" benchmarks/bench.py --json "$OUT/$name.json" "$@" $BENCH_EXTRA > "$OUT/$name.log" 2>&1
  echo "== $name (exit $?): $*"; grep -A12 "^NVIDIA\|^CPU" "$OUT/$name.log" | grep -v "^INFO" || tail -5 "$OUT/$name.log"
}
if [ "$PART" = session ]; then
  OUT_ALL=$OUT; OUT=${RUNS:-/tmp/gpu-session}; mkdir -p "$OUT"; mv "$OUT_ALL/gpu.txt" "$OUT/"
  pk() { tar -czf "$OUT_ALL/results.tgz.tmp" -C "$OUT" . && mv "$OUT_ALL/results.tgz.tmp" "$OUT_ALL/results.tgz"; }
  fits 150 u32-b32 && LIMIT=150 bench u32-b32 --base-channels 32 --batch 32 --compile --steps 100 --profile "$OUT/u32-b32.profile.txt"; pk
  fits 110 u64-b32 && LIMIT=110 bench u64-b32 --base-channels 64 --batch 32 --compile --steps 60 --skip-baseline; pk
  fits 60 u32-b32-eager-ddp && LIMIT=60 bench u32-b32-eager-ddp --base-channels 32 --batch 32 --steps 100 --skip-baseline --ddp; pk
  fits 90 u32-b32-cpuaug && LIMIT=90 bench u32-b32-cpuaug --base-channels 32 --batch 32 --compile --steps 100 --skip-baseline --augment-on cpu; pk
  if fits 90 cuda-tests; then
    timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_speed.py tests/test_training.py \
      > "$OUT/cuda-tests.log" 2>&1; echo "== CUDA tests (exit $?)"; tail -3 "$OUT/cuda-tests.log"; pk
  fi
  REMAIN=$(( ${BUDGET:-450} - (SECONDS - START) ))
  fits 100 epoch && LIMIT=$REMAIN bench epoch --base-channels 32 --batch 32 --compile --steps 10 --skip-baseline --epoch-slices ${EPOCH_SLICES:-57195}; pk
  exit 0
fi
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
