"""Reader for 3D MRI datasets stored as NIfTI volumes, in any layout a preset or params describe.

A layout says where the cases are and which file holds each sequence and the label map:

- `brats2020` (dataset `brats2020_nifti`, `awsaf49/brats20-dataset-training-validation`):
  `BraTS20_Training_<NNN>/BraTS20_Training_<NNN>_{flair,t1,t1ce,t2,seg}.nii(.gz)`; labels 1
  necrotic core, 2 edema, 4 enhancing. Archives nest the MICCAI folder at varying depths and some
  hold it twice (each case is read from its shallowest copy); case 355's seg is
  `W39_1998.09.19_Segm.nii` (a case's only other NIfTI is read as its seg).
- `brats2021`: `BraTS2021_<NNNNN>/BraTS2021_<NNNNN>_{flair,t1,t1ce,t2,seg}.nii.gz`, labels as 2020.
- `brats2023` (and later): `BraTS-GLI-<NNNNN>-<NNN>/BraTS-GLI-<NNNNN>-<NNN>-{t1c,t1n,t2f,t2w,seg}.nii.gz`
  (also MEN, MET, PED, SSA); labels 1 necrotic core, 2 edema, 3 enhancing.
- `nnunet` (nnU-Net raw): `imagesTr/<case>_<XXXX><file_ending>` (one file per channel, XXXX = the
  channel's number in dataset.json `channel_names`), `labelsTr/<case><file_ending>`.
- `decathlon` (Medical Segmentation Decathlon, Task01_BrainTumour): `imagesTr/<case>.nii.gz`, one
  4D image per case whose 4th axis holds the channels of dataset.json `modality`; `labelsTr/<case>.nii.gz`.
- `custom`: case folders whose names match `case_pattern`, `files` naming each sequence's file and
  `label_file` the label map, as templates relative to the case folder ({case} = its name).
Any layout takes an optional brain mask (`brain_mask_file`): voxels outside it are set to 0.

Sequence names are params' `sequences` (for nnunet and decathlon, the names dataset.json gives);
`labels` maps each sub-region to its label value, or to a list of values (a region such as whole
tumor = [1, 2, 3], as in nnU-Net's region-based dataset.json).

Orientation: every volume is brought to nibabel's canonical orientation (RAS+: array axes run to
the patient's right, anterior, superior) before slicing, so data stored in any orientation gives
the same slices; volumes already in RAS+ (BraTS, the samples) are used as stored. Axial slice k is
`volume[:, :, k]`, coronal `volume[:, k, :]`, sagittal `volume[k, :, :]`. `layout_spec` is what a
model file keeps, so `bts-predict` finds the same files and writes masks in each input's own
orientation and affine.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError
from tqdm import tqdm

from btseg.data import phantom
from btseg.data.base import MAX_LABEL_VALUE, Case, CaseRef
from btseg.errors import PipelineError, one_line
from btseg.fileio import write_csv

log = logging.getLogger(__name__)

LAYOUTS = ("brats2020", "brats2021", "brats2023", "nnunet", "decathlon", "custom")
NIFTI = (".nii", ".nii.gz")  # .nii first: where a folder holds both, the uncompressed one is read
SLICE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # array axis (after reorientation) each direction cuts along
SKIPPED_DIRS = ("__MACOSX",)  # macOS zips mirror every case folder here, full of `._` resource forks
AFFINE_TOLERANCE_MM = 1e-3
DOWNLOAD_HINT = "re-run the download stage"  # what to do about a bad file the pipeline itself downloaded
LABEL_FOLDERS = ("labelsTr", "labelsTs")  # nnU-Net / Decathlon label maps: never prediction inputs

# Folder-per-case presets: the case folder's name, each sequence's file and the label map's, without
# extension; {case} is the case folder's name. The numbers in the folder name order the cases.
FOLDER_PRESETS = {
    "brats2020": (r"BraTS20_Training_(\d+)", "{case}_{sequence}", "{case}_seg", NIFTI),
    "brats2021": (r"BraTS2021_(\d+)", "{case}_{sequence}", "{case}_seg", NIFTI),
    "brats2023": (r"BraTS-[A-Z]+-(\d+)-(\d+)", "{case}-{sequence}", "{case}-seg", NIFTI),
}
CASE_FOLDER_EXAMPLES = {"brats2020": "BraTS20_Training_<NNN>", "brats2021": "BraTS2021_<NNNNN>",
                        "brats2023": "BraTS-GLI-<NNNNN>-<NNN>"}
STANDARD_SEQUENCES = ("flair", "t1", "t1ce", "t2", "t1c", "t1n", "t2f", "t2w")  # never mistaken for a misnamed seg

# The samples: archive folders, and the phantom's sequence and tissue behind each name.
SAMPLE_DIRS = {
    "brats2020": Path("BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData"),
    "brats2021": Path("BraTS2021_Training_Data"),
    "brats2023": Path("ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"),
    "nnunet": Path("nnUNet_raw/Dataset001_BrainTumour"),
    "decathlon": Path("Task01_BrainTumour"),
    "custom": Path("site_export"),
}
SAMPLE_DIR = SAMPLE_DIRS["brats2020"]
SAMPLE_MISNAMED_SEG = "W39_1998.09.19_Segm.nii"  # the real case 355's seg file name
SAMPLE_SCALE = 1000.0  # real BraTS intensities are integer scanner units in the hundreds
PHANTOM_SEQUENCE = {"flair": "flair", "t2f": "flair", "t1": "t1", "t1n": "t1", "t1w": "t1", "t1ce": "t1ce",
                    "t1c": "t1ce", "t1gd": "t1ce", "t2": "t2", "t2w": "t2"}  # by lower-case name
LABEL_TISSUE = {
    "necrotic_core": phantom.NECROSIS,
    "edema": phantom.EDEMA,
    "enhancing": phantom.ENHANCING,
}

_NIFTI2_SIZEOF_HDR = (540).to_bytes(4, "little"), (540).to_bytes(4, "big")
_UNREADABLE = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError, WrapStructError)


@dataclass(frozen=True)
class Layout:
    """Where a dataset's cases and files are. Templates have no extension; {case} is the case's name."""

    name: str
    param: str  # the params section, for messages
    base: Path  # folder layouts: the dataset root; flat layouts: the folder holding dataset.json
    case_folder: str | None  # regex of a case folder's name; None: flat (every case's files under base)
    images: dict[str, str]  # sequence -> file template (folder layouts: relative to the case folder)
    label: str  # the label map's template ("" = none: cases for prediction only)
    brain_mask: str = ""  # optional brain mask template
    channel_index: dict[str, int] = field(default_factory=dict)  # 4D images: the sequence's index on axis 4
    channels_in_file: int = 0  # 4D images: channels each image must hold
    extensions: tuple[str, ...] = NIFTI

    def spec(self, axis: str, channels: list[str]) -> dict:
        """The layout as the model file keeps it, for prediction: the file name of each of the model's
        input `channels`, in the model's order, and the slice axis."""
        return {"layout": self.name, "images": {s: Path(self.images[s]).name for s in channels},
                "channel_index": {s: self.channel_index[s] for s in channels if s in self.channel_index},
                "channels_in_file": self.channels_in_file,
                "extensions": list(self.extensions), "axis": axis}


