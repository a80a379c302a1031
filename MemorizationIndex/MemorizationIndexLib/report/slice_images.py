"""The pictures a reader judges a suspected copy by: a synthetic slice and its training
match moved onto it by the verified pose, at a size large enough to judge (256 px).

The bank keeps 64 px thumbnails only, so the pictures are made again from the scans (the
synthetic file, and the training file the bank names), framed exactly as the thumbnails
were (scaled, aspect kept, centred): stage 2's pose, found on the thumbnails, then applies
as it is. Where a file can no longer be read (moved, or scored from memory) its thumbnail,
enlarged, stands in; a bank built without images shows no training picture at all.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from ..encoding.preprocessing import thumbnails
from ..errors import MemorizationIndexError
from ..geometry import flip_axes, sampling_theta, warp
from ..scans import ReadOptions, ScanSource, read_scan_reporting
from ..scoring.results import ScoreResult

VIEW_SIZE = 256
VOLUMES_KEPT = 4  # scans kept read at once: a suspect's own and its matches


def aligned(match: np.ndarray, alignment, i: int, pose_size: int) -> np.ndarray:
    """A training picture moved onto query i by its verified pose (uint8 in and out).

    The pose was found on pose_size-pixel thumbnails; its matrix is in normalised units,
    so it moves a picture of any size the same way.
    """
    theta = sampling_theta(
        alignment.flip[i], alignment.angle[i], alignment.scale[i], alignment.shift[i], pose_size
    )
    image = torch.from_numpy(match.astype(np.float32))[None]
    return warp(image, theta[None])[0].numpy().round().clip(0, 255).astype(np.uint8)


def enlarged(thumbnail: np.ndarray, size: int) -> np.ndarray:
    """A thumbnail resized to size x size (bilinear), for a scan that cannot be read."""
    if thumbnail.shape[-1] == size:
        return thumbnail
    x = torch.from_numpy(thumbnail.astype(np.float32))[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0, 0].numpy().round().clip(0, 255).astype(np.uint8)


class SliceImages:
    """Pictures of scored slices (row i of a ScoreResult) and of their matches.

    `pair(i)` -> (synthetic, training) uint8 [size, size], the training picture already
    under the verified pose (or, without verification, the synthetic one seen through the
    flip that matched). `from_files[i]` says whether both came from the scans themselves.
    """

    def __init__(self, result: ScoreResult, bank, size: int = VIEW_SIZE):
        self.result = result
        self.bank = bank
        self.size = size
        settings = bank.settings
        self.options = ReadOptions(
            axis=settings.axis, stride=1, min_foreground=settings.min_foreground
        )
        self.pose_size = int(settings.thumbnail_size)
        self._volumes: OrderedDict = OrderedDict()

    def _volume(self, path: str, series_uid: str):
        """The scan read with the bank's slicing (kept for a while), or None if unreadable."""
        key = (path, series_uid)
        if key in self._volumes:
            self._volumes.move_to_end(key)
            return self._volumes[key]
        try:
            volume, _ = read_scan_reporting(ScanSource(path, series_uid), self.options)
        except (MemorizationIndexError, OSError, RuntimeError, ValueError):
            volume = None
        self._volumes[key] = volume
        while len(self._volumes) > VOLUMES_KEPT:
            self._volumes.popitem(last=False)
        return volume

    def _picture(self, path: str, series_uid: str, index: int, thumbnail: np.ndarray):
        """(picture, from the file?) of slice `index` of a scan."""
        volume = self._volume(path, series_uid)
        if volume is not None:
            k = int(np.searchsorted(volume.slice_indices, index))
            if k < len(volume) and int(volume.slice_indices[k]) == index:
                picture = thumbnails(
                    volume.slices[k : k + 1],
                    volume.pixel_spacing,
                    self.size,
                    volume.intensity_bounds,
                )[0]
                return picture, True
        return enlarged(thumbnail, self.size), False

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(synthetic, training under the pose, both read from their files?) of slice i."""
        row = self.result.slices[i]
        query, query_read = self._picture(
            row.volume, row.series_uid, row.slice_index, self.result.query_thumbnails[i]
        )
        if not self.bank.settings.store_images:  # the user chose to keep no training image
            return query, np.zeros_like(query), query_read
        thumbnail = self.bank.thumbnails[int(self.result.match_rows[i])]
        match, match_read = self._picture(
            row.match_volume, row.match_series_uid, row.match_slice, thumbnail
        )
        if self.result.alignment is not None:
            match = aligned(match, self.result.alignment, i, self.pose_size)
        elif flip_axes(row.flip):
            query = np.ascontiguousarray(np.flip(query, axis=flip_axes(row.flip)))
        return query, match, query_read and match_read
