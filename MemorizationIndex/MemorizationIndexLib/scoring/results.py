"""Typed results: one SliceResult per scored slice, one VolumeResult per volume, and the
ScoreResult that holds them. The CSV column contract lives here (`columns`, `as_row`), and
so does the one ranking rule the report, the CLI and Slicer use (`ranked`).

A result also reads as its CSV row: `slice_result["mi"]`, `"verified_ncc" in
slice_result`, `slice_result.get("angle_deg")`, so tables can be built by column name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from ..scans import SkippedInput
from ..search.affine_pose import AffinePose
from ..search.volume_pose import RigidPose

if TYPE_CHECKING:  # verification imports torch; a loaded result must not need it (Slicer)
    from ..search.verification import Alignments

# Columns that every slices.csv / volumes.csv starts with (README, "Output files"); new
# columns may be added after them, these are never renamed.
SLICE_COLUMNS_REQUIRED = (
    "volume",
    "slice_index",
    "similarity",
    "mi",
    "oni",
    "match_volume",
    "match_slice",
    "flagged",
)
VOLUME_COLUMNS_REQUIRED = (
    "volume",
    "mi",
    "oni",
    "fraction_flagged",
    "match_volume",
    "longest_run",
    "flagged",
)

DUPLICATE_COLUMNS_REQUIRED = (
    "input_a",
    "slice_a",
    "input_b",
    "slice_b",
    "p_value",
    "mi",
    "shared_training_source",
)


class _Row:
    """Read access by CSV column name, for dataclasses that define `as_row`. Columns that
    are fields of the same name are read directly; the others through `as_row`."""

    _RENAMED = frozenset({"flip", "statistic", "position", "match_position", "shift_mm"})

    def as_row(self) -> dict:
        raise NotImplementedError

    def __getitem__(self, column: str):
        if column not in self._RENAMED and column in self.__dataclass_fields__:
            value = getattr(self, column)
            if value is not None and not isinstance(value, (tuple, dict)):
                return value
        return self.as_row()[column]

    def __contains__(self, column: str) -> bool:
        return column in self.as_row()

    def get(self, column: str, default=None):
        return self.as_row().get(column, default)

    def keys(self) -> Iterator[str]:
        return iter(self.as_row())


@dataclass(eq=False)
class SliceResult(_Row):
    """One scored synthetic slice. Positions are LPS millimetres of the slice centre;
    similarity is the stage-1 feature similarity (cosine, geometric mean over layers);
    statistic is what MI calibrates (column `score`); mi in [0, 1], oni in [-1, 1],
    p_value in (0, 1]. The pose maps the training slice onto this one: flip (column
    `transform`), angle_deg (degrees), shift in mm, scale (stretch along x = columns,
    y = rows); verified_ncc is stage 2's aligned NCC (None when verification is off),
    verify_check its check value and verify_settled whether the check settled it (its
    stage-2 p-value is then 1 and the pose is the check's, unrefined)."""

    volume: str
    series_uid: str
    slice_index: int
    position: tuple[float, float, float]
    similarity: float
    mi: float
    oni: float
    p_value: float
    flagged: bool
    match_volume: str
    match_series_uid: str
    match_slice: int
    match_position: tuple[float, float, float]
    statistic: float
    view: str
    flip: str
    angle_deg: float = 0.0
    shift_mm: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    verified_ncc: float | None = None
    verify_check: float | None = None  # stage 2's check value (what the bank's gate compares)
    verify_settled: bool | None = None  # settled by the check: its pose is the check's
    volume_ncc: float | None = None  # stage 3: NCC with the registered training volume
    margin: float = 0.0
    agreement: float = 0.0
    layer_similarity: dict[int, float] = field(default_factory=dict)
    top_matches: str = ""
    series_name: str = ""  # DICOM SeriesNumber and SeriesDescription of the volume...
    match_series_name: str = ""  # ...and of the matched training volume
    # "px" when this or the matched image has no pixel size (a raster file, a NumPy
    # stack): the shift columns are then in pixels of this image, not millimetres
    units: str = "mm"
    # the content bin whose null judged this slice, "position/foreground" (edge, middle or
    # * = any; low or high); "*/*" is the pooled null (calibration/content.py)
    null_bin: str = "*/*"

    def as_row(self) -> dict:
        """The slices.csv row, columns in file order."""
        row = {
            "volume": self.volume,
            "series_uid": self.series_uid,
            "series_name": self.series_name,
            "slice_index": self.slice_index,
            "position_x": self.position[0],
            "position_y": self.position[1],
            "position_z": self.position[2],
            "similarity": self.similarity,
            "mi": self.mi,
            "oni": self.oni,
            "p_value": self.p_value,
            "flagged": self.flagged,
            "null_bin": self.null_bin,
            "match_volume": self.match_volume,
            "match_series_uid": self.match_series_uid,
            "match_series_name": self.match_series_name,
            "match_slice": self.match_slice,
            "match_position_x": self.match_position[0],
            "match_position_y": self.match_position[1],
            "match_position_z": self.match_position[2],
            "score": self.statistic,
            "view": self.view,
        }
        if self.verified_ncc is not None:
            row["verified_ncc"] = self.verified_ncc
            row["verify_check"] = self.verify_check
            row["verify_settled"] = self.verify_settled
        if self.volume_ncc is not None:
            row["volume_ncc"] = self.volume_ncc
        row.update(
            {
                "transform": self.flip,
                "angle_deg": self.angle_deg,
                "shift_x_mm": self.shift_mm[0],
                "shift_y_mm": self.shift_mm[1],
                "scale_x": self.scale[0],
                "scale_y": self.scale[1],
                "margin": self.margin,
                "agreement": self.agreement,
            }
        )
        for layer, value in self.layer_similarity.items():
            row[f"layer{layer}_similarity"] = value
        row["top_matches"] = self.top_matches
        if self.units != "mm":
            row["units"] = self.units
        return row


@dataclass(eq=False)
class VolumeResult(_Row):
    """One scored synthetic volume. mi = 1 - p_value, the Simes combination of its slice
    p-values; oni the mean slice ONI; mi_max and mi_q90 over its slices; fraction_flagged
    and match_fraction are shares of its slices; longest_run counts consecutive flagged
    slices matching consecutive slices of match_volume; flip (column `transform`) is the
    most common flip of its flagged slices ("" when none is flagged). With stage 3,
    volume_match is the training volume registered best onto this one, aligned_similarity
    their foreground NCC after registration, and pose the 3D map from volume_match to this
    volume (LPS mm; columns angle_lr/ap/si_deg, shift_l/p/s_mm, centre_l/p/s_mm, then
    axes and mirrored: where the training L, P and S axes went, "LPS" unless the copy is
    mirrored or reordered; scale: the isotropic one, scale_l/p/s: along the synthetic
    axes; search/affine_pose.py)."""

    volume: str
    series_uid: str
    n_slices: int
    mi: float
    p_value: float
    oni: float
    mi_max: float
    mi_q90: float
    fraction_flagged: float
    match_volume: str
    match_fraction: float
    longest_run: int
    flip: str
    flagged: bool
    warnings: str
    series_name: str = ""  # DICOM SeriesNumber and SeriesDescription
    volume_match: str = ""
    aligned_similarity: float | None = None
    pose: AffinePose | RigidPose | None = None
    # "volume", or a 2D image: "image" (pixel size from the file), "image-px" (none: the
    # pose is in pixels); a 2D image has one slice and no volume stage
    kind: str = "volume"

    def as_row(self) -> dict:
        """The volumes.csv row, columns in file order (the pose columns with stage 3, the
        kind for 2D images)."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["transform"] = row.pop("flip")
        out = {k: row[k] for k in _VOLUME_ORDER}
        if self.kind != "volume":
            out["kind"] = self.kind
        if self.pose is not None:
            out["volume_match"] = self.volume_match
            out["aligned_similarity"] = self.aligned_similarity
            out.update(AffinePose.of(self.pose).summary())
        return out

    @property
    def label(self) -> str:
        """How the console names it: the path, with the entry of an image of a NumPy stack."""
        if self.kind != "volume" and self.series_uid and self.volume.endswith((".npy", ".npz")):
            return f"{self.volume}:{self.series_uid}"
        return self.volume

    def pose_text(self) -> str:
        """The volume stage's finding in words: the registered training volume, the aligned
        similarity and the 3D pose ("" without stage 3)."""
        if self.pose is None:
            return ""
        pose = AffinePose.of(self.pose).text()
        return f"{self.volume_match}: aligned NCC {self.aligned_similarity:.3f}; {pose}"


_VOLUME_ORDER = (
    "volume",
    "series_uid",
    "n_slices",
    "mi",
    "p_value",
    "oni",
    "mi_max",
    "mi_q90",
    "fraction_flagged",
    "match_volume",
    "match_fraction",
    "longest_run",
    "transform",
    "flagged",
    "warnings",
    "series_name",
)


@dataclass(eq=False)
class DuplicatePair(_Row):
    """Two synthetic inputs (volumes or 2D images) that copy each other: input_a's slices
    found input_b's among the other synthetic inputs, verified and calibrated as against
    the bank (scoring/internal_duplicates.py). p_value is input_a's: the Simes combination
    of its slice p-values, the smaller of the two directions when both were flagged;
    slice_a / slice_b the most significant slice pair; slices_matched input_a's flagged
    slices that matched input_b; longest_run as in volumes.csv; source_a / source_b the
    training volume each copies ("" when it was not flagged against the bank)."""

    input_a: str
    slice_a: int
    input_b: str
    slice_b: int
    p_value: float
    mi: float
    score: float
    slices_matched: int
    longest_run: int
    source_a: str = ""
    source_b: str = ""
    series_uid_a: str = ""
    series_uid_b: str = ""
    flip: str = "none"
    angle_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    shift_px: tuple[float, float] = (0.0, 0.0)

    @property
    def training_source(self) -> str:
        """The training volume both copy, "" when they copy none or different ones."""
        return self.source_a if self.source_a and self.source_a == self.source_b else ""

    def as_row(self) -> dict:
        """The internal_duplicates.csv row."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["shared_training_source"] = self.training_source
        row["transform"] = row.pop("flip")
        row["scale_x"], row["scale_y"] = row.pop("scale")
        row["shift_x_px"], row["shift_y_px"] = row.pop("shift_px")
        return row


def ranked(results: Sequence[SliceResult | VolumeResult]) -> list[int]:
    """Indices of results, most suspicious first: higher MI, then (slices) higher
    similarity, then the order given. The one ranking of the report, the CLI and Slicer."""
    return sorted(
        range(len(results)),
        key=lambda i: (-results[i].mi, -getattr(results[i], "similarity", 0.0)),
    )


@dataclass
class ScoreResult:
    """Everything `score` reports. slices and volumes are typed rows (their `as_row` is the
    CSV row); query_thumbnails [n, S, S] uint8 and match_rows [n] (bank rows) are for
    the report's pictures; alignment is stage 2's pose per slice (None without it)."""

    slices: list[SliceResult]
    volumes: list[VolumeResult]
    summary: dict
    skipped: list[SkippedInput]
    query_thumbnails: np.ndarray
    match_rows: np.ndarray
    alpha: float
    alignment: Alignments | None = None
    # [n, D1 + D2 + ...] float32 raw encoder features of the slices (identity view), the
    # layers side by side (their widths differ in LiteMedSAM's TinyViT), kept until
    # the internal-duplicate search of the whole set has used them, then dropped (None)
    query_features: np.ndarray | None = None
    internal_duplicates: list[DuplicatePair] = field(default_factory=list)

    def flagged_volumes(self) -> list[VolumeResult]:
        return [v for v in self.volumes if v.flagged]

    def ranked_slices(self) -> list[int]:
        return ranked(self.slices)

    def ranked_volumes(self) -> list[VolumeResult]:
        return [self.volumes[i] for i in ranked(self.volumes)]
