"""Table 1's other methods with distractors: a distractor image is whitened as the methods stage whitens a
database image, searched as it searches one, and stored within the shard budget. Fast tier: a small
made-up collection, written and read through the files the stages use."""
import json

import h5py
import numpy as np
import pytest

from rdfa.baselines import global_search
from rdfa.distractor_search import global_search_with_qe
from rdfa.io.collection import Collection
from rdfa.io.distractor_grid import grid, method_cells
from rdfa.io.method_vectors import read_fits, read_header, read_vectors, write_method_files
from rdfa.io.shards import write_shard
from rdfa.methods import Image, MethodError, MethodSettings, get, names, select
from rdfa.methods.table1 import Config, DistractorMethods, compare, describe, stack, storage_keys
from rdfa.settings import SettingsError, Whitening, load_settings

BUILTIN = ["MAC", "SPoC", "CroW", "R-MAC", "R-MAC+G", "GeM", "O1_W", "O1_R", "O2_W"]  # O2_R: whitened.h5's rows
K, H, W, POOLED = 24, 6, 7, 20
N_CLASSES, PER_CLASS = 6, 8
DIMS = (8, 16, 64)  # 64: more than the global methods' 48 images can span (a null with its reason)


def made_up_image(rng, pattern: np.ndarray, key: str, n_regions: int = 3) -> dict:
    fmap = np.maximum(pattern + 0.6 * rng.standard_normal((H, W, K)), 0).astype(np.float16)
    masks = rng.random((n_regions, H, W)) < 0.5
    masks[:, 0, 0] = True  # none empty
    masks = np.concatenate([masks, np.ones((1, H, W), bool)])  # the whole image last
    pooled = rng.standard_normal((len(masks), POOLED)).astype(np.float32) + pattern[0, 0, :POOLED].astype(np.float32)
    return {"key": key, "fmap": fmap, "masks": masks, "pooled": pooled}


@pytest.fixture(scope="module")
def collection():
    """48 database images of 6 made-up objects, 6 queries (two with a box, their uncropped variant too)."""
    rng = np.random.default_rng(0)
    patterns = [np.abs(rng.standard_normal((H, W, K))) * 2 for _ in range(N_CLASSES)]
    db = [made_up_image(rng, patterns[c], f"db/{c}_{i}") for c in range(N_CLASSES) for i in range(PER_CLASS)]
    queries = [made_up_image(rng, patterns[q], f"query/{q}", 0) for q in range(N_CLASSES)]
    full = [made_up_image(rng, patterns[q], f"full/{q}") for q in (1, 4)]
    gnd = {"imlist": [d["key"] for d in db], "qimlist": [q["key"] for q in queries],
           "gnd": [{"ok": list(range(q * PER_CLASS, (q + 1) * PER_CLASS)), "junk": []} | (
               {"bbx": [0, 0, 5, 5]} if q in (1, 4) else {}) for q in range(N_CLASSES)]}
    return {"db": db, "query": queries, "full": full, "gnd": gnd, "basis": rng.standard_normal((K, 6))}


SETTINGS = MethodSettings()


def as_image(entry: dict, basis) -> Image:
    return Image(entry["key"], entry["fmap"], entry["masks"], SETTINGS, basis=basis, descriptors=entry["pooled"])


def conf(mode: str = "pca") -> Config:
    return Config(DIMS, (("", Whitening(mode, shrink=2.0)),), 3, True, 7, 16)


def stage_exports(data: dict, mode: str = "pca") -> dict:
    """What the methods stage computes (rdfa.methods.table1.compare on the whole database at once)."""
    out = {}
    for name in BUILTIN:
        method = get(name)
        test = {group: stack([describe(method, as_image(e, data["basis"])) for e in data[group]], method)
                for group in ("db", "query", "full")}
        out[name] = compare(method, test, test["db"], data["gnd"], conf(mode)).export
    return out


