"""A dataset is one module: a throwaway module declaring a `Dataset` entry appears in params validation,
the stages' --dataset choices, the sample source and prediction's file kinds, with no other file touched."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import yaml

from btseg.data.registry import DATASET_NAMES, DATASETS
from tests.conftest import REPO

THROWAWAY = '''
from pathlib import Path

from btseg.data.entry import Dataset, Names, SampleSizes, Section


class ThrowawayParams(Section):
    path: str
    channels: Names


def write_sample(root: Path, options, sizes, seed: int) -> None:
    (root / "sample.txt").write_text(f"{sizes.cases} cases, seed {seed}, channels {options.channels}")


def unused(*args):
    raise NotImplementedError


DATASETS = (Dataset("throwaway", ThrowawayParams, SampleSizes, unused, unused, write_sample,
                    channels=lambda o: list(o.channels), input_channels=lambda o: list(o.channels),
                    sub_regions=lambda o: ["tumor"], files="images", own_folder=True),)
'''

CHECK = '''
import json, sys, copy
from pathlib import Path
import yaml
import btseg.data
btseg.data.__path__.append(sys.argv[1])  # as if the module were a file of btseg/data/
from btseg import cli, config, download
from btseg.data.registry import DATASET_NAMES, IMAGE_FILE_DATASETS, OWN_FOLDER_DATASETS
from btseg.errors import PipelineError

raw = yaml.safe_load(Path(sys.argv[2]).read_text())
raw["data"]["datasets"] = ["throwaway"]
raw["data"]["throwaway"] = {"path": "data/mine", "channels": ["grey"]}
raw["data"]["sample"]["throwaway"] = {"cases": 3, "slices_per_case": 2, "size": 32}
raw["report"]["display_channel"] = "grey"
params = config.parse_params(copy.deepcopy(raw))
out = {"names": list(DATASET_NAMES), "images": "throwaway" in IMAGE_FILE_DATASETS,
       "own_folder": "throwaway" in OWN_FOLDER_DATASETS,
       "choice": cli.stage_arguments("x").parse_args(["--dataset", "throwaway"]).dataset,
       "channels": config.available_channels(params)["throwaway"]}
raw["data"]["throwaway"]["chanels"] = ["grey"]
try:
    config.parse_params(raw)
except PipelineError as error:
    out["typo"] = str(error)
root = Path(sys.argv[1]) / "raw"
root.mkdir()
download.write_sample("throwaway", root, params)
out["sample"] = (root / "sample.txt").read_text()
print(json.dumps(out))
'''


def test_a_new_dataset_module_is_everywhere_without_another_file(tmp_path):
    (tmp_path / "throwaway_set.py").write_text(textwrap.dedent(THROWAWAY))
    result = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path), str(REPO / "params.yaml")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert sorted(out["names"]) == sorted([*DATASET_NAMES, "throwaway"])
    assert out["images"] and out["own_folder"] and out["choice"] == "throwaway" and out["channels"] == ["grey"]
    assert "data.throwaway.chanels" in out["typo"]  # its params section is validated like any other
    seed = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["sample"]["seed"]
    assert out["sample"] == f"3 cases, seed {seed}, channels ['grey']"  # the entry's writer, with its sizes


def test_every_entry_describes_its_own_params_section():
    from btseg.config import load_params

    params = load_params(REPO / "params.yaml")
    for name, entry in DATASETS.items():
        options = getattr(params.data, name)
        assert isinstance(options, entry.params), name
        assert set(entry.input_channels(options)) <= set(entry.channels(options)), name
        assert entry.sub_regions(options), name
