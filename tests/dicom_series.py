"""DICOM series written by the tests themselves (pydicom): a volume on a NIfTI affine as one MR file
per slice, in any slice order and file order, with the geometry a scanner would write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS = np.array([-1.0, -1.0, 1.0])  # RAS (NIfTI) -> LPS (DICOM): flip the first two axes


def write_series(volume: np.ndarray, affine: np.ndarray, folder: Path, *, slice_axis: int = 2,
                 description: str = "AX FLAIR", study: str | None = None, patient: str = "PHANTOM01",
                 series_number: int = 1, file_order: str = "forward", rescale: tuple[float, float] = (1.0, 0.0),
                 seed: int = 0) -> list[Path]:
    """Write `volume` (integers, on the RAS `affine`) as one MR Image file per slice along `slice_axis`.

    Frame k holds the voxels with index k on `slice_axis`: its pixel (r, c) is the voxel at index c on the
    lower of the two other axes and r on the higher one, so ImageOrientationPatient's first vector (the
    direction of increasing column index) is the lower axis, its second the higher.
    `file_order`: "forward" (instance numbers along the axis), "reverse", or "shuffled" (file names
    and instance numbers in random order); `rescale` = (slope, intercept), stored values = (v - b) / m."""
    folder.mkdir(parents=True, exist_ok=True)
    others = [a for a in range(3) if a != slice_axis]
    column_axis, row_axis = others  # moving along a frame's columns follows `column_axis`
    step = lambda axis: affine[:3, axis] * LPS  # noqa: E731  one voxel along an array axis, in LPS mm
    row_vector, column_vector = step(column_axis), step(row_axis)
    spacing = [float(np.linalg.norm(column_vector)), float(np.linalg.norm(row_vector))]  # row, column spacing
    orientation = [*(row_vector / spacing[1]), *(column_vector / spacing[0])]
    study = study or generate_uid()
    series, frame_of_reference = generate_uid(), generate_uid()
    count = volume.shape[slice_axis]
    order = {"forward": np.arange(count), "reverse": np.arange(count)[::-1],
             "shuffled": np.random.default_rng(seed).permutation(count)}[file_order]
    slope, intercept = rescale
    paths = []
    for number, k in enumerate(order, start=1):
        index = [0, 0, 0]
        index[slice_axis] = int(k)
        position = (affine @ [*index, 1])[:3] * LPS
        frame = np.moveaxis(volume, slice_axis, 0)[k]  # (column_axis, row_axis)
        frame = np.round((frame.T - intercept) / slope).astype(np.uint16)  # rows along row_axis
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Phantom^Test", patient
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20260101", "120000", "1", "", "")
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series_number, number, description
        ds.Manufacturer = "btseg tests"
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
        ds.PixelSpacing = spacing
        ds.SliceThickness = float(np.linalg.norm(affine[:3, slice_axis]))
        ds.Rows, ds.Columns = frame.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = frame.tobytes()
        path = folder / f"IM{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
