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
