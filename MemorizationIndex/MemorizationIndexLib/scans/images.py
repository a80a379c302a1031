"""2D images, what most generative MRI models write: raster files and NumPy stacks.

A raster file (PNG 8/16 bit, JPEG, TIFF 8/16 bit or float, BMP) is one image. A NumPy file
is a stack: `.npy` holds one array, `.npz` one or more, each H x W (one image), N x H x W,
N x H x W x C or N x C x H x W (N images); every image of a stack is one input of its own,
named by its entry ("[12]" in a .npy, "arr_0[12]" in a .npz), whose index is its slice
index. Each image becomes a SimpleITK image of one slice, read by the same code as a 3D
scan from there on (slicing.py).

Raster and NumPy files carry no pixel size: the image is laid on a 1 x 1 grid whose unit is
the pixel, and the outputs say "px" (nothing invents millimetres). Grey images stored as
RGB (three equal channels, as medfusion and MONAI's tutorials write them) are read as one
channel without a word; real colour is averaged, and said so.
"""

from __future__ import annotations

import functools
import os
import re
import zipfile

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .sources import reader_reason, suffix_in

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ARRAY_SUFFIXES = (".npy", ".npz")
CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA (alpha is dropped)
# Channels whose largest difference is within this share of the value range are one grey:
# a grey image saved as RGB JPEG differs by a level or two per channel.
GREY_TOLERANCE = 0.02
MIN_SIDE = 16  # as slicing.MIN_INPLANE: an image smaller than one encoder patch is refused
_ENTRY = re.compile(r"^(?P<key>.*)\[(?P<index>\d+)\]$")


def is_raster(path: str) -> bool:
    return bool(suffix_in(os.path.basename(path), RASTER_SUFFIXES))


def is_array_file(path: str) -> bool:
    return bool(suffix_in(os.path.basename(path), ARRAY_SUFFIXES))


def is_image_file(source) -> bool:
    """A ScanSource that is one 2D image by its file alone: a raster file or an image of a
    NumPy stack (a 2D NIfTI or DICOM is known to be one only once read)."""
    return source.is_stack_entry or is_raster(source.path)


def entry_index(entry: str) -> int:
    """The slice index of a stack entry ("arr_0[12]" -> 12; 0 for a single image)."""
    match = _ENTRY.match(entry)
    return int(match.group("index")) if match else 0


def _entry_key(entry: str) -> str:
    match = _ENTRY.match(entry)
    return match.group("key") if match else entry


# ---- stacks ------------------------------------------------------------------------------------
def _layout(shape: tuple[int, ...]) -> str | None:
    """How an array's axes hold images: "HW", "HWC" (one image), "NHW", "NHWC", "NCHW";
    None when no reading of the shape gives images of at least MIN_SIDE pixels a side."""
    big = [s >= MIN_SIDE for s in shape]
    if len(shape) == 2 and all(big):
        return "HW"
    if len(shape) == 3:
        if shape[2] in CHANNEL_COUNTS and big[0] and big[1]:
            return "HWC"  # one colour image (a stack of 3-pixel-wide images is no image)
        if big[1] and big[2]:
            return "NHW"
    if len(shape) == 4:
        if shape[3] in CHANNEL_COUNTS and big[1] and big[2]:
            return "NHWC"
        if shape[1] in CHANNEL_COUNTS and big[2] and big[3]:
            return "NCHW"  # PyTorch's order
    return None


def _count(shape: tuple[int, ...], layout: str) -> int:
    return int(shape[0]) if layout.startswith("N") else 1


def _header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy stream's header, without reading its data."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(s) for s in shape), dtype


def _npy_shape(path: str) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as fh:
        return _header(fh)


