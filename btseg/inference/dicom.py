"""DICOM in and out for bts-predict: series found among the inputs, matched to the model's sequences,
read into a volume on its patient geometry, and the predicted mask written back as a DICOM SEG that
references the source series.

Reading is highdicom's (on pydicom): it orders the slices by their position along the slice normal
(not by InstanceNumber or file name, which scanners and PACS exports do not keep in order), requires
one orientation, one frame of reference and evenly spaced positions, applies the rescale slope and
intercept, and reads enhanced multi-frame files through their per-frame geometry; its volume's affine
is converted to NIfTI's RAS, so a DICOM series takes exactly the NIfTI path from there (same
reorientation, same slices, same mask). The same library writes the SEG, so reading and writing agree
on geometry. dicom2nifti would be a second reader with its own per-vendor code, SimpleITK a 50 MB
binary whose series reader only warns about uneven spacing. Before building the volume the series is
checked here, so that what cannot be trusted is refused in one line naming the series and the reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom
from pydicom.sr.codedict import codes

from btseg.errors import PipelineError, one_line

logging.getLogger("highdicom").setLevel(logging.WARNING)  # not a line per copied DICOM module

# SeriesDescription rules (regular expressions, case-insensitive), tried in this order: a series
# belongs to the first sequence whose rule it matches. FLAIR first (a "T2 FLAIR" is not a T2), the
# contrast-enhanced T1 before the plain T1. `bts-predict --sequence-rule NAME=REGEX` puts the user's
# rule for NAME first.
SEQUENCE_RULES = {
    "flair": r"flair|dark[ _-]?fluid",
    "t1ce": r"t1.*(\+ ?c\b|\bce\b|gd|gad|contrast|post)|(\+ ?c\b|gd|gad|post).*t1",
    "t1": r"t1",
    "t2": r"t2",
}

# other datasets' names for the same sequences (BraTS 2023, Decathlon)
SEQUENCE_ALIASES = {"t2f": "flair", "t1c": "t1ce", "t1gd": "t1ce", "t1n": "t1", "t1w": "t1", "t2w": "t2"}

NOT_IMAGES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "REG", "RWV"}  # modalities of objects without a scan's pixels

SPACING_TOLERANCE = 0.01  # a gap between slice positions may differ from the median gap by 1% (and 1e-3 mm)


@dataclass(frozen=True)
class Series:
    """One DICOM series found among the inputs: its files and what names it."""

    uid: str
    number: int | None
    description: str
    study: str
    patient: str
    files: tuple[Path, ...]

    @property
    def folder(self) -> Path:
        return common_folder(self.files)

    def label(self) -> str:
        return f"{self.folder}: series {self.number if self.number is not None else '?'} '{self.description}'"


@dataclass(frozen=True)
class DicomCase:
    """One case to predict on: per model channel, the series that holds it."""

    name: str
    series: tuple[tuple[str, Series], ...]


@dataclass
class DicomSource:
    """What the SEG needs of a DICOM case: the source series' datasets and its volume geometry."""

    datasets: list[pydicom.Dataset]
    volume: hd.Volume
    series: list[tuple[str, Series]]  # every channel's series


def find_series(files: list[Path]) -> tuple[list[Series], list[str]]:
    """The DICOM image series among `files` (other files are left to the other readers), grouped by
    SeriesInstanceUID; objects without a scan's pixels (SEG, structured reports, ...) are skipped."""
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    problems = []
    for path in files:
        # by content: exports name files IM0001, 1.2.840....dcm, or .IMA (Siemens)
        if not (path.suffix.lower() == ".dcm" or _is_dicom(path)):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as error:
            problems.append(f"{path}: not a readable DICOM file ({one_line(error, 120)})")
            continue
        if ds.get("Modality") in NOT_IMAGES or "Rows" not in ds:
            continue
        if "SeriesInstanceUID" not in ds:
            problems.append(f"{path}: DICOM image without a SeriesInstanceUID; cannot tell which series it belongs to")
            continue
        headers.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    series = []
    for uid, members in headers.items():
        first = members[0][1]
        number = first.get("SeriesNumber")
        series.append(Series(uid, int(number) if number not in (None, "") else None,
                             str(first.get("SeriesDescription", "") or first.get("ProtocolName", "")),
                             str(first.get("StudyInstanceUID", "")), str(first.get("PatientID", "")),
                             tuple(sorted(p for p, _ in members))))
    series.sort(key=lambda s: (s.patient, str(s.folder), s.number if s.number is not None else -1, s.uid))
    return series, problems


def _is_dicom(path: Path) -> bool:
    try:
        return is_dicom(path)
    except OSError:
        return False


