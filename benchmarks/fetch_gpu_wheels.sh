#!/usr/bin/env bash
# Fetch, into .gpu-wheels/, the wheels that the GPU machine's image lacks for benchmarks/bench.py and the
# CUDA tests (it has torch, numpy, scipy, pandas, OpenCV, PyYAML, tqdm, pytest, but no albumentations
# or pydantic, and no internet). Run here, then carry .gpu-wheels with the device call (gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version() { "$PY" -m pip show "$1" | awk '/^Version/{print $2}'; }
rm -rf .gpu-wheels && mkdir .gpu-wheels
# the image's python is 3.12 on x86-64; no dependencies: the image has the rest
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d .gpu-wheels "albumentations==$(version albumentations)" "albucore==$(version albucore)" \
  "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" annotated-types typing-inspection \
  simsimd stringzilla "typing-extensions==$(version typing-extensions)" 2>&1 | grep -v "Location ignored" || true
ls -la .gpu-wheels; du -sh .gpu-wheels
