"""Stage-1 vector indexes: the compressed one against the exact one on slice-like data,
its memory per vector, stacked queries, and save/load (round trip, damaged files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK  # noqa: F401  the engine loads it; its SWIG types clash with faiss's
from MemorizationIndexLib.errors import BankError, SettingsError
from MemorizationIndexLib.search.vector_store import (
    CODES_FILE,
    DISK_VECTORS_FILE,
    EXACT_MAX_SLICES,
    EXACT_VECTORS_FILE,
    PARAMS_FILE,
    CompressedVectorIndex,
    ExactVectorIndex,
    build_index,
    choose_index_kind,
    load_index,
    save_index,
    stack_views,
)

from ..benchmarks.slice_vectors import noisy_copies, structured_bank

K = 10
N_VOLUMES = 140  # x 150 slices = 21,000 vectors of 768-d, neighbouring slices similar


@pytest.fixture(scope="module")
def bank():
    return structured_bank(N_VOLUMES, seed=0)


@pytest.fixture(scope="module")
def exact(bank):
    return build_index(bank, "exact")


@pytest.fixture(scope="module")
def compressed(bank, tmp_path_factory):
    return build_index(bank, "compressed", scratch_dir=tmp_path_factory.mktemp("scratch"))


@pytest.fixture(scope="module")
def copies(bank):
    rows = np.random.default_rng(3).choice(len(bank), 400, replace=False)
    return rows, noisy_copies(bank, rows, noise=0.5, seed=4)


def test_auto_is_exact_below_the_threshold_and_compressed_above():
    assert choose_index_kind(EXACT_MAX_SLICES - 1) == "exact"
    assert choose_index_kind(EXACT_MAX_SLICES) == "compressed"
    assert choose_index_kind(10, "compressed") == "compressed"
    assert choose_index_kind(10**7, "exact") == "exact"
    with pytest.raises(SettingsError, match="fast"):
        choose_index_kind(10, "fast")


def test_compressed_finds_what_exact_finds_for_near_duplicates(bank, exact, compressed, copies):
    rows, queries = copies
    # The data are as hard as slices: a copy's source has near-identical neighbours.
    assert np.mean(np.sum(queries * bank[rows], axis=1)) == pytest.approx(0.89, abs=0.02)
    e_sims, e_ids = exact.search(queries, K)
    c_sims, c_ids = compressed.search(queries, K)
    assert c_ids.dtype == np.int64 and c_sims.dtype == np.float32
    assert c_ids.shape == c_sims.shape == (len(queries), K)
    top1_in = np.mean([e_ids[i, 0] in c_ids[i] for i in range(len(queries))])
    source_in = np.mean([rows[i] in c_ids[i] for i in range(len(queries))])
    overlap = np.mean([len(set(e_ids[i]) & set(c_ids[i])) / K for i in range(len(queries))])
    print(f"candidate recall {top1_in:.4f}, source {source_in:.4f}, top-{K} overlap {overlap:.4f}")
    assert top1_in >= 0.99
    assert source_in >= np.mean([rows[i] in e_ids[i] for i in range(len(queries))]) - 0.01
    assert overlap >= 0.95
    # Re-ranked exactly: the similarities are true cosines, up to fp16 rounding.
    same = c_ids[:, 0] == e_ids[:, 0]
    assert np.allclose(c_sims[same, 0], e_sims[same, 0], atol=2e-3)
    assert np.all(np.diff(c_sims, axis=1) <= 0)


def test_compressed_on_novel_queries_keeps_the_top1(bank, exact, compressed):
    novel = structured_bank(4, seed=99)
    e_sims, e_ids = exact.search(novel, K)
    c_sims, c_ids = compressed.search(novel, K)
    overlap = np.mean([len(set(e_ids[i]) & set(c_ids[i])) / K for i in range(len(novel))])
    print(
        f"novel queries: top-1 equal {np.mean(c_ids[:, 0] == e_ids[:, 0]):.4f}, "
        f"top-{K} overlap {overlap:.4f}"
    )
    # What the null sees: a novel slice's neighbours are all about equally far, so the
    # compressed top-1 is sometimes a near-tie of the exact one, a hair lower; never higher.
    gap = e_sims[:, 0] - c_sims[:, 0]
    assert np.all(gap >= -2e-3)
    assert np.median(gap) <= 1e-3 and np.mean(gap < 5e-3) >= 0.9


def test_compressed_holds_at_most_340_bytes_per_vector(bank, compressed, exact):
    per_vector = compressed.memory_bytes() / len(bank)
    print(
        f"compressed {per_vector:.1f} B/vector in RAM, exact {exact.memory_bytes() / len(bank):.0f}"
    )
    assert per_vector <= 340
    assert compressed.disk_bytes() == len(bank) * 768 * 2


def test_one_stacked_search_equals_one_search_per_view(bank, exact, compressed, copies):
    _, queries = copies
    views = [queries[:155], queries[155:310], queries[310:]]
    stacked, offsets = stack_views(views)
    assert list(offsets) == [0, 155, 310, 400]
    for index in (exact, compressed):
        sims, ids = index.search(stacked, K)
        for v, view in enumerate(views):
            s, i = index.search(view, K)
            assert np.array_equal(ids[offsets[v] : offsets[v + 1]], i)
            assert np.allclose(sims[offsets[v] : offsets[v + 1]], s, atol=1e-6)


def test_reconstruct_returns_the_stored_vectors(bank, exact, compressed):
    ids = np.array([[0, 5], [20_000, 7]])
    assert np.array_equal(exact.reconstruct(ids), bank[ids])
    assert np.allclose(compressed.reconstruct(ids), bank[ids], atol=1e-3)


@pytest.mark.parametrize("kind", ["exact", "compressed"])
def test_save_load_round_trip_gives_identical_results(
    kind, bank, exact, compressed, copies, tmp_path
):
    index = {"exact": exact, "compressed": compressed}[kind]
    _, queries = copies
    before = index.search(queries, K)
    folder = save_index(index, tmp_path / kind)
    params = json.loads((folder / PARAMS_FILE).read_text())
    assert params["kind"] == kind and params["ntotal"] == len(bank) and params["dim"] == 768
    assert not [p.name for p in folder.iterdir() if "partial" in p.name]
    loaded = load_index(folder)
    assert type(loaded) is type(index)
    after = loaded.search(queries, K)
    assert np.array_equal(before[1], after[1])
    assert np.array_equal(before[0], after[0])
    if kind == "compressed":
        assert isinstance(loaded.disk_vectors(), np.memmap)
        assert loaded.params() == index.params()


def small_saved(tmp_path, kind):
    vectors = structured_bank(12, seed=1)  # 1800 vectors: enough to train a few lists
    index = ExactVectorIndex(768) if kind == "exact" else CompressedVectorIndex(768)
    index.add(vectors)
    return save_index(index, tmp_path / kind)


@pytest.mark.parametrize(
    "kind,name",
    [
        ("exact", PARAMS_FILE),
        ("exact", EXACT_VECTORS_FILE),
        ("compressed", CODES_FILE),
        ("compressed", DISK_VECTORS_FILE),
    ],
)
def test_a_missing_file_is_refused_with_its_name(tmp_path, kind, name):
    folder = small_saved(tmp_path, kind)
    (folder / name).unlink()
    with pytest.raises(BankError, match=name.replace(".", r"\.")):
        load_index(folder)


@pytest.mark.parametrize(
    "kind,name", [("exact", EXACT_VECTORS_FILE), ("compressed", DISK_VECTORS_FILE)]
)
def test_vectors_of_the_wrong_shape_or_truncated_are_refused(tmp_path, kind, name):
    folder = small_saved(tmp_path, kind)
    np.save(folder / name, np.zeros((5, 768), np.float16 if kind == "compressed" else np.float32))
    with pytest.raises(BankError, match=rf"{name}.*\(5, 768\)"):
        load_index(folder)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(BankError, match=name.replace(".", r"\.")):
        load_index(folder)


def test_damaged_codes_and_parameters_are_refused(tmp_path):
    folder = small_saved(tmp_path, "compressed")
    codes = (folder / CODES_FILE).read_bytes()
    (folder / CODES_FILE).write_bytes(codes[: len(codes) // 3])
    with pytest.raises(BankError, match=CODES_FILE.replace(".", r"\.")):
        load_index(folder)
    (folder / PARAMS_FILE).write_text("{not json")
    with pytest.raises(BankError, match=PARAMS_FILE.replace(".", r"\.")):
        load_index(folder)


def test_tune_nprobe_reaches_its_recall_target(bank, exact, compressed):
    before = compressed.nprobe
    try:
        nprobe = compressed.tune_nprobe(target=0.99, n_queries=128)
        assert compressed.nprobe == nprobe and 1 <= nprobe <= compressed.nlist
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(bank), 128, replace=False))
        queries = noisy_copies(bank, rows, noise=1.0, seed=11)
        _, e_ids = exact.search(queries, K)
        _, c_ids = compressed.search(queries, K)
        equal = np.mean(e_ids[:, 0] == c_ids[:, 0])
        print(f"tuned nprobe {nprobe}: top-1 equal {equal:.3f}")
        assert equal >= 0.97
    finally:
        compressed.set_nprobe(before)