def param_section(options) -> str:
    return "data.nifti" if hasattr(options, "layout") else "data.brats2020_nifti"


def build_layout(root: Path, options) -> Layout:
    """The layout `options` (a params section) describe, for the dataset under `root`."""
    name = getattr(options, "layout", "brats2020")  # the brats2020_nifti section has no layout: it is that preset
    param = param_section(options)
    mask = getattr(options, "brain_mask_file", "")
    if name in FOLDER_PRESETS:
        pattern, image, label, extensions = FOLDER_PRESETS[name]
        known = {"brats2023": ("t1c", "t1n", "t2f", "t2w")}.get(name, ("flair", "t1", "t1ce", "t2"))
        unknown = [s for s in options.sequences if s not in known]
        if unknown:
            raise PipelineError(f"params.yaml: {param}.sequences: {unknown} are not {name} sequences; "
                                f"its files are named by {list(known)}")
        return Layout(name, param, root, pattern, {s: image.format(case="{case}", sequence=s) for s in options.sequences},
                      label, mask, extensions=extensions)
    if name == "custom":
        missing = [s for s in options.sequences if s not in options.files]
        if not options.case_pattern or missing:
            raise PipelineError(f"params.yaml: {param}: layout custom needs case_pattern (a regex of the case folders' "
                                f"names) and a files entry for each of sequences {list(options.sequences)}"
                                + (f"; missing {missing}" if missing else ""))
        return Layout(name, param, root, options.case_pattern,
                      {s: _strip_extension(options.files[s]) for s in options.sequences}, _strip_extension(options.label_file),
                      _strip_extension(mask))
    return _flat_layout(name, param, root, options, mask)


