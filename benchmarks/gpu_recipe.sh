#!/usr/bin/env bash
# A real-data recipe on the GPU machine in one lease (docs/benchmarks.md, "Real data on a GPU").
# Here, before the lease:
#   python benchmarks/gpu_pack.py pack lgg /path/to/lgg --out .gpu-data --shard-mib 50   # 3 shards
#   bash benchmarks/fetch_gpu_wheels.sh                                                  # .gpu-wheels
#   bash benchmarks/gpu_rehearsal.sh                                                     # all of it, tiny, here
# Then device calls back to back (a machine goes back after 30 s idle; what a call leaves in $STORE stays):
#   bash benchmarks/gpu_recipe.sh receive       carry [.gpu-data/lgg.manifest.json, .gpu-data/lgg-000.tar]
#   bash benchmarks/gpu_recipe.sh receive       carry [.gpu-data/lgg.manifest.json, .gpu-data/lgg-001.tar]
#   bash benchmarks/gpu_recipe.sh run lgg_gpu   carry [.gpu-data/lgg.manifest.json, .gpu-data/lgg-002.tar, .gpu-wheels]
# receive: moves the carried shards into $STORE and says which of the manifest's shards it holds, each
#          checked against its SHA-256.
# run:     receive, then every shard checked and unpacked, the recipe's stages (benchmarks/run_recipe.py:
#          download .. report on preprocess.seed 7, and RECIPE_ARGS), then $OUT/<recipe>.tgz: params, stage
#          times and logs, metrics, per-case and per-slice tables, curves, settings, and the model file's
#          SHA-256 (not its weights). Run again on the same machine, it resumes training from its checkpoint.
#          Then the step benches while BUDGET seconds (default 560) last.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-recipe-out}; mkdir -p "$OUT"
PY=${PY:-python3}
STORE=${STORE:-/tmp/gpu-data}; mkdir -p "$STORE"
WORK=${WORK:-/tmp/gpu-work}
DATASET=${DATASET:-lgg}
CARRIED=${CARRIED:-.gpu-data}  # where this call's shards arrive (the rehearsal points it elsewhere)
WHEELS=${WHEELS:-.gpu-wheels}
START=$SECONDS
receive() {
  for f in "$CARRIED"/*; do [ -f "$f" ] && cp "$f" "$STORE/"; done
  "$PY" - "$STORE/$DATASET.manifest.json" <<'EOF'
import hashlib, json, sys
from pathlib import Path
manifest = Path(sys.argv[1])
shards = json.loads(manifest.read_text())["shards"]
have = [s["name"] for s in shards if (manifest.parent / s["name"]).is_file()
        and hashlib.sha256((manifest.parent / s["name"]).read_bytes()).hexdigest() == s["sha256"]]
print(f"{manifest.parent}: {len(have)} of {len(shards)} shards with the manifest's SHA-256: {', '.join(have)}")
EOF
}
if [ ! -f "$CARRIED/$DATASET.manifest.json" ] && [ ! -f "$STORE/$DATASET.manifest.json" ]; then
  echo "error: no $CARRIED/$DATASET.manifest.json carried (benchmarks/gpu_pack.py pack writes it)"; exit 2
fi
receive || exit 2
[ "${1:-}" = receive ] && exit 0
[ "${1:-}" = run ] || { echo "usage: gpu_recipe.sh receive | run RECIPE"; exit 2; }
RECIPE=${2:?usage: gpu_recipe.sh run RECIPE}
SITE=${SITE:-/tmp/site}
if [ -d "$WHEELS" ] && [ -z "${NO_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl 2>&1 | tail -2
fi
export PYTHONPATH=$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}  # this package and the carried wheels
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU") > "$WORK.gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" \
  >> "$WORK.gpu.txt" 2>&1
cat "$WORK.gpu.txt"
PROJECT=$WORK/$RECIPE
collect() {  # what comes back: small files only, one archive (refreshed at exit, even after a timeout)
  [ -d "$PROJECT" ] || return 0
  (cd "$PROJECT" && for m in models/*/*/model.pt; do [ -f "$m" ] && sha256sum "$m"; done > model.sha256
   cp "$WORK.gpu.txt" gpu.txt
   tar -czf "$OUT/$RECIPE.tgz.tmp" --ignore-failed-read params.yaml times.json logs metrics dvclive model.sha256 \
     gpu.txt $(ls fit_gap.md 2>/dev/null) $(ls -d reports/*/*/evaluation/{per_case.csv,per_slice.csv,metrics_full.json,settings.json,threshold_sweep.csv} \
               reports/*/*/case_dice.csv 2>/dev/null) 2>/dev/null
   mv "$OUT/$RECIPE.tgz.tmp" "$OUT/$RECIPE.tgz")
  echo "== $OUT/$RECIPE.tgz: $(du -h "$OUT/$RECIPE.tgz" | cut -f1), $((SECONDS - START)) s since the call began"
}
trap collect EXIT
ARCHIVE=$WORK/$DATASET-archive
if [ ! -f "$ARCHIVE/.complete" ]; then
  rm -rf "$ARCHIVE"
  "$PY" benchmarks/gpu_pack.py unpack "$STORE/$DATASET.manifest.json" --out "$ARCHIVE" || exit 1
  touch "$ARCHIVE/.complete"
fi
echo "== unpacked: $((SECONDS - START)) s"
# shellcheck disable=SC2086  # RECIPE_ARGS: further key=value overrides, split on spaces
timeout "${LIMIT:-540}" "$PY" benchmarks/run_recipe.py "$RECIPE" "$PROJECT" "data.$DATASET.archive=$ARCHIVE" \
  preprocess.seed="${SPLIT:-7}" ${RECIPE_ARGS:-}
RC=$?
echo "== $RECIPE (exit $RC): $((SECONDS - START)) s"
if [ "$RC" = 0 ] && [ "$DATASET" = tumor_coco ]; then  # how well it fits its own training boxes
  timeout 180 "$PY" benchmarks/fit_gap.py "$PROJECT" --dataset tumor_coco --device auto > "$PROJECT/fit_gap.md" 2>&1
  cat "$PROJECT/fit_gap.md"
fi
grep -h "epoch .*/\|best" "$PROJECT"/logs/train-*.log 2>/dev/null | tail -4
"$PY" - "$PROJECT" <<'EOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("metrics/*/*.json")):
    print(path, json.dumps(json.loads(path.read_text()))[:600])
EOF
if [ $((SECONDS - START + 120)) -lt "${BUDGET:-560}" ] && [ -z "${NO_BENCH:-}" ]; then
  # shellcheck disable=SC2086
  timeout $(( ${BUDGET:-560} - (SECONDS - START) - 10 )) "$PY" benchmarks/bench.py --json "$OUT/step-u32-b32.json" \
    ${BENCH_ARGS:---base-channels 32 --batch 32 --compile --steps 100} > "$OUT/step-u32-b32.log" 2>&1
  echo "== step bench (exit $?)"; grep -A12 "^NVIDIA\|^CPU" "$OUT/step-u32-b32.log" | grep -v "^INFO" | head -14
fi
exit $RC