@pytest.mark.parametrize("mode", ["pca", "shrink", "none"])
def test_a_distractor_images_vectors_are_what_the_methods_stage_gives_it_as_a_database_image(collection, tmp_path,
                                                                                             mode):
    exports = stage_exports(collection, mode)
    fits, path = tmp_path / "method_fits.h5", tmp_path / "method_vectors.h5"
    record = Whitening(mode, shrink=2.0).record()
    write_method_files(fits, path, exports, record, "made-up", DIMS, np.array([1, 4]))
    again = tmp_path / "again_fits.h5", tmp_path / "again.h5"  # the same numbers, the same bytes: no DVC re-run
    write_method_files(*again, exports, record, "made-up", DIMS, np.array([1, 4]))
    assert [p.read_bytes() for p in again] == [fits.read_bytes(), path.read_bytes()]
    record, dims = read_header(fits)
    assert Whitening(**record).record() == Whitening(mode, shrink=2.0).record() and dims == list(DIMS)
    methods = DistractorMethods(read_fits(fits, BUILTIN, DIMS), SETTINGS, conf(mode), collection["basis"])
    for i in (0, 17, 47):  # database images, described one at a time as the distractor pass does
        entry = collection["db"][i]
        got = methods.vectors("distractor/x", entry["fmap"], entry["masks"], entry["pooled"])
        for name in BUILTIN:
            export = exports[name]
            offsets, by_dim = export.vectors["db"]
            rows = slice(offsets[i], offsets[i + 1])
            valid = [d for d in DIMS if mode == "none" or not isinstance(export.pcas[d], str)]
            keys = storage_keys(export.kind, valid, mode == "none")
            assert set(got[name]) == set(keys.values()), name
            for d, key in keys.items():
                if key in ("plain", f"D{d}"):
                    np.testing.assert_allclose(got[name][key], by_dim[d][rows], atol=2e-6, err_msg=f"{name} D={d}")
            stored, stored_offsets, _ = read_vectors(path, name, "db", keys[max(keys)])
            np.testing.assert_array_equal(stored_offsets, offsets)
            np.testing.assert_array_equal(stored, by_dim[max(keys)])
    # The global methods cannot be whitened to 64 from 48 images: the stage's reason, kept.
    assert mode == "none" or "64" in json.loads(h5py.File(fits, "r")["MAC"].attrs["reasons"])


def write_collection_files(tmp_path, data: dict, distractors: list[dict], per_shard: int = 2) -> tuple:
    """method_fits.h5, method_vectors.h5, shards and index.json of ``distractors``, as the stages write them."""
    exports = stage_exports(data)
    tmp_path.mkdir(parents=True, exist_ok=True)
    fits, vectors = tmp_path / "method_fits.h5", tmp_path / "method_vectors.h5"
    write_method_files(fits, vectors, exports, Whitening("pca").record(), "made-up", DIMS, np.array([1, 4]))
    methods = DistractorMethods(read_fits(fits, BUILTIN, DIMS), SETTINGS, conf(), data["basis"])
    shards = tmp_path / "shards"
    shards.mkdir()
    index = {"shards": [], "methods": {}}
    for s, first in enumerate(range(0, len(distractors), per_shard)):
        part = distractors[first:first + per_shard]
        described = [(e["pooled"].astype(np.float16), np.zeros((len(e["pooled"]), 4), np.float32), (H, W),
                      {n: {k: v.astype(np.float16) for k, v in by_key.items()} for n, by_key in
                       methods.vectors(e["key"], e["fmap"], e["masks"], e["pooled"]).items()}) for e in part]
        path = shards / f"shard_{s:05d}.h5"
        write_shard(path, "digest", first, [e["key"] for e in part], described)
        index["shards"].append({"file": path.name, "first": first, "n_images": len(part)})
    from rdfa.io.distractors import stored_methods

    index["methods"] = json.loads(json.dumps(stored_methods(methods)))
    return shards / "index.json", index, vectors