def _flat_layout(name: str, param: str, root: Path, options, mask: str) -> Layout:
    """nnunet / decathlon: read dataset.json (the shallowest under root) for channels and file ending."""
    found = sorted((p for p in root.rglob("dataset.json") if SKIPPED_DIRS[0] not in p.parts),
                   key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise PipelineError(f"{root}: no dataset.json at any depth; layout {name} ({param}.layout) reads the channel "
                            "names from it: is this an nnU-Net raw / Decathlon dataset folder?")
    path = found[0]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineError(f"{path}: unreadable dataset.json ({one_line(error, 120)})") from None
    key = "channel_names" if name == "nnunet" else "modality"
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, dict) or not names or not all(str(number).isdigit() for number in names):
        raise PipelineError(f"{path}: no '{key}' mapping of channel numbers to names; layout {name} needs it "
                            '(e.g. {"0": "FLAIR", "1": "T1w"})')
    index = {str(value): int(number) for number, value in names.items()}
    unknown = [s for s in options.sequences if s not in index]
    if unknown:
        raise PipelineError(f"params.yaml: {param}.sequences: {unknown} not among {path}'s {key} {list(index)}; "
                            "name the sequences as dataset.json does")
    _check_label_values(path, meta.get("labels"), options, param)
    base = path.parent
    if name == "nnunet":
        ending = str(meta.get("file_ending", ".nii.gz"))
        if ending not in NIFTI:
            raise PipelineError(f"{path}: file_ending {ending!r}; this reader reads NIfTI ({list(NIFTI)})")
        images = {s: f"imagesTr/{{case}}_{index[s]:04d}" for s in options.sequences}
        return Layout(name, param, base, None, images, "labelsTr/{case}", _strip_extension(mask), extensions=(ending,))
    images = {s: "imagesTr/{case}" for s in options.sequences}
    return Layout(name, param, base, None, images, "labelsTr/{case}", _strip_extension(mask),
                  channel_index={s: index[s] for s in options.sequences}, channels_in_file=len(index), extensions=(".nii.gz",))


def _check_label_values(path: Path, labels, options, param: str) -> None:
    """The params' label values must be classes dataset.json declares (its labels: name -> value or list)."""
    if not isinstance(labels, dict):
        return
    declared = set()
    for value in labels.values():
        for v in value if isinstance(value, list) else [value]:
            try:
                declared.add(int(v))
            except (TypeError, ValueError):
                pass
    declared |= {int(k) for k in labels if str(k).isdigit()}  # the Decathlon maps "1": "edema"
    wanted = {v for value in options.labels.values() for v in _values(value)}
    if wanted - declared:
        raise PipelineError(f"params.yaml: {param}.labels: values {sorted(wanted - declared)} are not classes of {path} "
                            f"(its labels: {labels})")


def _strip_extension(template: str) -> str:
    for extension in sorted(NIFTI, key=len, reverse=True):
        if template.endswith(extension):
            return template[: -len(extension)]
    return template


def _values(value) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def list_cases(root: Path, options) -> list[CaseRef]:
    """Every case under `root`, in order. Each CaseRef's `files` are its distinct files (input
    channels, label map, brain mask); `extra` holds, per input channel, the file and its index in a
    4D image. A missing file raises PipelineError naming it; so does a case without a label map."""
    _check_options(options)
    layout = build_layout(root, options)
    found = _case_files(layout, options)
    if not found:
        what = ("a BraTS 2020 NIfTI download (MICCAI_BraTS2020_TrainingData)" if layout.param.endswith("brats2020_nifti")
                else f"a {layout.name} dataset, as {layout.param}.layout says")
        raise PipelineError(f"{root}: {_where(layout)}; is this {what}? re-run the download stage")
    cases = []
    for case_id, folder in found:
        channels = [(_file(layout, folder, case_id, layout.images[s], f"{layout.param}.input_channels asks for {s}"),
                     layout.channel_index.get(s)) for s in options.input_channels]
        label = _label_file(layout, folder, case_id, options)
        mask = _file(layout, folder, case_id, layout.brain_mask, f"{layout.param}.brain_mask_file") if layout.brain_mask else None
        files = tuple(dict.fromkeys([path for path, _ in channels] + [label] + ([mask] if mask else [])))
        cases.append(CaseRef(case_id=case_id, root=root, files=files,
                             extra={"channels": channels, "label": label, "mask": mask,
                                    "channels_in_file": layout.channels_in_file}))
    return cases


