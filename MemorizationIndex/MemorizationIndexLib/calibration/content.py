"""Calibration conditional on what a slice shows (group-conditional, "Mondrian", conformal).

A slice near the top or bottom of the head, or one with little foreground, shows little
anatomy: it resembles the same slice of any other person far more than a mid-brain slice
does. With one pooled null those slices fill the null's upper tail, so at alpha 0.01 they
are flagged several times as often as alpha (measured: 9 % at the edges, 0 % in the
middle). Here every slice falls in a content bin: its position within its volume's kept
slices (edge or middle; unknown for a 2D image) and its foreground share (low or high),
and it is judged against the null slices of its own bin. Within a bin the held-out
training slices and an unseen query slice are exchangeable, so the flag rate holds per bin.

A bin with too few null slices, or slices of too few subjects (a person's neighbouring
slices are near-duplicates, so a bin's null is only as broad as its subjects: on a bank of
8 subjects a bin's fitted tail put novel mid-brain slices at p 0.0003), falls back to a
coarser one: (position, foreground), then position alone, then foreground alone, then the
pooled null; which null judged each slice is reported with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..search.foreground import FOREGROUND_LEVEL
from .null import NullModel

EDGE_SHARE = 0.1  # the outer tenth of a volume's kept slices, at each end, is its edge
MIN_SLICES_FOR_POSITION = 5  # a volume with fewer kept slices has no meaningful edge
LOW_FOREGROUND_QUANTILE = 0.25  # the null's lower quarter of foreground share is "low"
MIN_BIN_SLICES = 50  # null slices a bin needs for a model of its own
MIN_BIN_SUBJECTS = 10  # and the subjects they come from (as the few-subjects warning)

EDGE, MIDDLE, UNKNOWN = "edge", "middle", "*"
LOW, HIGH = "low", "high"
POOLED = f"{UNKNOWN}/{UNKNOWN}"


def rows_by_group(ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(id, its rows in order) for each distinct id, ascending, from one sort: a scan of
    every row per id is quadratic on a set of 100,000 2D images (one volume each)."""
    ids = np.asarray(ids)
    if len(ids) == 0:
        return []
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    return list(zip(sorted_ids[starts].tolist(), np.split(order, starts[1:]), strict=True))


@dataclass(frozen=True)
class SliceContent:
    """Per slice: foreground share of its thumbnail and relative position within its
    volume's kept slices (0 and 1 at the ends; NaN for a 2D image or a short volume)."""

    foreground: np.ndarray  # [n] in [0, 1]
    position: np.ndarray  # [n] in [0, 1] or NaN

    def __len__(self) -> int:
        return len(self.foreground)

    def take(self, rows: np.ndarray) -> SliceContent:
        return SliceContent(self.foreground[rows], self.position[rows])

    def without_position(self) -> SliceContent:
        """The same slices with their position unknown (2D images are judged so)."""
        return SliceContent(self.foreground, np.full(len(self), np.nan))

    @classmethod
    def of_features(cls, features) -> SliceContent:
        """Of every slice of a FeatureSet (its thumbnails, volumes and slice indices)."""
        return cls.of(
            features.thumbnails,
            features.volume_ids,
            np.array([s.slice_index for s in features.slices], np.int64),
            features.slices_of_2d(),
        )

    @classmethod
    def of(cls, thumbnails: np.ndarray, volume_ids: np.ndarray, slice_indices: np.ndarray,
           planar: np.ndarray | None = None) -> SliceContent:  # fmt: skip
        """From uint8 thumbnails [n, S, S], the volume of each slice and its index in that
        volume; `planar` [n] marks slices of 2D images (no position)."""
        n = len(volume_ids)
        fg = np.zeros(n, np.float64)
        for start in range(0, n, 4096):  # a memory-mapped bank's thumbnails, in pieces
            block = np.asarray(thumbnails[start : start + 4096], np.float32) / 255.0
            fg[start : start + len(block)] = (block > FOREGROUND_LEVEL).mean(axis=(1, 2))
        position = np.full(n, np.nan)
        slice_indices = np.asarray(slice_indices)
        for _, rows in rows_by_group(volume_ids):
            if len(rows) < MIN_SLICES_FOR_POSITION:
                continue
            order = rows[np.argsort(slice_indices[rows], kind="stable")]
            position[order] = np.arange(len(order)) / (len(order) - 1)
        if planar is not None:
            position[np.asarray(planar, bool)] = np.nan
        return cls(fg, position)


