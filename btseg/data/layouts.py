"""Where a NIfTI dataset's cases and files are: the layouts (presets and `custom`), found on disk.

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

No volume is read here (btseg.data.nifti reads them), so params validation can use LAYOUTS.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from btseg.errors import PipelineError, one_line

log = logging.getLogger(__name__)

LAYOUTS = ("brats2020", "brats2021", "brats2023", "nnunet", "decathlon", "custom")


NIFTI = (".nii", ".nii.gz")  # .nii first: where a folder holds both, the uncompressed one is read


SKIPPED_DIRS = ("__MACOSX",)  # macOS zips mirror every case folder here, full of `._` resource forks


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
    """The params section `options` came from (data.brats2020_nifti or data.nifti), for messages."""
    return options.param


def build_layout(root: Path, options) -> Layout:
    """The layout `options` (a params section) describe, for the dataset under `root`."""
    name = options.layout  # data.brats2020_nifti: always the brats2020 preset
    param = param_section(options)
    mask = options.brain_mask_file
    if name in FOLDER_PRESETS:
        pattern, image, label, extensions = FOLDER_PRESETS[name]
        known = {"brats2023": ("t1c", "t1n", "t2f", "t2w")}.get(name, ("flair", "t1", "t1ce", "t2"))
        unknown = [s for s in options.sequences if s not in known]
        if unknown:
            raise PipelineError(f"params.yaml: {param}.sequences: {unknown} are not {name} sequences; "
                                f"its files are named by {list(known)}")
        images = {s: image.format(case="{case}", sequence=s) for s in options.sequences}
        return Layout(name, param, root, pattern, images, label, mask, extensions=extensions)
    if name == "custom":
        missing = [s for s in options.sequences if s not in options.files]
        if not options.case_pattern or missing:
            raise PipelineError(f"params.yaml: {param}: layout custom needs case_pattern (a regex of the case folders' "
                                f"names) and a files entry for each of sequences {list(options.sequences)}"
                                + (f"; missing {missing}" if missing else ""))
        return Layout(name, param, root, options.case_pattern,
                      {s: _strip_extension(options.files[s]) for s in options.sequences},
                      _strip_extension(options.label_file), _strip_extension(mask))
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
                  channel_index={s: index[s] for s in options.sequences}, channels_in_file=len(index),
                  extensions=(".nii.gz",))


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
    wanted = {v for value in options.labels.values() for v in label_values(value)}
    if wanted - declared:
        raise PipelineError(f"params.yaml: {param}.labels: values {sorted(wanted - declared)} are not classes of "
                            f"{path} (its labels: {labels})")


def _strip_extension(template: str) -> str:
    for extension in sorted(NIFTI, key=len, reverse=True):
        if template.endswith(extension):
            return template[: -len(extension)]
    return template


def label_values(value) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def where_none_were_found(layout: Layout) -> str:
    if layout.case_folder:
        example = CASE_FOLDER_EXAMPLES.get(layout.name, f"matching {layout.param}.case_pattern {layout.case_folder!r}")
        return f"no {example} case folders at any depth"
    first = Path(next(iter(layout.images.values()))).name
    return f"no {first}{layout.extensions[0]} files in {layout.base / 'imagesTr'}"


def case_locations(layout: Layout, options) -> list[tuple[str, Path]]:
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


def layout_file(layout: Layout, folder: Path, case_id: str, template: str, why: str) -> Path:
    stem = template.replace("{case}", case_id)
    for extension in layout.extensions:
        path = folder / f"{stem}{extension}"
        if path.is_file():
            return path
    either = layout.extensions[0] + ("".join(f" or {e}" for e in layout.extensions[1:]))
    raise PipelineError(f"{folder / stem}{either} missing ({why}); re-run the download stage or change the params")


def label_file_of(layout: Layout, folder: Path, case_id: str, options) -> Path:
    """The label map; BraTS 2020's case 355 names it otherwise: then the folder's only other NIfTI."""
    inference_only = ("cases without a label map can only be predicted (bts-predict), not trained on or evaluated")
    if not layout.label:
        raise PipelineError(f"params.yaml: {layout.param}.label_file is empty: {inference_only}")
    try:
        return layout_file(layout, folder, case_id, layout.label, "the label map")
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
        log.info("%s: no %s_seg.nii(.gz); reading the only other NIfTI, %s, as its seg", folder, case_id,
                 others[0].name)
        return others[0]
    found = f"; found candidates {[p.name for p in others]}, rename the seg to {case_id}_seg.nii" if others else ""
    raise PipelineError(f"{folder}: {case_id}_seg.nii(.gz) missing{found}; re-run the download stage")


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