def _where(layout: Layout) -> str:
    if layout.case_folder:
        example = CASE_FOLDER_EXAMPLES.get(layout.name, f"matching {layout.param}.case_pattern {layout.case_folder!r}")
        return f"no {example} case folders at any depth"
    return f"no {Path(next(iter(layout.images.values()))).name}{layout.extensions[0]} files in {layout.base / 'imagesTr'}"


def _case_files(layout: Layout, options) -> list[tuple[str, Path]]:
    """(case id, case folder) pairs; flat layouts list the first input channel's files under base."""
    if layout.case_folder:
        return [(folder.name, folder) for folder in _case_folders(layout.base, layout.case_folder)]
    template = layout.images[options.input_channels[0]]
    folder = layout.base / Path(template).parent
    pattern = _name_pattern(Path(template).name, layout.extensions)
    if not folder.is_dir():
        return []
    ids = sorted({m["case"] for p in folder.iterdir() if p.is_file() and (m := pattern.fullmatch(p.name))})
    return [(case_id, layout.base) for case_id in ids]


def _name_pattern(template: str, extensions) -> re.Pattern:
    """File names a template gives for any case ({case} = a name not starting with a dot, as macOS forks do)."""
    return re.compile(re.escape(template).replace(re.escape("{case}"), "(?P<case>[^.].*)")
                      + "(" + "|".join(map(re.escape, extensions)) + ")")


def _case_folders(root: Path, pattern: str) -> list[Path]:
    """Case folders under root, one per case id (the shallowest copy), ordered by the numbers in their names."""
    regex = re.compile(pattern)
    copies: dict[str, list[Path]] = {}
    for parent, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in [d for d in dirnames if regex.fullmatch(d)]:
            copies.setdefault(name, []).append(Path(parent) / name)
            dirnames.remove(name)  # a case folder holds files, not further cases
    duplicated = {name: paths for name, paths in copies.items() if len(paths) > 1}
    if duplicated:
        _, paths = min(duplicated.items())
        kept = _shallowest(paths)
        log.info("%s: %d case folders appear more than once; reading each from its shallowest copy (e.g. %s, not %s)",
                 root, len(duplicated), kept, [str(p) for p in paths if p != kept])
    folders = [_shallowest(paths) for paths in copies.values()]
    return sorted(folders, key=lambda folder: ([int(n) for n in re.findall(r"\d+", folder.name)], folder.name))


def _shallowest(paths: list[Path]) -> Path:
    return min(paths, key=lambda path: (len(path.parts), str(path)))


def _file(layout: Layout, folder: Path, case_id: str, template: str, why: str) -> Path:
    stem = template.replace("{case}", case_id)
    for extension in layout.extensions:
        path = folder / f"{stem}{extension}"
        if path.is_file():
            return path
    either = layout.extensions[0] + ("".join(f" or {e}" for e in layout.extensions[1:]))
    raise PipelineError(f"{folder / stem}{either} missing ({why}); re-run the download stage or change the params")


def _label_file(layout: Layout, folder: Path, case_id: str, options) -> Path:
    """The label map; BraTS 2020's case 355 names it otherwise: then the folder's only other NIfTI."""
    inference_only = ("cases without a label map can only be predicted (bts-predict), not trained on or evaluated")
    if not layout.label:
        raise PipelineError(f"params.yaml: {layout.param}.label_file is empty: {inference_only}")
    try:
        return _file(layout, folder, case_id, layout.label, "the label map")
    except PipelineError:
        if layout.name != "brats2020":
            stem = layout.label.replace("{case}", case_id)
            raise PipelineError(f"{folder / stem}{layout.extensions[0]} missing (the label map of case {case_id}); "
                                f"{inference_only}") from None
    sequences = {f"{case_id}_{s}{e}" for s in (*options.sequences, *STANDARD_SEQUENCES) for e in NIFTI}
    others = sorted(
        path for path in folder.iterdir()
        if path.is_file() and path.name.endswith(NIFTI) and not path.name.startswith(".") and path.name not in sequences
    )
    if len(others) == 1:
        log.info("%s: no %s_seg.nii(.gz); reading the only other NIfTI, %s, as its seg", folder, case_id, others[0].name)
        return others[0]
    found = f"; found candidates {[p.name for p in others]}, rename the seg to {case_id}_seg.nii" if others else ""
    raise PipelineError(f"{folder}: {case_id}_seg.nii(.gz) missing{found}; re-run the download stage")


