"""btseg.config: the repository's params.yaml loads; every kind of mistake is one line naming the key."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pydantic
import pytest
import yaml

from btseg.config import MODEL_NAMES, load_params, parse_params
from btseg.data.registry import DATASET_NAMES
from btseg.errors import PipelineError

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
RAW = yaml.safe_load(PARAMS_YAML.read_text(encoding="utf-8"))


def choices(names) -> str:
    """A list of valid names as the error messages write it: 'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def test_repository_params_run_offline_on_the_sample():
    # the README's quick start (`dvc repro` on a fresh machine, no credentials) depends on this;
    # validation allows kaggle, so only this test holds the default to it
    params = load_params(PARAMS_YAML)
    assert params.data.source == "sample"
    assert all(getattr(params.data.sample, dataset, None) is not None for dataset in params.data.datasets)


def test_load_params_accepts_str_path():
    assert load_params(str(PARAMS_YAML)) == parse_params(copy.deepcopy(RAW))


def test_params_are_frozen():
    params = parse_params(copy.deepcopy(RAW))
    with pytest.raises(pydantic.ValidationError):
        params.train.epochs = 3


def mutated(change) -> dict:
    raw = copy.deepcopy(RAW)
    change(raw)
    return raw


def setting(section: str, key: str, value):
    """A change that sets section.key (section may be dotted: 'preprocess.split')."""
    def change(raw):
        target = raw
        for part in section.split("."):
            target = target[part]
        target[key] = value
    return change


def removing(section: str, key: str):
    def change(raw):
        target = raw
        for part in section.split("."):
            target = target[part]
        del target[key]
    return change


# (change, fragments the one-line message must contain)
BAD_PARAMS = {
    "unknown key": (
        setting("train", "epochz", 10),
        ["train.epochz: unknown key", "did you mean 'epochs'?", "expected one of:", "learning_rate"],
    ),
    "unknown key, no close match": (
        setting("evaluate", "colour", "red"),
        ["evaluate.colour: unknown key; expected one of: min_component_voxels, per_case_threshold, postprocess, "
         "size_buckets, threshold, threshold_from, threshold_grid, threshold_smoothing, tta"],
    ),
    "threshold_from not a choice": (
        setting("evaluate", "threshold_from", "auto"),
        ["evaluate.threshold_from: input should be 'validation' or 'fixed' (got 'auto')"],
    ),
    "threshold grid not increasing": (
        setting("evaluate", "threshold_grid", [0.5, 0.3]),
        ["evaluate.threshold_grid: thresholds must increase, got [0.5, 0.3]"],
    ),
    "threshold grid value out of (0, 1)": (
        setting("evaluate", "threshold_grid", [0.5, 1.0]),
        ["evaluate.threshold_grid.1: input should be less than 1"],
    ),
    "size buckets without a 1.0 bound": (
        setting("evaluate", "size_buckets", {"small": 0.1, "large": 0.5}),
        ["evaluate.size_buckets: expected distinct bounds, the largest 1.0"],
    ),
    "size bucket named none": (
        setting("evaluate", "size_buckets", {"none": 0.1, "large": 1.0}),
        ["evaluate.size_buckets:", "no bucket named 'none'"],
    ),
    "unknown section": (
        lambda raw: raw.__setitem__("trian", {}),
        ["trian: unknown key", "did you mean 'train'?"],
    ),
    "string for int": (setting("train", "epochs", "ten"), ["train.epochs:", "valid integer", "'ten'"]),
    "float for int": (setting("train", "epochs", 2.5), ["train.epochs:", "valid integer", "2.5"]),
    "bool for int": (setting("train", "batch_size", True), ["train.batch_size:", "valid integer", "True"]),
    "string for float": (setting("train", "learning_rate", "2e-3"), ["train.learning_rate:", "valid number", "'2e-3'"]),
    "zero epochs": (setting("train", "epochs", 0), ["train.epochs:", "greater than or equal to 1", "0"]),
    "negative learning rate": (setting("train", "learning_rate", -1), ["train.learning_rate:", "greater than 0", "-1"]),
    "dice weight above 1": (setting("train", "dice_weight", 1.5), ["train.dice_weight:", "less than or equal to 1"]),
    "threshold of 1": (setting("evaluate", "threshold", 1.0), ["evaluate.threshold:", "less than 1"]),
    "unknown device": (setting("train", "device", "tpu"), ["train.device:", "'tpu'"]),
    "size not divisible by 2**depth": (
        lambda raw: (raw["preprocess"].__setitem__("size", 100), raw["train"].__setitem__("depth", 3)),
        ["train.depth: 3 halvings", "preprocess.size divisible by 8", "got 100", "pick size 96"],
    ),
    "size too small for depth": (
        lambda raw: (raw["preprocess"].__setitem__("size", 16), raw["train"].__setitem__("depth", 6)),
        ["divisible by 64", "got 16", "pick size 64"],
    ),
    "split sums above 1": (
        setting("preprocess", "split", {"train": 0.8, "val": 0.15, "test": 0.15}),
        ["preprocess.split: train + val + test must sum to 1, got 1.1"],
    ),
    "split sums below 1": (
        setting("preprocess", "split", {"train": 0.7, "val": 0.15, "test": 0.05}),
        ["preprocess.split: train + val + test must sum to 1, got 0.9"],
    ),
    "split fraction of 1": (setting("preprocess.split", "train", 1.0), ["preprocess.split.train:", "less than 1"]),
    "unknown dataset": (
        setting("data", "datasets", ["brats2020", "brats2021"]),
        ["data.datasets.1:", choices(DATASET_NAMES), "'brats2021'",
         "a BraTS 2021 dataset is read by dataset 'nifti' with data.nifti.layout: brats2021"],
    ),
    "misspelt dataset": (setting("data", "datasets", ["lgq"]), ["data.datasets.0:", "(got 'lgq')"]),
    "no dataset": (setting("data", "datasets", []), ["data.datasets:", "at least 1"]),
    "duplicate dataset": (
        setting("data", "datasets", ["brats2020", "tumor_coco", "brats2020"]),
        ["data.datasets: a dataset is listed twice"],
    ),
    "unknown model": (
        setting("train", "models", ["unet", "vnet"]),
        ["train.models.1:", choices(MODEL_NAMES), "'vnet'"],
    ),
    "duplicate model": (setting("train", "models", ["unet", "unet"]), ["train.models: a model is listed twice"]),
    "display channel not a channel": (
        lambda raw: (
            raw["data"]["brats2020"].__setitem__("image_channels", ["flair", "t1", "t1ce", "t2"]),
            raw["report"].__setitem__("display_channel", "t5"),
        ),
        ["report.display_channel: expected one of ['flair', 'grey', 'post_contrast', 'pre_contrast', 't1', 't1c', "
         "'t1ce', 't1n', 't2', 't2f', 't2w'], got 't5'"],
    ),
    "missing key": (removing("train", "epochs"), ["train.epochs: missing; add it to params.yaml"]),
    "missing nested key": (removing("preprocess.split", "val"), ["preprocess.split.val: missing"]),
    "missing section": (removing("evaluate", "threshold"), ["evaluate.threshold: missing"]),
    "section is not a mapping": (lambda raw: raw.__setitem__("report", 6), ["report:", "(got 6)"]),
}


