"""Decoding 2D image files (PNG, JPEG, TIFF) so that a truncated file is an error, not half an image.

OpenCV decodes a JPEG cut short with a warning on stderr and returns the missing part grey; a
truncated PNG or TIFF can also come back partly filled. `decode` first checks that the file is
complete: a PNG ends with its IEND chunk, a JPEG's last scan is followed by its end-of-image
marker, and every strip or tile of a TIFF's first image lies inside the file.

A TIFF of float samples (32 or 64 bit, e.g. exported from MRI software) is one OpenCV decodes only
when asked for exactly the file's own depth and channel count; `decode` reads it as stored and
converts the channels itself (see there).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from btseg.errors import PipelineError

PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # IEND chunk type + its fixed CRC
JPEG_START, JPEG_SCAN, JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
TIFF_STARTS = {b"II*\x00": "<", b"MM\x00*": ">"}
TIFF_DATA_TAGS = ((273, 279), (324, 325))  # (strip offsets, strip byte counts), (tile offsets, tile byte counts)
TIFF_SAMPLE_FORMAT, TIFF_FLOAT = 339, 3  # the SampleFormat tag and its value for IEEE floating point


def decode(path: Path, flags: int, what: str, hint: str) -> np.ndarray:
    """The decoded image (as cv2.imdecode gives it); PipelineError naming `path` if the file is
    unreadable, empty, truncated or not an image. `hint` says what to do (e.g. re-run the download).

    A float TIFF comes back float32 (H, W) or (H, W, 3) BGR as `flags` ask for grey or colour, its
    values as stored whatever the depth flag: where OpenCV would cut 16-bit samples to 8 bits, a
    float has no fixed range to scale from, and every reader normalises a case by its own range.
    Grey from colour is OpenCV's luminance. A float image holding NaN or infinity is refused."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PipelineError(f"{path}: cannot read the {what} ({error.strerror}); {hint}") from None
    if not data:
        raise PipelineError(f"{path}: empty {what} file (0 bytes); {hint}")
    if truncated(data):
        raise PipelineError(f"{path}: {what} file ends before its last byte of image data; it is truncated, {hint}")
    # decoding the bytes already read, rather than cv2.imread, also copes with non-ASCII paths on Windows
    floats = data[:4] in TIFF_STARTS and _tiff_float(data, TIFF_STARTS[data[:4]])
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED if floats else flags)
    if array is None or array.size == 0:
        raise PipelineError(f"{path}: unreadable {what}; the file is corrupt or not a PNG/JPEG/TIFF, {hint}")
    if floats:
        array = _channels_as_asked(array.astype(np.float32), flags)
        if not np.isfinite(array).all():
            raise PipelineError(f"{path}: {what} holds NaN or infinite values; {hint}")
    return array


def _channels_as_asked(image: np.ndarray, flags: int) -> np.ndarray:
    """A float32 image as stored (H, W[, C]) with the channels cv2.imdecode's `flags` ask for."""
    if flags < 0 or flags & cv2.IMREAD_ANYCOLOR:
        return image
    channels = 1 if image.ndim == 2 else image.shape[2]
    if flags & cv2.IMREAD_COLOR:
        conversion = {1: cv2.COLOR_GRAY2BGR, 4: cv2.COLOR_BGRA2BGR}.get(channels)
    else:
        conversion = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(channels)
    return image if conversion is None else cv2.cvtColor(image, conversion)


def truncated(data: bytes) -> bool:
    """Whether a PNG, JPEG or TIFF file stops before its image data ends (other formats: False)."""
    if data.startswith(PNG_SIGNATURE):
        return data.rfind(PNG_END) == -1
    if data.startswith(JPEG_START):
        # markers cannot occur inside JPEG entropy-coded data, so the last scan must be followed by EOI;
        # a JPEG cut before its first scan has none at all
        scan = data.rfind(JPEG_SCAN)
        return scan == -1 or data.rfind(JPEG_END) < scan
    if data[:4] in TIFF_STARTS:
        return _tiff_truncated(data, TIFF_STARTS[data[:4]])
    return False


def _tiff_float(data: bytes, order: str) -> bool:
    """Whether the first image directory says its samples are IEEE floats (SampleFormat 3)."""
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        for i in range(count):
            tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * i)
            if tag == TIFF_SAMPLE_FORMAT and kind == 3:
                return TIFF_FLOAT in _tiff_values(data, order, kind, n, value)
    except struct.error:
        pass  # a directory cut short: not float as far as can be told, and `truncated` has refused such a file
    return False


def _tiff_truncated(data: bytes, order: str) -> bool:
    """The first image directory's strips (or tiles) must all end inside the file."""
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        entries = {}
        for i in range(count):
            tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * i)
            entries[tag] = (kind, n, value)
        for offsets_tag, counts_tag in TIFF_DATA_TAGS:
            if offsets_tag in entries and counts_tag in entries:
                offsets = _tiff_values(data, order, *entries[offsets_tag])
                counts = _tiff_values(data, order, *entries[counts_tag])
                return max(o + c for o, c in zip(offsets, counts)) > len(data)
        return False
    except struct.error:  # the directory itself lies beyond the end of the file
        return True


def _tiff_values(data: bytes, order: str, kind: int, n: int, value: bytes) -> list[int]:
    """A SHORT (3) or LONG (4) array of a TIFF entry: inline when it fits in 4 bytes, else at an offset."""
    code, size = {3: ("H", 2), 4: ("I", 4)}[kind]
    if n * size <= 4:
        return list(struct.unpack_from(order + code * n, value))
    (offset,) = struct.unpack_from(order + "I", value)
    return list(struct.unpack_from(order + code * n, data, offset))
