"""`build-bank --out DIR` killed during encoding and run again encodes only the volumes it had
not finished and writes the bank an uninterrupted build writes (the same files, byte for
byte, but the manifest's creation time); on a local 2-worker Ray cluster too."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from Testing.conftest import TINY_LAYERS

from . import kill_points

# Cheap calibration (stage 1 only): the builds here are about encoding. Stage 3's compact
# volumes go through the same pieces in test_pieces_keep_every_field_of_a_feature_set.
N_TRAIN = 6  # training volumes of the small cohort
SETTINGS = dict(image_size=64, layers=TINY_LAYERS, stride=2, calibration_folds=3)

BUILD = (
    "from Testing.engine.test_build_resume import build\n"
    "build(Path(sys.argv[2]), Path(sys.argv[3]))\n"
)


def settings_and_encoder():
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.encoding.vit import EncoderConfig

    settings = BankSettings(**SETTINGS, verify=False, volume_stage=False)
    return settings, settings.encoder(config=EncoderConfig.tiny(), device="cpu")


def build(train: Path, out: Path, **kwargs):
    from MemorizationIndexLib.bank.build import build_bank

    settings, encoder = settings_and_encoder()
    return build_bank(train, out, settings, encoder, **kwargs)


def bank_files(folder: Path) -> dict[str, bytes]:
    """Every file of a bank; the manifest without its creation time."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("created")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


def same_bank(a: Path, b: Path) -> None:
    want, got = bank_files(a), bank_files(b)
    assert sorted(want) == sorted(got)
    differ = [name for name in want if want[name] != got[name]]
    assert not differ, f"files differ: {differ}"