@pytest.mark.parametrize("change, fragments", BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
def test_bad_params_raise_one_line_naming_the_key(change, fragments):
    with pytest.raises(PipelineError) as error:
        parse_params(mutated(change), source="params.yaml")
    message = str(error.value)
    assert "\n" not in message, message
    assert message.startswith("params.yaml: ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_renamed_key_gives_one_line_per_problem():
    # renaming epochs -> epochz is two problems: the typo and the now missing key
    raw = mutated(lambda raw: raw["train"].__setitem__("epochz", raw["train"].pop("epochs")))
    with pytest.raises(PipelineError) as error:
        parse_params(raw)
    lines = str(error.value).splitlines()
    assert len(lines) == 2
    assert any("train.epochs: missing" in line for line in lines)
    assert any("train.epochz: unknown key; did you mean 'epochs'?" in line for line in lines)


def test_source_names_the_file():
    with pytest.raises(PipelineError, match=r"^experiments/a\.yaml: train\.epochs:"):
        parse_params(mutated(setting("train", "epochs", 0)), source="experiments/a.yaml")


@pytest.mark.parametrize("raw", [None, [], "train", 3], ids=["empty", "list", "string", "number"])
def test_top_level_not_a_mapping(raw):
    with pytest.raises(PipelineError, match="^params.yaml: expected a mapping of sections at the top level$"):
        parse_params(raw)


def test_load_params_reports_mutations_with_the_file_path(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(mutated(setting("train", "epochz", 10))), encoding="utf-8")
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}: train.epochz: unknown key; did you mean 'epochs'?")


def test_load_params_round_trips_a_dumped_copy(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(RAW)), encoding="utf-8")
    assert load_params(path) == load_params(PARAMS_YAML)


