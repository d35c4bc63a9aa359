"""PCA bases (eq. 4), PCA-whitening (eq. 6) and its softer variants.

The paper whitens with the inverse square roots of the PCA eigenvalues
(``mode: pca``). Learned on a small collection, the smallest kept variances
are poorly estimated and dividing by them amplifies noise (see
:func:`whitening_note`); two standard remedies scale the axes less
aggressively (:class:`Whitening`): shrinkage of the eigenvalues toward
their mean (``lambda + s * mean(lambda)``, the covariance shrunk toward a
multiple of the identity, as Ledoit and Wolf do), and a power of them
(``lambda^-p``, ``p`` in [0, 0.5]: 0 is the PCA rotation alone, 0.5 full
whitening). ``none`` keeps the l2-normalised descriptors as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pooling import l2_normalize, l2_rows_into
from .settings import WHITENING_MODES, Whitening  # noqa: F401  (the whitening mode is a setting)


@dataclass
class PCA:
    """Principal axes of a set of row vectors.

    ``components`` is ``(d, n_components)`` (columns are the axes, by
    decreasing variance), ``eigenvalues`` the variances along them, ``mean``
    the training mean, ``total_variance`` the variance summed over all ``d``
    axes (what the kept ones are a share of).
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    total_variance: float = float("nan")  # summed over every axis, kept or not


#: The paper's PCA-whitening (eq. 6).
PCA_WHITENING = Whitening("pca")

#: Variances below this are treated as this (a zero-variance axis would divide by zero).
VARIANCE_FLOOR = 1e-12


def axis_scales(pca: PCA, whitening: Whitening = PCA_WHITENING, n_axes: int | None = None) -> np.ndarray:
    """The factor each of the first ``n_axes`` principal axes is multiplied by (eq. 6: ``1 / s_d``)."""
    if whitening.mode == "none":
        raise ValueError("whitening.mode 'none' projects on no axes")
    variances = np.maximum(np.asarray(pca.eigenvalues[:n_axes], dtype=np.float64), VARIANCE_FLOOR)
    if whitening.mode == "pca":
        return 1.0 / np.sqrt(variances)
    if whitening.mode == "power":
        return variances ** -whitening.power
    mean_variance = pca.total_variance / len(pca.mean)
    if not np.isfinite(mean_variance):
        raise ValueError("shrinkage whitening needs the fit's total variance (a transform saved without it: "
                         "re-run the whitening stage)")
    return 1.0 / np.sqrt(variances + whitening.shrink * mean_variance)


def max_components(n_samples: int, n_features: int) -> int:
    """The most principal axes that ``n_samples`` centred vectors of ``n_features`` can span."""
    return max(min(n_samples - 1, n_features), 0)


