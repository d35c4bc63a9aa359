"""eq. 5 and eq. 7 in torch (rdfa.torch_ops) against rdfa.pooling / rdfa.search and literal loops, on the CPU
(and on a CUDA GPU with each eigensolver, where one is present: the device tool's machine)."""
import numpy as np
import pytest
import torch

from rdfa.pooling import second_moments, second_order
from rdfa.search import image_similarities
from rdfa.torch_ops import (
    _cupy,
    batched_eigh,
    eigh_backend,
    exact_search_torch,
    pack_regions,
    region_weights,
    second_order_torch,
)

#: Max abs difference allowed between float32 torch descriptors and rdfa.pooling's float64 ones
#: (l2-normalised vectors; measured 8e-6 on these examples, 2e-5 with K' = 128 on 36-position grids).
FLOAT32_TOLERANCE = 1e-4


def images(seed=0, kp=12):
    """Three images of different grid sizes with awkward regions: fewer positions than K' (singular G),
    alpha zero on the whole region (uniform fallback), all-zero local features, the whole image."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((4, 5), (3, 7), (6, 6)):
        local = rng.normal(size=(h, w, kp)) + 0.3
        alpha = rng.uniform(0, 1, size=(h, w))
        masks = rng.uniform(size=(5, h, w)) < 0.5
        masks[0] = False
        masks[0, :2, :2] = True  # 4 positions < K'
        masks[1] = True          # the whole image
        masks[2] = False
        masks[2, -1, :] = True
        alpha[-1, :] = 0         # region 2: alpha zero everywhere on it
        out.append((local, masks, alpha))
    out[2][0][:2, :3] = 0        # image 2: region 3 all-zero features
    out[2][1][3] = False
    out[2][1][3, :2, :3] = True
    return out


def reference(imgs, eps):
    return np.concatenate([second_order(local, masks, alpha, eps) for local, masks, alpha in imgs])


def packed(imgs):
    return pack_regions([local for local, _, _ in imgs], [region_weights(m, a) for _, m, a in imgs])


def test_region_weights_give_rdfa_pooling_second_moments():
    for local, masks, alpha in images():
        w = region_weights(masks, alpha)
        flat = local.reshape(-1, local.shape[-1])
        ours = np.einsum("mp,pi,pj->mij", w, flat, flat)
        np.testing.assert_allclose(ours, second_moments(local, masks, alpha), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(w.sum(1), 1.0)


def test_pack_regions_pads_positions_and_records_owners():
    imgs = images()
    local, weights, owner = packed(imgs)
    assert local.shape == (3, 36, 12) and weights.shape == (15, 36)
    np.testing.assert_array_equal(owner, np.repeat([0, 1, 2], 5))
    assert np.all(local[0, 20:] == 0) and np.all(weights[:5, 20:] == 0)
    with pytest.raises(ValueError, match="do not match"):
        pack_regions([imgs[0][0]], [np.ones((2, 7))])


@pytest.mark.parametrize("eps", [1e-2, 1e-4])
def test_second_order_float64_equals_rdfa_pooling(eps):
    imgs = images()
    local, weights, owner = packed(imgs)
    # chunk=4: chunks that cut across images
    ours = second_order_torch(local, weights, eps, owner=owner, dtype=torch.float64, chunk=4)
    assert ours.dtype == torch.float64 and ours.shape == (15, 12 * 13 // 2)
    np.testing.assert_allclose(ours.numpy(), reference(imgs, eps), rtol=0, atol=1e-10)


def test_second_order_float32_within_stated_tolerance():
    imgs = images(seed=1, kp=32)
    local, weights, owner = packed(imgs)
    ours = second_order_torch(local, weights, 1e-2, owner=owner, dtype=torch.float32)
    assert ours.dtype == torch.float32
    diff = np.abs(ours.numpy().astype(np.float64) - reference(imgs, 1e-2)).max()
    assert diff < FLOAT32_TOLERANCE
    assert np.all(np.isfinite(ours.numpy()))


CUDA_BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))
                 for b in ("torch", "cupy")]


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, FLOAT32_TOLERANCE)])
def test_second_order_on_cuda_with_each_eigensolver_equals_rdfa_pooling(backend, dtype, tolerance):
    if backend == "cupy" and _cupy() is None:
        pytest.skip("cupy does not import")
    imgs = images(seed=2, kp=32)
    local, weights, owner = packed(imgs)
    ours = second_order_torch(local, weights, 1e-2, owner=owner, device="cuda", dtype=dtype, chunk=4, eigh=backend)
    assert ours.is_cuda and ours.dtype == dtype
    diff = np.abs(ours.double().cpu().numpy() - reference(imgs, 1e-2)).max()
    assert diff < tolerance


def test_batched_eigh_backend_choice_and_result():
    m = torch.as_tensor(np.random.default_rng(3).normal(size=(6, 9, 9)))
    m = m @ m.transpose(1, 2)
    assert eigh_backend(m) == "torch" and eigh_backend(m, "cupy") == "torch"  # CPU tensors: torch's solver
    with pytest.raises(ValueError, match="eigh backend"):
        eigh_backend(m, "lapack")
    values, vectors = batched_eigh(m)
    np.testing.assert_allclose(values.numpy(), np.linalg.eigvalsh(m.numpy()), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose((vectors * values[:, None, :]) @ vectors.transpose(1, 2), m, atol=1e-9)


def test_second_order_one_region_per_row_without_owner():
    local, masks, alpha = images()[0]
    w = region_weights(masks, alpha)
    per_region = np.repeat(local.reshape(1, -1, local.shape[-1]), len(masks), axis=0)  # (B, P, K')
    ours = second_order_torch(per_region, w, 1e-2)
    np.testing.assert_allclose(ours.numpy(), second_order(local, masks, alpha, 1e-2), atol=1e-10)
    with pytest.raises(ValueError, match="pass owner"):
        second_order_torch(per_region[:2], w, 1e-2)
    with pytest.raises(ValueError, match="log_eps"):
        second_order_torch(per_region, w, 0.0)


def normalized(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def literal_search(queries, q_offsets, regions, offsets):
    """eq. 7 by loops: best (query row, region) pair per image; the first region row reaching it."""
    n_q, n_img = len(q_offsets) - 1, len(offsets) - 1
    sim = np.empty((n_q, n_img))
    best = np.empty((n_q, n_img), dtype=np.int64)
    for j in range(n_q):
        for i in range(n_img):
            top, arg = -np.inf, -1
            for r in range(offsets[i], offsets[i + 1]):
                s = max(float(queries[k] @ regions[r]) for k in range(q_offsets[j], q_offsets[j + 1]))
                if s > top:
                    top, arg = s, r
            sim[j, i], best[j, i] = top, arg
    return sim, best


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_exact_search_equals_literal_loops(chunk_rows):
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 6, size=23)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    regions = normalized(rng, offsets[-1], 16)
    q_counts = np.array([1, 3, 2, 1])
    q_offsets = np.concatenate([[0], np.cumsum(q_counts)])
    queries = normalized(rng, q_offsets[-1], 16)
    sim, best = exact_search_torch(queries, q_offsets, regions, offsets, chunk_rows=chunk_rows,
                                   dtype=torch.float64)
    ref_sim, ref_best = literal_search(queries, q_offsets, regions, offsets)
    np.testing.assert_allclose(sim.numpy(), ref_sim, atol=1e-12)
    np.testing.assert_array_equal(best.numpy(), ref_best)


def test_exact_search_matches_rdfa_search_and_keeps_the_first_tied_region():
    rng = np.random.default_rng(3)
    offsets = np.array([0, 3, 4, 8])
    regions = normalized(rng, 8, 8)
    regions[5] = regions[6]  # a tie inside image 2: the first row wins, as in rdfa.search
    queries = np.stack([regions[6], regions[1]])
    sim, best = exact_search_torch(queries, [0, 1, 2], regions, offsets, chunk_rows=4, dtype=torch.float64)
    for j in range(2):
        ref_sim, ref_best = image_similarities(queries[j:j + 1], regions, offsets)
        np.testing.assert_allclose(sim[j].numpy(), ref_sim, atol=1e-12)
        np.testing.assert_array_equal(best[j].numpy(), ref_best)
    assert best[0, 2] == 5


def test_exact_search_float16_storage_float32_compute():
    rng = np.random.default_rng(4)
    offsets = np.arange(0, 41, 4)
    stored = torch.from_numpy(normalized(rng, 40, 32)).half()
    queries = normalized(rng, 3, 32)
    sim, best = exact_search_torch(queries, [0, 1, 2, 3], stored, offsets, chunk_rows=9)
    assert sim.dtype == torch.float32
    ref_sim, ref_best = literal_search(queries, [0, 1, 2, 3], stored.double().numpy(), offsets)
    np.testing.assert_allclose(sim.numpy(), ref_sim, atol=1e-5)
    np.testing.assert_array_equal(best.numpy(), ref_best)


def test_exact_search_refuses_an_image_without_regions():
    with pytest.raises(ValueError, match="at least one region"):
        exact_search_torch(np.ones((1, 2)), [0, 1], np.ones((2, 2)), [0, 2, 2])


def test_region_descriptors_torch_equal_the_cpu_batch_path():
    from rdfa.pooling import region_descriptors_batch
    from rdfa.torch_ops import region_descriptors_torch

    rng = np.random.default_rng(5)
    fmaps = [np.maximum(rng.normal(size=(h, w, 40)), 0).astype(np.float16) for h, w in ((5, 6), (4, 4), (6, 3))]
    masks = [rng.uniform(size=(m, *f.shape[:2])) < 0.5 for m, f in zip((4, 2, 3), fmaps)]
    for m in masks:
        m[-1] = True
    components = np.linalg.qr(rng.normal(size=(40, 10)))[0]
    ref = region_descriptors_batch(fmaps, masks, components, 1e-6, 1e-2)
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, FLOAT32_TOLERANCE)):
        ours = region_descriptors_torch(fmaps, masks, components, 1e-6, 1e-2, dtype=dtype, chunk=3)
        assert [o.shape for o in ours] == [r.shape for r in ref] and all(o.dtype == np.float32 for o in ours)
        assert max(np.abs(o - r).max() for o, r in zip(ours, ref)) < tol
    assert region_descriptors_torch([], [], components, 1e-6, 1e-2) == []
