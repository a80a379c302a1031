"""Per-layer vector indexes for stage 1: exact for small banks, compressed for large ones.

Both hold L2-normalised (whitened) float32 vectors and rank by inner product (= cosine), with
faiss's calling convention: `add(vectors)`, `search(queries, k) -> (similarities, ids)`.

- `ExactVectorIndex` is faiss's flat inner-product index, what the engine has always used:
  3 KiB per vector in RAM, search time linear in the bank.
- `CompressedVectorIndex` keeps only IVF-PQ codes in RAM (about 200-270 B per vector) and the
  vectors themselves on disk (fp16 by default, memory-mapped). A search takes a shortlist of
  `shortlist` x k from the codes and re-ranks it exactly from the disk copy, so the returned
  similarities are true cosines (to fp16 rounding) and the returned top-k equals the exact
  top-k whenever the exact top-k lies in the shortlist.

`choose_index_kind` says which one a bank of a given size should use; `save_index` /
`load_index` write and read either kind to a folder with a small JSON of its parameters.
Files are written under a temporary name and renamed into place, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

from ..errors import BankError, SettingsError

FORMAT = "memorization-index vector index"
FORMAT_VERSION = 1
PARAMS_FILE = "index.json"
EXACT_VECTORS_FILE = "vectors.npy"
CODES_FILE = "codes.faiss"
DISK_VECTORS_FILE = "vectors_disk.npy"

INDEX_KINDS = ("auto", "exact", "compressed")

# Below this many bank slices `auto` keeps the exact index, where it is cheap: at 1e5 slices
# it holds 0.92 GB for three layers, and one 155-slice volume takes ~0.6 s to search on an
# idle 2-core CPU (RESULTS' 14.5 s per view at 1e6, scaled linearly, and stacking the three
# views measured 2.0-2.7x faster in Testing/benchmarks/scale.py). It needs no training and
# its recall is 1 for novel slices too, where the compressed top-1 is often a near-tie
# (SCALE.md), which the calibrated null is made of. Above it exact RAM and time grow
# linearly (9 KiB and ~6 s per volume per 1e6 slices), while the compressed index holds
# 618 B per slice and searched a volume 159x faster at 1e6 in the same run.
EXACT_MAX_SLICES = 100_000

# Fewest vectors a compressed index is trained on: k-means for the coarse lists and the PQ
# codebooks (256 centroids per sub-quantizer) need tens of points per centroid.
MIN_TRAIN_VECTORS = 10_000


def choose_index_kind(n_slices: int, kind: str = "auto") -> str:
    """'exact' or 'compressed' for a bank of n_slices (see EXACT_MAX_SLICES for the rule)."""
    if kind not in INDEX_KINDS:
        raise SettingsError(f"Index kind {kind!r} is not one of {', '.join(INDEX_KINDS)}.")
    if kind != "auto":
        return kind
    return "exact" if n_slices < EXACT_MAX_SLICES else "compressed"


def stack_views(per_view: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One query matrix from several views of the same slices (one search per layer, not one
    per view and layer); returns (stacked [sum n_v, d], start offset of each view + end)."""
    offsets = np.cumsum([0] + [len(v) for v in per_view])
    return np.ascontiguousarray(np.concatenate(per_view), dtype=np.float32), offsets


def _as_queries(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"Expected vectors of shape [n, {dim}], got {x.shape}.")
    return x


