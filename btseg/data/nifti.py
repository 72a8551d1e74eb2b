"""NIfTI volumes read and written, and their orientation.

Orientation: every volume is brought to nibabel's canonical orientation (RAS+: array axes run to
the patient's right, anterior, superior) before slicing, so data stored in any orientation gives
the same slices; volumes already in RAS+ (BraTS, the samples) are used as stored. Axial slice k is
`volume[:, :, k]`, coronal `volume[:, k, :]`, sagittal `volume[k, :, :]`. `layout_spec` is what a
model file keeps, so `bts-predict` finds the same files and writes masks in each input's own
orientation and affine.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from btseg.errors import PipelineError, one_line

log = logging.getLogger(__name__)

SLICE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # array axis (after reorientation) each direction cuts along


AFFINE_TOLERANCE_MM = 1e-3


_NIFTI2_SIZEOF_HDR = (540).to_bytes(4, "little"), (540).to_bytes(4, "big")


_UNREADABLE = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError, WrapStructError)


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


def save_nifti(volume: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(volume, np.eye(4) if affine is None else affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