def fit_pca(x: np.ndarray, n_components: int, name: str = "n_components", chunk_rows: int = 4096) -> PCA:
    """PCA of the rows of ``x``; ``name`` is the parameter named in errors.

    Raises ``ValueError`` when ``n_components`` exceeds what the data can
    span (``min(n - 1, d)``): such axes would be arbitrary. See
    :func:`fit_pca_rows` for how it is computed.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"PCA needs a 2-D array of row vectors (got shape {x.shape})")
    # The Gram path (fewer rows than dimensions) keeps every row: one block, not blocks copied together.
    block = max(len(x), 1) if len(x) < x.shape[1] else chunk_rows
    return fit_pca_rows(lambda start, stop: x[start:stop], len(x), x.shape[1], n_components, name, block)


def fit_pca_rows(read_rows, n: int, d: int, n_components: int, name: str = "n_components",
                 chunk_rows: int = 4096) -> PCA:
    """PCA of ``n`` row vectors of dimension ``d`` read block by block: ``read_rows(start, stop)``.

    Memory does not grow with ``n`` (see :class:`StreamingPCA`).
    """
    fitter = StreamingPCA(d, chunk_rows)
    for start in range(0, n, chunk_rows):
        fitter.add(read_rows(start, min(start + chunk_rows, n)))
    return fitter.fit(n_components, name)


class StreamingPCA:
    """PCA of row vectors added block by block, in memory that does not grow with their number.

    Fewer vectors than dimensions: they are kept, and the eigenvectors of
    their ``n x n`` Gram matrix are mapped back. As soon as there are ``d``
    of them, the ``d x d`` covariance is accumulated instead (see
    :class:`ScatterAccumulator`), and :meth:`fit` computes only its top
    ``n_components`` eigenvectors. Axes are sorted by decreasing variance,
    each with its largest coefficient positive, so results are reproducible.

    Rows that are all float32 (the stored region descriptors) are fitted in
    float32: the Gram products and the eigendecomposition (the covariance
    is still summed in float64). Twice as fast as float64, and measured on
    COIL-100's 7,168 whole-image second-order descriptors (d = 8256, top
    512 axes; ``bench/kernels.py fit``): eigenvalues within 2e-5 relative of
    the float64 fit, every axis at |cos| > 0.9999 of its float64
    counterpart: well below what the float32 descriptors themselves
    resolve. Anything else is fitted in float64.
    """

    def __init__(self, dim: int, chunk_rows: int = 4096):
        self.dim, self.chunk_rows = dim, chunk_rows
        self.n = self.n_pending = 0
        self.pending: list[np.ndarray] = []
        self.scatter: ScatterAccumulator | None = None
        self.all_float32 = True

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"PCA of {self.dim}-dimensional vectors got an array of shape {rows.shape}")
        self.pending.append(rows)
        self.all_float32 &= rows.dtype == np.float32
        self.n += len(rows)
        self.n_pending += len(rows)
        # Rows wait until a full block has gathered (one d x d update per block, not per call),
        # and, while there are fewer than d in all, for the Gram path.
        if self.n >= self.dim and self.n_pending >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if self.scatter is None:
            self.scatter = ScatterAccumulator(self.dim)
        pending = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending, self.n_pending = [], 0
        for start in range(0, len(pending), self.chunk_rows):
            self.scatter.add(pending[start:start + self.chunk_rows])

    def fit(self, n_components: int, name: str = "n_components") -> PCA:
        """The top ``n_components`` axes; ``name`` is the parameter named in errors.

        Raises ``ValueError`` when ``n_components`` exceeds what the data can
        span (``min(n - 1, d)``): such axes would be arbitrary.
        """
        n, d = self.n, self.dim
        limit = max_components(n, d)
        if n_components < 1:
            raise ValueError(f"{name} must be >= 1 (got {n_components})")
        if n_components > limit:
            raise ValueError(
                f"{name}={n_components} is larger than the {limit} principal axes that "
                f"{n} training descriptors of dimension {d} can span; lower {name} or train on more data")
        work = np.float32 if self.all_float32 else np.float64
        if self.scatter is None and n < d:
            x = np.concatenate(self.pending)
            mean = x.mean(0, dtype=np.float64)
            # (x - mean) in float64, cast to the working type as it is computed: no float64 copy of x.
            xc = np.subtract(x, mean, out=np.empty(x.shape, dtype=work), casting="unsafe")
            # Gram trick: eigenvectors of X X^T (n x n) map to those of X^T X.
            gram = xc @ xc.T
            total = float(np.trace(gram, dtype=np.float64))
            eigvals, vecs = top_eigenvectors(gram, n_components)  # decreasing; only those computed
            eigvals = np.maximum(eigvals.astype(np.float64), 0.0)
            components = (xc.T @ vecs).astype(np.float64)
            components /= np.maximum(np.linalg.norm(components, axis=0, keepdims=True), 1e-300)
        else:
            if self.pending:
                self._flush()
            mean = self.scatter.mean()
            scatter = self.scatter.scatter()
            total = float(np.trace(scatter))
            eigvals, components = top_eigenvectors(scatter.astype(work, copy=False), n_components)
            eigvals = np.maximum(eigvals.astype(np.float64), 0.0)
            components = components.astype(np.float64)
            components /= np.maximum(np.linalg.norm(components, axis=0, keepdims=True), 1e-300)
        signs = np.sign(components[np.abs(components).argmax(0), np.arange(components.shape[1])])
        components *= np.where(signs == 0, 1.0, signs)
        return PCA(mean=mean, components=components, eigenvalues=eigvals / max(n - 1, 1),
                   total_variance=total / max(n - 1, 1))


class ScatterAccumulator:
    """Mean and scatter matrix ``sum (x - mean)(x - mean)^T`` of row vectors added block by block.

    Rows are shifted by the first block's mean before their products are
    summed (the "shifted data" algorithm), so that the final centring
    subtracts two nearly equal quantities only to the extent the first
    block's mean is off. Each block's product is computed in the rows'
    precision when they are float32 (the stored precision of the region
    descriptors; twice as fast as float64 in BLAS), else in float64, and
    summed in float64: blocks of a few thousand rows keep the float32
    rounding near 1e-6 relative.
    """

    def __init__(self, dim: int):
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(dim)
        self.products = np.zeros((dim, dim))

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if len(rows) == 0:
            return
        if self.shift is None:
            self.shift = rows.mean(0, dtype=np.float64)
        # float32 rows (stored descriptors) multiply in float32, anything else in float64; the
        # difference is computed in float64 and cast as it goes (no float64 copy of the block).
        shifted = np.subtract(rows, self.shift, casting="unsafe",
                              out=np.empty(rows.shape, dtype=np.float32 if rows.dtype == np.float32 else np.float64))
        self.n += len(shifted)
        self.sum += shifted.sum(0, dtype=np.float64)
        self.products += shifted.T @ shifted

    def mean(self) -> np.ndarray:
        return self.shift + self.sum / self.n

    def scatter(self) -> np.ndarray:
        """``sum (x - mean)(x - mean)^T`` over every row added, ``(d, d)`` float64."""
        return self.products - np.outer(self.sum, self.sum) / self.n


def top_eigenvectors(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of a symmetric matrix (decreasing) and their eigenvectors (columns).

    Only those ``k`` are computed when they are a small part of the spectrum
    (LAPACK's MRRR driver: about 3x faster than the full decomposition of an
    8256 x 8256 covariance for k = 512).
    """
    d = len(matrix)
    if k < d // 2:
        from scipy.linalg import eigh

        eigvals, vecs = eigh(matrix, subset_by_index=[d - k, d - 1], driver="evr", check_finite=False)
    else:
        eigvals, vecs = np.linalg.eigh(matrix)
        eigvals, vecs = eigvals[d - k:], vecs[:, d - k:]
    return eigvals[::-1], vecs[:, ::-1]