class VectorIndex:
    """Common interface of the two kinds (see the module docstring)."""

    kind = "base"

    def __init__(self, dim: int):
        self.dim = int(dim)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def ntotal(self) -> int:
        raise NotImplementedError

    def add(self, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (similarities float32 [n, k], ids int64 [n, k]), best
        first; ids are -1 (similarity -inf) where fewer than k were found."""
        raise NotImplementedError

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of the given rows as float32 [*ids.shape, dim]: what the engine
        scores every candidate with on every layer."""
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Bytes held in RAM, measured as faiss's serialised size of the in-memory part."""
        raise NotImplementedError

    def params(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "ntotal": self.ntotal}


class ExactVectorIndex(VectorIndex):
    """faiss IndexFlatIP: exact, no training, all vectors in RAM as float32."""

    kind = "exact"

    def __init__(self, dim: int):
        super().__init__(dim)
        self.index = faiss.IndexFlatIP(self.dim)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(_as_queries(vectors, self.dim))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self.index.search(_as_queries(queries, self.dim), int(k))
        return sims, ids.astype(np.int64, copy=False)

    def vectors(self) -> np.ndarray:
        """All vectors as a numpy view of faiss's own storage (no copy)."""
        n = self.index.ntotal
        return faiss.rev_swig_ptr(self.index.get_xb(), n * self.dim).reshape(n, self.dim)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors()[np.asarray(ids)]

    def memory_bytes(self) -> int:
        return serialized_size(self.index)

    def _save_files(self, folder: Path) -> None:
        _save_npy(folder / EXACT_VECTORS_FILE, self.vectors())

    @classmethod
    def _load_files(cls, folder: Path, params: dict) -> ExactVectorIndex:
        index = cls(params["dim"])
        vectors = _load_npy(folder / EXACT_VECTORS_FILE, (params["ntotal"], params["dim"]))
        index.add(np.asarray(vectors, dtype=np.float32))
        return index


def default_nlist(n: int) -> int:
    """Coarse lists: about sqrt(n), a power of two, so that one list holds ~sqrt(n) codes
    and k-means training stays short (1024 lists at 1e6 vectors)."""
    return int(2 ** np.clip(round(math.log2(max(n, 1)) / 2), 4, 16))


class CompressedVectorIndex(VectorIndex):
    """IVF-PQ codes in RAM, vectors on disk, shortlist re-ranked exactly from the disk copy.

    The codes are faiss's 4-bit fast-scan PQ (`pq_m` sub-quantizers of 4 bits, scanned with
    SIMD lookups), 192 B per 768-d vector, optionally behind a random rotation. Whitened
    features have about equal variance in every direction, which is what OPQ's learned
    rotation would buy; it costs minutes of training at 768 dimensions and 2.4 MB per layer,
    so it is off by default (`rotation=True` adds a random one). Disk vectors are appended
    to a scratch file while adding, then copied into the index folder by `save_index`.
    """

    kind = "compressed"

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,
        pq_m: int = 384,
        pq_bits: int = 4,
        nprobe: int = 16,
        shortlist: int = 8,
        rotation: bool = False,
        disk_dtype: str = "float16",
        scratch_dir: str | os.PathLike | None = None,
    ):
        super().__init__(dim)
        if dim % pq_m:
            raise SettingsError(f"pq_m={pq_m} does not divide the dimension {dim}.")
        self.nlist = nlist
        self.pq_m = int(pq_m)
        self.pq_bits = int(pq_bits)
        self.nprobe = int(nprobe)
        self.shortlist = int(shortlist)
        self.rotation = bool(rotation)
        self.disk_dtype = np.dtype(disk_dtype).name
        self.scratch_dir = scratch_dir
        self.index: faiss.Index | None = None
        self._disk: np.ndarray | None = None  # memory-mapped vectors once saved or loaded
        self._scratch: Path | None = None  # raw rows appended while adding
        self._scratch_rows = 0

    # ---- building --------------------------------------------------------------------
    def factory_string(self) -> str:
        pq = f"PQ{self.pq_m}x{self.pq_bits}fs" if self.pq_bits == 4 else f"PQ{self.pq_m}"
        rot = f"RR{self.dim}," if self.rotation else ""
        return f"{rot}IVF{self.nlist},{pq}"

    @property
    def is_trained(self) -> bool:
        return self.index is not None and self.index.is_trained

    def train(self, sample: np.ndarray, n_expected: int | None = None) -> None:
        """Fit the coarse lists and codebooks on a sample (a few tens of thousands of rows
        is plenty); n_expected, the bank size, sets the number of lists when not given."""
        sample = _as_queries(sample, self.dim)
        if self.nlist is None:
            self.nlist = default_nlist(n_expected or len(sample))
        # k-means wants >= ~39 points per list; fewer lists rather than a poor fit.
        self.nlist = int(max(1, min(self.nlist, len(sample) // 39)))
        self.index = faiss.index_factory(
            self.dim, self.factory_string(), faiss.METRIC_INNER_PRODUCT
        )
        # PQ training runs one tiny k-means per sub-quantizer (384 of them); with several
        # OpenMP threads their synchronisation dominates, and on a busy machine it took 297 s
        # instead of 6 s for 20k x 768. One thread trains every kind faster here.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            self.index.train(sample)
        finally:
            faiss.omp_set_num_threads(threads)
        self._ivf().nprobe = self.nprobe

    def _ivf(self) -> faiss.IndexIVF:
        return faiss.extract_index_ivf(self.index)

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = int(nprobe)
        if self.index is not None:
            self._ivf().nprobe = self.nprobe

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    def add(self, vectors: np.ndarray) -> None:
        """Encode into the in-RAM codes and append the vectors to the on-disk copy; trains on
        these vectors first if not trained yet."""
        vectors = _as_queries(vectors, self.dim)
        if not self.is_trained:
            self.train(vectors)
        if self._disk is not None:
            raise SettingsError("This index was saved or loaded; build a new one to add to it.")
        if self._scratch is None:
            fd, name = tempfile.mkstemp(prefix="vectors-", suffix=".raw", dir=self.scratch_dir)
            os.close(fd)
            self._scratch = Path(name)
        with open(self._scratch, "ab") as fh:
            vectors.astype(self.disk_dtype).tofile(fh)
        self._scratch_rows += len(vectors)
        self.index.add(vectors)

    def disk_vectors(self) -> np.ndarray:
        """The on-disk copy as a read-only memory map [ntotal, dim] (never loaded whole)."""
        if self._disk is not None:
            return self._disk
        if self._scratch is None:
            return np.zeros((0, self.dim), self.disk_dtype)
        return np.memmap(
            self._scratch, dtype=self.disk_dtype, mode="r", shape=(self._scratch_rows, self.dim)
        )

    def __del__(self):
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            try:
                scratch.unlink()
            except OSError:
                pass

    # ---- searching -------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_queries(queries, self.dim)
        n, k = len(queries), int(k)
        sims = np.full((n, k), -np.inf, np.float32)
        ids = np.full((n, k), -1, np.int64)
        if n == 0 or self.ntotal == 0:
            return sims, ids
        k_short = min(self.ntotal, max(k, self.shortlist * k))
        _, short = self.index.search(queries, k_short)
        valid = short >= 0
        # Read each needed row once, in file order (kind to the page cache and the disk);
        # neighbouring query slices share most of their candidates.
        rows, inverse = np.unique(np.where(valid, short, 0), return_inverse=True)
        inverse = inverse.reshape(short.shape)
        block = np.asarray(self.disk_vectors()[rows], dtype=np.float32)  # [u, d]
        # One BLAS matrix-vector product per query over its own candidates: measured 2x
        # faster than a batched einsum and 4x faster than gathering every query's
        # candidates at once (hundreds of MB of memory traffic for one volume).
        exact = np.empty(short.shape, np.float32)
        for i in range(n):
            exact[i] = block[inverse[i]] @ queries[i]
        exact[~valid] = -np.inf
        top = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        width = top.shape[1]
        sims[:, :width] = np.take_along_axis(exact, top, axis=1)
        ids[:, :width] = np.where(
            np.isfinite(sims[:, :width]), np.take_along_axis(short, top, axis=1), -1
        )
        return sims, ids

    def tune_nprobe(
        self,
        target: float = 0.99,
        n_queries: int = 256,
        noise: float = 1.0,
        candidates: tuple[int, ...] = (4, 8, 16, 32, 64, 128),
        k: int = 10,
        seed: int = 0,
    ) -> int:
        """Set and return the smallest nprobe whose re-ranked top-1 is the exact top-1 for
        at least `target` of probe queries: stored vectors plus noise of norm `noise`
        (cosine ~0.7 to their source at 1.0, harder than a copy's ~0.9), so that copies
        and their near neighbours are found with margin. The exact answer is a brute-force
        pass over the disk copy (one read of it). k is the engine's top-k: the shortlist
        is `shortlist` x k."""
        n = self.ntotal
        if n == 0:
            return self.nprobe
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, min(n_queries, n), replace=False))
        disk = self.disk_vectors()
        q = np.asarray(disk[rows], dtype=np.float32)
        q += (noise / np.sqrt(self.dim)) * rng.standard_normal(q.shape, dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        best = np.full(len(q), -np.inf, np.float32)
        truth = np.zeros(len(q), np.int64)
        for start in range(0, n, 65_536):
            sims = q @ np.asarray(disk[start : start + 65_536], dtype=np.float32).T
            top = sims.argmax(axis=1)
            value = sims[np.arange(len(q)), top]
            better = value > best
            best[better], truth[better] = value[better], top[better] + start
        for nprobe in candidates:
            self.set_nprobe(min(nprobe, self.nlist))
            _, ids = self.search(q, k)
            if np.mean(ids[:, 0] == truth) >= target or nprobe >= self.nlist:
                break
        return self.nprobe

    def shortlist_search(self, queries: np.ndarray, k_short: int) -> np.ndarray:
        """The compressed codes' own top-k_short ids, before re-ranking (for measuring recall)."""
        _, short = self.index.search(_as_queries(queries, self.dim), int(k_short))
        return short

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        flat = ids.reshape(-1)
        rows, inverse = np.unique(flat, return_inverse=True)
        block = np.asarray(self.disk_vectors()[rows], dtype=np.float32)
        return block[inverse].reshape(*ids.shape, self.dim)

    def memory_bytes(self) -> int:
        return 0 if self.index is None else serialized_size(self.index)

    def disk_bytes(self) -> int:
        return self.ntotal * self.dim * np.dtype(self.disk_dtype).itemsize

    def params(self) -> dict:
        return {
            **super().params(),
            "factory": None if self.index is None else self.factory_string(),
            "nlist": self.nlist,
            "pq_m": self.pq_m,
            "pq_bits": self.pq_bits,
            "nprobe": self.nprobe,
            "shortlist": self.shortlist,
            "rotation": self.rotation,
            "disk_dtype": self.disk_dtype,
        }

    # ---- persistence -----------------------------------------------------------------
    def _save_files(self, folder: Path) -> None:
        if self.index is None:
            raise SettingsError("Cannot save a compressed index that was never trained.")
        _atomic_write_index(folder / CODES_FILE, self.index)
        _save_npy(folder / DISK_VECTORS_FILE, self.disk_vectors())

    def _attach(self, path: Path) -> None:
        """Switch from the scratch file to the saved copy (and drop the scratch file)."""
        self._disk = _load_npy(path, (self.ntotal, self.dim), self.disk_dtype)
        if self._scratch is not None:
            self._scratch.unlink(missing_ok=True)
            self._scratch = None

    @classmethod
    def from_params(cls, params: dict) -> CompressedVectorIndex:
        """An empty index with the parameters `params()` recorded (KeyError if one lacks)."""
        return cls(
            params["dim"],
            nlist=params["nlist"],
            pq_m=params["pq_m"],
            pq_bits=params["pq_bits"],
            nprobe=params["nprobe"],
            shortlist=params["shortlist"],
            rotation=params["rotation"],
            disk_dtype=params["disk_dtype"],
        )

    @classmethod
    def _load_files(cls, folder: Path, params: dict) -> CompressedVectorIndex:
        index = cls.from_params(params)
        path = folder / CODES_FILE
        if not path.is_file():
            raise BankError(f"The index file {path} is missing.")
        try:
            index.index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise BankError(f"The index file {path} is damaged ({exc}).") from exc
        if index.index.ntotal != params["ntotal"] or index.index.d != params["dim"]:
            raise BankError(
                f"The index file {path} holds {index.index.ntotal} x {index.index.d} vectors, "
                f"{folder / PARAMS_FILE} says {params['ntotal']} x {params['dim']}."
            )
        index.set_nprobe(params["nprobe"])
        index._disk = _load_npy(
            folder / DISK_VECTORS_FILE, (params["ntotal"], params["dim"]), params["disk_dtype"]
        )
        return index


def build_index(
    vectors: np.ndarray, kind: str = "auto", tune: bool = False, **compressed_options
) -> VectorIndex:
    """An index of the chosen kind holding `vectors` (float32 unit rows [n, d]); a compressed
    one is trained on a random sample of them, and with tune=True its nprobe is set by
    `tune_nprobe` (one brute-force pass over 256 probe queries)."""
    vectors = np.asarray(vectors)
    kind = choose_index_kind(len(vectors), kind)
    if kind == "exact":
        index = ExactVectorIndex(vectors.shape[1])
        index.add(vectors)
        return index
    index = CompressedVectorIndex(vectors.shape[1], **compressed_options)
    index.train(training_sample(vectors), n_expected=len(vectors))
    for start in range(0, len(vectors), 65_536):
        index.add(vectors[start : start + 65_536])
    if tune:
        index.tune_nprobe()
    return index


def training_sample(vectors: np.ndarray, size: int | None = None, seed: int = 0) -> np.ndarray:
    """A random sample to train a compressed index on: 64 points per coarse list (at least
    MIN_TRAIN_VECTORS), enough for k-means and for the 16-centroid PQ codebooks."""
    n = len(vectors)
    if size is None:
        size = max(MIN_TRAIN_VECTORS, 64 * default_nlist(n))
    if n <= size:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


# ---- persistence -------------------------------------------------------------------------
def save_index(index: VectorIndex, folder: str | os.PathLike) -> Path:
    """Write the index's files and its parameters (index.json, written last) into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index._save_files(folder)
    params = {"format": FORMAT, "version": FORMAT_VERSION, **index.params()}
    _atomic_write_bytes(folder / PARAMS_FILE, json.dumps(params, indent=1).encode())
    if isinstance(index, CompressedVectorIndex):
        index._attach(folder / DISK_VECTORS_FILE)
    return folder


def load_index(folder: str | os.PathLike) -> VectorIndex:
    """Read an index written by save_index; a missing, damaged or mismatched file raises a
    BankError that names it."""
    folder = Path(folder)
    path = folder / PARAMS_FILE
    if not path.is_file():
        raise BankError(f"The index parameters {path} are missing.")
    try:
        params = json.loads(path.read_text())
        if params.get("format") != FORMAT:
            raise ValueError("not a vector index")
        kind = params["kind"]
        int(params["dim"]), int(params["ntotal"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BankError(f"The index parameters {path} are damaged ({exc}).") from exc
    if params["version"] > FORMAT_VERSION:
        raise BankError(f"{path} was written by a newer version; update MemorizationIndex.")
    classes = {"exact": ExactVectorIndex, "compressed": CompressedVectorIndex}
    if kind not in classes:
        raise BankError(f"{path} names an unknown index kind {kind!r}.")
    return classes[kind]._load_files(folder, params)


def serialized_size(index) -> int:
    """Bytes of faiss's serialised index: what it holds in RAM.

    Not faiss.serialize_index: with SimpleITK loaded (it is, in the engine) the two SWIG
    modules share the std::vector<uint8_t> type and faiss's array conversion asserts.
    """
    writer = faiss.VectorIOWriter()
    faiss.write_index(index, writer)
    return int(writer.data.size())


def _atomic_write_index(path: Path, index) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary name in the same folder, then rename (a memory map is streamed
    from its pages, not loaded whole)."""
    tmp = path.with_name(f".{path.name}.partial.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_npy(path: Path, shape: tuple[int, int], dtype: str = "float32") -> np.ndarray:
    """Memory-map an .npy and check its shape and dtype; errors name the file."""
    if not path.is_file():
        raise BankError(f"The index file {path} is missing.")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise BankError(f"The index file {path} is damaged ({exc}).") from exc
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise BankError(
            f"The index file {path} holds {array.dtype} {array.shape}, expected "
            f"{np.dtype(dtype).name} {tuple(shape)}: rebuild the bank."
        )
    return array
