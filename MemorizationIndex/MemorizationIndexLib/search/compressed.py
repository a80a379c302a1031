"""The compressed stage-1 index inside a bank: one CompressedVectorIndex per encoder layer.

SliceIndex (index.py) keeps exact faiss indexes for small banks, as it always has. For a
compressed bank each layer's index holds IVF-PQ codes in RAM and re-ranks its shortlist
exactly from the bank's own `features_layer{k}.npy` (float32, memory-mapped): the
similarities stage 1 returns are the exact cosines, so only the shortlist can differ from
the exact index, never a score. The whitened vectors are stored once, in the file the bank
has always written; the codes go to `codes_layer{k}.faiss`, their parameters into the
manifest's "index" entry.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ..errors import BankError
from .vector_store import (
    CompressedVectorIndex,
    _atomic_write_index,
    build_index,
    choose_index_kind,
)

CODES_NAME = "codes_layer{layer}.faiss"
# Re-rank copy: the bank's float32 features file itself (exact cosines, no second copy).
SEARCH_DISK_DTYPE = "float32"


def pq_subquantizers(dim: int) -> int:
    """Two dimensions per 4-bit sub-quantizer (384 for MRI-CORE's 768): ~dim/4 bytes a code."""
    return max(1, dim // 2) if dim % 2 == 0 else dim


def compressed_layer(vectors: np.ndarray, **options) -> CompressedVectorIndex:
    """A compressed index over one layer's whitened unit vectors [N, D], its nprobe tuned
    for 0.99 top-1 recall on noisy probes (vector_store.tune_nprobe)."""
    options.setdefault("pq_m", pq_subquantizers(vectors.shape[1]))
    options.setdefault("disk_dtype", SEARCH_DISK_DTYPE)
    return build_index(vectors, "compressed", tune=True, **options)


class LayerSearch:
    """A compressed layer as stage 1 calls it: faiss's `search(queries, k)`; rows the
    probed lists could not fill (ids -1) repeat the best row found, as a duplicate
    candidate does, so every returned id is a bank row."""

    def __init__(self, store: CompressedVectorIndex):
        self.store = store

    @property
    def ntotal(self) -> int:
        return self.store.ntotal

    def vectors(self) -> np.ndarray:
        """The re-rank vectors [N, D], memory-mapped once saved or loaded."""
        return self.store.disk_vectors()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self.store.search(queries, k)
        missing = ids < 0
        if missing.any():
            first = np.where(ids[:, :1] >= 0, ids[:, :1], 0)
            ids = np.where(missing, first, ids)
            sims = np.where(missing, sims[:, :1], sims)
        return sims, ids


def is_compressed(index) -> bool:
    return isinstance(index, LayerSearch)


def layer_indexes(vectors: list[np.ndarray], kind: str, options: dict) -> list | None:
    """Compressed per-layer indexes for whitened vectors when `kind` (exact, compressed,
    auto) resolves to compressed for this many slices; None for exact."""
    if choose_index_kind(len(vectors[0]), kind) != "compressed":
        return None
    return [LayerSearch(compressed_layer(v, **options)) for v in vectors]


def save_layers(folder: Path, layers: tuple[int, ...], indexes: list) -> dict:
    """Write each compressed layer's codes into a bank folder being written; returns the
    manifest's "index" entry ({"kind": "exact"} when the layers are exact)."""
    if not indexes or not is_compressed(indexes[0]):
        return {"kind": "exact"}
    params = {}
    for layer, index in zip(layers, indexes, strict=True):
        _atomic_write_index(folder / CODES_NAME.format(layer=layer), index.store.index)
        params[str(layer)] = index.store.params()
    return {"kind": "compressed", "layers": params}


def load_layers(folder: Path, manifest: dict, layers: tuple[int, ...], vectors: list) -> list:
    """The compressed layers of a saved bank, re-ranking from `vectors` (the memory-mapped
    features files); BankError naming the file when a codes file is missing or damaged."""
    entry = manifest.get("index", {}).get("layers", {})
    out = []
    for layer, disk in zip(layers, vectors, strict=True):
        params = entry.get(str(layer))
        path = folder / CODES_NAME.format(layer=layer)
        if not isinstance(params, dict):
            raise BankError(f"{folder / 'manifest.json'} lacks the index of layer {layer}.")
        store = _store_from(params, disk)
        try:
            store.index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise BankError(f"Bank file {path} is missing or damaged ({exc}).") from exc
        if store.index.ntotal != len(disk) or store.index.d != disk.shape[1]:
            raise BankError(
                f"Bank file {path} holds {store.index.ntotal} x {store.index.d} codes where "
                f"the bank has {len(disk)} x {disk.shape[1]} vectors. Rebuild the bank."
            )
        store.set_nprobe(params["nprobe"])
        out.append(LayerSearch(store))
    return out


def _store_from(params: dict, disk: np.ndarray) -> CompressedVectorIndex:
    try:
        store = CompressedVectorIndex.from_params(params)
    except (KeyError, TypeError, ValueError) as exc:
        raise BankError(f"The bank's index parameters are damaged ({exc}).") from exc
    store._disk = disk
    return store


def memory_bytes(indexes: list) -> int:
    """Bytes the stage-1 indexes hold in RAM (codes only when compressed)."""
    return sum(i.store.memory_bytes() if is_compressed(i) else i.ntotal * i.d * 4 for i in indexes)
