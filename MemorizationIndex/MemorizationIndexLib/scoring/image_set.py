"""The verdict on a set of 2D images: there is no volume, so the set is the headline.

A 2D model is judged by how many of its images copy a training image: the share of images
flagged, with a 95 % interval; the share of copies that implies once the alpha expected of
novel images is taken away; the paper's dataset-level numbers (mean MI and ONI); and which
training subjects leak, most copied first (a data owner reads this). Subjects are named
by their group number and an example training file, never by a patient ID.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from .results import SliceResult, VolumeResult

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share (good at 0 and 1 and for small n)."""
    if n == 0:
        return 0.0, 1.0
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def copy_share(flagged_share: float, alpha: float) -> float:
    """The share of copies a flagged share implies: flagged = copies + alpha * (1 - copies)
    when every copy is flagged and alpha of the novel images are."""
    return float(min(1.0, max(0.0, (flagged_share - alpha) / (1.0 - alpha))))


def image_set_summary(
    slices: list[SliceResult],
    volumes: list[VolumeResult],
    alpha: float,
    subject_groups: list[int] | None,
    training_volumes: list[str],
) -> dict | None:
    """summary.json's "images" entry over the 2D images among the scored inputs (None
    when there are none). subject_groups: the bank's subject number of each training
    volume (its manifest), to count copies per training subject."""
    images = {(v.volume, v.series_uid) for v in volumes if v.kind != "volume"}
    rows = [s for s in slices if (s.volume, s.series_uid) in images]
    if not rows:
        return None
    n = len(rows)
    flagged = [s for s in rows if s.flagged]
    share = len(flagged) / n
    low, high = wilson_interval(len(flagged), n)
    mi = np.array([s.mi for s in rows])
    oni = np.array([s.oni for s in rows])
    return {
        "n_images": n,
        "n_flagged": len(flagged),
        "share_flagged": share,
        "share_flagged_ci95": [low, high],
        "estimated_copy_share": copy_share(share, alpha),
        "estimated_copy_share_ci95": [copy_share(low, alpha), copy_share(high, alpha)],
        "mean_mi": float(mi.mean()),
        "mean_oni": float(oni.mean()),
        "median_oni": float(np.median(oni)),
        "pixel_units": sum(v.kind == "image-px" for v in volumes),
        "copies_per_training_subject": copies_per_subject(
            flagged, subject_groups, training_volumes
        ),
    }


def subjects_of(
    rows: list, subject_groups: list[int] | None, training_volumes: list[str]
) -> list[int | str]:
    """The training subject each row (a slice or a volume) matched: the bank's subject
    number of its match_volume, its volume number without groups, or the path itself when
    the bank does not list it."""
    position = {v: k for k, v in enumerate(training_volumes)}
    out: list[int | str] = []
    for row in rows:
        vid = position.get(row.match_volume)
        if vid is None:
            out.append(row.match_volume)
        elif subject_groups and vid < len(subject_groups):
            out.append(int(subject_groups[vid]))
        else:
            out.append(vid)
    return out


def copies_per_subject(
    flagged: list, subject_groups: list[int] | None, training_volumes: list[str]
) -> list[dict]:
    """[{subject, copies, training_files, example}] over the flagged rows' (images' or
    volumes') matched training subjects, most copied first."""
    groups = subjects_of(flagged, subject_groups, training_volumes)
    files: dict = {}
    for row, group in zip(flagged, groups, strict=True):
        files.setdefault(group, Counter())[row.match_volume] += 1
    table = [
        {
            "subject": group if isinstance(group, int) else str(group),
            "copies": sum(counter.values()),
            "training_files": len(counter),
            "example": counter.most_common(1)[0][0],
        }
        for group, counter in files.items()
    ]
    return sorted(table, key=lambda r: (-r["copies"], str(r["subject"])))
