"""params.yaml as typed, validated objects.

Every stage loads the whole file through `load_params`, so a typo anywhere (an unknown key, a
wrong type, an impossible value) stops the pipeline at once with one line per problem naming
the key and what was expected, instead of silently becoming a new parameter.
Defaults live in params.yaml, not here: every field is required.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from btseg.data.entry import Names, PositiveInt, Section
from btseg.data.registry import DATASET_NAMES, DATASETS
from btseg.errors import PipelineError, one_line

# The model architectures and training losses by name. They live here, in a module that imports no
# torch, so that checking params never loads PyTorch; btseg.models.registry and btseg.training.losses
# give each name its class or function, in this order.
MODEL_NAMES = ("unet", "resunet", "resnet34_unet")
LOSS_NAMES = ("bce", "dice", "bce_dice", "focal", "tversky", "focal_tversky")

# the choices come from the registries, so a new dataset, model or loss is valid here at once
DatasetName = Literal[DATASET_NAMES]
ModelName = Literal[MODEL_NAMES]
LossName = Literal[LOSS_NAMES]

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


# data.sample and data: a section per dataset, the entry's own (btseg.data.entry), so a new dataset module
# is validated here without a line of its own
SampleParams = create_model("SampleParams", __base__=Section, seed=(int, ...),
                            **{name: (entry.sample, ...) for name, entry in DATASETS.items()})
DataParams = create_model("DataParams", __base__=Section, source=(Literal["sample", "kaggle"], ...),
                          datasets=(Annotated[list[DatasetName], Field(min_length=1)], ...),
                          **{name: (entry.params, ...) for name, entry in DATASETS.items()}, sample=(SampleParams, ...))


class SplitParams(Section):
    train: Fraction
    val: Fraction
    test: Fraction


class PreprocessParams(Section):
    size: Annotated[int, Field(ge=16, le=1024)]
    fit: Literal["resize", "letterbox"]
    neighbours: Annotated[int, Field(ge=0, le=5)]  # 2.5D: slices on each side as extra input channels
    crop_to_brain: bool
    crop_margin: Annotated[int, Field(ge=0)]
    normalization: Literal["zscore", "percentile", "minmax"]
    percentiles: Annotated[list[Annotated[float, Field(ge=0.0, le=100.0)]], Field(min_length=2, max_length=2)]
    brain_threshold: Annotated[float, Field(ge=0.0, lt=1.0)]
    target: Literal["whole_tumor", "regions"]
    regions: Annotated[dict[str, Names], Field(min_length=1)]
    tumor_free_fraction: Annotated[float, Field(ge=0.0, le=1.0)]
    skip_no_brain: bool
    use_own_split: bool
    stratify: bool
    on_bad_file: Literal["error", "skip"]
    suspect_cases: Literal["report", "skip"]  # identical channels, near-empty volumes, intensity outliers
    workers: Annotated[int, Field(ge=0)]
    seed: int
    split: SplitParams


class AugmentParams(Section):
    """Probabilities (0 = off) and ranges of the training augmentations; never applied to val/test."""

    hflip: Probability
    vflip: Probability
    affine: Probability
    rotate_degrees: Annotated[float, Field(ge=0.0, le=180.0)]
    scale: Annotated[float, Field(ge=0.0, lt=1.0)]
    shift: Annotated[float, Field(ge=0.0, lt=0.5)]
    brightness_contrast: Probability
    brightness_contrast_limit: Probability  # a fraction of the intensity range, 0..1 like a probability
    gamma: Probability
    noise: Probability
    noise_std: Probability
    elastic: Probability
    fill: Probability  # per slice: a random non-empty set of the other input channels becomes a copy of fill_from
    fill_from: str  # the input channel copied (LGG: flair); datasets without it are not filled


class SpeedParams(Section):
    """How training runs, not what it learns: precision, memory layout, compilation, the data path."""

    precision: Literal["auto", "fp32", "bf16"]  # auto: bf16 where native (CUDA, CPUs with AVX-512 BF16/AMX), else fp32
    channels_last: bool  # NHWC layout for convolutions on CUDA and CPU
    compile: bool  # torch.compile the model
    threads_follow_load: bool  # CPU: fewer torch threads while another process takes a core (btseg.training.threads)
    loader_workers: Literal["auto"] | Annotated[int, Field(ge=0)]  # auto: 0 on CPU, min(8, cores - 1) on CUDA
    prefetch_batches: PositiveInt  # batches each loader process reads ahead
    augment_on: Literal["auto", "cpu", "device"]  # auto: device (batched torch) on CUDA, cpu (albumentations) on CPU


class TrainParams(Section):
    models: Annotated[list[ModelName], Field(min_length=1)]
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Literal["adam", "adamw", "sgd"]
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    schedule: Literal["constant", "cosine", "plateau", "onecycle"]
    warmup_epochs: Annotated[int, Field(ge=0)]
    plateau_patience: PositiveInt
    grad_clip: Annotated[float, Field(ge=0.0)]
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)]  # validate and keep a moving average of the weights; 0 = off
    early_stopping_patience: Annotated[int, Field(ge=0)]
    loss: LossName
    dice_weight: Annotated[float, Field(ge=0.0, le=1.0)]
    dice_smooth: Annotated[float, Field(ge=0.0)]
    dice_reduction: Literal["image", "batch"]
    focal_gamma: Annotated[float, Field(ge=0.0, le=10.0)]
    tversky_alpha: Annotated[float, Field(ge=0.0, le=1.0)]
    tversky_beta: Annotated[float, Field(ge=0.0, le=1.0)]
    base_channels: Annotated[int, Field(ge=4, le=256)]
    depth: Annotated[int, Field(ge=1, le=6)]
    norm: Literal["batch", "instance", "group"]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    deep_supervision: bool
    encoder_weights: str  # resnet34_unet: torchvision-format resnet34 state dict file; "" = random init
    augment: AugmentParams
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    num_threads: Annotated[int, Field(ge=0)]
    nproc: PositiveInt  # processes (GPUs) of one training; > 1 launches torchrun with DistributedDataParallel
    sync_batchnorm: bool
    speed: SpeedParams


class EvaluateParams(Section):
    threshold: Fraction  # training's validation threshold, and evaluate's with threshold_from=fixed
    threshold_from: Literal["validation", "fixed"]
    threshold_grid: Annotated[list[Fraction], Field(min_length=1)]
    size_buckets: Annotated[dict[str, Annotated[float, Field(gt=0.0, le=1.0)]], Field(min_length=1)]
    threshold_smoothing: bool  # choose on the sweep averaged with each threshold's neighbours
    tta: bool  # flips averaged at validation, evaluation and prediction
    postprocess: Literal["validation", "none"]
    per_case_threshold: bool  # each case at its own expected-Dice threshold (btseg.decisions.postprocess)
    min_component_voxels: Annotated[list[PositiveInt], Field(min_length=1)]


class CvParams(Section):
    """Patient-level k-fold cross-validation over the train and val patients; the test split stays fixed."""

    datasets: list[DatasetName]  # datasets cross-validated with every train.models; [] = none
    folds: Annotated[int, Field(ge=2, le=20)]
    runs: list[Annotated[int, Field(ge=0)]]  # the folds trained (dvc.yaml's matrix)


class ReportParams(Section):
    worst_k: Annotated[int, Field(ge=1, le=24)]
    display_channel: str


class Params(Section):
    recipe: str  # the recipe an experiment was started from (bts-recipe sets it); "" = none
    data: DataParams
    preprocess: PreprocessParams
    train: TrainParams
    evaluate: EvaluateParams
    cv: CvParams
    report: ReportParams


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1 and reads `1e-3` as a string; read it as the float a user means."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _DuplicateKey(yaml.YAMLError):
    """A mapping key given twice: `key` (dotted from the top) at `lines` (1-based)."""

    def __init__(self, key: str, lines: tuple[int, int]):
        super().__init__(f"{key}: given twice (lines {lines[0]} and {lines[1]}); keep one")


class _ParamsLoader(_Yaml12FloatLoader):
    """Also refuses a key given twice in one mapping: PyYAML would keep the later value without a word,
    and DVC refuses the whole file (so `dvc exp run` fails before check_params can say why)."""

    def construct_document(self, node):
        _check_unique_keys(node)
        return super().construct_document(node)


def _check_unique_keys(node: yaml.Node, path: tuple[str, ...] = ()) -> None:
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` overrides on purpose
                continue
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in lines:
                raise _DuplicateKey(".".join((*path, key)), (lines[key], line))
            lines[key] = line
            _check_unique_keys(value_node, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(item, (*path, str(index)))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise PipelineError with one line per problem."""
    return parse_params(load_raw_params(path), source=str(path))