def resume_folders(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.resume-*"))


def killed_after(pieces: int, train: Path, out: Path) -> None:
    """Build in a child process SIGKILLed once `pieces` volumes are saved."""
    kill_points.killed_after(pieces, BUILD, [str(train), str(out)])


@pytest.fixture(scope="module")
def train(small_cohort):
    root, _ = small_cohort
    return root / "train"


@pytest.fixture(scope="module")
def reference(train, tmp_path_factory):
    """An uninterrupted build in this process."""
    out = tmp_path_factory.mktemp("ref") / "bank"
    build(train, out)
    assert resume_folders(out) == []
    return out


@pytest.fixture
def counted(monkeypatch):
    """The volumes read and prepared for the encoder in this process."""
    from MemorizationIndexLib.encoding import features

    seen = []
    real = features.prepare_volume

    def count(source, *args, **kwargs):
        seen.append(source.path)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(features, "prepare_volume", count)
    return seen


def test_a_killed_build_resumes_where_it_stopped(train, reference, tmp_path, counted):
    out = tmp_path / "bank"
    killed_after(2, train, out)
    assert not out.exists()  # no bank from a killed run
    (folder,) = resume_folders(out)
    assert len(list(folder.glob("volume-*"))) == 2
    build(train, out)
    assert len(counted) == N_TRAIN - 2  # only the volumes the killed run had not finished
    same_bank(reference, out)
    assert resume_folders(out) == []  # removed once the bank is written


def test_damaged_or_foreign_pieces_are_encoded_again(train, reference, tmp_path, counted):
    out = tmp_path / "bank"
    killed_after(3, train, out)
    (folder,) = resume_folders(out)
    first, second, _ = sorted(folder.glob("volume-*"))
    (first / "arrays.npz").write_bytes(b"half a file")  # does not read back whole
    meta = json.loads((second / "piece.json").read_text())
    (second / "piece.json").write_text(json.dumps({**meta, "key": "another run"}))
    (folder / ".volume-000004.partial-1").mkdir()  # a piece that was being written

    build(train, out)
    assert len(counted) == N_TRAIN - 1  # all but the one good piece
    same_bank(reference, out)
    assert resume_folders(out) == []


def test_other_inputs_or_settings_use_another_key(train, tmp_path):
    from MemorizationIndexLib.bank.build import encoding_plan
    from MemorizationIndexLib.encoding.features import encoding_key
    from MemorizationIndexLib.encoding.preprocessing import PreprocessSpec
    from MemorizationIndexLib.scans import ScanSource

    settings, encoder = settings_and_encoder()
    copies = []
    for i, path in enumerate(sorted(train.iterdir())[:2]):
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        os.utime(copy, ns=(10**18 + i, 10**18 + i))
        copies.append(copy)
    sources = [ScanSource(str(p)) for p in copies]
    info = encoder.info.to_dict()
    base = dict(
        sources=sources,
        encoder_info=info,
        spec=encoder.spec,
        read_options=settings.read_options(),
        plan=encoding_plan(settings, 2),
        settings={"device": "cpu", "batch_size": 32},
    )
    key = encoding_key(**base)
    assert encoding_key(**base) == key  # the same run: the same key

    def key_with(**change):
        return encoding_key(**{**base, **change})

    os.utime(copies[0], ns=(10**18 + 7, 10**18 + 7))  # an input touched
    assert encoding_key(**base) != key
    os.utime(copies[0], ns=(10**18, 10**18))
    assert encoding_key(**base) == key
    copies[1].write_bytes(copies[1].read_bytes() + b"\0")  # an input's size
    os.utime(copies[1], ns=(10**18 + 1, 10**18 + 1))
    assert encoding_key(**base) != key
    changed = [
        key_with(sources=sources[:1]),
        key_with(encoder_info={**info, "checkpoint_sha256": "0" * 64}),
        key_with(encoder_info={**info, "layers": [1, 2]}),
        key_with(spec=PreprocessSpec(image_size=64, denoise_sigma=0.5)),
        key_with(read_options=replace(settings.read_options(), stride=3)),
        key_with(read_options=replace(settings.read_options(), axis="coronal")),
        key_with(plan=replace(base["plan"], volume_grid_mm=2.0)),
        key_with(plan=replace(base["plan"], extra_flips=("vflip",))),
        key_with(plan=replace(base["plan"], flip_rows_per_volume=7)),
        key_with(settings={"device": "cuda", "batch_size": 32}),
        key_with(settings={"device": "cpu", "batch_size": 8}),
    ]
    assert len(set(changed)) == len(changed) and key not in changed


def test_pieces_keep_every_field_of_a_feature_set(train, tmp_path):
    """Flipped views, compact volumes (stage 3) and skipped inputs survive the resume
    folder: a resumed encoding equals one pass of extract_features, field by field."""
    from MemorizationIndexLib import pieces
    from MemorizationIndexLib.encoding.features import (
        EncodingPlan,
        encode_resumable,
        extract_features,
    )
    from MemorizationIndexLib.scans import ScanSource

    settings, encoder = settings_and_encoder()
    sources = [ScanSource(str(p)) for p in sorted(train.iterdir())[:3]]
    sources.insert(1, ScanSource(str(tmp_path / "missing.nii.gz")))
    options = settings.read_options()
    flips = ("none", "hflip", "vflip")
    one_pass = extract_features(
        sources, encoder, options, flips=flips, flip_budget=5, volume_grid_mm=4.0
    )
    plan = EncodingPlan.of(len(sources), flips, 5, volume_grid_mm=4.0)
    out = tmp_path / "out"

    class Stop(Exception):
        pass

    def stop(where, done):
        if done == 2:
            raise Stop

    original = pieces._fault_point
    pieces._fault_point = stop
    try:
        with pytest.raises(Stop):
            encode_resumable(sources, encoder, options, plan, out)
    finally:
        pieces._fault_point = original
    resumed, folder = encode_resumable(sources, encoder, options, plan, out)
    assert len(list(folder.path.glob("volume-*"))) == len(sources)
    folder.remove()
    assert not folder.path.exists()

    assert resumed.skipped == one_pass.skipped and len(resumed.skipped) == 1
    assert resumed.volumes == one_pass.volumes and resumed.slices == one_pass.slices
    for name in ("volume_ids", "thumbnails", "thumbnail_mm"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(one_pass, name))
    for a, b in zip(resumed.features, one_pass.features, strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(resumed.flip_rows) == {"hflip", "vflip"}
    for flip in resumed.flip_rows:
        np.testing.assert_array_equal(resumed.flip_rows[flip], one_pass.flip_rows[flip])
        for a, b in zip(resumed.flip_features[flip], one_pass.flip_features[flip], strict=True):
            np.testing.assert_array_equal(a, b)
    assert len(resumed.compact_volumes) == 3
    for a, b in zip(resumed.compact_volumes, one_pass.compact_volumes, strict=True):
        np.testing.assert_array_equal(a.geometry(), b.geometry())
        np.testing.assert_array_equal(a.voxels, b.voxels)
    assert (resumed.series_uids, resumed.series_names, resumed.volume_warnings) == (
        one_pass.series_uids,
        one_pass.series_names,
        one_pass.volume_warnings,
    )


def test_ray_two_workers_build_the_same_bank_and_resume(train, reference, tmp_path):
    pytest.importorskip("ray.data", reason="Ray Data is not installed (memorization-index[ray])")
    from MemorizationIndexLib import pieces
    from MemorizationIndexLib.distributed import RayCluster, encoding_runner

    settings, encoder = settings_and_encoder()
    out = tmp_path / "bank"
    cluster = RayCluster(workers=2)
    given: list[list[int]] = []

    encoder_args = (settings, None, encoder.info.config, "cpu", 32)

    def runner(sources, options, plan):
        run = encoding_runner(cluster, encoder, encoder_args)(sources, options, plan)

        def counted(pending):
            given.append(list(pending))
            return run(pending)

        return counted

    class Stop(Exception):
        pass

    def stop(where, done):
        if done == 2:
            raise Stop

    ray_build = dict(runner=runner, run_settings={"device": "ray cpu"})
    original = pieces._fault_point
    try:
        pieces._fault_point = stop
        with pytest.raises(Stop):
            build(train, out, **ray_build)
        pieces._fault_point = original
        assert not out.exists() and len(resume_folders(out)) == 1
        build(train, out, **ray_build)
        assert [len(p) for p in given] == [N_TRAIN, N_TRAIN - 2]  # the rerun: only the rest
        same_bank(reference, out)
        assert resume_folders(out) == []
        # Reading and preprocessing as a stage of CPU tasks of its own (what GPU actors get):
        # half a CPU per actor leaves the tasks one of the two.
        split = encoding_runner(cluster, encoder, encoder_args, split=True, actor_cpus=0.5)
        build(train, tmp_path / "split", runner=split, run_settings={"device": "ray split"})
        same_bank(reference, tmp_path / "split")
    finally:
        pieces._fault_point = original
        cluster.close()


def test_build_bank_ray_options_say_how_to_install_ray(train, tmp_path, monkeypatch, capsys):
    from MemorizationIndexLib.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "bank"
    code = main(["build-bank", str(train), "--out", str(out), "--workers", "2", "--quiet"])
    assert code == 2
    assert "pip install memorization-index[ray]" in capsys.readouterr().err
    code = main(["build-bank", str(train), "--out", str(out), "--workers", "0", "--quiet"])
    assert code == 2 and "--workers must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_reader_processes_give_the_same_features(train):
    """read_workers=1: reading and preprocessing in a worker process, same FeatureSet."""
    from MemorizationIndexLib.encoding.features import extract_features
    from MemorizationIndexLib.scans import ScanSource

    settings, encoder = settings_and_encoder()
    sources = [ScanSource(str(p)) for p in sorted(train.iterdir())[:2]]
    options = settings.read_options()
    flips = ("none", "hflip")
    thread = extract_features(sources, encoder, options, flips=flips, read_workers=0)
    process = extract_features(sources, encoder, options, flips=flips, read_workers=1)
    assert process.slices == thread.slices
    np.testing.assert_array_equal(process.thumbnails, thread.thumbnails)
    for a, b in zip(process.features, thread.features, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(process.flip_features["hflip"], thread.flip_features["hflip"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_matches_the_cpu(train):
    """Pinned canvases, non-blocking copies, normalisation and features on the device: the
    same features as the CPU up to bf16 rounding (run where there is a GPU)."""
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.encoding.features import extract_features
    from MemorizationIndexLib.encoding.vit import EncoderConfig
    from MemorizationIndexLib.scans import ScanSource

    settings = BankSettings(**SETTINGS)
    sources = [ScanSource(str(p)) for p in sorted(train.iterdir())[:2]]
    found = {}
    for device in ("cpu", "cuda"):
        encoder = settings.encoder(config=EncoderConfig.tiny(), device=device)
        found[device] = extract_features(sources, encoder, settings.read_options())
    for a, b in zip(found["cuda"].features, found["cpu"].features, strict=True):
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() > 0.99


def test_build_bank_on_ray_needs_ray_data(train, tmp_path, monkeypatch, capsys):
    """Ray without its [data] extra: build-bank says how to install it, before any work."""
    pytest.importorskip("ray")
    from MemorizationIndexLib.cli import main

    monkeypatch.setitem(sys.modules, "ray.data", None)  # import ray.data -> ImportError
    out = tmp_path / "bank"
    code = main(["build-bank", str(train), "--out", str(out), "--workers", "2", "--quiet"])
    assert code == 2
    assert "pip install memorization-index[ray]" in capsys.readouterr().err
    assert not out.exists()
