"""docs/adding-a-method.md's two plugins through Table 1's code: MAC2 equals MAC cell by cell, and the
regional one equals a direct computation (its rows, PCA-whitening, eq. 7, region QE eq. 8, mAP)."""
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

import rdfa.methods as registry
from rdfa.evaluation import mean_average_precision
from rdfa.io.stage import Paths
from rdfa.io.table1 import group_keys, pool_maps
from rdfa.methods import MethodSettings
from rdfa.methods.table1 import Config, compare
from rdfa.whitening import PCA_WHITENING

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
#: The example exactly as issue 22 writes it.
MAC2 = '''# plugins/mac2.py
from rdfa.methods import register


@register("MAC2", kind="global")
def mac2(image):
    return image.fmap.max(axis=(0, 1))
'''


def doc_plugins() -> dict[str, str]:
    """The page's code blocks that are plugin files: ``{file name: text}``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return {m.group(1): block for block in blocks if (m := re.match(r"# plugins/(\w+\.py)\n", block))}


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, text in doc_plugins().items():
        (folder / name).write_text(text)
    return registry.load_plugins(folder)


def small_dataset(root: Path, rng) -> dict:
    """features.h5 and regions.h5 of 4 classes x 6 database images and one query per class (maps
    5 x 6 x 12: a class pattern plus noise, after a ReLU; 3 random regions and the whole image each)."""
    patterns = rng.normal(size=(4, 5, 6, 12))
    gnd = {"imlist": [f"i{c}_{j}.jpg" for c in range(4) for j in range(6)], "qimlist": [f"q{c}.jpg" for c in range(4)],
           "gnd": [{"ok": list(range(6 * c, 6 * c + 6)), "junk": []} for c in range(4)]}
    paths = Paths(root, "toy")
    paths.work.mkdir(parents=True)
    keys = group_keys(gnd, "db") + group_keys(gnd, "query")
    classes = [c for c in range(4) for _ in range(6)] + list(range(4))
    with h5py.File(paths.features, "w") as f, h5py.File(paths.regions, "w") as r:
        for key, c in zip(keys, classes):
            fmap = np.maximum(patterns[c] + 1.2 * rng.normal(size=(5, 6, 12)), 0)
            f[f"{key}/fmap"] = fmap.astype(np.float16)
            masks = rng.uniform(size=(4, 5, 6)) < 0.4
            masks[:, 0, 0] = True  # no empty region
            masks[-1] = True
            r[f"{key}/masks"] = masks
    return gnd, paths


def test_the_docs_examples_are_the_issues_and_register_two_methods(plugins):
    assert doc_plugins()["mac2.py"] == MAC2
    assert plugins == ["MAC2", "RegionMAC"]  # the files in name order
    assert registry.get("RegionMAC").kind == "regional"


def direct_map(db: list[np.ndarray], queries: list[np.ndarray], dim: int, gnd: dict, n_qe: int) -> tuple:
    """mAP without and with region QE of region rows, computed from the definitions in float64:
    PCA-whitening learned on the database rows (eq. 6, l2 after), eq. 7, eq. 8 (query included)."""
    def l2(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    train = np.concatenate(db)
    mean = train.mean(0)
    values, vectors = np.linalg.eigh(np.cov(train - mean, rowvar=False, bias=True))
    top = np.argsort(values)[::-1][:dim]

    def whiten(x):
        return l2((x - mean) @ vectors[:, top] / np.sqrt(values[top]))

    wdb, wq = [whiten(x) for x in db], [whiten(x) for x in queries]

    def search(rows):
        best = [(rows @ x.T).max() for x in wdb]
        order = sorted(range(len(wdb)), key=lambda i: -best[i])
        return order

    ranks = [search(q) for q in wq]
    expanded = []
    for q, order in zip(wq, ranks):
        picked = [wdb[i][np.unravel_index(np.argmax(q @ wdb[i].T), (len(q), len(wdb[i])))[1]] for i in order[:n_qe]]
        expanded.append(l2(np.sum(picked, axis=0) + q[-1])[None])
    ranks_qe = [search(e) for e in expanded]
    return mean_average_precision(ranks, gnd["gnd"])[0], mean_average_precision(ranks_qe, gnd["gnd"])[0]


def test_mac2_equals_mac_and_the_regional_plugin_its_direct_computation(plugins, tmp_path):
    rng = np.random.default_rng(5)
    gnd, paths = small_dataset(tmp_path, rng)
    methods = [registry.get(name) for name in ("MAC", "MAC2", "RegionMAC")]
    groups = {group: group_keys(gnd, group) for group in ("db", "query")}
    pooled = pool_maps(paths, groups, methods, MethodSettings(), workers=1)
    conf = Config(dims=(4, 8, 64), modes=(("", PCA_WHITENING),), n_qe=2, include_query=True, chunk_rows=7,
                  main_dim=8)
    cells = {}
    for method in methods:
        test = {group: pooled[group][method.name] for group in groups}
        cells.update(compare(method, test, test["db"], gnd, conf).cells)
    assert cells["MAC"].keys() == cells["MAC2"].keys() == {"4", "8", "64"}
    for dim, cell in cells["MAC"].items():  # equal, null where MAC's is null (64 > 23 training vectors)
        assert (cell["mAP"], cell["mAP_qe"]) == (cells["MAC2"][dim]["mAP"], cells["MAC2"][dim]["mAP_qe"])
    assert cells["MAC"]["64"]["mAP"] is None and cells["MAC"]["4"]["mAP"] is not None
    assert "reason" in cells["MAC2"]["64"]

    with h5py.File(paths.features) as f, h5py.File(paths.regions) as r:
        def rows(key):
            fmap, masks = f[f"{key}/fmap"][()].astype(np.float64), r[f"{key}/masks"][()]
            out = np.stack([fmap[m].max(axis=0) for m in masks])
            return out / np.linalg.norm(out, axis=1, keepdims=True)

        db, queries = [rows(k) for k in groups["db"]], [rows(k) for k in groups["query"]]
    assert cells["RegionMAC"]["64"]["mAP"] is None  # 12 dimensions
    for dim in (4, 8):
        want = direct_map(db, queries, dim, gnd, n_qe=2)
        got = cells["RegionMAC"][str(dim)]
        assert got["mAP"] == pytest.approx(want[0], abs=1e-6) and got["mAP_qe"] == pytest.approx(want[1], abs=1e-6)
        assert 0 < got["mAP"] < 1  # a test that can fail