def test_a_distractor_identical_to_a_positive_ranks_beside_it_and_no_map_rises(collection, tmp_path):
    """MAC's top positive of query 2, copied in as a distractor among others, ranks right next to it (its
    vectors are the positive's, in float16); in every method and cell the mAP without QE cannot rise."""
    from rdfa.io.shards import method_blocks

    gnd = collection["gnd"]
    rng = np.random.default_rng(1)
    noise = [made_up_image(rng, np.abs(rng.standard_normal((H, W, K))) * 2, f"noise/{i}") for i in range(4)]
    plain = method_cells(*write_collection_files(tmp_path / "a", collection, noise), gnd, DIMS, 0, True, 7, True)
    mac = stage_exports(collection)["MAC"]
    positive = int(np.argmax(mac.vectors["db"][1][8] @ mac.vectors["query"][1][8][2]))
    assert positive in gnd["gnd"][2]["ok"]
    copied = noise[:3] + [dict(collection["db"][positive], key="copy")] + noise[3:]
    index_path, index, vectors = write_collection_files(tmp_path / "b", collection, copied)
    cells = method_cells(index_path, index, vectors, gnd, DIMS, 0, True, 7, True)
    assert set(cells) == set(plain) == {n + s for n in BUILTIN for s in ("", "_full")}
    for name in cells:
        for d in ("8", "16"):
            assert cells[name][d]["mAP"] <= plain[name][d]["mAP"] + 1e-9, (name, d)
        assert cells[name]["64"]["mAP"] is None and "64" in cells[name]["64"]["reason"]
    n_db = len(gnd["imlist"])
    key = index["methods"]["MAC"]["keys"]["8"]
    db, db_offsets, _ = read_vectors(vectors, "MAC", "db", key)
    search = Collection(db, db_offsets, method_blocks(index_path, index, "MAC"), 8, f"methods/MAC/{key}")
    ranks, _ = global_search_with_qe(mac.vectors["query"][1][8][2:3], search, 0)
    assert set(ranks[0][:2].tolist()) == {positive, n_db + 3}


