"""The collection's whitening (whitening.distractors.fit: collection): PCA of the database rows and
the distractor sample's rows together, streamed, against a direct eigendecomposition."""
import h5py
import numpy as np

from rdfa.io.collection_whitening import fit_collection, stored_fit, write_whitened
from rdfa.whitening import Whitening


def _descriptors(path, rng, n_db=300, d=24):
    with h5py.File(path, "w") as f:
        for group, n in (("db", n_db), ("query", 7), ("full", 7)):
            rows = rng.standard_normal((n, d)).astype(np.float32) * np.linspace(3, 0.2, d).astype(np.float32)
            f.create_dataset(f"{group}/desc", data=rows)
            f.create_dataset(f"{group}/offsets", data=np.arange(n + 1))
        f.create_dataset("query/all_regions", data=np.zeros(7, dtype=bool))
    with h5py.File(path, "r") as f:
        return {g: f[f"{g}/desc"][()] for g in ("db", "query", "full")}


def test_fit_is_the_pca_of_database_and_sample_together(tmp_path):
    rng = np.random.default_rng(0)
    stored = _descriptors(tmp_path / "descriptors.h5", rng)
    sample = [rng.standard_normal((8, 24)).astype(np.float32) + 0.5 for _ in range(40)]  # another mean
    pca, fit = fit_collection(tmp_path / "descriptors.h5", iter(sample), 10, chunk_rows=64)
    assert fit == {"database_rows": 300, "sample_images": 40, "sample_rows": 320, "n_train": 620}
    everything = np.vstack([stored["db"], *sample]).astype(np.float64)
    mean = everything.mean(0)
    values, vectors = np.linalg.eigh(np.cov(everything, rowvar=False))
    order = np.argsort(values)[::-1][:10]
    np.testing.assert_allclose(pca.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pca.eigenvalues, values[order], rtol=1e-4)
    cos = np.abs(np.sum(pca.components * vectors[:, order], axis=0))
    assert cos.min() > 0.9999


def test_database_queries_whitened_with_the_collection_fit_and_the_fit_resumes(tmp_path):
    rng = np.random.default_rng(1)
    stored = _descriptors(tmp_path / "descriptors.h5", rng)
    sample = [rng.standard_normal((8, 24)).astype(np.float32) for _ in range(20)]
    pca, fit = fit_collection(tmp_path / "descriptors.h5", iter(sample), 6, chunk_rows=4096)
    out = tmp_path / "whitened.h5"
    write_whitened(out, tmp_path / "descriptors.h5", pca, Whitening("pca"), fit, "digest-1", chunk_rows=5)
    with h5py.File(out, "r") as f:
        for group in ("db", "query", "full"):
            rows = f[f"{group}/desc"][()]
            # eq. 6 by hand: centred, projected, divided by the axes' standard deviations, l2-normalised
            expected = (stored[group] - pca.mean) @ pca.components / np.sqrt(pca.eigenvalues)
            expected /= np.linalg.norm(expected, axis=1, keepdims=True)
            np.testing.assert_allclose(rows, expected, atol=2e-5)
        assert f.attrs["D"] == 6 and f.attrs["learned_on"] == "collection" and f.attrs["n_train"] == 460
    again = stored_fit(out, "digest-1")
    assert again is not None and again[1] == fit
    np.testing.assert_array_equal(again[0].components, pca.components)
    assert stored_fit(out, "digest-2") is None  # learned from something else: fitted again
    assert stored_fit(tmp_path / "missing.h5", "digest-1") is None