def read_case(case: CaseRef, options) -> Case:
    """The case's slices along `options.axis`, in canonical orientation; every bad volume raises
    PipelineError naming its file.

    image:   float32 (S, C, H, W), C = len(options.input_channels), in that order; values as stored
             (0 outside the brain mask, where there is one)
    regions: uint8 (S, K, H, W), 0/1, channel k is `label map in values of list(options.labels.values())[k]`
    slice_index is 0..S-1 along the axis; source_files is the case folder (flat layouts: the first
    image file), relative to case.root, for every slice. Only this case's volumes are held in memory (a 4D image once).
    """
    _check_options(options)
    param = param_section(options)
    axis = SLICE_AXIS[options.axis]
    channels = case.extra["channels"]
    if len(channels) != len(options.input_channels):
        raise PipelineError(f"case {case.case_id}: {len(channels)} image files but {param}.input_channels has "
                            f"{len(options.input_channels)}; list the cases again with the same params")
    image = reference = None
    read = iter_volumes(channels, case.extra["channels_in_file"], hint=DOWNLOAD_HINT)
    for channel, (path, volume, source) in enumerate(read):
        reference = reference or (path, source.shape[:3], source.affine)  # the grid the label map must share
        if image is None:
            image = np.empty((volume.shape[axis], len(channels)) + _in_plane(volume.shape, axis), np.float32)
        image[:, channel] = np.moveaxis(volume, axis, 0)
        del volume  # keep one volume of scratch memory, not one per channel

    label_file = case.extra["label"]
    seg, header = read_nifti(label_file)
    check_same_grid(label_file, seg.shape, header.affine, reference, hint=DOWNLOAD_HINT)
    seg = np.moveaxis(to_canonical(seg, header.affine), axis, 0)
    values = [_values(v) for v in options.labels.values()]
    allowed = [0] + [v for group in values for v in group]
    unexpected = ~np.isin(seg, allowed)
    if unexpected.any():
        found = _plain(np.unique(seg[unexpected]))
        raise PipelineError(f"{label_file}: unexpected label value(s) {found}; expected 0 or {sorted(set(allowed[1:]))} "
                            f"per {param}.labels (add the missing sub-region there)")
    regions = np.stack([np.isin(seg, group) for group in values], axis=1).view(np.uint8)  # bool is stored as 0/1 bytes
    if case.extra.get("mask") is not None:
        mask_file = case.extra["mask"]
        mask, header = read_nifti(mask_file)
        check_same_grid(mask_file, mask.shape, header.affine, reference, hint=DOWNLOAD_HINT)
        outside = np.moveaxis(to_canonical(mask, header.affine), axis, 0) == 0
        image *= ~outside[:, None]

    # where the slices came from: the case folder, or (flat layouts: one folder for all cases) the first image file
    first = channels[0][0]
    origin = label_file.parent if first.parent == label_file.parent else first
    folder = Path(os.path.relpath(origin, case.root)).as_posix()
    slices = len(image)
    return Case(
        case_id=case.case_id,
        image=image,
        regions=regions,
        channel_names=tuple(options.input_channels),
        region_names=tuple(options.labels),
        slice_index=np.arange(slices),
        source_files=(folder,) * slices,
    )


def iter_volumes(channels: list[tuple[Path, int | None]], channels_in_file: int, *, hint: str):
    """Each (file, 4D index or None) in turn as (file, volume in canonical orientation, its image),
    every volume checked to lie on the first one's grid and to hold finite values; a 4D image is read
    once for all its channels. Used by preprocess and predict alike: `hint` ends a message about a
    bad file with what to do, which differs between the download's files and the user's own."""
    grid = held = None  # held: (file, array, image) of the 4D image in hand
    for path, index in channels:
        if index is None:
            volume, image = read_nifti(path, dtype=np.float32)
        else:
            if held is None or held[0] != path:
                held = (path, *read_nifti(path, dtype=np.float32, channels=channels_in_file))
            volume, image = held[1][..., index], held[2]
        grid = grid or (path, volume.shape, image.affine)
        check_same_grid(path, volume.shape, image.affine, grid, hint=hint)
        if not np.isfinite(volume).all():
            raise PipelineError(f"{path}: holds NaN or infinite voxels (a corrupt or badly exported file); {hint}")
        yield path, to_canonical(volume, image.affine), image


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The volume in nibabel's canonical orientation (RAS+); a view of the input when already there."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
    if (transform == [[0, 1], [1, 1], [2, 1]]).all():
        return volume
    return apply_orientation(volume, transform)