def parse_rules(given: list[str]) -> dict[str, str]:
    """`--sequence-rule NAME=REGEX` options over the default rules: the user's first, in their order."""
    rules = {}
    for rule in given:
        name, sep, pattern = rule.partition("=")
        if not sep or not name.strip() or not pattern:
            raise PipelineError(f"--sequence-rule {rule!r}: write NAME=REGEX, e.g. t1ce='T1.*POST'")
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as error:
            raise PipelineError(f"--sequence-rule {rule!r}: not a regular expression ({error})") from None
        rules[name.strip().lower()] = pattern
    return {**rules, **{k: v for k, v in SEQUENCE_RULES.items() if k not in rules}}


def sequence_of(description: str, rules: dict[str, str]) -> str | None:
    """The sequence a SeriesDescription names: the first rule it matches, or None."""
    return next((name for name, rule in rules.items() if re.search(rule, description, re.IGNORECASE)), None)


def group_cases(series: list[Series], channels: list[str], rules: dict[str, str]) -> tuple[list[DicomCase], list[str]]:
    """Cases from the series found. A one-sequence model: one case per series (its description is not
    needed). A multi-sequence model: one case per study, each model channel taken by the one series
    whose SeriesDescription its rule matches; a channel no series or two series claim is one line."""
    cases, problems = [], []
    if len(channels) == 1:
        cases = [DicomCase(_name(s.patient, s.number, s.description), ((channels[0], s),)) for s in series]
    else:
        wanted = {c: c.lower() if c.lower() in rules else SEQUENCE_ALIASES.get(c.lower(), c.lower()) for c in channels}
        studies: dict[tuple[str, str], list[Series]] = {}
        for s in series:
            studies.setdefault((s.patient, s.study), []).append(s)
        for (patient, study), members in studies.items():
            named = [(s, sequence_of(s.description, rules)) for s in members]
            claims = {c: [s for s, sequence in named if sequence == wanted[c]] for c in channels}
            where = common_folder([f for s in members for f in s.files])
            found = ", ".join(f"'{s.description}'" for s in members)
            bad = [f"no series for {c} (" + (f"rule /{rules[wanted[c]]}/)" if wanted[c] in rules else "no rule)")
                   for c, claim in claims.items() if not claim]
            bad += [f"{c} claimed by " + " and ".join(f"series {s.number} '{s.description}'" for s in claim)
                    for c, claim in claims.items() if len(claim) > 1]
            if bad:
                problems.append(f"{where}: study of patient {patient or '?'}: {'; '.join(bad)} among {found}; "
                                "name each sequence's series with --sequence-rule NAME=REGEX (on SeriesDescription)")
                continue
            # named by the patient (a second study of theirs gets its UID's end: see below)
            cases.append(DicomCase(_name(patient, None, "" if patient else "study"),
                                   tuple((c, claims[c][0]) for c in channels)))
    names = [c.name for c in cases]
    cases = [DicomCase(f"{c.name}_{re.sub(r'[^0-9]', '', c.series[0][1].uid)[-6:]}" if names.count(c.name) > 1
                       else c.name, c.series) for c in cases]  # the same name twice: the series UID's last digits
    return cases, problems


def _name(patient: str, number: int | None, description: str) -> str:
    parts = [p for p in (patient, None if number is None else f"s{number}", description) if p]
    return re.sub(r"[^A-Za-z0-9.-]+", "_", "_".join(parts)).strip("_") or "dicom"


def common_folder(files) -> Path:
    """The deepest folder holding all `files`."""
    return Path(os.path.commonpath([str(Path(f).parent) for f in files]))


def read_series(series: Series) -> tuple[hd.Volume, list[pydicom.Dataset]]:
    """The series as a highdicom Volume (float32, rescaled), and its datasets in the volume's slice
    order; a series that cannot be trusted raises one line naming it."""
    where = series.label()
    try:
        datasets = [pydicom.dcmread(path) for path in series.files]
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise PipelineError(f"{where}: a file cannot be read ({one_line(error, 120)})") from None
    _check_pixels(datasets, where)
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        try:  # an enhanced multi-frame image: highdicom places its frames by their per-frame positions
            volume = hd.Image.from_dataset(datasets[0], copy=False).get_volume(dtype=np.float32)
        except (ValueError, RuntimeError, AttributeError, KeyError) as error:
            raise PipelineError(f"{where}: its frames do not form one evenly spaced volume ({one_line(error, 160)})"
                                ) from None
        return volume, datasets
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise PipelineError(f"{where}: {len(datasets)} files, multi-frame among them: give one enhanced file or "
                            "single-frame slices per series")
    _check_geometry(datasets, where)
    try:
        _, positions = hd.spatial.get_series_volume_positions(datasets, rtol=SPACING_TOLERANCE)
        ordered = [datasets[positions.index(i)] for i in range(len(datasets))] if len(datasets) > 1 else datasets
        volume = hd.get_volume_from_series(ordered, dtype=np.float32, rtol=SPACING_TOLERANCE)
    except (ValueError, RuntimeError, AttributeError, KeyError) as error:
        raise PipelineError(f"{where}: cannot be read as one volume ({one_line(error, 160)})") from None
    return volume, ordered


