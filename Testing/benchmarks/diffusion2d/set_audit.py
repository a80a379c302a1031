"""The set audit's rows of the diffusion benchmark (issue 23): blended copies and duplicates
within the synthetic set, made by numpy from the cohort's PNGs and judged by file names the
engine never sees as truth.

- Blends: w x a training slice + (1 - w) x a held-out real slice of another person, for w in
  BLEND_WEIGHTS (the seed paper's partial memorisation); scored like the hand-made copies.
- Planted duplicates: a held-out real slice written a second time, mirrored with noise
  (`dup-<k>.png`): a duplicate with no training source behind it. The model's own samples
  add natural ones: copies of one memorised training slice copy each other too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from Testing.benchmarks.diffusion2d.cohort import read_grey, subject_of

BLEND_WEIGHTS = (0.8, 0.6, 0.5)
DUPLICATE_NOISE = 0.02  # sigma of the [0, 1] range


def _save(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)).save(path)


def write_blends(
    train_files: list[Path], partners: list[Path], queries: Path, per_weight: int, seed: int
) -> dict[str, dict]:
    """`blend-<w>_<k>.png` for each weight: a training slice of a different subject each time
    (as far as they go) mixed with a held-out slice; truth as write_augmented_copies's."""
    rng = np.random.default_rng(seed)
    truth = {}
    for w in BLEND_WEIGHTS:
        picks = rng.permutation(len(train_files))[:per_weight]
        for k, j in enumerate(picks):
            source = train_files[int(j)]
            partner = partners[int(rng.integers(len(partners)))]
            mixed = w * read_grey(source) / 255.0 + (1.0 - w) * read_grey(partner) / 255.0
            name = f"blend-{w:.1f}_{k:02d}.png"
            _save(queries / name, mixed)
            truth[name] = {
                "class": f"blend:{w:.1f}",
                "source_subject": subject_of(source.name),
                "source": source.name,
                "partner": partner.name,
            }
    return truth


def write_duplicates(heldout: list[Path], queries: Path, n: int, seed: int) -> dict[str, str]:
    """{dup file: the held-out file it duplicates}: n held-out slices written again,
    mirrored left-right with Gaussian noise."""
    rng = np.random.default_rng(seed)
    planted = {}
    for k, j in enumerate(rng.permutation(len(heldout))[:n]):
        original = heldout[int(j)]
        image = read_grey(original)[:, ::-1] / 255.0
        image = image + rng.normal(0.0, DUPLICATE_NOISE, image.shape)
        name = f"dup-{k:02d}.png"
        _save(queries / name, image)
        planted[name] = original.name
    return planted


def read_pairs(report: Path) -> list[tuple[str, str, str]] | None:
    """(file a, file b, shared training source) of each internal_duplicates.csv row; None
    when the engine wrote no such file."""
    path = report / "internal_duplicates.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return [
            (Path(r["input_a"]).name, Path(r["input_b"]).name, r["shared_training_source"])
            for r in csv.DictReader(f)
        ]


def evaluate_duplicates(
    pairs: list[tuple[str, str, str]],
    planted: dict[str, str],
    samples: list[dict],
    heldout: list[str],
    blends: dict[str, dict] | None = None,
) -> dict:
    """Planted pairs found; sources copied by two or more samples whose copies were paired
    (with that source named); and, for the held-out real slices, which the model never saw:
    pairs with a slice of the same person (neighbouring slices of one head: true look-alikes
    that a set of single images cannot tell from duplicates), and false pairs, with anything
    else than the same person, its planted duplicate or a blend made with it."""
    found = {frozenset(p[:2]) for p in pairs}
    source_of = {r["file"]: r["source"] for r in samples if r["label"] == "copy"}
    by_source: dict[str, list[str]] = {}
    for file, source in source_of.items():
        by_source.setdefault(source, []).append(file)
    repeated = {s for s, files in by_source.items() if len(files) >= 2}
    paired_sources = {
        source_of[a]
        for a, b, shared in pairs
        if a in source_of and b in source_of and source_of[a] == source_of[b]
        and shared.endswith(source_of[a])
    }  # fmt: skip
    real = set(heldout)
    made_with = {dup: original for dup, original in planted.items()}
    made_with.update({name: t["partner"] for name, t in (blends or {}).items()})

    def person(name: str):  # the person a real slice shows, also through a dup or blend
        name = made_with.get(name, name)
        return subject_of(name) if name in real else None

    same_person = false = 0
    falsely_paired: set[str] = set()
    for a, b, _ in pairs:
        if a in real and b in real and person(a) == person(b):
            same_person += 1
            continue
        wrong = [x for x, y in ((a, b), (b, a)) if x in real and person(y) != person(x)]
        false += bool(wrong)
        falsely_paired.update(wrong)
    return {
        "n_pairs": len(pairs),
        "planted": len(planted),
        "planted_found": sum(frozenset((d, o)) in found for d, o in planted.items()),
        "sources_copied_twice": len(repeated),
        "sources_paired": len(paired_sources & repeated),
        "pairs_with_shared_source": sum(bool(p[2]) for p in pairs),
        "real_pairs_same_person": same_person,
        "real_false_pairs": false,
        "real_slices": len(real),
        "real_slices_falsely_paired": len(falsely_paired),
    }
