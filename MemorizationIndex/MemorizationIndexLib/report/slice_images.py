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
WARP_BATCH = 256  # pictures moved at once (64 MB of float32 at 256 px)


def aligned(match: np.ndarray, alignment, i: int, pose_size: int) -> np.ndarray:
    """A training picture moved onto query i by its verified pose (uint8 in and out).

    The pose was found on pose_size-pixel thumbnails; its matrix is in normalised units,
    so it moves a picture of any size the same way.
    """
    image = torch.from_numpy(match.astype(np.float32))[None]
    theta = pose_theta(alignment, i, pose_size)[None]
    return warp(image, theta)[0].numpy().round().clip(0, 255).astype(np.uint8)


def pose_theta(alignment, i: int, pose_size: int) -> np.ndarray:
    """The sampling matrix of slice i's verified pose (stage 2's Alignments)."""
    return sampling_theta(
        alignment.flip[i], alignment.angle[i], alignment.scale[i], alignment.shift[i], pose_size
    )


def enlarged(thumbnail: np.ndarray, size: int) -> np.ndarray:
    """A thumbnail resized to size x size (bilinear), for a scan that cannot be read."""
    if thumbnail.shape[-1] == size:
        return thumbnail
    x = torch.from_numpy(thumbnail.astype(np.float32))[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0, 0].numpy().round().clip(0, 255).astype(np.uint8)


class SliceImages:
    """Pictures of scored slices (row i of a ScoreResult) and of their matches.

    `pairs(rows)` -> per row (synthetic, training, from files?): uint8 [size, size], the
    training picture already under the verified pose (or, without verification, the
    synthetic one seen through the flip that matched), and whether both came from the
    scans themselves.
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

    def _pictures(self, wanted: list[tuple[str, str, int]], fallback: list[np.ndarray]):
        """(pictures [n, size, size], from the files? [n]) of slices (path, series_uid,
        slice index), each scan read once and its slices resized together (a tenth of
        the time slice by slice)."""
        out = np.zeros((len(wanted), self.size, self.size), np.uint8)
        read = np.zeros(len(wanted), bool)
        by_scan: dict[tuple[str, str], list[int]] = {}
        for j, (path, uid, _) in enumerate(wanted):
            by_scan.setdefault((path, uid), []).append(j)
        for (path, uid), js in by_scan.items():
            volume = self._volume(path, uid)
            if volume is None:
                continue
            k = np.searchsorted(volume.slice_indices, [wanted[j][2] for j in js])
            found = [
                (j, int(kk))
                for j, kk in zip(js, k, strict=True)
                if kk < len(volume) and int(volume.slice_indices[kk]) == wanted[j][2]
            ]
            if found:
                ks = [kk for _, kk in found]
                pictures = thumbnails(
                    volume.slices[ks], volume.pixel_spacing, self.size, volume.intensity_bounds
                )
                for (j, _), picture in zip(found, pictures, strict=True):
                    out[j], read[j] = picture, True
        for j in np.flatnonzero(~read):
            out[j] = enlarged(fallback[j], self.size)
        return out, read

    def pairs(self, rows: list[int]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(synthetic, training under the pose, both read from their files?) of slices."""
        result = self.result
        slices = [result.slices[i] for i in rows]
        queries, query_read = self._pictures(
            [(r.volume, r.series_uid, r.slice_index) for r in slices],
            [result.query_thumbnails[i] for i in rows],
        )
        if not self.bank.settings.store_images:  # the user chose to keep no training image
            return [
                (q, np.zeros_like(q), bool(ok)) for q, ok in zip(queries, query_read, strict=True)
            ]
        matches, match_read = self._pictures(
            [(r.match_volume, r.match_series_uid, r.match_slice) for r in slices],
            [self.bank.thumbnails[int(result.match_rows[i])] for i in rows],
        )
        if result.alignment is not None:
            matches = self._posed(matches, rows)
        else:
            for j, r in enumerate(slices):
                if flip_axes(r.flip):
                    queries[j] = np.flip(queries[j], axis=flip_axes(r.flip))
        both = query_read & match_read
        return [(queries[j], matches[j], bool(both[j])) for j in range(len(rows))]

    def _posed(self, matches: np.ndarray, rows: list[int]) -> np.ndarray:
        """Training pictures moved by their slices' verified poses, a batch at a time."""
        al = self.result.alignment
        thetas = np.stack([pose_theta(al, i, self.pose_size) for i in rows])
        out = np.empty_like(matches)
        for a in range(0, len(rows), WARP_BATCH):
            images = torch.from_numpy(matches[a : a + WARP_BATCH].astype(np.float32))
            moved = warp(images, thetas[a : a + WARP_BATCH])
            out[a : a + WARP_BATCH] = moved.numpy().round().clip(0, 255).astype(np.uint8)
        return out
