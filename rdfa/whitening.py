"""PCA bases (eq. 4) and PCA-whitening (eq. 6)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pooling import l2_normalize


@dataclass
class PCA:
    """Principal axes of a set of row vectors.

    ``components`` is ``(d, n_components)`` (columns are the axes, by
    decreasing variance), ``eigenvalues`` the variances along them, ``mean``
    the training mean.
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray


def max_components(n_samples: int, n_features: int) -> int:
    """The most principal axes that ``n_samples`` centred vectors of ``n_features`` can span."""
    return max(min(n_samples - 1, n_features), 0)


def fit_pca(x: np.ndarray, n_components: int, name: str = "n_components") -> PCA:
    """PCA of the rows of ``x``; ``name`` is the parameter named in errors.

    Raises ``ValueError`` when ``n_components`` exceeds what the data can
    span (``min(n - 1, d)``): such axes would be arbitrary.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    limit = max_components(n, d)
    if n_components < 1:
        raise ValueError(f"{name} must be >= 1 (got {n_components})")
    if n_components > limit:
        raise ValueError(
            f"{name}={n_components} is larger than the {limit} principal axes that "
            f"{n} training descriptors of dimension {d} can span; lower {name} or train on more data")
    mean = x.mean(0)
    xc = x - mean
    if n < d:
        # Gram trick: eigenvectors of X X^T (n x n) map to those of X^T X.
        gram = xc @ xc.T
        eigvals, vecs = np.linalg.eigh(gram)
        order = np.argsort(eigvals)[::-1][:n_components]
        eigvals = np.maximum(eigvals[order], 0.0)
        components = xc.T @ vecs[:, order]
        components /= np.maximum(np.linalg.norm(components, axis=0, keepdims=True), 1e-300)
    else:
        eigvals, vecs = np.linalg.eigh(xc.T @ xc)
        order = np.argsort(eigvals)[::-1][:n_components]
        eigvals = np.maximum(eigvals[order], 0.0)
        components = vecs[:, order]
    # Fix each axis's sign (largest coefficient positive) so results are reproducible.
    signs = np.sign(components[np.abs(components).argmax(0), np.arange(components.shape[1])])
    components *= np.where(signs == 0, 1.0, signs)
    return PCA(mean=mean, components=components, eigenvalues=eigvals / max(n - 1, 1))


def whiten(x: np.ndarray, pca: PCA, eps: float = 1e-12) -> np.ndarray:
    """eq. (6): ``diag(s)^-1 U2^T (f - mean)``, then l2-normalised.

    The training mean is subtracted, as PCA-whitening does in CroW, which the
    paper follows; ``s_d`` are the standard deviations along the axes
    (singular values up to one global factor, which l2-normalisation removes).
    """
    x = np.asarray(x, dtype=np.float64)
    scale = 1.0 / np.sqrt(np.maximum(pca.eigenvalues, eps))
    return l2_normalize(((x - pca.mean) @ pca.components) * scale)


def whitened(x: np.ndarray, pca: PCA) -> np.ndarray:
    """eq. (6) and l2, in the stored precision (float32): what the whitening stage writes."""
    return whiten(x, pca).astype(np.float32)


def whitening_note(n_train: int, dim: int) -> str | None:
    """A warning when D approaches the number of training descriptors, else None.

    Whitening then divides by tiny, noisy variances and can destroy retrieval
    (measured: 0.95 -> 0.03 mAP for D=256 learned on 253 descriptors).
    """
    if dim > n_train / 4:
        return (f"PCA-whitening to D={dim} learned on only {n_train} descriptors "
                f"(D/n = {dim / n_train:.2f}): the smallest kept variances are poorly "
                "estimated and whitening may hurt retrieval; use more training data or a smaller D")
    return None
