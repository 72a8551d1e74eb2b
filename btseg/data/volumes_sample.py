"""The synthetic sample of each NIfTI layout, drawn from the phantom in the layout's real form."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from btseg.data import phantom
from btseg.data.layouts import FOLDER_PRESETS, NIFTI
from btseg.data.nifti import save_nifti
from btseg.errors import PipelineError
from btseg.fileio import write_csv

log = logging.getLogger(__name__)

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


def write_sample(root: Path, *, cases: int, size: int, depth: int, sequences: list[str], labels: dict[str, int],
                 seed: int, layout: str = "brats2020", files: dict[str, str] | None = None,
                 label_file: str = "") -> None:
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
                save_nifti(volume, folder / f"{case_id}_{sequence}{extension}")
            save_nifti(seg, folder / (SAMPLE_MISNAMED_SEG if number == cases else f"{case_id}_seg{extension}"))
        elif layout in FOLDER_PRESETS or layout == "custom":
            image_name, seg_name = ((files, label_file) if layout == "custom" else
                                    ({s: FOLDER_PRESETS[layout][1].replace("{sequence}", s) for s in sequences},
                                     FOLDER_PRESETS[layout][2]))
            for sequence, volume in volumes.items():
                save_nifti(volume, data_dir / case_id / _nifti_name(image_name[sequence], case_id))
            save_nifti(seg, data_dir / case_id / _nifti_name(seg_name, case_id))
        elif layout == "nnunet":
            for index, volume in enumerate(volumes.values()):
                save_nifti(volume, data_dir / "imagesTr" / f"{case_id}_{index:04d}.nii.gz", affine)
            save_nifti(seg, data_dir / "labelsTr" / f"{case_id}.nii.gz", affine)
        else:  # decathlon: one 4D float image per case
            stacked = np.stack(list(volumes.values()), axis=-1).astype(np.float32)
            save_nifti(stacked, data_dir / "imagesTr" / f"{case_id}.nii.gz")
            save_nifti(seg, data_dir / "labelsTr" / f"{case_id}.nii.gz")
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


def _dataset_json(data_dir: Path, layout: str, sequences: list[str], labels: dict[str, int],
                  case_ids: list[str]) -> None:
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
