#!/usr/bin/env bash
# The GPU lease's whole sequence, here on the CPU with a tiny generated LGG archive, before any lease:
# packing into several shards, one `receive` call per shard into a store, a corrupted shard refused in
# one line, then `run` with the wheels installed into a Python that holds only what the GPU image holds
# (a venv of those packages: a wheel missing from benchmarks/fetch_gpu_wheels.sh fails here, not there),
# and the results archive checked. Takes a few minutes; prints "rehearsal passed" at the end.
#   bash benchmarks/gpu_rehearsal.sh          (REHEARSAL=/tmp/gpu-rehearsal by default; KEEP_VENV=1 reuses it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${REHEARSAL:-/tmp/gpu-rehearsal}
VENV=$ROOT/venv
HOST_PY=${PY:-.venv/bin/python}  # this machine's environment: packing, fetching wheels
if [ -z "${KEEP_VENV:-}" ] || [ ! -x "$VENV/bin/python" ]; then
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  python3 -m venv "$VENV"
  # what the GPU image has (KINDS.md) and the pipeline uses; torch as CPU build, versions as constraints.txt
  "$VENV/bin/pip" install -q torch==2.13.0 numpy scipy pandas opencv-python-headless pyyaml tqdm matplotlib h5py \
    psutil requests python-dateutil pillow packaging tabulate colorama simplejson nvidia-ml-py pytest onnx \
    onnxruntime onnxscript -c constraints.txt
fi
rm -rf "$ROOT"/{archive,shards,call*,store,work,out,site,wheels}
"$HOST_PY" - "$ROOT/archive" <<'EOF'
import sys
from pathlib import Path
from btseg.data import lgg
lgg.write_sample(Path(sys.argv[1]), cases=10, slices_per_case=6, size=64, seed=3, duplicate_tree=False)
EOF
"$HOST_PY" benchmarks/gpu_pack.py pack lgg "$ROOT/archive" --out "$ROOT/shards" --shard-mib 0.06
PYVER=3.11 WHEELS=$ROOT/wheels PY=$HOST_PY bash benchmarks/fetch_gpu_wheels.sh > "$ROOT/wheels.log" 2>&1
shards=("$ROOT"/shards/lgg-*.tar)
[ ${#shards[@]} -ge 3 ] || { echo "expected 3 shards or more, got ${#shards[@]}"; exit 1; }
export STORE=$ROOT/store WORK=$ROOT/work OUT=$ROOT/out SITE=$ROOT/site WHEELS=$ROOT/wheels PY=$VENV/bin/python
call() {  # one device call: the manifest and the given shards carried, nothing else of .gpu-data
  local n=$1; shift
  mkdir -p "$ROOT/call$n"; cp "$ROOT/shards/lgg.manifest.json" "$@" "$ROOT/call$n/"
  CARRIED=$ROOT/call$n bash benchmarks/gpu_recipe.sh "${ARGS[@]}"
}
ARGS=(receive)
for i in $(seq 0 $((${#shards[@]} - 2))); do call "$i" "${shards[$i]}"; done
# a shard cut short in transfer: refused before anything is unpacked, naming it
head -c $(($(stat -c %s "${shards[0]}") / 2)) "${shards[0]}" > "$STORE/$(basename "${shards[0]}")"
ARGS=(run lgg_gpu)
if NO_BENCH=1 call last "${shards[-1]}" > "$ROOT/refused.log" 2>&1; then
  echo "a cut shard was not refused"; exit 1
fi
grep -q "SHA-256 differs from the manifest for $(basename "${shards[0]}")" "$ROOT/refused.log" \
  || { cat "$ROOT/refused.log"; exit 1; }
[ ! -e "$WORK/lgg-archive/.complete" ] || { echo "unpacked despite a bad shard"; exit 1; }
ARGS=(receive); call resend "${shards[0]}"
ARGS=(run lgg_gpu)
RECIPE_ARGS="preprocess.size=64 train.epochs=2 train.warmup_epochs=1 train.base_channels=8 train.depth=3 train.batch_size=8
  train.speed.compile=false train.augment.elastic=0.0 evaluate.tta=false" \
  BUDGET=400 BENCH_ARGS="--size 32 --steps 3 --warmup 1 --batch 4 --base-channels 8 --volume-slices 8" call last "${shards[-1]}"
tar -tzf "$OUT/lgg_gpu.tgz" > "$ROOT/contents.txt"
for f in params.yaml times.json metrics/lgg/unet.json reports/lgg/unet/evaluation/per_case.csv model.sha256 \
         logs/train-lgg-unet.log dvclive/lgg/unet/metrics.json; do
  grep -qx "$f" "$ROOT/contents.txt" || { echo "missing from the results: $f"; cat "$ROOT/contents.txt"; exit 1; }
done
[ -s "$OUT/step-u32-b32.json" ] || { tail -5 "$OUT/step-u32-b32.log"; echo "the step bench wrote nothing"; exit 1; }
echo "lgg passed: $(wc -l < "$ROOT/contents.txt") files in $OUT/lgg_gpu.tgz ($(du -h "$OUT/lgg_gpu.tgz" | cut -f1))"
# the COCO export the same way (the real excerpt's 18 images), on the machine that already holds the wheels
"$HOST_PY" benchmarks/gpu_pack.py pack tumor_coco "${REALDATA:-../shared/realdata}/tumor_coco_sample" --size 64 \
  --out "$ROOT/coco-shards" --shard-mib 0.3
mkdir -p "$ROOT/call-coco"; cp "$ROOT"/coco-shards/* "$ROOT/call-coco/"
DATASET=tumor_coco CARRIED=$ROOT/call-coco NO_WHEELS=1 NO_BENCH=1 RECIPE_ARGS="preprocess.size=64 train.epochs=2
  train.warmup_epochs=1 train.base_channels=8 train.depth=3 train.batch_size=4 train.speed.compile=false
  evaluate.tta=false" bash benchmarks/gpu_recipe.sh run coco_gpu
tar -tzf "$OUT/coco_gpu.tgz" | grep -qx "reports/tumor_coco/unet/evaluation/per_case.csv" \
  || { echo "coco_gpu: no per-case table came back"; exit 1; }
echo "rehearsal passed: lgg_gpu and coco_gpu, shards to results, here on the CPU"
