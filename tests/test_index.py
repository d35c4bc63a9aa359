"""Large region collections (rdfa.index): eq. 7 in one pass over stored float16 blocks, and FAISS shortlists
re-ranked by exact eq. 7, against rdfa.search and literal maxima."""
import h5py
import numpy as np
import pytest

from rdfa.index import IndexSettings, RegionIndex, candidate_scores, exact_image_scores, recall_at_k, training_rows
from rdfa.io.region_index import read_region_index, write_region_index
from rdfa.pooling import l2_normalize
from rdfa.search import rank_all, similarities


def random_database(seed=0, n_images=300, dim=32):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate(([0], np.cumsum(rng.integers(1, 12, n_images))))
    rows = l2_normalize(rng.normal(size=(offsets[-1], dim))).astype(np.float16)
    return rows, offsets


def shards(rows, offsets, cuts):
    """The database split into blocks of whole images at image indices ``cuts``, each with its local offsets."""
    bounds = [0, *cuts, len(offsets) - 1]
    return [(rows[offsets[a]:offsets[b]], offsets[a:b + 1] - offsets[a]) for a, b in zip(bounds[:-1], bounds[1:])]


def literal_maxima(q_rows, q_offsets, rows, offsets):
    """eq. 7 written out: every query row with every row of every image, in float64."""
    products = q_rows.astype(np.float64) @ rows.astype(np.float64).T
    sim = np.empty((len(q_offsets) - 1, len(offsets) - 1))
    for q in range(len(q_offsets) - 1):
        for i in range(len(offsets) - 1):
            sim[q, i] = products[q_offsets[q]:q_offsets[q + 1], offsets[i]:offsets[i + 1]].max()
    return sim