def load_raw_params(path: str | Path = "params.yaml") -> Any:
    """params.yaml as plain YAML data, not yet validated."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_ParamsLoader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run from the repository root") from None
    except _DuplicateKey as error:
        raise PipelineError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({one_line(error)})") from None


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping (see `load_params`)."""
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as error:
        lines = [f"{source}: {_describe(e)}" for e in error.errors()]
        raise PipelineError("\n".join(lines)) from None
    _check_consistency(params, source)
    return params


def _check_consistency(params: Params, source: str) -> None:
    split = params.preprocess.split
    total = split.train + split.val + split.test
    if abs(total - 1.0) > 1e-6:
        raise PipelineError(
            f"{source}: preprocess.split: train + val + test must sum to 1, got {total:g}"
        )
    pool = 2 ** params.train.depth
    if params.preprocess.size % pool:
        raise PipelineError(
            f"{source}: train.depth: {params.train.depth} halvings need preprocess.size divisible "
            f"by {pool}, got {params.preprocess.size}; pick size {params.preprocess.size // pool * pool or pool}"
        )
    train = params.train
    if "resnet34_unet" in train.models and params.preprocess.size % 32:
        raise PipelineError(f"{source}: train.models: resnet34_unet needs preprocess.size divisible by 32, "
                            f"got {params.preprocess.size}; pick size {params.preprocess.size // 32 * 32 or 32}")
    if train.deep_supervision and train.depth < 2:
        raise PipelineError(f"{source}: train.deep_supervision: needs train.depth >= 2 (auxiliary outputs come "
                            f"from the coarser decoder levels), got depth {train.depth}")
    if train.deep_supervision and "resnet34_unet" in train.models:
        raise PipelineError(f"{source}: train.deep_supervision: not available for resnet34_unet; "
                            "remove it from train.models")
    if train.encoder_weights and not Path(train.encoder_weights).is_file():
        raise PipelineError(f"{source}: train.encoder_weights: file {train.encoder_weights} not found")
    if train.encoder_weights and "resnet34_unet" not in train.models:
        raise PipelineError(f"{source}: train.encoder_weights: only resnet34_unet uses encoder weights; add it to "
                            "train.models or set encoder_weights to ''")
    if train.batch_size % train.nproc:
        raise PipelineError(f"{source}: train.batch_size: {train.batch_size} is the batch over all {train.nproc} "
                            f"processes (train.nproc) and must divide evenly; "
                            f"pick {train.batch_size // train.nproc * train.nproc or train.nproc}")
    if train.schedule == "cosine" and train.warmup_epochs >= train.epochs:
        raise PipelineError(f"{source}: train.warmup_epochs: {train.warmup_epochs} leaves no epoch of the "
                            f"{train.epochs} in train.epochs for the cosine decay")
    if len(set(params.data.datasets)) != len(params.data.datasets):
        raise PipelineError(f"{source}: data.datasets: a dataset is listed twice")
    if len(set(params.train.models)) != len(params.train.models):
        raise PipelineError(f"{source}: train.models: a model is listed twice")
    for dataset, available in available_channels(params).items():
        chosen = DATASETS[dataset].input_channels(getattr(params.data, dataset))
        unknown = [c for c in chosen if c not in available]
        if unknown or len(set(chosen)) != len(chosen):
            raise PipelineError(f"{source}: data.{dataset}.input_channels: expected distinct names from "
                                f"{available}, got {chosen}")
    augment = params.train.augment
    inputs = {d: DATASETS[d].input_channels(getattr(params.data, d)) for d in params.data.datasets}
    if augment.fill > 0 and not any(augment.fill_from in chosen for chosen in inputs.values()):
        raise PipelineError(f"{source}: train.augment.fill_from: {augment.fill_from!r} is no dataset's input channel "
                            f"({inputs}); name one, or set train.augment.fill to 0")
    low, high = params.preprocess.percentiles
    if low >= high:
        raise PipelineError(f"{source}: preprocess.percentiles: the low percentile must be below the high one, "
                            f"got {[low, high]}")
    if params.preprocess.target == "regions":
        for dataset in params.data.datasets:
            labelled = sub_regions(params, dataset)
            for region, members in params.preprocess.regions.items():
                missing = [m for m in members if m not in labelled]
                if missing:
                    raise PipelineError(
                        f"{source}: preprocess.regions.{region}: {dataset} labels no {missing} (it labels {labelled}); "
                        f"use preprocess.target=whole_tumor or drop {dataset} from data.datasets")
    grid = params.evaluate.threshold_grid
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise PipelineError(f"{source}: evaluate.threshold_grid: thresholds must increase, got {grid}")
    cv = params.cv
    if any(run >= cv.folds for run in cv.runs) or len(set(cv.runs)) != len(cv.runs):
        raise PipelineError(f"{source}: cv.runs: expected distinct folds in 0..{cv.folds - 1}, got {cv.runs}")
    if cv.datasets and not cv.runs:
        raise PipelineError(f"{source}: cv.runs: name the folds to train for cv.datasets {cv.datasets}")
    outside = [d for d in cv.datasets if d not in params.data.datasets]
    if outside:
        raise PipelineError(f"{source}: cv.datasets: {outside} not in data.datasets {params.data.datasets}")
    bounds = params.evaluate.size_buckets
    if len(set(bounds.values())) != len(bounds) or max(bounds.values()) != 1.0 or "none" in bounds:
        raise PipelineError(f"{source}: evaluate.size_buckets: expected distinct bounds, the largest 1.0, "
                            f"and no bucket named 'none' (it holds the tumor-free slices), got {dict(bounds)}")
    all_channels = {c for names in available_channels(params).values() for c in names}
    if params.report.display_channel not in all_channels:
        raise PipelineError(
            f"{source}: report.display_channel: expected one of {sorted(all_channels)}, "
            f"got {params.report.display_channel!r}"
        )


