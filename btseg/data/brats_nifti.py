"""Reader for BraTS 2020 as NIfTI volumes (`awsaf49/brats20-dataset-training-validation`, CBICA).

Layout: `MICCAI_BraTS2020_TrainingData/BraTS20_Training_<NNN>/BraTS20_Training_<NNN>_<seq>.nii`
(or `.nii.gz`) for each sequence (flair, t1, t1ce, t2) and `_seg`, every volume 240 x 240 x 155.
The seg holds one value per tumor sub-region (1 necrotic core, 2 edema, 4 enhancing; 0 background).
Archives nest the MICCAI folder at varying depths and some hold it twice; case 355's seg is
named `W39_1998.09.19_Segm.nii`.

Orientation: slices are cut from the array as stored on disk, with no reorientation by the
affine (all BraTS volumes share one). Axial slice k is `volume[:, :, k]`, coronal `volume[:, k, :]`,
sagittal `volume[k, :, :]`; the two remaining array axes become (H, W) in their stored order.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError
from tqdm import tqdm

from btseg.data import phantom
from btseg.data.base import MAX_LABEL_VALUE, Case, CaseRef
from btseg.errors import PipelineError, one_line
from btseg.fileio import write_csv

log = logging.getLogger("btseg.data.brats_nifti")

PARAMS = "data.brats2020_nifti"
CASE_DIR = re.compile(r"BraTS20_Training_(\d+)")
EXTENSIONS = (".nii", ".nii.gz")  # .nii first: where a folder holds both, the uncompressed one is read
STANDARD_SEQUENCES = ("flair", "t1", "t1ce", "t2")  # never mistaken for a misnamed seg, even if not in params
SLICE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # array axis each slice direction cuts along
SKIPPED_DIRS = ("__MACOSX",)  # macOS zips mirror every case folder here, full of `._` resource forks

# The sample's archive layout and the phantom tissue behind each sub-region name of `labels`.
SAMPLE_DIR = Path("BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData")
SAMPLE_MISNAMED_SEG = "W39_1998.09.19_Segm.nii"  # the real case 355's seg file name
SAMPLE_SCALE = 1000.0  # real BraTS intensities are integer scanner units in the hundreds
LABEL_TISSUE = {
    "necrotic_core": phantom.NECROSIS,
    "edema": phantom.EDEMA,
    "enhancing": phantom.ENHANCING,
}

_NIFTI2_SIZEOF_HDR = (540).to_bytes(4, "little"), (540).to_bytes(4, "big")
_UNREADABLE = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError, WrapStructError)


def list_cases(root: Path, options) -> list[CaseRef]:
    """Every `BraTS20_Training_<NNN>` folder at any depth under `root`, ordered by NNN.

    A case folder found twice (archives that hold the data twice) is read once, from its
    shallowest copy. Each CaseRef's `files` are the `options.input_channels` volumes in that
    order, then the seg. A missing volume raises PipelineError naming the folder and the file.
    """
    _check_options(options)
    folders = _case_folders(root)
    if not folders:
        raise PipelineError(
            f"{root}: no BraTS20_Training_<NNN> case folders at any depth; "
            "is this a BraTS 2020 NIfTI download (MICCAI_BraTS2020_TrainingData)? re-run the download stage"
        )
    cases = []
    for folder in folders:
        files = tuple(_sequence_file(folder, sequence) for sequence in options.input_channels)
        cases.append(CaseRef(case_id=folder.name, root=root, files=files + (_seg_file(folder, options),)))
    return cases


def read_case(case: CaseRef, options) -> Case:
    """The case's slices along `options.axis`; every bad volume raises PipelineError naming its file.

    image:   float32 (S, C, H, W), C = len(options.input_channels), in that order; values as stored
    regions: uint8 (S, K, H, W), 0/1, channel k is `seg == list(options.labels.values())[k]`
             (all zero on slices without that sub-region)
    slice_index is 0..S-1 along the axis; source_files is the case folder (relative to case.root)
    for every slice. Only this case's volumes are held in memory.
    """
    _check_options(options)
    axis = SLICE_AXIS[options.axis]
    *image_files, seg_file = case.files
    if len(image_files) != len(options.input_channels):
        raise PipelineError(
            f"case {case.case_id}: {len(image_files)} image files but {PARAMS}.input_channels has "
            f"{len(options.input_channels)}; list the cases again with the same params"
        )

    image = shape = None
    for channel, path in enumerate(image_files):
        volume, _ = read_nifti(path, dtype=np.float32)
        if image is None:
            shape = volume.shape
            image = np.empty((shape[axis], len(image_files)) + _in_plane(shape, axis), np.float32)
        _check_same_shape(path, volume.shape, image_files[0], shape)
        if not np.isfinite(volume).all():
            raise PipelineError(f"{path}: holds NaN or infinite voxels; the file is corrupt, re-run the download stage")
        image[:, channel] = np.moveaxis(volume, axis, 0)
        del volume  # keep one volume of scratch memory, not one per channel

    seg, _ = read_nifti(seg_file)
    _check_same_shape(seg_file, seg.shape, image_files[0], shape)
    values = list(options.labels.values())
    unexpected = ~np.isin(seg, [0] + values)
    if unexpected.any():
        found = _plain(np.unique(seg[unexpected]))
        raise PipelineError(
            f"{seg_file}: unexpected label value(s) {found}; expected 0 or {values} "
            f"per {PARAMS}.labels (add the missing sub-region there)"
        )
    seg = np.moveaxis(seg, axis, 0)
    regions = np.stack([seg == value for value in values], axis=1).view(np.uint8)  # bool is stored as 0/1 bytes

    folder = Path(os.path.relpath(seg_file.parent, case.root)).as_posix()
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


def write_sample(root: Path, *, cases: int, size: int, depth: int, sequences: list[str], labels: dict[str, int], seed: int) -> None:
    """BraTS 2020 volumes in the real archive's layout, drawn from the phantom; deterministic per seed.

    `root/BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_<NNN>/` (NNN from
    001) holds one int16 (size, size, depth) volume per sequence and a uint8 seg with the values
    of `labels`. Axial slice z of each volume is the phantom's slice z, rows = phantom y. Odd cases
    are written as `.nii`, even ones as `.nii.gz`; the last case's seg is `W39_1998.09.19_Segm.nii`
    like the real case 355. `name_mapping.csv` and `survival_info.csv` sit beside the case folders.
    """
    phantom.check_drawable(sequences, list(labels), LABEL_TISSUE, PARAMS)
    rng = np.random.default_rng(seed)
    data_dir = root / SAMPLE_DIR
    data_dir.mkdir(parents=True)
    case_ids = [f"BraTS20_Training_{number:03d}" for number in range(1, cases + 1)]
    for number, case_id in enumerate(tqdm(case_ids, desc="sample brats2020_nifti", unit="case"), start=1):
        folder = data_dir / case_id
        folder.mkdir()
        extension = ".nii" if number % 2 else ".nii.gz"
        case = phantom.random_phantom(rng, size, depth)
        volumes = {sequence: np.zeros((size, size, depth), np.int16) for sequence in sequences}
        seg = np.zeros((size, size, depth), np.uint8)
        for z in range(depth):
            tissue = phantom.tissue_map(case, float(z))
            for sequence in sequences:
                signal = np.round(phantom.render(case, tissue, sequence, rng) * SAMPLE_SCALE)
                signal[tissue == phantom.BACKGROUND] = 0  # skull-stripped: background is exactly 0
                volumes[sequence][:, :, z] = np.clip(signal, 0, np.iinfo(np.int16).max)
            for name, value in labels.items():
                seg[:, :, z][tissue == LABEL_TISSUE[name]] = value
        for sequence, volume in volumes.items():
            _save(volume, folder / f"{case_id}_{sequence}{extension}")
        _save(seg, folder / (SAMPLE_MISNAMED_SEG if number == cases else f"{case_id}_seg{extension}"))

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


def _check_options(options) -> None:
    if options.axis not in SLICE_AXIS:
        raise PipelineError(f"params.yaml: {PARAMS}.axis '{options.axis}': expected one of {list(SLICE_AXIS)}")
    extra = [c for c in options.input_channels if c not in options.sequences]
    if not options.input_channels or extra or len(set(options.input_channels)) != len(options.input_channels):
        raise PipelineError(
            f"params.yaml: {PARAMS}.input_channels {list(options.input_channels)}: expected distinct names "
            f"from {PARAMS}.sequences {list(options.sequences)}"
        )
    values = list(options.labels.values())
    whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 < v <= MAX_LABEL_VALUE for v in values)
    if not values or not whole or len(set(values)) != len(values):
        raise PipelineError(f"params.yaml: {PARAMS}.labels {dict(options.labels)}: expected distinct seg values "
                            f"1..{MAX_LABEL_VALUE}, one per sub-region")


def _case_folders(root: Path) -> list[Path]:
    """Case folders under root, one per case id (the shallowest copy), ordered by case number."""
    copies: dict[str, list[Path]] = {}
    for parent, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in [d for d in dirnames if CASE_DIR.fullmatch(d)]:
            copies.setdefault(name, []).append(Path(parent) / name)
            dirnames.remove(name)  # a case folder holds files, not further cases
    duplicated = {name: paths for name, paths in copies.items() if len(paths) > 1}
    if duplicated:
        _, paths = min(duplicated.items())
        kept = _shallowest(paths)
        log.info("%s: %d case folders appear more than once; reading each from its shallowest copy (e.g. %s, not %s)",
                 root, len(duplicated), kept, [str(p) for p in paths if p != kept])
    folders = [_shallowest(paths) for paths in copies.values()]
    return sorted(folders, key=lambda folder: int(CASE_DIR.fullmatch(folder.name)[1]))


def _shallowest(paths: list[Path]) -> Path:
    return min(paths, key=lambda path: (len(path.parts), str(path)))


def _sequence_file(folder: Path, sequence: str) -> Path:
    for extension in EXTENSIONS:
        path = folder / f"{folder.name}_{sequence}{extension}"
        if path.is_file():
            return path
    raise PipelineError(
        f"{folder}: {folder.name}_{sequence}.nii(.gz) missing ({PARAMS}.input_channels asks for {sequence}); "
        "re-run the download stage or drop the sequence from input_channels"
    )


def _seg_file(folder: Path, options) -> Path:
    """`<case>_seg.nii(.gz)`; failing that, the folder's only NIfTI that is not a sequence (case 355)."""
    for extension in EXTENSIONS:
        path = folder / f"{folder.name}_seg{extension}"
        if path.is_file():
            return path
    sequences = {f"{folder.name}_{s}{e}" for s in (*options.sequences, *STANDARD_SEQUENCES) for e in EXTENSIONS}
    others = sorted(
        path for path in folder.iterdir()
        if path.is_file() and path.name.endswith(EXTENSIONS) and not path.name.startswith(".") and path.name not in sequences
    )
    if len(others) == 1:
        log.info("%s: no %s_seg.nii(.gz); reading the only other NIfTI, %s, as its seg", folder, folder.name, others[0].name)
        return others[0]
    found = f"; found candidates {[p.name for p in others]}, rename the seg to {folder.name}_seg.nii" if others else ""
    raise PipelineError(f"{folder}: {folder.name}_seg.nii(.gz) missing{found}; re-run the download stage")