def _npz_shapes(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of every array in a .npz, read from the member headers only."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as fh:
                shapes[name[: -len(".npy")]] = _header(fh)
    return shapes


def _array_shapes(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key ("" for a .npy): (shape, dtype)}; InputError naming the file when unreadable."""
    try:
        if path.lower().endswith(".npy"):
            return {"": _npy_shape(path)}
        return _npz_shapes(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        kind = "NumPy archive (.npz)" if path.lower().endswith(".npz") else "NumPy array (.npy)"
        raise InputError(f"{path} could not be read as a {kind}: {exc}.") from exc


def stack_entries(path: str) -> tuple[list[str], list[str]]:
    """(entries, problems) of a .npy or .npz: one entry per image; a problem (a sentence
    naming the file and key) per array that holds no images. InputError when the file
    cannot be read at all."""
    entries: list[str] = []
    problems: list[str] = []
    for key, (shape, dtype) in _array_shapes(path).items():
        where = f"{path}" + (f" (array '{key}')" if key else "")
        if dtype.kind not in "biuf":
            problems.append(f"{where} holds {dtype} values, not image intensities.")
            continue
        layout = _layout(shape)
        if layout is None:
            problems.append(
                f"{where} has the shape {tuple(shape)}, which holds no images: MemorizationIndex "
                "reads H x W, N x H x W, N x H x W x C and N x C x H x W arrays "
                f"(C = 1, 3 or 4; images of at least {MIN_SIDE} pixels a side)."
            )
            continue
        entries.extend(f"{key}[{i}]" for i in range(_count(shape, layout)))
    if not entries and not problems:
        problems.append(f"{path} holds no arrays.")
    return entries, problems


@functools.lru_cache(maxsize=2)
def _load_array(path: str, key: str, stamp: tuple[int, int]) -> np.ndarray:
    """One array of a stack file, loaded once for all of its entries (sources of a stack
    are read one after the other); .npy files are memory-mapped."""
    if path.lower().endswith(".npy"):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with np.load(path, allow_pickle=False) as archive:
        return archive[key]


def read_stack_entry(path: str, entry: str) -> tuple[np.ndarray, list[str]]:
    """One image of a stack as [rows, cols] float32, and warnings."""
    key = _entry_key(entry)
    label = f"{path}:{entry}"
    try:
        stat = os.stat(path)
        array = _load_array(path, key, (stat.st_mtime_ns, stat.st_size))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{label} could not be read: {exc}.") from exc
    layout = _layout(array.shape)
    if layout is None:
        raise InputError(f"{label}: the array has the shape {array.shape}, which holds no images.")
    index = entry_index(entry)
    if layout.startswith("N"):
        if index >= array.shape[0]:
            raise InputError(f"{label} does not exist: the array holds {array.shape[0]} images.")
        image = np.asarray(array[index])
        if layout == "NCHW":
            image = np.moveaxis(image, 0, -1)
    else:
        image = np.asarray(array)
    return grey(image, label)


# ---- raster files ------------------------------------------------------------------------------
def read_raster(path: str) -> tuple[np.ndarray, list[str]]:
    """A PNG, JPEG, TIFF or BMP file as [rows, cols] float32, and warnings."""
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise InputError(f"{path} could not be read: {reader_reason(exc)}.") from exc
    values = sitk.GetArrayFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 3:
        pages = image.GetSize()[2]
        if pages > 1:
            raise InputError(
                f"{path} holds {pages} images (pages); MemorizationIndex reads one image per "
                "raster file: save them as separate files or as one .npy stack."
            )
        values = values[0]
    if components == 1 and values.ndim == 3:
        values = values[..., 0]
    return grey(values, path)


def grey(values: np.ndarray, label: str) -> tuple[np.ndarray, list[str]]:
    """[rows, cols] or [rows, cols, C] as one grey [rows, cols] float32 image, and warnings.

    Three (or four, with alpha) channels that hold the same grey are read as that grey
    without a warning; real colour is averaged, with one.
    """
    warnings: list[str] = []
    if np.iscomplexobj(values) or values.dtype.kind not in "biuf":
        raise InputError(f"{label} holds {values.dtype} values, not image intensities.")
    values = np.asarray(values)
    if values.ndim == 3:
        channels = values.shape[2]
        colour = values[..., : 3 if channels == 4 else channels].astype(np.float32)
        if colour.shape[2] > 1:
            spread = float(np.nanmax(colour) - np.nanmin(colour)) if colour.size else 0.0
            difference = float(np.nanmax(np.ptp(colour, axis=2))) if colour.size else 0.0
            if difference > GREY_TOLERANCE * max(spread, 1e-12):
                warnings.append(
                    f"{label} is a colour image ({colour.shape[2]} channels that differ); the "
                    "mean of its channels is used."
                )
        values = colour.mean(axis=2)
    if values.ndim != 2:
        raise InputError(f"{label} is not a 2D image (shape {values.shape}).")
    rows, cols = values.shape
    if min(rows, cols) < MIN_SIDE:
        raise InputError(
            f"{label} is {rows}x{cols} pixels; MemorizationIndex needs at least {MIN_SIDE} "
            "pixels on each side (the encoder's patch size)."
        )
    return values.astype(np.float32, copy=False), warnings


def image_on_pixel_grid(values: np.ndarray) -> sitk.Image:
    """A [rows, cols] image as a SimpleITK volume of one slice on a 1 x 1 (pixel) grid, row
    0 at the top: the geometry of a file that has none."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(values, np.float32)[None])
    image.SetSpacing((1.0, 1.0, 1.0))
    return image
