#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one device call (about 8 minutes on an H100/H200):
#   bash benchmarks/fetch_gpu_wheels.sh          # here, once
#   device run: bash benchmarks/gpu_check.sh [quick|epoch|all]   carry: [".gpu-wheels"]
# quick: the CUDA tests, then stages.bench at the issue's sizes (U-Net 32 at batch 32 and 128,
#        U-Net 64, flip+affine and flip+affine+brightness/contrast on the real data path);
# epoch: one full BraTS-shaped epoch (57,195 generated slices) through stages.training.fit.
# Everything lands in $OUT (JSON per run, logs); the tables are printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
PART=${1:-quick}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ -d .gpu-wheels ]; then
  python3 -m pip install --no-index --no-deps --quiet .gpu-wheels/*.whl 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
bench() {  # name, then stages.bench options
  local name=$1; shift
  timeout 300 python3 -m stages.bench --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name (exit $?): $*"; grep -A12 "^NVIDIA\|^CPU" "$OUT/$name.log" | grep -v "^INFO"
}
if [ "$PART" = quick ] || [ "$PART" = all ]; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_speed.py tests/test_training.py \
    > "$OUT/cuda-tests.log" 2>&1; echo "== CUDA tests (exit $?)"; tail -3 "$OUT/cuda-tests.log"
  bench u32-b32 --base-channels 32 --batch 32 --compile --steps 100
  bench u32-b32-eager --base-channels 32 --batch 32 --steps 100 --skip-baseline
  bench u32-b128 --base-channels 32 --batch 128 --compile --steps 40 --skip-baseline
  bench u64-b32 --base-channels 64 --batch 32 --compile --steps 60
  bench u32-b32-cpuaug --base-channels 32 --batch 32 --compile --steps 100 --skip-baseline --augment-on cpu
  bench u32-b32-bc --base-channels 32 --batch 32 --compile --steps 100 --skip-baseline \
    --augment hflip=0.5,affine=0.5,brightness_contrast=0.5,elastic=0.2
fi
if [ "$PART" = epoch ] || [ "$PART" = all ]; then
  bench epoch --base-channels 32 --batch 32 --compile --steps 20 --skip-baseline --epoch-slices 57195
fi