def _check_pixels(datasets: list[pydicom.Dataset], where: str) -> None:
    """Greyscale pixels this machine can decode (a compressed transfer syntax without its decoder is refused)."""
    first = datasets[0]
    if int(first.get("SamplesPerPixel", 1)) != 1:
        raise PipelineError(f"{where}: colour images ({first.get('PhotometricInterpretation')}), not an MR scan's "
                            "greyscale slices")
    if "PixelData" not in first and "FloatPixelData" not in first:
        raise PipelineError(f"{where}: {first.filename}: holds no pixel data")
    syntax = first.file_meta.get("TransferSyntaxUID") if hasattr(first, "file_meta") else None
    if syntax is not None and syntax.is_compressed:  # one slice tells whether a decoder is here
        try:
            first.pixel_array  # noqa: B018  decoding is the test (highdicom decodes every slice after)
        except (RuntimeError, NotImplementedError, ValueError) as error:
            raise PipelineError(f"{where}: pixel data compressed as {syntax.name} ({syntax}) cannot be decoded "
                                f"here ({one_line(error, 200)})") from None


def _check_geometry(datasets: list[pydicom.Dataset], where: str) -> None:
    """One orientation, one frame size and pixel spacing, and slices evenly spaced along the normal:
    else the slices cannot be stacked into one volume without guessing."""
    missing = [a for a in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
               if any(a not in ds for ds in datasets)]
    if missing:
        raise PipelineError(f"{where}: slices without {', '.join(missing)}: they cannot be placed in the patient")
    orientations = {tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4)) for ds in datasets}
    if len(orientations) > 1:
        raise PipelineError(f"{where}: mixed orientations ({len(orientations)} ImageOrientationPatient values: "
                            "a localizer or several planes in one series); give one plane's series")
    for attribute in ("Rows", "Columns", "PixelSpacing"):
        values = {str(ds.get(attribute)) for ds in datasets}
        if len(values) > 1:
            raise PipelineError(f"{where}: slices differ in {attribute} ({', '.join(sorted(values))})")
    if len(datasets) < 2:
        return
    orientation = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.sort([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for ds in datasets])
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    if (gaps < 1e-3).any():
        raise PipelineError(f"{where}: {int((gaps < 1e-3).sum()) + 1} slices share a position (several "
                            "acquisitions or echoes in one series); give one of them")
    uneven = np.abs(gaps - typical) > SPACING_TOLERANCE * typical + 1e-3
    if uneven.any():
        worst = int(np.argmax(np.abs(gaps - typical)))
        raise PipelineError(f"{where}: uneven slice spacing ({gaps[worst]:.3g} mm between slices {worst + 1} and "
                            f"{worst + 2} against {typical:.3g} mm elsewhere: a missing slice?); "
                            f"{len(datasets)} files")


def to_nifti(volume: hd.Volume):
    """The volume as a nibabel image in RAS (highdicom works in LPS), array axes as the volume's."""
    return volume.to_nibabel()


@cache
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _on_volume(volume: hd.Volume, stacked: np.ndarray) -> hd.Volume:
    """A multi-frame source: the masks as a Volume on its geometry, so highdicom matches the SEG's
    frames to the source frames by position (their order in the file need not be the volume's)."""
    return volume.with_array(stacked, channels={"SegmentNumber": list(range(1, stacked.shape[-1] + 1))})


def seg_bytes(source: DicomSource, masks: np.ndarray, targets: list[str], description: dict,
              sample: bool) -> bytes:
    """A DICOM SEG (binary, one segment per target) of `masks` (K, volume array axes) on the source
    series, with the algorithm (name, version, model file hash) that made it."""
    model_file = description.get("file")
    digest = _file_sha256(str(Path(model_file).resolve())) if model_file else "unknown"
    version = metadata.version("brain-tumor-seg")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"btseg {description['architecture']}", version=version, family=codes.cid7162.ArtificialIntelligence,
        source="brain-tumor-seg",
        parameters={"model_sha256": digest, "trained_on": str(description["dataset"]),
                    "val_case_dice": f"{description['val_case_dice']:.4f}"})
    segments = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=name[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for k, name in enumerate(targets)]
    first = source.datasets[0]
    stacked = np.moveaxis(masks.astype(np.uint8), 0, -1)  # (slices, rows, columns, segments)
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=stacked if len(source.datasets) > 1 else _on_volume(source.volume, stacked),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=int(first.get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="brain-tumor-seg", manufacturer_model_name=f"{description['architecture']} "
                                                                  f"({description['dataset']})"[:64],
        software_versions=version, device_serial_number=digest[:16],
        series_description=("btseg tumor segmentation" + (" (sample model)" if sample else ""))[:64],
        content_label="TUMOR", content_description=f"btseg {description['architecture']}"[:64],
        omit_empty_frames=False)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()
