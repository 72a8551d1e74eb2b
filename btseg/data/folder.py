"""Reader for your own data: a folder of images and a folder of masks, matched by name.

Configured by `data.folder` in params.yaml:
    images        glob under the dataset root, e.g. `images/*.png`; of what it matches only
                  PNG/JPEG/TIFF files are taken (any case), so `images/*.*` mixes formats
    masks         each image's mask, relative to the root: `{stem}` is the image's name without
                  extension, `{parent}` its folder relative to the root (so masks beside their
                  images are `{parent}/{stem}_mask.tif`; files that are some image's mask are
                  then not images themselves)
    case_pattern  regex matched against the whole stem: group `case` is the patient id, images
                  sharing it form one case; an optional group `slice` (digits) orders a case's
                  slices numerically (`_2` before `_10`), otherwise they go in file-name order
    channels      `[grey]` (or any one name) reads greyscale; three names read colour, in RGB order
    input_channels  the channels loaded, in this order
    labels        region name -> mask pixel value; regions come in this order, 0 is background

Images keep their stored values (uint8, uint16 or float TIFF) as float32: nothing is rescaled.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from btseg.data import phantom
from btseg.data.base import MAX_LABEL_VALUE, Case, CaseRef
from btseg.data.entry import Dataset, LabelValues, Names, SampleSizes, Section, sample_of_cases
from btseg.data.images import decode
from btseg.errors import PipelineError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}

COPY_HINT = "copy it again or remove it"
SAMPLE_DEPTH = 100  # slices of the phantom volume the sample's slices are taken from
SAMPLE_SCALE = 200  # phantom signal (about 0..1.2) -> 8-bit grey, as the COCO sample does


def list_cases(root: Path, options) -> list[CaseRef]:
    """The cases under `root`, sorted by case id; each holds its image and mask paths in slice order.

    `CaseRef.extra` has `images` and `masks` (tuples of paths) and `slice_index` (tuple of int:
    the `slice` group's numbers, else 0..S-1), all in the order read_case stacks the slices.
    """
    pattern = _case_pattern(options)
    _check_mask_template(options.masks)
    _colour(options.channels)  # read_case needs these: a bad param fails here, before any file is read
    _channel_indices(options)
    _labels(options)
    if not root.is_dir():
        raise PipelineError(f"{root}: folder missing; set data.folder.path to the folder holding your images and masks")
    try:
        candidates = sorted(p for p in root.glob(options.images) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except (ValueError, NotImplementedError) as error:
        raise PipelineError(f"params.yaml: data.folder.images {options.images!r}: not a glob relative to the folder "
                            f"({error})") from None
    mask_of = {image: _mask_path(root, image, options.masks) for image in candidates}
    masks = set(mask_of.values())
    images = [image for image in candidates if image not in masks]  # masks stored beside the images
    if not images:
        raise PipelineError(f"{root}: no PNG/JPEG/TIFF files match data.folder.images {options.images!r}; "
                            f"check the folder and the glob")

    by_mask: dict[Path, Path] = {}
    slices: dict[str, list[tuple[int | None, Path]]] = defaultdict(list)
    for image in images:
        match = pattern.fullmatch(image.stem)
        if not match or not match["case"]:
            raise PipelineError(f"{image}: name {image.stem!r} does not match data.folder.case_pattern "
                                f"'{pattern.pattern}'; fix the pattern or rename the file")
        mask = mask_of[image]
        if not mask.is_file():
            raise PipelineError(f"{image}: its mask {mask} is missing; add the mask or fix "
                                f"data.folder.masks {options.masks!r}")
        if mask in by_mask:
            raise PipelineError(f"{image}: shares the mask {mask} with {by_mask[mask]}; keep one of them "
                                f"or narrow data.folder.images {options.images!r}")
        by_mask[mask] = image
        slices[match["case"]].append((_slice_number(match, image, pattern), image))

    cases = []
    for case_id in sorted(slices):
        members = slices[case_id]
        if "slice" in pattern.groupindex:
            members.sort(key=lambda member: (member[0], member[1].name))
            for (number, first), (next_number, second) in zip(members, members[1:]):
                if number == next_number:
                    raise PipelineError(f"{second}: slice {number} of case {case_id!r} again (also {first}); "
                                        f"rename one or fix data.folder.case_pattern '{pattern.pattern}'")
            numbers = tuple(number for number, _ in members)
        else:
            members.sort(key=lambda member: (member[1].name, member[1]))
            numbers = tuple(range(len(members)))
        image_paths = tuple(image for _, image in members)
        mask_paths = tuple(mask_of[image] for image in image_paths)
        cases.append(CaseRef(
            case_id=case_id,
            root=root,
            files=tuple(path for pair in zip(image_paths, mask_paths) for path in pair),
            extra={"images": image_paths, "masks": mask_paths, "slice_index": numbers},
        ))
    return cases


def read_case(case: CaseRef, options) -> Case:
    """A case's slices: image float32 (S, C, H, W) in input_channels order, regions uint8 0/1 (S, K, H, W).

    A tumor-free slice has an all-zero mask and so all-zero regions. Raises PipelineError naming
    the file for an unreadable image or mask, slices of different sizes, a mask that is not one
    channel of the image's size, or mask values that are neither 0 nor a label.
    """
    colour = _colour(options.channels)
    channel_indices = _channel_indices(options)
    labels = _labels(options)
    allowed = np.asarray([0, *labels.values()])
    images, regions = [], []
    first_image = None
    for image_path, mask_path in zip(case.extra["images"], case.extra["masks"]):
        image = _read_image(image_path, colour)
        if first_image is None:
            first_image = image_path, image.shape[-2:]
        elif image.shape[-2:] != first_image[1]:
            raise PipelineError(f"{image_path}: image is {_hw(image.shape[-2:])}, but {first_image[0]} "
                                f"of the same case {case.case_id!r} is {_hw(first_image[1])}; "
                                f"slices of a case must share one size")
        mask = _read_mask(mask_path)
        if mask.shape != image.shape[-2:]:
            raise PipelineError(f"{mask_path}: mask is {_hw(mask.shape)} but its image {image_path} is "
                                f"{_hw(image.shape[-2:])}; masks must match their images pixel for pixel")
        outside = np.setdiff1d(np.unique(mask), allowed)
        if outside.size:
            hint = "; JPEG is lossy, store masks as PNG" if mask_path.suffix.lower() in {".jpg", ".jpeg"} else ""
            raise PipelineError(f"{mask_path}: mask values {outside[:10].tolist()} are neither 0 nor in "
                                f"data.folder.labels {labels}; relabel the mask or add them to the labels{hint}")
        images.append(image[channel_indices])
        regions.append(np.stack([mask == value for value in labels.values()]))
    return Case(
        case_id=case.case_id,
        image=np.stack(images).astype(np.float32),
        regions=np.stack(regions).astype(np.uint8),
        channel_names=tuple(options.input_channels),
        region_names=tuple(labels),
        slice_index=np.asarray(case.extra["slice_index"], dtype=np.int64),
        source_files=tuple(path.relative_to(case.root).as_posix() for path in case.extra["images"]),
    )


def write_sample(root: Path, *, cases: int, slices_per_case: int, size: int, seed: int) -> None:
    """Synthetic patients in the layout params.yaml's data.folder describes; the same seed gives the same bytes.

    `images/patient<NN>_<k>.png` is a greyscale FLAIR slice (k = 1..slices_per_case, bottom to
    top), `masks/patient<NN>_<k>_mask.png` is 255 on any tumor tissue (edema, enhancing rim,
    necrotic core) and 0 elsewhere. With three or more slices per case they span the whole
    volume, so the first and last miss the lesion; with fewer they cut through it.
    """
    rng = np.random.default_rng(seed)
    image_dir, mask_dir = root / "images", root / "masks"
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    tumor_tissue = [phantom.EDEMA, phantom.ENHANCING, phantom.NECROSIS]
    for number in range(1, cases + 1):
        case = phantom.random_phantom(rng, size, SAMPLE_DEPTH)
        if slices_per_case >= 3:
            # the lesion's z-extent (centre +- radius) lies strictly inside (0, SAMPLE_DEPTH)
            heights = np.linspace(0, SAMPLE_DEPTH, slices_per_case)
        else:
            heights = case.lesion.center_xyz[2] + case.lesion.radius_xyz[2] * np.linspace(-0.25, 0.25, slices_per_case)
        for k, z in enumerate(heights, start=1):
            tissue = phantom.tissue_map(case, float(z))
            grey = np.clip(phantom.render(case, tissue, "flair", rng) * SAMPLE_SCALE, 0, 255).astype(np.uint8)
            mask = np.isin(tissue, tumor_tissue).astype(np.uint8) * 255
            stem = f"patient{number:02d}_{k}"
            cv2.imwrite(str(image_dir / f"{stem}.png"), grey)
            cv2.imwrite(str(mask_dir / f"{stem}_mask.png"), mask)


# --- options ----------------------------------------------------------------------------

def _case_pattern(options) -> re.Pattern:
    try:
        pattern = re.compile(options.case_pattern)
    except re.error as error:
        raise PipelineError(f"params.yaml: data.folder.case_pattern '{options.case_pattern}': "
                            f"not a regex ({error})") from None
    if "case" not in pattern.groupindex:
        raise PipelineError(f"params.yaml: data.folder.case_pattern '{options.case_pattern}': needs a group "
                            f"(?P<case>...) for the patient id; (?P<case>.+) makes each image its own case")
    return pattern


def _check_mask_template(template: str) -> None:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:
        raise PipelineError(f"params.yaml: data.folder.masks {template!r}: not a name template ({error})") from None
    unknown = fields - {"stem", "parent"}
    if unknown or "stem" not in fields:
        raise PipelineError(f"params.yaml: data.folder.masks {template!r}: use {{stem}} (the image's name without "
                            f"extension) and optionally {{parent}} (its folder), e.g. masks/{{stem}}_mask.png")


def _mask_path(root: Path, image: Path, template: str) -> Path:
    return root / template.format(stem=image.stem, parent=image.parent.relative_to(root).as_posix())


def _slice_number(match: re.Match, image: Path, pattern: re.Pattern) -> int | None:
    if "slice" not in pattern.groupindex:
        return None
    text = match["slice"]
    if text is None or not text.isdigit():
        raise PipelineError(f"{image}: slice {text!r} from data.folder.case_pattern '{pattern.pattern}' "
                            f"is not a number; the (?P<slice>...) group must match digits only, e.g. (?P<slice>\\d+)")
    return int(text)


def _colour(channels: list[str]) -> bool:
    if len(channels) not in (1, 3) or len(set(channels)) != len(channels):
        raise PipelineError(f"params.yaml: data.folder.channels {list(channels)}: give one name for greyscale "
                            f"images or three distinct names for colour ones, in RGB order")
    return len(channels) == 3


def _channel_indices(options) -> list[int]:
    channels, wanted = list(options.channels), list(options.input_channels)
    unknown = [name for name in wanted if name not in channels]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise PipelineError(f"params.yaml: data.folder.input_channels {wanted}: expected distinct names "
                            f"out of data.folder.channels {channels}")
    return [channels.index(name) for name in wanted]


def _labels(options) -> dict[str, int]:
    labels = dict(options.labels)
    values = list(labels.values())
    if not labels \
            or any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_LABEL_VALUE for v in values) \
            or len(set(values)) != len(values):
        raise PipelineError(f"params.yaml: data.folder.labels {labels}: expected region name -> distinct "
                            f"mask value in 1..{MAX_LABEL_VALUE}, e.g. {{tumor: 255}} (0 is background)")
    return labels


# --- files ------------------------------------------------------------------------------

def _read_image(path: Path, colour: bool) -> np.ndarray:
    """(C, H, W) with C = 3 in RGB order, or C = 1; the stored dtype (8/16-bit, float TIFF)."""
    flags = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    image = decode(path, flags, "image", COPY_HINT)
    if colour:
        image = image[..., ::-1].transpose(2, 0, 1)  # OpenCV decodes to BGR
    else:
        image = image[None]
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise PipelineError(f"{path}: image holds NaN or infinite values; fix or remove the file")
    return image


def _read_mask(path: Path) -> np.ndarray:
    """(H, W) mask with its stored values; a 3-channel mask is accepted when its channels agree."""
    mask = decode(path, cv2.IMREAD_UNCHANGED, "mask", COPY_HINT)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    elif mask.ndim == 3 and mask.shape[2] == 3 and (mask == mask[..., :1]).all():
        mask = mask[..., 0]  # grey stored as RGB
    elif mask.ndim != 2:
        raise PipelineError(f"{path}: mask has {mask.shape[2]} channels that differ; store one channel of "
                            f"region values (data.folder.labels)")
    return mask


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]} (HxW)"


class FolderParams(Section):
    path: str  # the user's folder, used when data.source is not sample
    images: str
    masks: str
    case_pattern: str
    channels: Names
    input_channels: Names
    labels: LabelValues


DATASETS = (Dataset("folder", FolderParams, SampleSizes, list_cases, read_case, sample_of_cases(write_sample),
                    files="images", own_folder=True),)