def from_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo `to_canonical`: a canonical-orientation array back in the orientation `affine` describes."""
    transform = ornt_transform(axcodes2ornt("RAS"), io_orientation(affine))
    return apply_orientation(volume, transform)


def read_nifti(path: Path, dtype=None, channels: int = 0) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A NIfTI volume and its image (affine, header), read whole so a truncated or corrupt file
    fails here (gzip CRC included). 3D unless `channels` > 0: then a 4D image with exactly that
    many volumes on its 4th axis. Used by preprocess and predict alike."""
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)  # checks length and CRC, which nibabel's partial reads skip
        image_class = nib.Nifti2Image if raw[:4] in _NIFTI2_SIZEOF_HDR else nib.Nifti1Image
        image = image_class.from_bytes(raw)
        volume = np.asanyarray(image.dataobj, dtype=dtype)
    except _UNREADABLE as error:
        raise PipelineError(f"{path}: unreadable NIfTI ({one_line(error)}); truncated or corrupt") from None
    if channels:
        if volume.ndim != 4 or volume.shape[3] != channels:
            raise PipelineError(f"{path}: image has shape {volume.shape}, expected 4D with {channels} channels "
                                "on the 4th axis (one per dataset.json modality)")
        return volume, image
    if volume.ndim > 3 and all(n == 1 for n in volume.shape[3:]):
        volume = volume.reshape(volume.shape[:3])  # some writers add singleton time/vector axes
    if volume.ndim != 3:
        raise PipelineError(f"{path}: volume has shape {volume.shape}, expected 3D (e.g. 240 x 240 x 155)")
    return volume, image


def check_same_grid(path: Path, shape: tuple, affine: np.ndarray, reference: tuple, *, hint: str) -> None:
    """Every volume of a case on the first one's voxel grid: same shape, same affine (`hint`: see iter_volumes)."""
    first, first_shape, first_affine = reference
    if shape[:3] != first_shape[:3]:
        raise PipelineError(f"{path}: shape {shape[:3]} differs from {first.name} {first_shape[:3]}; "
                            f"every volume of a case must match, {hint}")
    if not np.allclose(affine, first_affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        raise PipelineError(f"{path}: affine (voxel-to-world) differs from {first.name}'s; every volume of a case "
                            "must lie on the same grid: register or resample them first")


def _check_options(options) -> None:
    param = param_section(options)
    if options.axis not in SLICE_AXIS:
        raise PipelineError(f"params.yaml: {param}.axis '{options.axis}': expected one of {list(SLICE_AXIS)}")
    extra = [c for c in options.input_channels if c not in options.sequences]
    if not options.input_channels or extra or len(set(options.input_channels)) != len(options.input_channels):
        raise PipelineError(
            f"params.yaml: {param}.input_channels {list(options.input_channels)}: expected distinct names "
            f"from {param}.sequences {list(options.sequences)}"
        )
    values = list(options.labels.values())
    groups = [_values(v) for v in values]
    whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 < v <= MAX_LABEL_VALUE
                for group in groups for v in group)
    if not values or not whole or not all(groups) or len({tuple(g) for g in groups}) != len(groups):
        raise PipelineError(f"params.yaml: {param}.labels {dict(options.labels)}: expected distinct label values "
                            f"1..{MAX_LABEL_VALUE} (or lists of them), one per sub-region")


def _in_plane(shape: tuple, axis: int) -> tuple[int, int]:
    return tuple(n for i, n in enumerate(shape[:3]) if i != axis)


def _plain(values: np.ndarray) -> list:
    """Seg values for a message: ints where they are whole numbers (segs are sometimes stored as float)."""
    return [int(v) if float(v).is_integer() else float(v) for v in values.tolist()]


# --- prediction: the same files, found from a model's layout spec ----------------------------