def test_the_streamed_global_search_is_global_search(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((50, 12))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[[3, 30]] + 0.3 * rng.standard_normal((2, 12))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    shards = []
    for s, (a, b) in enumerate([(20, 35), (35, 50)]):
        path = tmp_path / f"s{s}.h5"
        with h5py.File(path, "w") as f:
            f["methods/X/D12"] = vectors[a:b].astype(np.float16)
        shards.append((path, None, np.arange(b - a + 1)))
    streamed = Collection(vectors[:20].astype(np.float32), np.arange(21), shards, 12, "methods/X/D12")
    expected_db = np.vstack([vectors[:20].astype(np.float32), vectors[20:].astype(np.float16).astype(np.float32)])
    expected_db /= np.linalg.norm(expected_db.astype(np.float64), axis=1, keepdims=True)
    for n_qe in (0, 3):
        got = global_search_with_qe(queries, streamed, n_qe)
        want = global_search(queries, expected_db, n_qe)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_shards_hold_at_most_32_kb_per_image_at_d_512_with_every_builtin_method(tmp_path):
    """The layout the distractor pass writes, at methods.D [128, 256, 512], the default L=3 (8 regions)."""
    rng = np.random.default_rng(3)
    dims, n_images, regions = [128, 256, 512], 50, 8
    described = []
    for _ in range(n_images):
        methods = {}
        for name in names()[:10]:
            method = get(name)
            if method.pipeline:
                continue
            rows = regions if method.kind == "regional" else 1
            methods[name] = {key: rng.standard_normal((rows, int(key[1:]))).astype(np.float16)
                             for key in set(storage_keys(method.kind, dims, False).values())}
        described.append((rng.standard_normal((regions, 512)).astype(np.float16),
                          rng.random((regions, 4)).astype(np.float32), (384, 512), methods))
    path = tmp_path / "shard_00000.h5"
    write_shard(path, "digest", 0, [f"image_{i}" for i in range(n_images)], described)
    per_image = path.stat().st_size / n_images
    assert per_image <= 32 * 1024, per_image
    with h5py.File(path, "r") as f:
        assert sorted(f["methods"]) == sorted(n for n in names()[:10] if n != "O2_R")


def test_an_unknown_distractor_method_is_refused_naming_the_key_and_the_nearest_name(tmp_path):
    with pytest.raises(MethodError, match=r"methods\.distractor_methods.*'GeMM'.*did you mean 'GeM'"):
        select(["MAC", "GeMM"])
    assert [m.name for m in select(["O1_R", "MAC"])] == ["O1_R", "MAC"]
    params = tmp_path / "params.yaml"
    params.write_text("methods:\n  distractor_methods: [MAC, MAC]\n")
    with pytest.raises(SettingsError, match=r"methods\.distractor_methods"):
        load_settings(params)
    params.write_text("methods:\n  distractor_methods: []\n")
    assert load_settings(params).methods.distractor_methods == ()


def test_the_grid_says_why_a_cell_is_missing():
    cells = {"MAC": {"8": {"mAP": 0.5, "mAP_qe": 0.6}}}
    own = {name: {"8": {"mAP": 0.7, "mAP_qe": 0.8, "warning": "D=8 > n/4"}}
           for name in ["MAC", "MAC_shrink", "MAC_shrink_full", "Mine", "O2_R"]}
    out = grid(own, cells, [8], ["shrink"], ["MAC", "O2_R"])
    assert out["MAC"] == {"8": {"mAP": 0.5, "mAP_qe": 0.6, "warning": "D=8 > n/4"}}  # the same fit: its warning
    assert "compare_whitening's 'shrink'" in out["MAC_shrink"]["8"]["reason"]
    assert "compare_whitening" in out["MAC_shrink_full"]["8"]["reason"]
    assert "Mine is not in methods.distractor_methods" in out["Mine"]["8"]["reason"]
    assert out["O2_R"]["8"]["mAP"] is None


def test_smaller_d_of_a_stored_method_are_the_methods_stages_own(collection):
    """The shards keep a one-descriptor or regional method at its largest D only: its leading columns,
    l2-normalised again, are the vectors the methods stage searched at each smaller D."""
    from rdfa.distractor_search import leading_columns

    exports = stage_exports(collection)
    for name in ("MAC", "O1_R", "O2_W"):
        _, by_dim = exports[name].vectors["db"]
        top = max(by_dim)
        for d in by_dim:
            np.testing.assert_allclose(leading_columns(by_dim[top], d), by_dim[d], atol=2e-6, err_msg=f"{name} {d}")
    # R-MAC's regions are l2-normalised before their sum: not a cut, so each D is stored.
    _, by_dim = exports["R-MAC"].vectors["db"]
    assert not np.allclose(leading_columns(by_dim[16], 8), by_dim[8], atol=1e-3)
    assert set(storage_keys("rmac", [8, 16], False).values()) == {"D8", "D16"}


def test_a_plugin_method_joins_the_distractor_pass_when_named(tmp_path, monkeypatch):
    """A method of plugins/*.py, named in methods.distractor_methods, is loaded, checked and whitened with
    its fit; an unknown name is refused before any image is read."""
    from rdfa import methods as registry
    from rdfa.io.distractors import distractor_methods
    from rdfa.io.stage import Paths
    from rdfa.methods.table1 import Export
    from rdfa.whitening import fit_pca

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # (the plugin registers for this test only)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "sqrt_mac.py").write_text(
        "import numpy as np\nfrom rdfa.methods import register\n\n\n"
        "@register('SqrtMAC_test', kind='global')\ndef sqrt_mac(image):\n"
        "    return np.sqrt(image.fmap64.max(axis=(0, 1)))\n")
    rng = np.random.default_rng(4)
    pca = fit_pca(rng.standard_normal((40, K)), 8)
    vectors = {g: (np.arange(3), {8: rng.standard_normal((2, 8)).astype(np.float32)}) for g in ("db", "query")}
    paths = Paths(tmp_path, "made-up")
    paths.work.mkdir(parents=True)
    write_method_files(paths.method_fits, paths.method_vectors,
                       {"SqrtMAC_test": Export("global", {8: pca}, False, vectors)},
                       Whitening("pca").record(), "made-up", (8,), np.zeros(0))
    params = tmp_path / "params.yaml"
    params.write_text("methods:\n  D: [8]\n  distractor_methods: [SqrtMAC_test, O2_R]\n")
    methods, record = distractor_methods(load_settings(params), paths, np.eye(K, 6))
    assert list(methods.fits) == ["SqrtMAC_test"] and record["D"] == [8]
    image = made_up_image(rng, np.ones((H, W, K)), "x")
    got = methods.vectors("x", image["fmap"], image["masks"], image["pooled"])["SqrtMAC_test"]["D8"]
    raw = np.sqrt(image["fmap"].astype(np.float64).max(axis=(0, 1)))
    expected = (raw / np.linalg.norm(raw) - pca.mean) @ pca.components / np.sqrt(pca.eigenvalues)
    np.testing.assert_allclose(got[0], expected / np.linalg.norm(expected), atol=1e-5)
    params.write_text("methods:\n  D: [8]\n  distractor_methods: [SqrtMAC_tset]\n")
    with pytest.raises(MethodError, match="did you mean 'SqrtMAC_test'"):
        distractor_methods(load_settings(params), paths, np.eye(K, 6))
