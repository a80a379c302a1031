"""A bank with the compressed stage-1 index (build-bank --index compressed): same findings
as the exact one on small data, arrays memory-mapped on load, older banks load as exact."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from Testing.conftest import TINY_LAYERS, tiny_encoder_config


@pytest.fixture(scope="module")
def compressed_bank(small_cohort, tmp_path_factory):
    from MemorizationIndexLib.bank.build import build_bank
    from MemorizationIndexLib.bank.settings import BankSettings

    root, _ = small_cohort
    out = tmp_path_factory.mktemp("cbank") / "bank"
    settings = BankSettings(
        image_size=64, layers=TINY_LAYERS, stride=2, calibration_folds=3, index="compressed"
    )
    encoder = settings.encoder(config=tiny_encoder_config(), device="cpu")
    build_bank(root / "train", out, settings, encoder)
    return out


def stage1_candidates(bank, queries):
    """Per query slice, the stage-1 rows stage 2 aligns (pooled over views), and the
    stage-1 best row."""
    from MemorizationIndexLib.search.index import QuerySlices, pooled_candidates

    index = bank.index
    slices = QuerySlices.of(queries, bank.settings.flips)
    views = [(rows, index._stage1(feats)) for rows, feats in slices.views]
    best = index.search(slices).stage1.best_row
    return pooled_candidates(views, len(slices), bank.settings.verify_k), best


def test_compressed_finds_what_exact_finds(small_cohort, small_bank, compressed_bank):
    from MemorizationIndexLib.bank.feature_bank import FeatureBank
    from MemorizationIndexLib.scans import find_scans_required
    from MemorizationIndexLib.scoring.score import encode_queries, score_features

    root, _ = small_cohort
    _, exact_path = small_bank
    exact = FeatureBank.load(exact_path)
    compressed = FeatureBank.load(compressed_bank)
    assert exact.index_kind == "exact" and compressed.index_kind == "compressed"
    store = compressed.index.indexes_[0].store
    assert store.nlist < 64 and store.nprobe <= store.nlist  # a real IVF, not one list

    encoder = exact.load_encoder(device="cpu")
    sources, _ = find_scans_required(root / "synthetic")
    options = replace(exact.settings.read_options(), stride=2)
    queries = encode_queries(exact, sources, encoder, options)
    candidates, _ = stage1_candidates(compressed, queries)
    _, exact_best = stage1_candidates(exact, queries)
    recall = np.mean([b in c for b, c in zip(exact_best, candidates, strict=True)])
    assert recall >= 0.99, recall

    a = score_features(exact, queries)
    b = score_features(compressed, queries)
    assert [v.flagged for v in a.volumes] == [v.flagged for v in b.volumes]
    assert [v.match_volume for v in a.volumes] == [v.match_volume for v in b.volumes]
    assert any(v.flagged for v in b.volumes)


def test_compressed_bank_is_memory_mapped_and_described(compressed_bank):
    from MemorizationIndexLib.bank.feature_bank import FeatureBank

    bank = FeatureBank.load(compressed_bank)
    assert all(isinstance(v, np.memmap) for v in bank.index.vectors_)
    assert isinstance(bank.thumbnails, np.memmap)
    manifest = json.loads((compressed_bank / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["index"] == "compressed"
    assert manifest["index"]["kind"] == "compressed"
    assert set(manifest["index"]["layers"]) == {str(x) for x in TINY_LAYERS}
    assert "codes_layer1.faiss" in manifest["files"]  # hashed like every bank file


def test_a_bank_from_before_the_index_choice_loads_as_exact(small_bank, tmp_path):
    from MemorizationIndexLib.bank.feature_bank import FeatureBank

    _, path = small_bank
    old = tmp_path / "old-bank"
    shutil.copytree(path, old)
    manifest = json.loads((old / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["index"] == {"kind": "exact"}
    del manifest["index"], manifest["settings"]["index"]
    (old / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    bank = FeatureBank.load(old)
    assert bank.index_kind == "exact"
    assert not isinstance(bank.index.vectors_[0], np.memmap)


def test_index_option_is_checked_and_named():
    from MemorizationIndexLib.bank.settings import BankSettings
    from MemorizationIndexLib.cli import main
    from MemorizationIndexLib.errors import SettingsError

    with pytest.raises(SettingsError, match="--index"):
        BankSettings(index="fast")
    assert main(["build-bank", "x", "--out", "y", "--index", "fast"]) == 2