def group_cases(files: list[Path], spec: dict) -> tuple[list[tuple[str, list[tuple[Path, int | None]]]], list[str]]:
    """NIfTI files grouped into cases by the layout a model was trained on.

    A case is a file matching the first sequence's name (with {case} standing for any name) plus,
    in the same folder, the files the other sequences' names give for that case; files in nnU-Net's
    and the Decathlon's label folders are not inputs. Returns the cases as (name, [(file, 4D index
    or None) per sequence]) and one line per incomplete case or folder without any case."""
    files = [p for p in files if p.parent.name not in LABEL_FOLDERS]
    sequences = list(spec["images"])
    first = _name_pattern(spec["images"][sequences[0]], spec["extensions"])
    cases, problems, seen = [], [], set()
    for path in sorted(files):
        match = first.fullmatch(path.name)
        if not match or path.name.endswith(("_mask.nii.gz", "_mask.nii")):
            continue
        seen.add(path.parent)
        case, channels = match["case"], []
        for sequence in sequences:
            names = [spec["images"][sequence].replace("{case}", case) + e for e in spec["extensions"]]
            found = next((path.parent / n for n in names if (path.parent / n).is_file()), None)  # beside the first
            if found is None:
                either = names[0] + "".join(f" or {e}" for e in spec["extensions"][1:])
                problems.append(f"{path.parent}: no {either} (the model expects sequences {sequences})")
                break
            channels.append((found, spec["channel_index"].get(sequence)))
        else:
            cases.append((case, channels))
    for folder in sorted({p.parent for p in files} - seen):
        problems.append(f"{folder}: no NIfTI file named like {spec['images'][sequences[0]]}{spec['extensions'][0]} "
                        f"(the model was trained on layout {spec['layout']}, sequences {sequences})")
    return cases, problems


# --- samples -----------------------------------------------------------------------------------

def write_sample(root: Path, *, cases: int, size: int, depth: int, sequences: list[str], labels: dict[str, int], seed: int,
                 layout: str = "brats2020", files: dict[str, str] | None = None, label_file: str = "") -> None:
    """A dataset in `layout`'s real form, drawn from the phantom; deterministic per seed.

    brats2020 (the `brats2020_nifti` sample): `root/BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/
    BraTS20_Training_<NNN>/` (NNN from 001) holds one int16 (size, size, depth) volume per sequence and
    a uint8 seg with the values of `labels`. Axial slice z of each volume is the phantom's slice z,
    rows = phantom y. Odd cases are written as `.nii`, even ones as `.nii.gz`; the last case's seg is
    `W39_1998.09.19_Segm.nii` like the real case 355. `name_mapping.csv` and `survival_info.csv` sit
    beside the case folders. The other layouts write .nii.gz files named as their archives do;
    nnunet and decathlon add dataset.json, and nnunet stores its volumes in LPS orientation (the
    array flipped on two axes, the affine saying so), so reading them exercises reorientation.
    """
    names = {s: PHANTOM_SEQUENCE.get(s.lower(), s) for s in sequences}
    phantom.check_drawable(list(names.values()), list(labels), LABEL_TISSUE, "data.sample / the layout's sequences")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise PipelineError("the sample generator writes one label value per sub-region; give labels as integers")
    rng = np.random.default_rng(seed)
    data_dir = root / SAMPLE_DIRS[layout]
    data_dir.mkdir(parents=True)
    case_ids = _sample_case_ids(layout, cases)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if layout == "nnunet" else np.eye(4)
    for number, case_id in enumerate(tqdm(case_ids, desc=f"sample {layout}", unit="case"), start=1):
        volumes, seg = _draw_case(rng, size, depth, names, labels)
        if layout == "nnunet":  # stored LPS: the canonical (RAS) array flipped on its first two axes
            volumes = {s: v[::-1, ::-1].copy() for s, v in volumes.items()}
            seg = seg[::-1, ::-1].copy()
        if layout == "brats2020":
            folder = data_dir / case_id
            folder.mkdir()
            extension = ".nii" if number % 2 else ".nii.gz"
            for sequence, volume in volumes.items():
                _save(volume, folder / f"{case_id}_{sequence}{extension}")
            _save(seg, folder / (SAMPLE_MISNAMED_SEG if number == cases else f"{case_id}_seg{extension}"))
        elif layout in FOLDER_PRESETS or layout == "custom":
            image_name, seg_name = ((files, label_file) if layout == "custom" else
                                    ({s: FOLDER_PRESETS[layout][1].replace("{sequence}", s) for s in sequences},
                                     FOLDER_PRESETS[layout][2]))
            for sequence, volume in volumes.items():
                _save(volume, data_dir / case_id / _nifti_name(image_name[sequence], case_id))
            _save(seg, data_dir / case_id / _nifti_name(seg_name, case_id))
        elif layout == "nnunet":
            for index, volume in enumerate(volumes.values()):
                _save(volume, data_dir / "imagesTr" / f"{case_id}_{index:04d}.nii.gz", affine)
            _save(seg, data_dir / "labelsTr" / f"{case_id}.nii.gz", affine)
        else:  # decathlon: one 4D float image per case
            _save(np.stack(list(volumes.values()), axis=-1).astype(np.float32), data_dir / "imagesTr" / f"{case_id}.nii.gz")
            _save(seg, data_dir / "labelsTr" / f"{case_id}.nii.gz")
    if layout == "brats2020":
        _brats2020_tables(data_dir, case_ids, rng)
    elif layout in ("nnunet", "decathlon"):
        _dataset_json(data_dir, layout, sequences, labels, case_ids)
        if layout == "decathlon":  # the real archive carries macOS resource forks beside the images
            (data_dir / "imagesTr" / f"._{case_ids[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")


