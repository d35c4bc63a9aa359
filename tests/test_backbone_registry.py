"""The backbone registry (features.backbone): every entry offline with random weights, its first layer by hand,
torchvision's ResNet layout, cnnimageretrieval-pytorch's file, downloads against a loopback server, and maps that
overflow float16 refused."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import yaml
from scipy.signal import correlate2d

from rdfa.io import backbones
from rdfa.io.backbones import BACKBONES, BackboneError, FeatureMapError, build_backbone, stored_feature_maps
from rdfa.io.resnet import resnet
from rdfa.settings import BACKBONE_NAMES, SettingsError, load_settings

IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
#: Batch-norm epsilons of the sources: torchvision's nn.BatchNorm2d default; the Lite package's 1e-3 (TF's).
TORCHVISION_BN_EPS, LITE_BN_EPS = 1e-5, 1e-3


def image(seed=0, h=32, w=48):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def conv_by_hand(x, weight, stride, pad):
    """Cross-correlation of ``x`` (H, W, C) with ``weight`` (O, C, k, k), zero padding (top, bottom, left, right)."""
    xp = np.pad(x, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
    out = np.stack([sum(correlate2d(xp[:, :, c], weight[o, c], mode="valid") for c in range(x.shape[2]))
                    for o in range(weight.shape[0])], axis=-1)
    return out[::stride, ::stride]


def bn_by_hand(y, bn, eps):
    g, b, m, v = (t.detach().double().numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
    return (y - m) / np.sqrt(v + eps) * g + b


def maxpool_by_hand(y, k=3, s=2, p=1):
    yp = np.pad(y, ((p, p), (p, p), (0, 0)), constant_values=-np.inf)
    oh, ow = (y.shape[0] + 2 * p - k) // s + 1, (y.shape[1] + 2 * p - k) // s + 1
    return np.array([[yp[s * i:s * i + k, s * j:s * j + k].max(axis=(0, 1)) for j in range(ow)] for i in range(oh)])


def randomize_bn(bn, seed):
    """Non-trivial running statistics and affine parameters (the defaults make batch norm the identity)."""
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))


def as_hwc(t):
    return t[0].permute(1, 2, 0).double().numpy()


# --------------------------------------------------------------------------- registry and settings


def test_registry_names_are_the_settings_names_and_refused_otherwise(repo_dir, tmp_path):
    assert tuple(BACKBONES) == BACKBONE_NAMES
    for spec in BACKBONES.values():
        assert spec.layer and spec.stride in (16, 32) and spec.channels in (512, 1280, 2048) and spec.source
        assert spec.normalisation.text
    params = yaml.safe_load((repo_dir / "params.yaml").read_text())
    for backbone, weights, error in [("resnet", None, "must be one of efficientnet_lite0, .*resnet101_gem_sfm "
                                                       r"\(got 'resnet'\)"),
                                     ("vgg19_caffe", None, "vgg19_caffe needs 'features.weights'"),
                                     ("resnet101", "", "'features.weights' must be a weight file's path, 'random'")]:
        params["features"].update(backbone=backbone, weights=weights)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        with pytest.raises(SettingsError, match=error):
            load_settings(tmp_path / "params.yaml")
    params["features"].update(backbone="resnet101", weights="random")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    features = load_settings(tmp_path / "params.yaml").features
    assert (features.backbone, features.weights) == ("resnet101", "random")


def test_official_addresses_and_their_hash_prefixes():
    """torchvision's published addresses (models/vgg.py, models/resnet.py: IMAGENET1K_V1) and
    cnnimageretrieval-pytorch's (cirtorch/networks/imageretrievalnet.py)."""
    urls = {name: spec.url for name, spec in BACKBONES.items()}
    assert urls == {
        "efficientnet_lite0": None, "efficientnet_lite1": None, "efficientnet_lite2": None,
        "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
        "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "vgg19_caffe": None,
        "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
        "resnet101_gem_sfm": "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/retrieval-SfM-120k/"
                             "rSfM120k-tl-resnet101-gem-w-a155e54.pth"}
    assert backbones.hash_prefix(urls["resnet101_gem_sfm"]) == "a155e54"
    assert backbones.hash_prefix(urls["vgg16"]) == "397923af"
    assert backbones.weight_cache_path(urls["resnet50"]) == \
        __import__("pathlib").Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-0676ba61.pth"


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_backbone_builds_offline_with_random_weights(name, monkeypatch, tmp_path):
    """features.weights: random: no download, the same weights every time, the global random state untouched;
    the map has the entry's stride and channel count."""
    def no_download(*args, **kwargs):
        raise AssertionError("random weights must not download anything")

    monkeypatch.setattr("rdfa.io.download.download", no_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    spec = BACKBONES[name]
    state = torch.get_rng_state()
    backbone = build_backbone(name, "random", device="cpu", precision="fp32")
    assert torch.equal(torch.get_rng_state(), state)
    assert (backbone.name, backbone.stride, backbone.channels) == (name, spec.stride, spec.channels)
    fmap = backbone.feature_map(image(1, 64, 96))
    assert fmap.shape == (64 // spec.stride, 96 // spec.stride, spec.channels) and np.isfinite(fmap).all()
    assert fmap.min() >= 0 and fmap.max() > 0  # after a ReLU (ReLU6 for Lite)
    again = build_backbone(name, "random", device="cpu", precision="fp32").feature_map(image(1, 64, 96))
    np.testing.assert_array_equal(fmap, again)
    assert not (tmp_path / "hub").exists()


# --------------------------------------------------------------------------- first layers by hand


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_first_layer_by_hand(name):
    """(x - 127) / 128 on RGB; stem: 3x3 conv, stride 2, TensorFlow's "same" padding (the extra row and column
    at the bottom and right), no bias, batch norm (eps 1e-3), ReLU6."""
    backbone = build_backbone(name, "random", device="cpu", precision="fp32")
    net = backbone.model.net
    randomize_bn(net._bn0, 1)
    img = image(2)
    x_hand = (img.astype(np.float64) - 127) / 128
    x = backbone.preprocess(img)
    np.testing.assert_allclose(as_hwc(x), x_hand, atol=1e-5)
    # 32x48 input, stride 2: out 16x24, total padding (16 - 1) * 2 + 3 - 32 = 1 row: 0 before, 1 after.
    y = conv_by_hand(x_hand, net._conv_stem.weight.detach().double().numpy(), 2, (0, 1, 0, 1))
    hand = np.clip(bn_by_hand(y, net._bn0, LITE_BN_EPS), 0, 6)
    with torch.inference_mode():
        first = net._swish(net._bn0(net._conv_stem(x)))
    assert first.shape[1:] == (32, 16, 24)
    np.testing.assert_allclose(as_hwc(first), hand, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,convs", [("vgg16", 13), ("vgg19", 16), ("vgg19_caffe", 16)])
def test_vgg_first_layer_by_hand(name, convs):
    """ImageNet normalisation (Caffe's for vgg19_caffe); conv1_1: 3x3, zero padding 1, bias, ReLU; the map is
    the last conv layer after its ReLU (no final max pool)."""
    backbone = build_backbone(name, "random", device="cpu", precision="fp32")
    img = image(3)
    if name == "vgg19_caffe":
        x_hand = img[:, :, ::-1].astype(np.float64) - np.array([103.939, 116.779, 123.68])
    else:
        x_hand = (img / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    x = backbone.preprocess(img)
    np.testing.assert_allclose(as_hwc(x), x_hand, rtol=1e-5, atol=1e-4)
    conv = backbone.model[0]
    hand = conv_by_hand(x_hand, conv.weight.detach().double().numpy(), 1, (1, 1, 1, 1))
    hand = np.maximum(hand + conv.bias.detach().double().numpy(), 0)
    with torch.inference_mode():
        first = backbone.model[:2](x)
    np.testing.assert_allclose(as_hwc(first), hand, rtol=1e-4, atol=1e-4)
    layers = list(backbone.model.children())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in layers) == convs
    assert isinstance(layers[-1], torch.nn.ReLU) and isinstance(layers[-2], torch.nn.Conv2d)


def stem_by_hand(x_hand, conv1, bn1):
    """conv1 7x7 stride 2 padding 3 (no bias), batch norm (torchvision's eps), ReLU, 3x3 max pool stride 2 pad 1."""
    y = conv_by_hand(x_hand, conv1.detach().double().numpy(), 2, (3, 3, 3, 3))
    return maxpool_by_hand(np.maximum(bn_by_hand(y, bn1, TORCHVISION_BN_EPS), 0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet101_gem_sfm"])
def test_resnet_first_layer_by_hand(name):
    backbone = build_backbone(name, "random", device="cpu", precision="fp32")
    net = backbone.model
    randomize_bn(net.bn1, 4)
    img = image(5)
    x_hand = (img / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    x = backbone.preprocess(img)
    np.testing.assert_allclose(as_hwc(x), x_hand, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():
        first = net.stem(x)
    assert first.shape[1:] == (64, 8, 12)  # stride 4
    np.testing.assert_allclose(as_hwc(first), stem_by_hand(x_hand, net.conv1.weight, net.bn1), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- torchvision's ResNet layout

#: torchvision's resnet50 state dict: its stem, then the first bottleneck of layer1 (with its projection shortcut).
STEM_KEYS = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"]
FIRST_BLOCK_KEYS = [f"layer1.0.{m}.{p}" for m in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0",
                                                  "downsample.1")
                    for p in (("weight",) if m.startswith("conv") or m == "downsample.0" else
                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))]


@pytest.mark.parametrize("arch,blocks,n_keys", [("resnet50", (3, 4, 6, 3), 320), ("resnet101", (3, 4, 23, 3), 626)])
def test_resnet_keys_are_torchvisions(arch, blocks, n_keys):
    net = resnet(arch)
    keys = list(net.state_dict())
    assert len(keys) == n_keys  # len(torchvision.models.<arch>().state_dict())
    assert keys[:6] == STEM_KEYS and keys[6:6 + len(FIRST_BLOCK_KEYS)] == FIRST_BLOCK_KEYS
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert [name for name, _ in net.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                          "layer3", "layer4", "avgpool", "fc"]
    for layer, n in enumerate(blocks, 1):
        assert {k.split(".")[1] for k in keys if k.startswith(f"layer{layer}.")} == {str(i) for i in range(n)}
        assert any(k.startswith(f"layer{layer}.0.downsample.0.") for k in keys)
        assert not any(k.startswith(f"layer{layer}.1.downsample") for k in keys)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7) and shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1) and shapes["fc.weight"] == (1000, 2048)
    # ResNet v1.5 (torchvision): a stage's stride is in its first 3x3 conv, not in the 1x1
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)


def fp16_rounded(net):
    """``net`` with its floating weights rounded to float16 (a file half as large holds them exactly)."""
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return net.eval()


@pytest.mark.slow
def test_resnet50_from_a_torchvision_file(tmp_path):
    torch.manual_seed(7)
    src = fp16_rounded(resnet("resnet50"))
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    backbone = build_backbone("resnet50", str(path), device="cpu", precision="fp32")
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value.float(), state[key].float()), key
    img = image(6, 64, 96)
    with torch.inference_mode():
        expected = src(torch.from_numpy(((img / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]).float())
    np.testing.assert_allclose(backbone.feature_map(img), as_hwc(expected), rtol=1e-4, atol=1e-5)
    # a file without a weight of the network is refused, naming it
    del state["layer4.2.bn3.running_var"]
    torch.save(state, path)
    with pytest.raises(BackboneError, match="resnet50.pth: does not match torchvision's resnet50 layout.*"
                                            "layer4.2.bn3.running_var"):
        build_backbone("resnet50", str(path), device="cpu")


# --------------------------------------------------------------------------- downloads (loopback only)


class _Files(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        self.server.requests.append(self.path)
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()[:16]}"')
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A loopback HTTP server (``server.files``: path -> bytes), torch's cache in ``tmp_path/hub``, quick retries."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    srv.files, srv.requests = {}, []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "DOWNLOAD_BACKOFF", 0.0)
    monkeypatch.setattr(backbones, "DOWNLOAD_RETRIES", 0)
    yield srv
    srv.shutdown()
    srv.server_close()


def serve_as(monkeypatch, name, url):
    monkeypatch.setitem(BACKBONES, name, dataclasses.replace(BACKBONES[name], url=url))


def closed_port_url(filename):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{filename}"  # nothing listens there once the socket is closed


@pytest.mark.slow
def test_cirtorch_network_downloaded_checked_and_loaded(server, monkeypatch, tmp_path):
    """cnnimageretrieval-pytorch's file: {"meta": {..., "mean", "std"}, "state_dict": {"features.<i>.*" (conv1, bn1,
    layer1..4 at 0, 1, 4..7; no num_batches_tracked in files of old PyTorch), "pool.p", "whiten.*"}}; downloaded
    once into torch's cache, its sha256 prefix checked, normalised with its meta's mean and std."""
    torch.manual_seed(8)
    src = resnet("resnet101")
    randomize_bn(src.bn1, 9)
    src = fp16_rounded(src)
    index = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    state = {f"features.{index[k.split('.')[0]]}.{k.split('.', 1)[1]}": v.half()
             for k, v in src.state_dict().items() if not k.startswith("fc.") and "num_batches_tracked" not in k}
    state.update({"pool.p": torch.tensor([3.0]), "whiten.weight": torch.eye(4), "whiten.bias": torch.zeros(4)})
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    buf = io.BytesIO()
    torch.save({"epoch": 30, "meta": {"architecture": "resnet101", "pooling": "gem", "whitening": True,
                                      "mean": mean, "std": std, "outputdim": 2048}, "state_dict": state}, buf)
    data = buf.getvalue()
    filename = f"rSfM120k-tl-resnet101-gem-w-{hashlib.sha256(data).hexdigest()[:7]}.pth"
    server.files[f"/networks/{filename}"] = data
    serve_as(monkeypatch, "resnet101_gem_sfm", f"{server.base}/networks/{filename}")

    backbone = build_backbone("resnet101_gem_sfm", device="cpu", precision="fp32")
    cached = tmp_path / "hub" / "checkpoints" / filename
    assert cached.read_bytes() == data and server.requests == [f"/networks/{filename}"]
    assert backbone.mean == tuple(mean) and backbone.std == tuple(std)
    img = image(10)
    x_hand = (img / 255.0 - np.array(mean)) / np.array(std)
    x = backbone.preprocess(img)
    np.testing.assert_allclose(as_hwc(x), x_hand, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():
        first = backbone.model.stem(x)
        expected = src(torch.from_numpy(x_hand.transpose(2, 0, 1)[None]).float())
    np.testing.assert_allclose(as_hwc(first), stem_by_hand(x_hand, src.conv1.weight, src.bn1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(backbone.feature_map(img), as_hwc(expected), rtol=1e-4, atol=1e-5)
    # the second build reads the cache: no request
    build_backbone("resnet101_gem_sfm", device="cpu")
    assert len(server.requests) == 1


@pytest.mark.slow
def test_download_with_the_wrong_hash_is_removed(server, monkeypatch, tmp_path):
    data = b"an error page served as a file"
    assert not hashlib.sha256(data).hexdigest().startswith("0123abcd")
    server.files["/resnet50-0123abcd.pth"] = data
    serve_as(monkeypatch, "resnet50", f"{server.base}/resnet50-0123abcd.pth")
    with pytest.raises(BackboneError, match=r"resnet50-0123abcd.pth: the downloaded file's sha256 [0-9a-f]{64} does "
                                            "not start with 0123abcd.*removed it"):
        build_backbone("resnet50", device="cpu")
    assert list((tmp_path / "hub" / "checkpoints").iterdir()) == []


@pytest.mark.slow
def test_offline_error_names_the_address_and_where_to_put_the_file(server, monkeypatch, tmp_path):
    url = closed_port_url("vgg19-dcbb9e9d.pth")
    serve_as(monkeypatch, "vgg19", url)
    with pytest.raises(BackboneError) as err:
        build_backbone("vgg19", device="cpu")
    message = str(err.value)
    dest = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert f"cannot download its weights from {url}" in message
    assert f"put it at {dest}" in message and "features.weights" in message and "random" in message
    assert not dest.exists()


@pytest.mark.slow
def test_file_put_in_the_cache_by_hand_is_used_offline_once_its_hash_matches(server, monkeypatch, tmp_path):
    torch.manual_seed(11)
    features = backbones._vgg_features(backbones._VGG_CFGS["vgg16"])
    buf = io.BytesIO()
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, buf)
    data = buf.getvalue()
    filename = f"vgg16-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    serve_as(monkeypatch, "vgg16", closed_port_url(filename))  # no network
    dest = tmp_path / "hub" / "checkpoints" / filename
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    backbone = build_backbone("vgg16", device="cpu")
    assert torch.equal(backbone.model[0].weight, features[0].weight)
    # another file under that name is refused and left alone (it is the user's)
    dest.write_bytes(data[:-1] + b"x")
    with pytest.raises(BackboneError, match=f"{filename}: not the file of .*does not start with {filename[6:14]}.*"
                                            "delete it to download it again"):
        build_backbone("vgg16", device="cpu")
    assert dest.exists()


# --------------------------------------------------------------------------- non-finite maps


class _Scaled(torch.nn.Module):
    """A 1x1 conv of gain ``gain``: its maps overflow float16 for large gains."""

    def __init__(self, gain):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=1, bias=False)
        torch.nn.init.constant_(self.conv.weight, gain)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_a_map_that_overflows_float16_is_refused_naming_the_image_and_the_dtype():
    backbone = backbones.Backbone("resnet101", _Scaled(1e5).eval(), (0.0,) * 3, (1.0,) * 3, 1, 4, "cpu")
    images = np.zeros((3, 4, 5, 3), np.uint8)
    images[2] = 255  # 3 * 1e5 per channel: beyond float16's 65,504
    ok = stored_feature_maps(backbone, images[:2], "float16", "a.jpg")
    assert ok.dtype == np.float16 and np.isfinite(ok.astype(np.float32)).all()
    with pytest.raises(FeatureMapError, match=r"input 3 of the batch of 3 same-size inputs starting with a.jpg: the "
                                              r"resnet101 feature map has non-finite values.*features.dtype=float16.*"
                                              r"not stored.*features.dtype: float32"):
        stored_feature_maps(backbone, images, "float16", "a.jpg")
    with pytest.raises(FeatureMapError, match=r"^b.jpg: .*features.dtype=float16"):
        backbones.stored_feature_map(backbone, images[2], "float16", "b.jpg")
    assert np.isfinite(stored_feature_maps(backbone, images, "float32", "a.jpg")).all()
    assert issubclass(FeatureMapError, ValueError)


def test_finite_maps_agrees_with_numpy_on_every_float16_value():
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(16, -1)
    expected = np.isfinite(every.astype(np.float32)).all(axis=1)
    np.testing.assert_array_equal(backbones.finite_maps(every), expected)
    one_each = every.reshape(-1, 1)
    np.testing.assert_array_equal(backbones.finite_maps(one_each), np.isfinite(one_each.astype(np.float32))[:, 0])
    floats = np.array([[0.0, 1.0], [np.inf, 1.0], [np.nan, 0.0], [65504.0, 1e30]], np.float32)
    np.testing.assert_array_equal(backbones.finite_maps(floats), [True, False, False, True])
