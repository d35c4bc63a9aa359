"""Image similarity as the best region pair (eq. 7) and region query expansion (eq. 8)."""
import numpy as np

from rdfa.pooling import l2_normalize
from rdfa.search import image_similarities, rank, region_query_expansion, search


def brute_force(query, regions, offsets):
    sims, best = [], []
    for i in range(len(offsets) - 1):
        rows = range(offsets[i], offsets[i + 1])
        pairs = [(float(q @ regions[r]), r) for r in rows for q in query]
        s = max(p[0] for p in pairs)
        sims.append(s)
        best.append(min(r for v, r in pairs if v == s))
    return np.array(sims), np.array(best)


def test_best_region_pair_matches_brute_force():
    rng = np.random.default_rng(0)
    regions = l2_normalize(rng.normal(size=(23, 8)))
    offsets = np.array([0, 3, 4, 12, 20, 23])
    query = l2_normalize(rng.normal(size=(3, 8)))
    sims, best = image_similarities(query, regions, offsets)
    ref_sims, ref_best = brute_force(query, regions, offsets)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-12)
    np.testing.assert_array_equal(best, ref_best)


def test_a_small_matching_region_wins_over_global_dissimilarity():
    # image 1's whole-image region is unlike the query, but one of its regions matches it
    q = np.array([[1.0, 0, 0]])
    regions = np.array([[0.6, 0.8, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    sims, best = image_similarities(q, regions, np.array([0, 1, 4]))
    assert rank(sims).tolist() == [1, 0] and best[1] == 3


def test_region_qe_averages_best_regions_of_top_results():
    rng = np.random.default_rng(1)
    regions = l2_normalize(rng.normal(size=(10, 4)))
    offsets = np.arange(0, 11, 2)
    query = l2_normalize(rng.normal(size=(1, 4)))
    sims, best = image_similarities(query, regions, offsets)
    order = rank(sims)
    expanded = region_query_expansion(query, regions, order, best, 2, include_query=True)
    ref = query[0] + regions[best[order[0]]] + regions[best[order[1]]]
    np.testing.assert_allclose(expanded[0], ref / np.linalg.norm(ref))
    literal = region_query_expansion(query, regions, order, best, 2, include_query=False)
    ref = regions[best[order[0]]] + regions[best[order[1]]]
    np.testing.assert_allclose(literal[0], ref / np.linalg.norm(ref))


def test_search_with_and_without_qe():
    rng = np.random.default_rng(2)
    regions = l2_normalize(rng.normal(size=(12, 5)))
    offsets = np.arange(0, 13, 3)
    queries = [l2_normalize(rng.normal(size=(1, 5))) for _ in range(3)]
    ranks, best, ranks_qe, _ = search(queries, regions, offsets, n_qe=0)
    np.testing.assert_array_equal(ranks, ranks_qe)  # N_QE = 0: no expansion
    for q, query in enumerate(queries):
        sims, _ = brute_force(query, regions, offsets)
        np.testing.assert_array_equal(ranks[q], np.argsort(-sims, kind="stable"))
    assert sorted(ranks[0].tolist()) == list(range(4))


def test_one_query_gives_the_scores_and_regions_that_rank_the_database():
    from rdfa.search import search_one

    rng = np.random.default_rng(4)
    regions = l2_normalize(rng.normal(size=(20, 6)))
    offsets = np.array([0, 4, 9, 10, 16, 20])
    query = l2_normalize(rng.normal(size=(3, 6)))
    sim, best, sim_qe, best_qe = search_one(query, regions, offsets, n_qe=2)
    ref_sim, ref_best = brute_force(query, regions, offsets)
    np.testing.assert_allclose(sim, ref_sim)
    np.testing.assert_array_equal(best, ref_best)
    expanded = region_query_expansion(query, regions, rank(sim), best, 2)
    np.testing.assert_allclose(sim_qe, brute_force(expanded, regions, offsets)[0])
    ranks, bests, ranks_qe, bests_qe = search([query], regions, offsets, n_qe=2)
    np.testing.assert_array_equal(ranks[0], rank(sim))
    np.testing.assert_array_equal(ranks_qe[0], rank(sim_qe))
    np.testing.assert_array_equal(bests_qe[0], best_qe)
    no_qe = search_one(query, regions, offsets, n_qe=0)
    np.testing.assert_array_equal(no_qe[2], no_qe[0])


# --- every query at once (rdfa.search.similarities / search_all) against a literal per-query search -----------

def literal_similarities(query, regions, offsets):
    """eq. 7 written out: per image, the best (query region, image region) pair; its first image row."""
    sims, best = [], []
    for i in range(len(offsets) - 1):
        value, row = None, None
        for r in range(offsets[i], offsets[i + 1]):
            pair = max(sum(float(a) * float(b) for a, b in zip(q, regions[r])) for q in query)
            if value is None or pair > value:  # strictly greater: the first row reaching the max
                value, row = pair, r
        sims.append(value)
        best.append(row)
    return np.array(sims), np.array(best)


def literal_rank(sims):
    """Decreasing similarity, ties in index order."""
    return np.array(sorted(range(len(sims)), key=lambda i: (-sims[i], i)))


def literal_search(queries, regions, offsets, n_qe, include_query):
    """Today's per-query search as loops: eq. 7, eq. 8 (sum of the top images' best regions and the
    query's last row, l2), eq. 7 again."""
    out = []
    for query in queries:
        sims, best = literal_similarities(query, regions, offsets)
        ranks = literal_rank(sims)
        parts = [regions[best[i]] for i in ranks[:n_qe]] + ([query[-1]] if include_query else [])
        expanded = np.sum(parts, axis=0)
        expanded = expanded / np.linalg.norm(expanded)
        sims_qe, best_qe = literal_similarities(expanded[None], regions, offsets)
        out.append((ranks, best, sims, literal_rank(sims_qe), best_qe, sims_qe))
    return [np.array(x) for x in zip(*out)]


def tied_problem(seed):
    """Small integer vectors: every product exact in float32, so many exact ties (between images,
    between an image's regions, between a query's regions), whatever the summation order."""
    rng = np.random.default_rng(seed)
    counts = np.array([1, 3, 1, 4, 2, 1, 1, 5, 2, 1, 3, 1])  # several images with one region
    offsets = np.concatenate(([0], np.cumsum(counts)))
    regions = rng.integers(-2, 3, size=(offsets[-1], 6)).astype(np.float32)
    regions[7] = regions[2]            # an image's region equal to another image's: tied images
    regions[offsets[3] + 2] = regions[offsets[3]]  # two equal regions in one image: the first wins
    q_counts = [1, 3, 2, 1, 4]
    queries = [rng.integers(-2, 3, size=(n, 6)).astype(np.float32) for n in q_counts]
    queries[2][1] = queries[2][0]      # a query region repeated
    return queries, regions, offsets


def test_all_queries_at_once_match_a_literal_search_including_ties():
    from rdfa.search import search_all, similarities

    for seed in range(5):
        queries, regions, offsets = tied_problem(seed)
        q_rows = np.concatenate(queries)
        q_offsets = np.cumsum([0] + [len(q) for q in queries])
        ref = [literal_similarities(q, regions, offsets) for q in queries]
        ref_sims = np.array([s for s, _ in ref])
        ref_best = np.array([b for _, b in ref])
        assert any(len(set(s)) < len(s) for s in ref_sims)  # the data has tied images
        # Block sizes that cut images apart, one row, and everything at once.
        for chunk in (1, 2, 3, 5, 7, 1000):
            sims, best = similarities(q_rows, q_offsets, regions, offsets, chunk_rows=chunk)
            assert sims.dtype == np.float32
            np.testing.assert_array_equal(sims, ref_sims)
            np.testing.assert_array_equal(best, ref_best)
            ranks = search_all(q_rows, q_offsets, regions, offsets, chunk_rows=chunk)[0]
            np.testing.assert_array_equal(ranks, [literal_rank(s) for s in ref_sims])


def test_region_qe_of_all_queries_matches_a_literal_search():
    from rdfa.search import search_all

    rng = np.random.default_rng(5)
    offsets = np.concatenate(([0], np.cumsum([1, 4, 2, 1, 3, 1, 6, 2, 1, 1])))
    regions = l2_normalize(rng.normal(size=(offsets[-1], 8))).astype(np.float32)
    queries = [l2_normalize(rng.normal(size=(n, 8))).astype(np.float32) for n in (1, 3, 2, 4)]
    q_rows = np.concatenate(queries)
    q_offsets = np.cumsum([0] + [len(q) for q in queries])
    for n_qe, include_query in ((3, True), (2, False), (20, True)):
        ref = literal_search(queries, regions, offsets, n_qe, include_query)
        for chunk in (1, 4, 1000):
            out = search_all(q_rows, q_offsets, regions, offsets, n_qe, include_query, chunk_rows=chunk)
            for got, want, name in zip(out, ref, ("ranks", "best", "sim", "ranks_qe", "best_qe", "sim_qe")):
                if name.startswith("sim"):
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
                else:
                    np.testing.assert_array_equal(got, want, err_msg=name)
            assert out[5].dtype == np.float64  # the expanded query is float64, its search too
    # The list interface and the one-query search give the same.
    from rdfa.search import search_one

    ranks, best, ranks_qe, best_qe = search(queries, regions, offsets, 3, True, chunk_rows=5)
    ref = search_all(q_rows, q_offsets, regions, offsets, 3, True)
    for got, want in zip((ranks, best, ranks_qe, best_qe), (ref[0], ref[1], ref[3], ref[4])):
        np.testing.assert_array_equal(got, want)
    for q, query in enumerate(queries):
        sim, b, sim_qe, b_qe = search_one(query, regions, offsets, 3, chunk_rows=5)
        np.testing.assert_array_equal(rank(sim), ranks[q])
        np.testing.assert_array_equal(b, best[q])
        np.testing.assert_array_equal(rank(sim_qe), ranks_qe[q])
        np.testing.assert_array_equal(b_qe, best_qe[q])


def test_batched_expansion_sums_in_the_order_and_precision_of_one_query():
    """eq. 8 for all queries at once rounds as the one-query np.vstack(...).sum(0) did."""
    from rdfa.search import expand_queries

    rng = np.random.default_rng(6)
    offsets = np.arange(0, 301, 3)
    regions = (rng.normal(size=(300, 64)) * rng.uniform(0.1, 100, size=(300, 1))).astype(np.float32)
    q_rows = rng.normal(size=(7, 64)).astype(np.float32)
    q_offsets = np.array([0, 2, 3, 7])
    ranks = np.stack([rng.permutation(100) for _ in range(3)])
    best = rng.integers(0, 3, size=(3, 100)) + offsets[:-1]
    out = expand_queries(q_rows, q_offsets, regions, ranks, best, 11, True)
    for q in range(3):
        parts = np.vstack([regions[best[q][ranks[q][:11]]], q_rows[q_offsets[q + 1] - 1][None]])
        np.testing.assert_array_equal(out[q], l2_normalize(parts.sum(0, keepdims=True))[0])


def test_bad_offsets_are_refused():
    import pytest

    from rdfa.search import similarities

    regions = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="every database image needs at least one region"):
        similarities(regions[:1], np.array([0, 1]), regions, np.array([0, 2, 2, 3]))
    with pytest.raises(ValueError, match="every query needs at least one region"):
        similarities(regions[:1], np.array([0, 0, 1]), regions, np.array([0, 3]))
    with pytest.raises(ValueError, match="chunk_rows"):
        similarities(regions[:1], np.array([0, 1]), regions, np.array([0, 3]), chunk_rows=0)


def test_ranking_all_queries_is_the_stable_sort_with_or_without_ties():
    from rdfa.search import rank_all

    rng = np.random.default_rng(7)
    distinct = rng.normal(size=(6, 500))
    tied = rng.integers(-3, 4, size=(6, 500)).astype(np.float32)  # many equal values
    mixed = np.vstack([distinct, tied, [[0.0, -0.0, 1.0, np.nan, 1.0, np.nan] * 83 + [2.0, -0.0]]])
    for sims in (distinct, tied, mixed, distinct.astype(np.float32)):
        np.testing.assert_array_equal(rank_all(sims), np.argsort(-sims, axis=1, kind="stable"))