def assert_same_ranking(sim, reference):
    """Same order up to ties: the reference's values in ``sim``'s order decrease as the reference's sorted ones."""
    np.testing.assert_allclose(np.take_along_axis(reference, rank_all(sim), axis=1), -np.sort(-reference, axis=1),
                               rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def queries():
    rng = np.random.default_rng(1)
    q_offsets = np.array([0, 1, 4, 5, 9, 10])  # one-row (boxed) and several-row queries
    return l2_normalize(rng.normal(size=(10, 32))).astype(np.float32), q_offsets


@pytest.mark.parametrize("chunk_rows", [1, 5, 64, 100_000])
def test_exact_scores_over_blocks_match_the_in_memory_search(queries, chunk_rows):
    rows, offsets = random_database()
    q_rows, q_offsets = queries
    sim, best = exact_image_scores(q_rows, q_offsets, shards(rows, offsets, [7, 150, 151]), chunk_rows)
    ref_sim, ref_best = similarities(q_rows, q_offsets, rows.astype(np.float32), offsets)
    assert sim.dtype == np.float32 and sim.shape == ref_sim.shape == (5, 300)
    np.testing.assert_allclose(sim, ref_sim, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(best, ref_best)
    assert_same_ranking(sim, ref_sim)
    np.testing.assert_allclose(sim, literal_maxima(q_rows, q_offsets, rows, offsets), rtol=0, atol=1e-6)
    # the best region is a row of the image, and reaches its similarity
    owner = np.searchsorted(offsets, best, side="right") - 1
    np.testing.assert_array_equal(owner, np.broadcast_to(np.arange(300), owner.shape))


def test_exact_scores_read_memmaps_and_hdf5_datasets_by_ranges(queries, tmp_path):
    rows, offsets = random_database(seed=2)
    q_rows, q_offsets = queries
    stored = np.lib.format.open_memmap(tmp_path / "rows.npy", mode="w+", dtype=np.float16, shape=rows.shape)
    stored[:] = rows
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["desc"] = rows
    with h5py.File(tmp_path / "rows.h5", "r") as f:
        from_hdf5 = exact_image_scores(q_rows, q_offsets, [(f["desc"], offsets)], chunk_rows=37)
    from_memmap = exact_image_scores(q_rows, q_offsets, [(np.load(tmp_path / "rows.npy", mmap_mode="r"), offsets)],
                                     chunk_rows=37)
    in_memory = exact_image_scores(q_rows, q_offsets, [(rows, offsets)], chunk_rows=37)
    for a, b in zip(from_hdf5 + from_memmap, in_memory + in_memory):
        np.testing.assert_array_equal(a, b)


def test_exact_scores_refuse_blocks_that_do_not_fit(queries):
    rows, offsets = random_database()
    q_rows, q_offsets = queries
    with pytest.raises(ValueError, match="block 1: offsets end at"):
        exact_image_scores(q_rows, q_offsets, [(rows[:offsets[3]], offsets[:4]), (rows, offsets[:4])])
    with pytest.raises(ValueError, match="16-dimensional rows, the queries are 32-dimensional"):
        exact_image_scores(q_rows, q_offsets, [(rows[:, :16], offsets)])
    with pytest.raises(ValueError, match="runtime.chunk_rows"):
        exact_image_scores(q_rows, q_offsets, [(rows, offsets)], chunk_rows=0)


def test_candidate_scores_are_eq7_of_the_candidates_only(queries):
    rows, offsets = random_database(seed=3)
    q_rows, q_offsets = queries
    query = q_rows[1:4]
    images = np.array([0, 5, 6, 299])
    ref_sim, ref_best = similarities(query, np.array([0, 3]), rows.astype(np.float32), offsets)
    sim, best = candidate_scores(query, images, rows, offsets)
    np.testing.assert_allclose(sim, ref_sim[0, images], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(best, ref_best[0, images])
    # rows given by a function of the global rows (e.g. reading them from shard files)
    np.testing.assert_array_equal(candidate_scores(query, images, lambda index: rows[index], offsets)[1], best)


def test_flat_index_with_a_shortlist_of_everything_gives_the_exact_ranking(queries):
    rows, offsets = random_database(seed=4)
    q_rows, q_offsets = queries
    index = RegionIndex.build(shards(rows, offsets, [100]), IndexSettings(type="flat"), chunk_rows=50)
    images, sim, best = index.search(q_rows, q_offsets, rows, top_images=300, shortlist=len(rows))
    ref_sim, ref_best = exact_image_scores(q_rows, q_offsets, [(rows, offsets)])
    np.testing.assert_array_equal(images, rank_all(ref_sim))  # no ties in random data
    np.testing.assert_allclose(sim, np.take_along_axis(ref_sim, images, axis=1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(best, np.take_along_axis(ref_best, images, axis=1))
    # a short list: fewer candidates, padded
    images, sim, best = index.search(q_rows, q_offsets, rows, top_images=300, shortlist=3)
    assert (images[0, 3:] == -1).all() and np.isneginf(sim[0, 3:]).all() and (best[0, 3:] == -1).all()
    assert (images[1, :3] >= 0).all()


def clustered_database(seed=5, n_images=2000, per_image=4, dim=64, n_objects=200):
    """Each image shows one of ``n_objects`` objects: its regions are that object's centre plus noise."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(n_objects, dim)))
    objects = rng.integers(0, n_objects, n_images)
    rows = l2_normalize(np.repeat(centres[objects], per_image, axis=0)
                        + 0.6 * rng.normal(size=(n_images * per_image, dim)) / np.sqrt(dim))
    queries = l2_normalize(centres[objects[:40]] + 0.6 * rng.normal(size=(40, dim)) / np.sqrt(dim))
    return rows.astype(np.float16), np.arange(0, n_images * per_image + 1, per_image), queries.astype(np.float32)


IVFPQ = IndexSettings(type="ivfpq", nlist=32, m=16, nbits=8, nprobe=8, shortlist=100, train_size=4000, seed=3)


@pytest.mark.slow
def test_ivfpq_shortlists_find_the_exact_top_images_on_clustered_data():
    rows, offsets, q_rows = clustered_database()
    q_offsets = np.arange(len(q_rows) + 1)
    index = RegionIndex.build([(rows, offsets)], IVFPQ, threads=1)
    images, sim, _ = index.search(q_rows, q_offsets, rows, top_images=10)
    exact = rank_all(exact_image_scores(q_rows, q_offsets, [(rows, offsets)])[0])
    recall = recall_at_k(images, exact, 10)
    assert recall >= 0.9, recall  # measured 0.99 (0.9875 to 0.9975 with seeds 0 to 3)
    assert np.all(np.diff(sim, axis=1) <= 0)


@pytest.mark.slow
def test_builds_are_reproducible_and_survive_a_write_and_read(tmp_path):
    rows, offsets, q_rows = clustered_database(seed=6, n_images=1000)
    q_offsets = np.arange(len(q_rows) + 1)
    first = RegionIndex.build([(rows, offsets)], IVFPQ, threads=2)
    again = RegionIndex.build(shards(rows, offsets, [400]), IVFPQ, threads=1, chunk_rows=333)
    write_region_index(tmp_path / "regions.faiss", first)
    read = read_region_index(tmp_path / "regions.faiss", IVFPQ, offsets)
    results = [index.search(q_rows, q_offsets, rows, top_images=20) for index in (first, again, read)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="built with index.nlist: 32, params.yaml says 64"):
        read_region_index(tmp_path / "regions.faiss", IndexSettings(**{**IVFPQ.__dict__, "nlist": 64}), offsets)
    with pytest.raises(ValueError, match="holds 4000 regions, the database 4004"):
        read_region_index(tmp_path / "regions.faiss", IVFPQ, np.append(offsets, 4004))


@pytest.mark.parametrize("settings, dim, n_rows, message", [
    ({"type": "annoy"}, 32, 1000, "'index.type' must be one of exact, flat, ivfpq, ivfflat"),
    ({"type": "ivfpq", "m": 5}, 32, 100_000, r"'index.m' \(5\) must divide the descriptor dimension 32"),
    ({"type": "ivfpq", "nlist": 64, "nprobe": 4, "m": 8}, 32, 50, r"'index.nlist' \(64\) exceeds the 50 training"),
    ({"type": "ivfflat", "nlist": 64, "nprobe": 4, "train_size": 60}, 32, 1000, r"'index.nlist' \(64\) exceeds"),
    ({"type": "ivfpq", "nlist": 4, "nprobe": 4, "m": 8, "nbits": 8}, 32, 200, r"'index.nbits' \(8\): 2\^8 PQ"),
    ({"type": "ivfpq", "nbits": 0}, 32, 1000, "'index.nbits' must be an integer in"),
    ({"type": "ivfflat", "nlist": 8, "nprobe": 16}, 32, 1000, r"'index.nprobe' \(16\) cannot exceed 'index.nlist'"),
    ({"shortlist": 0}, 32, 1000, "'index.shortlist' must be an integer >= 1"),
    ({"nlist": 2.5}, 32, 1000, "'index.nlist' must be an integer >= 1"),
    ({"type": "exact"}, 32, 1000, "'index.type' exact builds no FAISS index"),
    ({"typ": "flat"}, 32, 1000, "unknown key.*index.typ$"),
])
def test_bad_settings_are_refused_naming_the_key(settings, dim, n_rows, message):
    with pytest.raises(ValueError, match=message):
        IndexSettings.from_params(settings).check_fit(dim, n_rows)


def test_training_rows_are_a_seeded_uniform_sample_across_blocks():
    rows, offsets = random_database(seed=7)
    blocks = shards(rows, offsets, [50, 200])
    sample = training_rows(blocks, 100, seed=0)
    assert sample.dtype == np.float32 and sample.shape == (100, 32)
    np.testing.assert_array_equal(sample, training_rows(shards(rows, offsets, [120]), 100, seed=0))
    picked = np.sort(np.random.default_rng(0).choice(len(rows), size=100, replace=False))
    np.testing.assert_array_equal(sample, rows[picked].astype(np.float32))
    assert len(training_rows(blocks, 10 ** 6, seed=0)) == len(rows)


def test_recall_at_k_counts_the_reference_top_k_found():
    reference = np.array([[3, 1, 2, 0], [0, 1, 2, 3]])
    ranked = np.array([[1, 3, 0, -1], [2, 3, -1, -1]])
    assert recall_at_k(ranked, reference, 2) == pytest.approx((2 / 2 + 0 / 2) / 2)
    assert recall_at_k(ranked, reference, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(ranked, reference, 0)
