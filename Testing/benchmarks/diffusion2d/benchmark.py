"""The diffusion benchmark (issue 20.7): copies made by a real memorising model, scored by the
engine's CLI, judged by an oracle the engine does not use.

1. cohort.py writes 64 px axial slices of training and held-out subjects (three real
   templates, strong warps, bias, contrast, Rician noise);
2. train_sample.py trains a small DDPM on the training slices, some of them repeated many
   times, and samples it (cached: trained once per settings and training data);
3. oracle.py labels every sample copy / ambiguous / novel by its best SSIM with any training
   slice over flips and shifts, and names the source; the same oracle on the held-out real
   slices shows that real novel slices of other people lie in its novel band;
4. the engine: ``memorization-index build-bank TRAIN --image-size 64`` and
   ``memorization-index score BANK QUERIES`` (queries: the samples and the held-out real
   slices), through its CLI;
5. per image: AUROC and TPR at 1 % FPR of oracle copies against the novel class (samples
   the oracle calls novel, plus the held-out real slices), the share of oracle copies
   flagged with their true source subject, the flag rate on the novel class at alpha.

    python Testing/benchmarks/diffusion2d/benchmark.py --out bench-output/diffusion2d
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from Testing.benchmarks import metrics  # noqa: E402
from Testing.benchmarks.diffusion2d import oracle  # noqa: E402
from Testing.benchmarks.diffusion2d.cohort import (  # noqa: E402
    Cohort,
    load_cohort,
    make_cohort,
    read_grey,
    subject_of,
)
from Testing.benchmarks.diffusion2d.set_audit import (  # noqa: E402
    BLEND_WEIGHTS,  # noqa: F401 (the benchmark's settings, read by its tests)
    evaluate_duplicates,
    read_pairs,
    write_blends,
    write_duplicates,
)
from Testing.benchmarks.diffusion2d.train_sample import (  # noqa: E402
    Settings,
    train_and_sample,
)
from Testing.benchmarks.protocol import AUGMENTATIONS, augment_slice  # noqa: E402

UNSUPPORTED_HINTS = ("not a volume format", "no volumes", "unsupported", "cannot read")


class ScoringUnsupported(RuntimeError):
    """The engine at hand cannot score these inputs (e.g. 2D PNGs before 2D support)."""


# A scorer: (train_dir, queries_dir, work_dir) -> one row per query image with at least
# "file" (the query's file name), "mi", "similarity", "flagged" (bool), "match_volume".
ScoreFn = Callable[[Path, Path, Path], list[dict]]


def _cli(args: list[str], log: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "MemorizationIndexLib", *args],
        capture_output=True,
        text=True,
    )
    with open(log, "a") as f:
        f.write(f"$ memorization-index {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    return proc.returncode, proc.stdout + proc.stderr


def cli_scorer(
    image_size: int = 64,
    alpha: float = 0.01,
    extra_build: tuple[str, ...] = (),
    reuse_bank: bool = False,
) -> ScoreFn:
    """The engine through its CLI: build-bank on the training folder, score the queries.
    reuse_bank keeps a finished bank of an earlier run (only while the engine is unchanged)."""

    def score(train_dir: Path, queries_dir: Path, work: Path) -> list[dict]:
        log = work / "engine.log"
        bank, report = work / "bank", work / "report"
        if bank.exists() and not (reuse_bank and (bank / "manifest.json").exists()):
            shutil.rmtree(bank)  # built by an earlier run or unfinished
        if not bank.exists():
            code, text = _cli(
                ["build-bank", str(train_dir), "--out", str(bank), "--image-size", str(image_size),
                 "--device", "cpu", "--quiet", *extra_build],
                log,
            )  # fmt: skip
            if code != 0:
                _raise(code, text, "build-bank")
        if report.exists():
            shutil.rmtree(report)
        code, text = _cli(
            ["score", str(bank), str(queries_dir), "--out", str(report), "--alpha", str(alpha),
             "--device", "cpu", "--quiet"],
            log,
        )  # fmt: skip
        if code != 0:
            _raise(code, text, "score")
        with open(report / "slices.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        out = []
        for r in rows:
            out.append(
                {
                    "file": Path(r["volume"]).name,
                    "mi": float(r["mi"]),
                    "similarity": float(r["similarity"]),
                    "flagged": r["flagged"] in ("1", "True", "true"),
                    "match_volume": r["match_volume"],
                }
            )
        return out

    return score


def _raise(code: int, text: str, step: str):
    tail = text.strip().splitlines()[-5:]
    message = f"memorization-index {step} exited {code}: " + " | ".join(tail)
    if any(h in text.lower() for h in UNSUPPORTED_HINTS):
        raise ScoringUnsupported(message)
    raise RuntimeError(message)


def prepare_cohort(root: Path, seed: int = 0) -> Cohort:
    if (root / "cohort.json").is_file():
        cohort = load_cohort(root)
        if cohort.train_files() and cohort.heldout_files():
            return cohort
    return make_cohort(root, seed=seed)


def label_samples(images: np.ndarray, train: oracle.TrainingSet) -> list[dict]:
    """The oracle's verdict on each sample, and (for the record) the raw-pixel SSIM."""
    raw = oracle.TrainingSet(train.images, train.names, sigma=0.0)
    rows = []
    for i, im in enumerate(images):
        m = oracle.best_match(im, train)
        rows.append(
            {
                "file": f"fake_{i}.png",
                "ssim": m.ssim,
                "raw_ssim": oracle.best_match(im, raw).ssim,
                "label": m.label(),
                "source": m.name,
                "source_subject": subject_of(m.name),
                "flip": m.flip,
                "shift": list(m.shift),
            }
        )
    return rows