@pytest.mark.parametrize(
    "text",
    ["train: [epochs: 3\n", "train:\n  epochs: 3\n   depth: 2\n", "data: {source: sample\n", "\tdata: 1\n"],
    ids=["unclosed-list", "bad-indent", "unclosed-mapping", "tab-indent"],
)
def test_non_yaml_file(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PipelineError) as error:
        load_params(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not valid YAML (")
    assert "\n" not in message


def test_empty_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(PipelineError, match="expected a mapping of sections"):
        load_params(path)


def test_file_not_found(tmp_path):
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: not found; run from the repository root"


@pytest.mark.parametrize("written, expected", [("1e-3", 0.001), ("2.5E-4", 0.00025), ("0.002", 0.002)])
def test_exponent_notation_in_yaml_reads_as_a_float(tmp_path, written, expected):
    # PyYAML alone (YAML 1.1) reads 1e-3 as the string '1e-3', which strict validation would reject
    text = re.sub(r"learning_rate: [^\s#]+", f"learning_rate: {written}", PARAMS_YAML.read_text(encoding="utf-8"))
    assert f"learning_rate: {written}" in text
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert load_params(path).train.learning_rate == pytest.approx(expected)


@pytest.mark.parametrize("change, fragment", [
    (setting("data.lgg", "input_channels", ["flair", "t2"]), "data.lgg.input_channels: expected distinct names from"),
    (setting("data.brats2020", "input_channels", ["flair", "flair"]),
     "data.brats2020.input_channels: expected distinct"),
    (setting("preprocess", "percentiles", [99.0, 1.0]), "preprocess.percentiles: the low percentile must be below"),
    (setting("preprocess", "target", "regions"), "preprocess.regions.WT: tumor_coco labels no"),
])
def test_options_that_cannot_work_together_name_the_key(change, fragment):
    with pytest.raises(PipelineError) as error:
        parse_params(mutated(change))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_regions_target_is_valid_for_brats_datasets_only():
    raw = mutated(setting("preprocess", "target", "regions"))
    raw["data"]["datasets"] = ["brats2020", "brats2020_nifti"]
    assert parse_params(raw).preprocess.target == "regions"


@pytest.mark.parametrize("train, fragment", [
    ({"deep_supervision": True, "depth": 1}, "train.deep_supervision: needs train.depth >= 2"),
    ({"deep_supervision": True, "models": ["unet", "resnet34_unet"]},
     "train.deep_supervision: not available for resnet34_unet"),
    ({"encoder_weights": "/no/such/resnet34.pth", "models": ["resnet34_unet"]},
     "train.encoder_weights: file /no/such/resnet34.pth not found"),
    ({"schedule": "cosine", "warmup_epochs": 20, "epochs": 20}, "train.warmup_epochs: 20 leaves no epoch"),
    ({"models": ["resnet34_unet"], "depth": 2}, None),  # valid: size 64 is divisible by 32
])
def test_training_options_that_cannot_work_together_stop_before_training(train, fragment):
    raw = copy.deepcopy(RAW)
    raw["train"].update(train)
    if fragment is None:
        parse_params(raw)
        return
    with pytest.raises(PipelineError) as error:
        parse_params(raw)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_encoder_weights_need_the_resnet_model(tmp_path):
    weights = tmp_path / "resnet34.pth"
    weights.write_bytes(b"x")
    raw = copy.deepcopy(RAW)
    raw["train"].update(encoder_weights=str(weights), models=["unet"])
    with pytest.raises(PipelineError, match="train.encoder_weights: only resnet34_unet uses encoder weights"):
        parse_params(raw)


def matrix_keys() -> set[str]:
    """The params keys dvc.yaml fans stages out over (`matrix: {dataset: ${data.datasets}}`)."""
    stages = yaml.safe_load((PARAMS_YAML.parent / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {re.fullmatch(r"\$\{(.+)\}", value).group(1)
            for stage in stages.values() for value in stage.get("matrix", {}).values()}


@pytest.mark.parametrize("key", sorted(matrix_keys()))
def test_a_scalar_for_a_matrix_key_says_it_must_be_a_list(key):
    # `dvc exp run -S data.datasets=tumor_coco` gives a string; DVC itself fails with "'Value' object is not iterable"
    section, leaf = key.split(".")
    value = "lgg" if leaf == "datasets" else "unet" if leaf == "models" else 0
    with pytest.raises(PipelineError) as error:
        parse_params(mutated(setting(section, leaf, value)))
    assert str(error.value) == f"params.yaml: {key}: must be a list (dvc.yaml runs a stage per item), e.g. [{value}]"


def test_check_params_stage_refuses_a_scalar_datasets_in_one_line(tmp_path):
    from tests.conftest import run_in  # noqa: PLC0415

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(mutated(setting("data", "datasets", "tumor_coco"))))
    result = run_in(tmp_path, "stages.check_params")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: params.yaml: data.datasets: must be a list (dvc.yaml runs a stage per item), e.g. [tumor_coco]"]


def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path):
    # PyYAML keeps the last value silently; DVC refuses the file, so check_params must too, before it
    lines = PARAMS_YAML.read_text(encoding="utf-8").splitlines()
    epochs = next(n for n, line in enumerate(lines) if line.startswith("  epochs: "))  # train.epochs
    path = tmp_path / "params.yaml"
    path.write_text("\n".join([*lines[:epochs + 1], "  epochs: 99", *lines[epochs + 1:]]) + "\n", encoding="utf-8")
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: train.epochs: given twice (lines {epochs + 1} and {epochs + 2}); keep one"

    report = lines.index("report:")
    path.write_text("\n".join([*lines, "report:", "  display_channel: flair"]) + "\n", encoding="utf-8")
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: report: given twice (lines {report + 1} and {len(lines) + 1}); keep one"


def test_the_same_key_in_different_sections_is_fine(tmp_path):
    assert "datasets" in RAW["data"] and "datasets" in RAW["cv"]  # the repository's params.yaml already does it
    assert load_params(PARAMS_YAML).cv.datasets == RAW["cv"]["datasets"]