def whiten(x: np.ndarray, pca: PCA | None, whitening: Whitening = PCA_WHITENING) -> np.ndarray:
    """eq. (6): ``diag(s)^-1 U2^T (f - mean)``, then l2-normalised (or a variant, :class:`Whitening`).

    The training mean is subtracted, as PCA-whitening does in CroW, which the
    paper follows; ``s_d`` are the standard deviations along the axes
    (singular values up to one global factor, which l2-normalisation removes).
    Mode ``none``: ``x`` l2-normalised (``pca`` unused, may be None).
    float32 rows (the stored descriptors) are projected in float32, as
    :func:`rdfa.projection.whitened_variants` does; anything else in float64.
    """
    x = np.asarray(x)
    if whitening.mode == "none":
        return l2_normalize(x.astype(np.float64))
    return l2_normalize(_scaled_projection(x, pca, whitening))


def _scaled_projection(x: np.ndarray, pca: PCA, whitening: Whitening) -> np.ndarray:
    """eq. (6) before the l2: the rows centred, projected and scaled, in float32 for float32 rows."""
    work = np.float32 if x.dtype == np.float32 else np.float64
    projected = (x - pca.mean.astype(work)) @ pca.components.astype(work)
    return projected * axis_scales(pca, whitening).astype(work)


def whitened(x: np.ndarray, pca: PCA | None, whitening: Whitening = PCA_WHITENING) -> np.ndarray:
    """eq. (6) and l2, in the stored precision (float32): what the whitening stage writes.

    ``whiten(x, pca, whitening).astype(np.float32)``, the same numbers, the l2 cast as it goes.
    """
    x = np.asarray(x)
    if whitening.mode == "none" or x.ndim != 2:
        return whiten(x, pca, whitening).astype(np.float32)
    scaled = _scaled_projection(x, pca, whitening)
    out = np.empty(scaled.shape, dtype=np.float32)
    l2_rows_into(scaled, out)
    return out


#: The rule for D relative to the training set, as results files and docs/whitening.md state it.
D_RULE = ("D at most n/4 (n: the training vectors of the fit): under PCA-whitening (eq. 6) the smallest of D "
          "kept variances are otherwise too poorly estimated, and dividing by them amplifies noise. Within "
          "the rule, full whitening to a large D still hurt on collections of many views of few objects "
          "(COIL-100, n = 7,168: CroW 0.79 at D=128, 0.49 at D=512), whereas shrinkage whitening "
          "(whitening.mode shrink, whitening.shrink 30) kept every method within 0.01 of its unwhitened "
          "mAP at D = 128 to 512 (docs/whitening.md: the recommended setting).")


def whitening_rule(n_train: int, dim: int) -> dict:
    """The D rule (:data:`D_RULE`) for one fit, as the results files record it."""
    return {"n_train": int(n_train), "D": int(dim), "D_over_n": round(dim / max(n_train, 1), 4),
            "within_rule": bool(dim <= n_train / 4), "rule": D_RULE}


def whitening_note(n_train: int, dim: int, whitening: Whitening = PCA_WHITENING) -> str | None:
    """A warning when D breaks the D rule (more than n/4 axes from ``n_train`` vectors), else None.

    Whitening then divides by tiny, noisy variances and can destroy retrieval
    (measured: 0.95 -> 0.03 mAP for D=256 learned on 253 descriptors);
    shrinkage and power whitening damp those axes, and say so.
    """
    if whitening.mode == "none" or dim <= n_train / 4:
        return None
    if whitening.mode == "pca":
        return (f"PCA-whitening to D={dim} learned on only {n_train} descriptors "
                f"(D/n = {dim / n_train:.2f}): the smallest kept variances are poorly "
                "estimated and whitening may hurt retrieval; use more training data, a smaller D, "
                "or whitening.mode shrink (docs/whitening.md: the recommended setting)")
    return (f"{whitening.label} whitening to D={dim} learned on only {n_train} descriptors "
            f"(D/n = {dim / n_train:.2f}, above the D rule's n/4): the poorly estimated axes are damped, "
            "not amplified, but more training data or a smaller D is safer")
