#!/usr/bin/env bash
# Fetch, into .gpu-wheels/ (or $WHEELS), the wheels that the GPU machine's image lacks for benchmarks/bench.py,
# the CUDA tests and the pipeline's stages (benchmarks/gpu_recipe.sh). The image has torch, numpy, scipy,
# pandas, OpenCV, PyYAML, tqdm, h5py, matplotlib, requests, psutil, pytest (/work/.library/device/KINDS.md),
# but no albumentations, pydantic, nibabel or dvclive, and no internet. dvclive imports a few pieces of DVC
# (not the whole of it, which training never calls): those pieces alone travel. Run here, then carry the
# folder with the device call. PYVER: the image's Python (3.12; the CPU rehearsal fetches its own, 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
WHEELS=${WHEELS:-.gpu-wheels}
version() { "$PY" -m pip show "$1" | awk '/^Version/{print $2}'; }
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
pins=()
for name in albumentations albucore pydantic pydantic-core annotated-types typing-inspection simsimd stringzilla \
            typing-extensions nibabel importlib-resources dvclive dvc dvc-render dvc-studio-client funcy ruamel.yaml \
            flatten-dict voluptuous; do
  pins+=("$name==$(version "$name")")
done
# no dependencies: the image has the rest
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$WHEELS" "${pins[@]}" 2>&1 | grep -v "Location ignored" || true
ls "$WHEELS"; du -sh "$WHEELS"