def read_nifti(path: Path, dtype=None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A 3D NIfTI volume and its image (affine, header), read whole so a truncated or corrupt file
    fails here (gzip CRC included). Used by preprocess and predict alike."""
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)  # checks length and CRC, which nibabel's partial reads skip
        image_class = nib.Nifti2Image if raw[:4] in _NIFTI2_SIZEOF_HDR else nib.Nifti1Image
        image = image_class.from_bytes(raw)
        volume = np.asanyarray(image.dataobj, dtype=dtype)
    except _UNREADABLE as error:
        raise PipelineError(f"{path}: unreadable NIfTI ({one_line(error)}); truncated or corrupt") from None
    if volume.ndim > 3 and all(n == 1 for n in volume.shape[3:]):
        volume = volume.reshape(volume.shape[:3])  # some writers add singleton time/vector axes
    if volume.ndim != 3:
        raise PipelineError(f"{path}: volume has shape {volume.shape}, expected 3D (e.g. 240 x 240 x 155)")
    return volume, image


def _check_same_shape(path: Path, shape: tuple, reference: Path, reference_shape: tuple) -> None:
    if shape != reference_shape:
        raise PipelineError(
            f"{path}: shape {shape} differs from {reference.name} {reference_shape}; "
            "every volume of a case must match, re-run the download stage"
        )


def _in_plane(shape: tuple, axis: int) -> tuple[int, int]:
    return tuple(n for i, n in enumerate(shape) if i != axis)


def _plain(values: np.ndarray) -> list:
    """Seg values for a message: ints where they are whole numbers (segs are sometimes stored as float)."""
    return [int(v) if float(v).is_integer() else float(v) for v in values.tolist()]


def _save(volume: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(volume, np.eye(4))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)