def available_channels(params: Params) -> dict[str, list[str]]:
    """Image channels each dataset's files hold, by dataset name."""
    return {name: entry.channels(getattr(params.data, name)) for name, entry in DATASETS.items()}


def sub_regions(params: Params, dataset: str) -> list[str]:
    """Names of the labelled sub-regions of a dataset's masks, in order."""
    return DATASETS[dataset].sub_regions(getattr(params.data, dataset))


def targets(params: Params, dataset: str) -> dict[str, list[str]]:
    """The model's output channels for a dataset: name -> the sub-regions each unites."""
    if params.preprocess.target == "regions":
        return {name: list(members) for name, members in params.preprocess.regions.items()}
    return {"whole_tumor": sub_regions(params, dataset)}


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as `key.path: what was expected (got ...)`."""
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _model_at(error["loc"][:-1])
        known = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{key}: unknown key; {hint}expected one of: {', '.join(known)}"
    if kind == "missing":
        return f"{key}: missing; add it to params.yaml"
    got = error.get("input")
    if kind == "list_type" and key in MATRIX_KEYS:
        example = f"[{got}]" if isinstance(got, str | int) and not isinstance(got, bool) else "[a, b]"
        return f"{key}: must be a list (dvc.yaml runs a stage per item), e.g. {example}"
    layout = got.lower() if isinstance(got, str) else ""
    if error["loc"][:2] == ("data", "datasets") and layout in VOLUME_LAYOUT_HINTS:
        return (f"{key}: {error['msg'].lower()} (got {got!r}); a {VOLUME_LAYOUT_HINTS[layout]} dataset is read by "
                f"dataset 'nifti' with data.nifti.layout: {layout}")
    return f"{key}: {error['msg'].lower()} (got {got!r})"


# the keys dvc.yaml's matrices fan out over: DVC itself, given a scalar (`-S data.datasets=lgg`), fails
# parsing dvc.yaml with "'Value' object is not iterable", before any stage (check_params too) can run
MATRIX_KEYS = ("data.datasets", "train.models", "cv.datasets", "cv.runs")

# dataset names people try that are layouts of the `nifti` dataset
VOLUME_LAYOUT_HINTS = {"brats2021": "BraTS 2021", "brats2023": "BraTS 2023", "nnunet": "nnU-Net raw",
                       "decathlon": "Medical Segmentation Decathlon"}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that sits at `loc` inside Params, for listing its valid keys."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