@dataclass
class ContentNull:
    """The null of each content bin that has enough held-out slices (see module doc)."""

    low_foreground: float  # foreground share below which a slice counts as "low"
    models: dict[str, NullModel] = field(default_factory=dict)  # bin key -> its null
    counts: dict[str, int] = field(default_factory=dict)  # null slices per finest bin

    @classmethod
    def fit(
        cls, statistic: np.ndarray, content: SliceContent, subjects: np.ndarray | None = None
    ) -> ContentNull:
        """subjects [n]: the subject of each null slice (None: every slice its own)."""
        statistic = np.asarray(statistic, np.float64)
        subjects = np.arange(len(statistic)) if subjects is None else np.asarray(subjects)
        low = float(np.quantile(content.foreground, LOW_FOREGROUND_QUANTILE))
        out = cls(low_foreground=low)
        pos, fg = out.classes(content)
        out.counts = {
            f"{p}/{f}": int(np.sum((pos == p) & (fg == f)))
            for p in (EDGE, MIDDLE, UNKNOWN)
            for f in (LOW, HIGH)
        }
        for p, f in ((p, f) for p in (EDGE, MIDDLE, UNKNOWN) for f in (LOW, HIGH, UNKNOWN)):
            if p == UNKNOWN and f == UNKNOWN:
                continue  # the pooled null is the bank's own
            # '*' means "any": a position class of its own only where it is known
            sel = (pos == p if p != UNKNOWN else True) & (fg == f if f != UNKNOWN else True)
            enough = np.sum(sel) >= MIN_BIN_SLICES
            if enough and len(np.unique(subjects[sel])) >= MIN_BIN_SUBJECTS:
                out.models[f"{p}/{f}"] = NullModel.fit(statistic[sel])
        return out

    def classes(self, content: SliceContent) -> tuple[np.ndarray, np.ndarray]:
        """(position class, foreground class) per slice."""
        p = content.position
        edge = np.minimum(p, 1.0 - p) < EDGE_SHARE
        pos = np.where(np.isnan(p), UNKNOWN, np.where(edge, EDGE, MIDDLE))
        fg = np.where(content.foreground < self.low_foreground, LOW, HIGH)
        return pos, fg

    def bins(self, content: SliceContent) -> np.ndarray:
        """The key of the null that judges each slice ('*/*' is the pooled null)."""
        pos, fg = self.classes(content)
        out = np.full(len(content), POOLED, dtype=object)
        pairs = np.char.add(np.char.add(pos.astype(str), "/"), fg.astype(str))
        for pair in np.unique(pairs):
            p, f = pair.split("/")
            chain = [pair, f"{p}/{UNKNOWN}", f"{UNKNOWN}/{f}"] if p != UNKNOWN else [pair]
            out[pairs == pair] = next((k for k in chain if k in self.models), POOLED)
        return out.astype(str)

    def p_value(self, statistic, content: SliceContent, pooled: NullModel) -> np.ndarray:
        s = np.atleast_1d(np.asarray(statistic, np.float64))
        return self._each(s, content, pooled, NullModel.p_value)

    def oni(self, statistic, content: SliceContent, pooled: NullModel) -> np.ndarray:
        s = np.atleast_1d(np.asarray(statistic, np.float64))
        return self._each(s, content, pooled, NullModel.oni)

    def _each(self, s, content, pooled, method) -> np.ndarray:
        out = np.zeros(len(s), np.float64)
        keys = self.bins(content)
        for key in np.unique(keys):
            sel = keys == key
            out[sel] = method(self.models.get(key, pooled), s[sel])
        return out

    def summary(self) -> dict:
        return {
            "bins": "position within the volume's kept slices (edge: outer "
            f"{EDGE_SHARE:.0%} at each end; '*' for 2D images) x foreground share (low: "
            f"below {self.low_foreground:.3f}, the null's lower quarter)",
            "null_slices_per_bin": self.counts,
            "own_null": sorted(self.models),
            "min_slices_for_own_null": MIN_BIN_SLICES,
            "min_subjects_for_own_null": MIN_BIN_SUBJECTS,
        }

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}low_foreground": np.array(self.low_foreground)}
        out[f"{prefix}keys"] = np.array(sorted(self.models))
        out[f"{prefix}count_keys"] = np.array(list(self.counts))
        out[f"{prefix}count_values"] = np.array(list(self.counts.values()), np.int64)
        for i, key in enumerate(sorted(self.models)):
            out.update({f"{prefix}{i}_{k}": v for k, v in self.models[key].to_arrays().items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> ContentNull:
        keys = [str(k) for k in arrays[f"{prefix}keys"]]
        models = {}
        for i, key in enumerate(keys):
            head = f"{prefix}{i}_"
            models[key] = NullModel.from_arrays(
                {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}
            )
        counts = dict(
            zip(
                (str(k) for k in arrays[f"{prefix}count_keys"]),
                (int(v) for v in arrays[f"{prefix}count_values"]),
                strict=True,
            )
        )
        return cls(float(arrays[f"{prefix}low_foreground"]), models, counts)
