"""Make a trained model file's post-processing decision again with today's code, without retraining:
for runs trained before a change to how the threshold or rule is chosen (docs/results.md).

    python benchmarks/redecide.py RUN_FOLDER --dataset lgg --model unet --out model_redecided.pt

RUN_FOLDER is a project folder after the train stage (its params.yaml and data/slices). The weights
are the model file's; the threshold, rule and remove_small sizes are chosen on the val split as the
train stage chooses them now; then score it with the evaluate stage (--model-file).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from btseg.config import load_params
from btseg.decisions.choose import component_sizes, decide_on_validation
from btseg.models import load_model_file
from btseg.models.prediction import pick_device
from btseg.preprocessing.slices import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.run / "params.yaml")
    model_file = args.run / "models" / args.dataset / args.model / "model.pt"
    model, contents = load_model_file(model_file)
    slices = args.run / "data" / "slices" / args.dataset
    train, val = load_split(slices, "train"), load_split(slices, "val")
    sizes = component_sizes(params.evaluate, train)
    threshold, rule = decide_on_validation(model, val, params.evaluate, sizes, pick_device("cpu"), params.train)
    print(f"{model_file}: was threshold {contents['threshold']}, {contents['postprocess']}; now {threshold}, {rule} "
          f"(remove_small sizes {sizes})")
    contents.update(threshold=threshold, postprocess=rule, min_component_voxels=sizes)
    torch.save(contents, args.out)


if __name__ == "__main__":
    main()
