"""Peer methods, written here from their papers, on the same slices and features as ours.

Every per-sample score is oriented so that higher means more copy-like. Feature-space peers
use `peer_features`: the encoder's raw mean-pooled features of the same blocks our index
uses, each block L2-normalised, concatenated. Pixel-space peers use the same 64 px slice
thumbnails the engine stores (min-max scaled, physical aspect kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from scipy.stats import mannwhitneyu

# One line per method: what it is and where it comes from (the tables print these).
DESCRIPTIONS = {
    "ours": (
        "MemorizationIndex, stage 1: whitened multi-layer feature match over query flips, "
        "MI = tail probability of a null of held-out training volumes (this repository)"
    ),
    "ours_two_stage": (
        "MemorizationIndex, stage 1 + geometric verification of the candidates in image "
        "space, calibrated by the same volume-level null (this repository, issue 5)"
    ),
    "ours_no_whitening": "ours with the ZCA whitening replaced by the identity (ablation)",
    "ours_single_layer": "ours on one encoder block only (block 11; ablation)",
    "paper_z": (
        "Deo et al. 2026 (arXiv 2602.13066): per-layer ZCA, per-layer top-1 cosine, geometric "
        "mean, z-score against 10 bootstrap train-vs-train halves (slice level); flag ONI < -0.68"
    ),
    "paper_z_shrunk": (
        "the paper's z-score MI as above with our Ledoit-Wolf shrunk ZCA in place of its "
        "eigenvalue-clipped ZCA (isolates its slice-level null and z-score)"
    ),
    "authenticity": (
        "Alaa et al. 2022 (ICML), per-sample authenticity: a sample is unauthentic when it is "
        "closer to its nearest training sample than that sample is to its own nearest training "
        "neighbour; score = that ratio"
    ),
    "fld_memorization": (
        "Jiralerspong et al. 2023 (NeurIPS, FLD): Gaussians centred on the synthetic samples, "
        "bandwidths fitted to the training set; score = max training log-likelihood / d"
    ),
    "pixel_correlation": (
        "Akbar et al. 2023: highest Pearson correlation of the slice's pixels with any "
        "training slice"
    ),
    "carlini_l2": (
        "Carlini et al. 2023 (USENIX Security): pixel L2 to the nearest training slice "
        "relative to the mean L2 to the 50 nearest; score = minus that ratio"
    ),
    "ct_score": (
        "Meehan et al. 2020 (AISTATS) data-copying test C_T: per-cell Mann-Whitney Z of "
        "nearest-training distances, synthetic vs held-out; dataset level, < 0 = copying"
    ),
    "frechet": (
        "Frechet distance (Heusel et al. 2017) between Gaussian fits of synthetic and training "
        "features; dataset level (it rewards copying)"
    ),
}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def peer_features(per_layer: list[np.ndarray]) -> np.ndarray:
    """Raw (unwhitened) features of every block, each L2-normalised, concatenated."""
    return np.concatenate([l2_normalise(f) for f in per_layer], axis=1) / math.sqrt(len(per_layer))


def pixels(thumbnails: np.ndarray) -> np.ndarray:
    """uint8 thumbnails [n, s, s] -> float vectors in [0, 1], [n, s*s]."""
    return np.asarray(thumbnails, dtype=np.float64).reshape(len(thumbnails), -1) / 255.0


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


# ---- Deo et al. 2026: the paper's z-score MI ---------------------------------------------


@dataclass
class PaperMI:
    """Per-layer ZCA (eigenvalues clipped at eps, as the authors' code), per-layer top-1
    cosine to the training slices, geometric mean over layers, z-score against the mean and
    standard deviation of ten bootstrap train-vs-train half splits; ONI = -tanh(z)."""

    means: list[np.ndarray]
    matrices: list[np.ndarray]
    train: list[np.ndarray]  # whitened, normalised training features per layer
    mu: float
    sigma: float

    ONI_THRESHOLD = -0.68  # the paper's "universal" copy threshold (copies: ONI < -0.68)

    @classmethod
    def fit(
        cls,
        train_layers: list[np.ndarray],
        n_bootstrap: int = 10,
        seed: int = 1234,
        shrinkage: bool = False,
    ):
        """shrinkage=False: the authors' ZCA (eigenvalues clipped at 1e-8). With fewer training
        slices than dimensions it sends every train-vs-train top-1 cosine to about 0, so the
        null collapses. shrinkage=True: our Ledoit-Wolf ZCA instead (whitening.Whitener), all
        else the paper's, to isolate its slice-level null and z-score."""
        means, matrices = [], []
        for f in train_layers:
            f = np.asarray(f, dtype=np.float64)
            if shrinkage:
                from MemorizationIndexLib.search.whitening import Whitener

                w = Whitener.fit(f)
                means.append(w.mean.astype(np.float64))
                matrices.append(w.matrix.astype(np.float64))
                continue
            mu = f.mean(axis=0)
            cov = np.cov(f - mu, rowvar=False)
            vals, vecs = np.linalg.eigh(cov)
            vals = np.clip(vals, 1e-8, None)
            means.append(mu)
            matrices.append(vecs @ np.diag(1.0 / np.sqrt(vals)) @ vecs.T)
        whitened = [
            l2_normalise((np.asarray(f, np.float64) - m) @ w)
            for f, m, w in zip(train_layers, means, matrices, strict=True)
        ]
        rng = np.random.default_rng(seed)
        n = len(whitened[0])
        half = max(1, n // 2)
        null = []
        for _ in range(n_bootstrap):
            perm = rng.permutation(n)
            a, b = perm[:half], perm[half : 2 * half]
            null.append(_geometric_top1([w[a] for w in whitened], [w[b] for w in whitened]))
        null = np.concatenate(null)
        return cls(means, matrices, whitened, float(null.mean()), float(null.std() + 1e-8))

    def similarity(self, query_layers: list[np.ndarray]) -> np.ndarray:
        q = [
            l2_normalise((np.asarray(f, np.float64) - m) @ w)
            for f, m, w in zip(query_layers, self.means, self.matrices, strict=True)
        ]
        return _geometric_top1(q, self.train)

    def z(self, query_layers: list[np.ndarray]) -> np.ndarray:
        return (self.similarity(query_layers) - self.mu) / self.sigma

    def flags(self, z: np.ndarray) -> np.ndarray:
        return -np.tanh(z) < self.ONI_THRESHOLD


def _geometric_top1(query: list[np.ndarray], ref: list[np.ndarray]) -> np.ndarray:
    # the authors' log(s + 1e-8) is NaN for a negative top-1 cosine: clipped at 0 here
    logs = [
        np.log(np.clip(np.max(q @ r.T, axis=1), 0.0, None) + 1e-8)
        for q, r in zip(query, ref, strict=True)
    ]
    return np.exp(np.mean(logs, axis=0))


# ---- Alaa et al. 2022: authenticity, per sample ------------------------------------------


def authenticity(train: np.ndarray, synthetic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, unauthentic flag) per synthetic sample.

    d_s = distance of the synthetic sample to its nearest training sample t*; d_t = distance
    of t* to its own nearest other training sample. Unauthentic (a copy) when d_s < d_t; the
    score is d_t / d_s (the nearest training sample's own neighbour is looked up by t*'s
    index, the per-sample form).
    """
    within = pairwise_distances(train, train)
    np.fill_diagonal(within, np.inf)
    own = within.min(axis=1)
    to_train = pairwise_distances(synthetic, train)
    nearest = to_train.argmin(axis=1)
    d_s = to_train[np.arange(len(synthetic)), nearest]
    d_t = own[nearest]
    return d_t / np.maximum(d_s, 1e-12), d_s < d_t


# ---- Jiralerspong et al. 2023: FLD's per-sample memorization score -----------------------


def fld_memorization(
    train: np.ndarray,
    reference: np.ndarray,
    synthetic: np.ndarray,
    epochs: int = 50,
    lr: float = 0.5,
    origin_share: float = 0.1,
) -> np.ndarray:
    """Per synthetic sample: max over training samples of log N(train | sample, sigma_j^2 I)/d.

    As in the FLD paper: features standardised with the held-out reference set's statistics;
    a mixture of isotropic Gaussians centred on the synthetic samples (plus one broad
    component at the training mean) whose per-component log variances are fitted by Adam to
    the training samples' likelihood, starting from each centre's nearest training distance.
    A copy sits on a training sample: its variance shrinks and its score rises.
    """
    mean = reference.mean(axis=0)
    std = reference.std(axis=0, ddof=1) if len(reference) > 1 else np.ones(reference.shape[1])
    std = np.where(std > 1e-8, std, 1.0)

    def norm(x):
        return torch.as_tensor((x - mean) / std, dtype=torch.float64)

    t, g = norm(train), norm(synthetic)
    d = t.shape[1]
    m = g.shape[0]
    dists = torch.cdist(t, g) ** 2  # [n_train, m]
    log_var = ((dists.min(dim=0).values + 1e-3) / d).log().clone().requires_grad_(True)
    origin_log_var = torch.zeros((), dtype=torch.float64, requires_grad=True)
    origin_d = (1.0 - origin_share) ** 2 * ((t - t.mean(dim=0)) ** 2).sum(dim=1, keepdim=True)
    const = 0.5 * d * math.log(2.0 * math.pi)

    def pairwise(dist, lv):
        return -0.5 * dist / lv.exp() - 0.5 * d * lv - const

    optim = torch.optim.Adam([log_var, origin_log_var], lr=lr)
    for _ in range(epochs):
        optim.zero_grad()
        comp = pairwise(dists, log_var) - math.log(m)
        origin = pairwise(origin_d, origin_log_var)
        loss = -torch.logsumexp(torch.cat([comp, origin], dim=1), dim=1).mean() / d
        loss.backward()
        optim.step()
        with torch.no_grad():
            log_var.clamp_(-40.0, 20.0)
    with torch.no_grad():
        score = pairwise(dists, log_var).max(dim=0).values / d
    return score.numpy()


# ---- Akbar et al. 2023: pixel correlation ------------------------------------------------


def pixel_correlation(train_pixels: np.ndarray, synthetic_pixels: np.ndarray) -> np.ndarray:
    """Highest Pearson correlation of each synthetic slice with any training slice."""

    def standardise(x):
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return (standardise(synthetic_pixels) @ standardise(train_pixels).T).max(axis=1)


# ---- Carlini et al. 2023: relative L2 ----------------------------------------------------


def carlini_relative_l2(
    train_pixels: np.ndarray, synthetic_pixels: np.ndarray, n: int = 50, alpha: float = 0.5
) -> np.ndarray:
    """-l2(x, nearest) / (alpha * mean l2 to the n nearest training slices): higher = copy."""
    d = np.sort(pairwise_distances(synthetic_pixels, train_pixels), axis=1)
    n = max(1, min(n, d.shape[1]))
    return -d[:, 0] / (alpha * np.maximum(d[:, :n].mean(axis=1), 1e-12))


# ---- Meehan et al. 2020: the C_T data-copying test ----------------------------------------


def ct_score(
    train: np.ndarray,
    reference: np.ndarray,
    synthetic: np.ndarray,
    cells: int = 3,
    min_synthetic: int = 5,
    components: int = 64,
    seed: int = 0,
) -> float:
    """C_T: test-share-weighted mean over cells of the Mann-Whitney Z comparing nearest-
    training-sample distances of synthetic vs held-out samples. C_T << 0: data copying.

    As in the paper's code: PCA to at most 64 dimensions (fitted on training), k-means cells
    fitted on training; cells holding fewer than `min_synthetic` synthetic samples (the
    paper's tau) are left out; cells without held-out samples cannot be tested and are too.
    """
    mean = train.mean(axis=0)
    k = max(1, min(components, len(train) - 1, train.shape[1]))
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:k].T

    def project(x):
        return (x - mean) @ basis

    t, p, q = project(train), project(reference), project(synthetic)
    centroids, t_cells = kmeans2(t, cells, minit="++", seed=seed)
    p_cells = _assign(p, centroids)
    q_cells = _assign(q, centroids)
    weights, zs = [], []
    for c in range(len(centroids)):
        tc, pc, qc = t[t_cells == c], p[p_cells == c], q[q_cells == c]
        if len(tc) == 0 or len(pc) == 0 or len(qc) < min_synthetic:
            continue
        lq = pairwise_distances(qc, tc).min(axis=1)
        lp = pairwise_distances(pc, tc).min(axis=1)
        m, n = len(lq), len(lp)
        u = mannwhitneyu(lq, lp, alternative="two-sided").statistic
        zs.append((u - m * n / 2.0) / math.sqrt(m * n * (m + n + 1) / 12.0))
        weights.append(len(pc) / len(p))
    if not weights:
        return float("nan")
    return float(np.dot(weights, zs) / np.sum(weights))


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return pairwise_distances(x, centroids).argmin(axis=1)


# ---- Frechet distance ---------------------------------------------------------------------


@dataclass
class GaussianFit:
    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> GaussianFit:
        x = np.asarray(x, dtype=np.float64)
        return cls(x.mean(axis=0), np.cov(x, rowvar=False))


def frechet_distance(reference: GaussianFit, samples: np.ndarray) -> float:
    """||mu_r - mu_s||^2 + tr S_r + tr S_s - 2 tr (S_r S_s)^(1/2).

    With fewer samples m than dimensions, S_s = X^T X / (m - 1) for centred X, and the
    eigenvalues of S_r S_s are those of X S_r X^T / (m - 1) (an m x m matrix), so the
    trace term is exact without a d x d matrix square root.
    """
    x = np.asarray(samples, dtype=np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    m = len(x)
    small = xc @ reference.cov @ xc.T / max(m - 1, 1)
    eig = np.clip(np.linalg.eigvalsh((small + small.T) / 2.0), 0.0, None)
    trace_s = float((xc * xc).sum() / max(m - 1, 1))
    diff = reference.mean - mu
    return float(diff @ diff + np.trace(reference.cov) + trace_s - 2.0 * np.sqrt(eig).sum())