def write_augmented_copies(
    train_files: list[Path], queries: Path, per_kind: int, seed: int
) -> dict[str, dict]:
    """The paper's augmentations (and ours beyond them) of training slices, made by scipy in
    protocol.augment_slice, written as 8-bit PNGs: `aug-<kind>_<k>.png`. One training slice
    per subject (as far as they go), a different draw per kind."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    by_subject: dict[int, list[Path]] = {}
    for f in train_files:
        by_subject.setdefault(subject_of(f.name), []).append(f)
    subjects = sorted(by_subject)
    truth = {}
    for kind in AUGMENTATIONS:
        order = rng.permutation(len(subjects))
        for k in range(per_kind):
            files = by_subject[subjects[order[k % len(subjects)]]]
            source = files[int(rng.integers(len(files)))]
            image = read_grey(source).astype(np.float32) / 255.0
            copy = augment_slice(image, kind, rng)
            name = f"aug-{kind}_{k:02d}.png"
            Image.fromarray(np.round(copy * 255.0).astype(np.uint8)).save(queries / name)
            truth[name] = {
                "class": f"aug:{kind}",
                "source_subject": subject_of(source.name),
                "source": source.name,
            }
    return truth


def evaluate_augmented(
    truth: dict[str, dict], scores: list[dict], prefix: str = "aug:"
) -> dict[str, dict]:
    """Per augmentation (class `prefix` + kind): AUROC and TPR at 1 % FPR against the
    held-out real slices, the share flagged and the share flagged with their true source
    subject."""
    by_file = {r["file"]: r for r in scores}
    files = [f for f in truth if f in by_file]
    mi = np.array([by_file[f]["mi"] for f in files])
    sim = np.array([by_file[f]["similarity"] for f in files])
    ranked = metrics.ordering_score(mi, sim)
    klass = np.array([truth[f]["class"] for f in files])
    flagged = np.array([by_file[f]["flagged"] for f in files])
    true_source = np.array(
        [_matched_subject(by_file[f]) == truth[f]["source_subject"] for f in files]
    )
    neg = klass == "novel-real"
    out = {}
    kinds = dict.fromkeys(k[len(prefix) :] for k in klass.tolist() if k.startswith(prefix))
    for kind in [k for k in AUGMENTATIONS if k in kinds] + [
        k for k in kinds if k not in AUGMENTATIONS
    ]:
        pos = klass == f"{prefix}{kind}"
        if not pos.any() or not neg.any():
            continue
        out[kind] = {
            "n": int(pos.sum()),
            "auroc": metrics.auroc(ranked[neg], ranked[pos]),
            "tpr_at_1pct_fpr": metrics.tpr_at_fpr(ranked[neg], ranked[pos], 0.01),
            "flagged": float(flagged[pos].mean()),
            "flagged_true_source": float((flagged & true_source)[pos].mean()),
        }
    return out


def _matched_subject(row: dict) -> int | None:
    return subject_of(Path(row["match_volume"]).name)


def evaluate(truth: dict[str, dict], scores: list[dict], alpha: float) -> dict:
    """Metrics per image from the oracle's truth and the engine's rows (joined by file name).

    Positives: samples the oracle calls copies. Negatives (the novel class): samples it calls
    novel and the held-out real slices. Ambiguous samples are in neither; their flag rate is
    reported on its own."""
    by_file = {r["file"]: r for r in scores}
    missing = sorted(set(truth) - set(by_file))
    mi = np.array([by_file[f]["mi"] for f in truth if f in by_file])
    sim = np.array([by_file[f]["similarity"] for f in truth if f in by_file])
    files = [f for f in truth if f in by_file]
    ranked = metrics.ordering_score(mi, sim)  # MI, ties (MI saturates) broken by similarity
    klass = np.array([truth[f]["class"] for f in files])
    flagged = np.array([by_file[f]["flagged"] for f in files])
    pos, neg = klass == "copy", np.isin(klass, ("novel-sample", "novel-real"))
    out: dict = {"n_scored": len(files), "missing": missing[:10], "n_missing": len(missing)}
    out["counts"] = dict(Counter(klass.tolist()))
    if pos.any() and neg.any():
        out["auroc"] = metrics.auroc(ranked[neg], ranked[pos])
        out["tpr_at_1pct_fpr"] = metrics.tpr_at_fpr(ranked[neg], ranked[pos], 0.01)
        out["auroc_mi_only"] = metrics.auroc(mi[neg], mi[pos])
        for name in ("novel-sample", "novel-real"):  # each part of the novel class alone
            part = klass == name
            if part.any():
                out[f"auroc_vs_{name}"] = metrics.auroc(ranked[part], ranked[pos])
                out[f"tpr_at_1pct_fpr_vs_{name}"] = metrics.tpr_at_fpr(
                    ranked[part], ranked[pos], 0.01
                )
    true_source = np.array(
        [_matched_subject(by_file[f]) == truth[f].get("source_subject") for f in files]
    )
    if pos.any():
        out["copies_flagged"] = float(flagged[pos].mean())
        out["copies_flagged_true_source"] = float((flagged & true_source)[pos].mean())
        out["copies_matched_true_source"] = float(true_source[pos].mean())
    for name in ("novel-sample", "novel-real", "ambiguous"):
        sel = klass == name
        out[f"flag_rate_{name}"] = float(flagged[sel].mean()) if sel.any() else None
    out["flag_rate_novel"] = float(flagged[neg].mean()) if neg.any() else None
    out["alpha"] = alpha
    return out


def run(
    out_dir: str | Path,
    score_fn: ScoreFn | None = None,
    settings: Settings | None = None,
    cache: str | Path | None = None,
    alpha: float = 0.01,
    seed: int = 0,
    log=print,
    augmented_per_kind: int = 12,
) -> dict:
    """The whole benchmark; returns a JSON-able dict (also written to out_dir/results.json).

    score_fn defaults to the engine's CLI (cli_scorer). When the engine cannot read the
    inputs (2D images before its 2D support), result["scoring"] says so and the oracle part
    (cohort separation, sample labels) is still returned."""
    settings = settings or Settings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohort = prepare_cohort(out / "cohort", seed)
    samples = train_and_sample(cohort.train_files(), cohort.repeated, settings, cache, log=log)
    train = oracle.TrainingSet.from_files(cohort.train_files())
    sample_rows = label_samples(samples.images, train)
    held_files = cohort.heldout_files()
    held_matches = oracle.best_matches([read_grey(f) for f in held_files], train)
    held_ssim = np.array([m.ssim for m in held_matches])
    raw_train = oracle.TrainingSet(train.images, train.names, sigma=0.0)
    held_raw = np.array([oracle.best_match(read_grey(f), raw_train).ssim for f in held_files])
    sample_ssim = np.array([r["ssim"] for r in sample_rows])
    repeated = set(cohort.repeated)
    copies = [r for r in sample_rows if r["label"] == "copy"]
    result: dict = {
        "settings": asdict(settings),
        "cache": str(samples.folder),
        "samples_reused": samples.reused,
        "train_seconds": samples.meta.get("train_seconds"),
        "sample_seconds": samples.meta.get("sample_seconds"),
        "n_train_slices": len(train),
        "n_heldout_slices": len(held_files),
        "repeated": sorted(repeated),
        "oracle": {
            "copy_ssim": oracle.COPY_SSIM,
            "novel_ssim": oracle.NOVEL_SSIM,
            "smooth_sigma_px": oracle.SMOOTH_SIGMA,
            "heldout_real": _dist(held_ssim),
            "samples": _dist(sample_ssim),
            "heldout_real_raw_ssim": _dist(held_raw),
            "samples_raw_ssim": _dist(np.array([r["raw_ssim"] for r in sample_rows])),
            "sample_counts": dict(Counter(r["label"] for r in sample_rows)),
            "copies_of_repeated": sum(r["source"] in repeated for r in copies),
            "copies_of_other": sum(r["source"] not in repeated for r in copies),
            "distinct_sources": len({r["source"] for r in copies}),
            "copies_per_source": dict(Counter(r["source"] for r in copies).most_common()),
        },
    }
    (out / "oracle.json").write_text(
        json.dumps(
            {
                "samples": sample_rows,
                "heldout": [
                    {"file": f.name, "ssim": m.ssim, "raw_ssim": float(r), "nearest": m.name}
                    for f, m, r in zip(held_files, held_matches, held_raw, strict=True)
                ],
            },
            indent=1,
        )
    )
    figure(out / "memorised_sample.png", samples.images, sample_rows, cohort)
    # Queries: the samples and the held-out real slices in one folder.
    queries = out / "queries"
    if queries.exists():
        shutil.rmtree(queries)
    queries.mkdir()
    truth: dict[str, dict] = {}
    for r in sample_rows:
        shutil.copyfile(samples.png_dir / r["file"], queries / r["file"])
        klass = {"copy": "copy", "novel": "novel-sample"}.get(r["label"], "ambiguous")
        truth[r["file"]] = {"class": klass, "source_subject": r["source_subject"]}
    for f in held_files:
        shutil.copyfile(f, queries / f.name)
        truth[f.name] = {"class": "novel-real", "source_subject": None}
    augmented = write_augmented_copies(cohort.train_files(), queries, augmented_per_kind, seed + 1)
    result["augmented_per_kind"] = augmented_per_kind
    blends = write_blends(cohort.train_files(), held_files, queries, augmented_per_kind, seed + 2)
    planted = write_duplicates(held_files, queries, augmented_per_kind, seed + 3)
    score_fn = score_fn or cli_scorer(image_size=settings.image_size, alpha=alpha)
    work = out / "engine"
    work.mkdir(exist_ok=True)
    t1 = time.perf_counter()
    try:
        scores = score_fn(Path(cohort.train_dir), queries, work)
    except ScoringUnsupported as exc:
        result["scoring"] = f"unsupported by this engine: {exc}"
        log(f"diffusion2d: scoring unsupported: {exc}")
    else:
        result["scoring"] = "ok"
        result["engine_seconds"] = time.perf_counter() - t1
        result["metrics"] = evaluate(truth, scores, alpha)
        real = {f: t for f, t in truth.items() if t["class"] == "novel-real"}
        result["augmented"] = evaluate_augmented({**augmented, **real}, scores)
        result["blends"] = evaluate_augmented({**blends, **real}, scores, "blend:")
        pairs = read_pairs(work / "report")
        if pairs is not None:
            result["duplicates"] = evaluate_duplicates(
                pairs, planted, sample_rows, [f.name for f in held_files], blends
            )
    result["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _dist(v: np.ndarray) -> dict:
    if len(v) == 0:
        return {"n": 0}
    q = np.percentile(v, [0, 5, 50, 95, 100])
    return {
        "n": int(len(v)),
        "min": float(q[0]),
        "p5": float(q[1]),
        "median": float(q[2]),
        "p95": float(q[3]),
        "max": float(q[4]),
        "in_copy_band": float(np.mean(v >= oracle.COPY_SSIM)),
        "in_novel_band": float(np.mean(v < oracle.NOVEL_SSIM)),
    }


def figure(path: Path, images: np.ndarray, rows: list[dict], cohort: Cohort, n: int = 4) -> None:
    """Side by side: memorised samples (best SSIM first, distinct sources) above their
    training images, 3x enlarged."""
    from PIL import Image, ImageDraw

    copies = sorted((r for r in rows if r["label"] == "copy"), key=lambda r: -r["ssim"])
    seen, pick = set(), []
    for r in copies:
        if r["source"] not in seen:
            seen.add(r["source"])
            pick.append(r)
    pick = pick[:n]
    if not pick:
        return
    z, pad, text_h = 3, 6, 14
    tile = images.shape[1] * z
    canvas = Image.new("L", (len(pick) * (tile + pad) + pad, 2 * (tile + text_h) + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    for j, r in enumerate(pick):
        i = int(r["file"].split("_")[1].split(".")[0])
        sample = Image.fromarray(images[i]).resize((tile, tile), Image.NEAREST)
        source = Image.fromarray(read_grey(Path(cohort.train_dir) / r["source"]))
        source = source.resize((tile, tile), Image.NEAREST)
        x = pad + j * (tile + pad)
        draw.text((x, pad // 2), f"{r['file']} SSIM {r['ssim']:.2f}", fill=255)
        canvas.paste(sample, (x, pad // 2 + text_h))
        y = pad + tile + text_h + pad // 2
        draw.text((x, y), f"train {r['source'].removesuffix('.png')}", fill=255)
        canvas.paste(source, (x, y + text_h))
    canvas.save(path)


def markdown(result: dict) -> str:
    o = result["oracle"]
    h, s = o["heldout_real"], o["samples"]
    c = o["sample_counts"]
    lines = [
        "### Copies from a real memorising model (2D DDPM, 64 px)",
        "",
        "Oracle: best SSIM (scikit-image) over flips and shifts of up to 3 px against every "
        f"training slice, both images smoothed by {o['smooth_sigma_px']} px; copy >= "
        f"{o['copy_ssim']}, novel < {o['novel_ssim']}, ambiguous between. Raw-pixel SSIM for "
        "comparison (it called noisy copies novel; see oracle.py).",
        "",
        "| images | n | best SSIM min / median / max | in copy band | in novel band | raw SSIM "
        "min / median / max |",
        "|---|---|---|---|---|---|",
        f"| held-out real slices (other people) | {h['n']} | {_mmm(h)} | "
        f"{h['in_copy_band']:.1%} | {h['in_novel_band']:.1%} | "
        f"{_mmm(o['heldout_real_raw_ssim'])} |",
        f"| model samples | {s['n']} | {_mmm(s)} | {s['in_copy_band']:.1%} | "
        f"{s['in_novel_band']:.1%} | {_mmm(o['samples_raw_ssim'])} |",
        "",
        f"Samples: {c.get('copy', 0)} copies ({o['copies_of_repeated']} of repeated training "
        f"images, {o['copies_of_other']} of others; {o['distinct_sources']} distinct sources), "
        f"{c.get('ambiguous', 0)} ambiguous, {c.get('novel', 0)} novel. Model trained in "
        f"{(result.get('train_seconds') or 0) / 60:.1f} min on the CPU (cache {result['cache']}).",
        "",
    ]
    if result.get("scoring") != "ok":
        lines.append(f"Engine: {result.get('scoring')}")
        return "\n".join(lines) + "\n"
    m = result["metrics"]
    lines += [
        "| per image AUROC (copy vs novel) | TPR at 1 % FPR | oracle copies flagged | ... with "
        "their true source subject | novel flagged (samples / real) | ambiguous flagged |",
        "|---|---|---|---|---|---|",
        f"| {m.get('auroc', float('nan')):.3f} | {m.get('tpr_at_1pct_fpr', float('nan')):.3f} | "
        f"{m.get('copies_flagged', float('nan')):.1%} | "
        f"{m.get('copies_flagged_true_source', float('nan')):.1%} | "
        f"{_pct(m.get('flag_rate_novel'))} ({_pct(m.get('flag_rate_novel-sample'))} / "
        f"{_pct(m.get('flag_rate_novel-real'))}) | {_pct(m.get('flag_rate_ambiguous'))} |",
        "",
        f"Novel class: {m['counts'].get('novel-sample', 0)} novel samples + "
        f"{m['counts'].get('novel-real', 0)} held-out real slices; alpha {m['alpha']}. "
        f"Against each part alone: AUROC {_num(m.get('auroc_vs_novel-sample'))} / "
        f"{_num(m.get('auroc_vs_novel-real'))}, TPR at 1 % FPR "
        f"{_num(m.get('tpr_at_1pct_fpr_vs_novel-sample'))} / "
        f"{_num(m.get('tpr_at_1pct_fpr_vs_novel-real'))} (novel samples / held-out real).",
    ]
    aug = result.get("augmented") or {}
    if aug:
        n_real = m["counts"].get("novel-real", 0)
        lines += [
            "",
            f"Hand-made copies of the same training slices ({result.get('augmented_per_kind')} "
            f"per kind, made by scipy in protocol.augment_slice, 8-bit PNG) against the "
            f"{n_real} held-out real slices (one false positive is "
            f"{1 / max(n_real, 1):.1%} FPR):",
            "",
            "| copy kind | n | AUROC | TPR at 1 % FPR | flagged | ... with their true source "
            "subject |",
            "|---|---|---|---|---|---|",
        ]
        for kind, r in aug.items():
            lines.append(
                f"| {kind} ({AUGMENTATIONS[kind]}) | {r['n']} | {r['auroc']:.3f} | "
                f"{r['tpr_at_1pct_fpr']:.3f} | {r['flagged']:.1%} | "
                f"{r['flagged_true_source']:.1%} |"
            )
    return "\n".join(lines + _set_audit_lines(result)) + "\n"


def _set_audit_lines(result: dict) -> list[str]:
    """Blends and duplicates within the set (set_audit.py), when the run has them."""
    lines = []
    blends = result.get("blends") or {}
    if blends:
        lines += [
            "",
            "Blends: w x a training slice + (1 - w) x a held-out real slice of another person "
            "(numpy, 8-bit PNG), against the held-out real slices:",
            "",
            "| blend weight w | n | AUROC | TPR at 1 % FPR | flagged | ... with their true "
            "source subject |",
            "|---|---|---|---|---|---|",
        ]
        for w, r in blends.items():
            lines.append(
                f"| {w} | {r['n']} | {r['auroc']:.3f} | {r['tpr_at_1pct_fpr']:.3f} | "
                f"{r['flagged']:.1%} | {r['flagged_true_source']:.1%} |"
            )
    d = result.get("duplicates")
    if d:
        lines += [
            "",
            "Duplicates within the set (internal_duplicates.csv). Planted: held-out real "
            "slices written a second time, mirrored with noise (no training source). Natural: "
            "the model's copies of one memorised slice (with one). The held-out real slices "
            "(never seen by the model) pair truly with neighbouring slices of the same person, "
            "their planted duplicate or a blend made with them; any other pair of theirs is "
            "false.",
            "",
            "| pairs reported | planted pairs found | sources copied by 2+ samples, paired "
            "with that source named | pairs naming a shared training source | real slices: "
            "pairs within one person | false pairs of real slices | real slices falsely paired |",
            "|---|---|---|---|---|---|---|",
            f"| {d['n_pairs']} | {d['planted_found']} / {d['planted']} | "
            f"{d['sources_paired']} / {d['sources_copied_twice']} | "
            f"{d['pairs_with_shared_source']} | {d['real_pairs_same_person']} | "
            f"{d['real_false_pairs']} | {d['real_slices_falsely_paired']} / {d['real_slices']} |",
        ]
    return lines


def _mmm(d: dict) -> str:
    return f"{d['min']:.3f} / {d['median']:.3f} / {d['max']:.3f}"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="bench-output/diffusion2d")
    p.add_argument("--cache", help="sample cache (default ~/.cache/memorization-index/diffusion2d)")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument(
        "--reuse-bank", action="store_true", help="keep the bank of an earlier run (same engine)"
    )
    p.add_argument(
        "--encoder",
        default="untrained",
        choices=("untrained", "litemedsam", "mri-core"),
        help="the engine's encoder (build-bank --encoder; mri-core needs a checkpoint)",
    )
    args = p.parse_args(argv)
    scorer = cli_scorer(
        alpha=args.alpha, reuse_bank=args.reuse_bank, extra_build=("--encoder", args.encoder)
    )
    result = run(args.out, scorer, cache=args.cache, alpha=args.alpha)
    text = markdown(result)
    (Path(args.out) / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