def _sample_case_ids(layout: str, cases: int) -> list[str]:
    return [{"brats2020": f"BraTS20_Training_{n:03d}", "brats2021": f"BraTS2021_{n - 1:05d}",
             "brats2023": f"BraTS-GLI-{n - 1:05d}-000", "nnunet": f"BRATS_{n:03d}", "decathlon": f"BRATS_{n:03d}",
             "custom": f"patient{n:02d}"}[layout] for n in range(1, cases + 1)]


def _nifti_name(template: str, case_id: str) -> str:
    name = template.replace("{case}", case_id)
    return name if name.endswith(NIFTI) else name + ".nii.gz"


def _draw_case(rng, size: int, depth: int, names: dict[str, str], labels: dict[str, int]):
    """One phantom case: an int16 volume per sequence (keys as `names`) and the uint8 label map."""
    case = phantom.random_phantom(rng, size, depth)
    volumes = {sequence: np.zeros((size, size, depth), np.int16) for sequence in names}
    seg = np.zeros((size, size, depth), np.uint8)
    for z in range(depth):
        tissue = phantom.tissue_map(case, float(z))
        for sequence, drawn in names.items():
            signal = np.round(phantom.render(case, tissue, drawn, rng) * SAMPLE_SCALE)
            signal[tissue == phantom.BACKGROUND] = 0  # skull-stripped: background is exactly 0
            volumes[sequence][:, :, z] = np.clip(signal, 0, np.iinfo(np.int16).max)
        for name, value in labels.items():
            seg[:, :, z][tissue == LABEL_TISSUE[name]] = value
    return volumes, seg


def _brats2020_tables(data_dir: Path, case_ids: list[str], rng) -> None:
    write_csv(
        data_dir / "name_mapping.csv",
        ("Grade", "BraTS_2017_subject_ID", "BraTS_2018_subject_ID", "TCGA_TCIA_subject_ID",
         "BraTS_2019_subject_ID", "BraTS_2020_subject_ID"),
        [("HGG", "NA", "NA", "NA", "NA", case_id) for case_id in case_ids],
    )
    write_csv(
        data_dir / "survival_info.csv",
        ("Brats20ID", "Age", "Survival_days", "Extent_of_Resection"),
        [(case_id, round(float(rng.uniform(30, 80)), 3), int(rng.integers(50, 1500)), "GTR") for case_id in case_ids],
    )


def _dataset_json(data_dir: Path, layout: str, sequences: list[str], labels: dict[str, int], case_ids: list[str]) -> None:
    """dataset.json as nnU-Net v2 (channel_names, labels name -> value, file_ending) or the Decathlon
    (modality, labels value -> name, training list) write it."""
    if layout == "nnunet":
        meta = {"channel_names": {str(i): s for i, s in enumerate(sequences)},
                "labels": {"background": 0, **labels}, "numTraining": len(case_ids), "file_ending": ".nii.gz"}
    else:
        meta = {"name": "BRATS", "tensorImageSize": "4D", "modality": {str(i): s for i, s in enumerate(sequences)},
                "labels": {"0": "background", **{str(v): k for k, v in labels.items()}}, "numTraining": len(case_ids),
                "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids]}
    (data_dir / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n", encoding="utf-8")


def _save(volume: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(volume, np.eye(4) if affine is None else affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
