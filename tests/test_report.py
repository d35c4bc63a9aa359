"""The HTML report: what it shows, read from which files, and that a browser loads it cleanly."""
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from rdfa.io.report import Thumb, query_records, read_method_grid, render, write_report

GND = {"imlist": ["a.jpg", "b.jpg", "c.jpg"], "qimlist": ["q<0>.jpg", "q1.jpg"],
       "gnd": [{"ok": [1], "junk": [2], "bbx": [10, 10, 50, 40]}, {"ok": [0, 2], "junk": [], "bbx": None}]}
GRID = {"O2_R": {"128": {"mAP": 0.5, "mAP_qe": 0.6}, "256": {"mAP": 0.4, "mAP_qe": 0.45}},
        "MAC": {"128": {"mAP": 0.3, "mAP_qe": 0.35, "warning": "few vectors"},
                "256": {"mAP": None, "mAP_qe": None, "reason": "D=256 is larger than the 239 axes"}}}


def records(top_k=2):
    ranks = [[1, 2, 0], [2, 0, 1]]
    ranks_qe = [[1, 0, 2], [0, 2, 1]]
    offsets = np.array([0, 2, 5, 6])  # a: regions 0-1, b: 2-4, c: 5
    best = np.array([[1, 3, 5], [0, 4, 5]])
    per_query = [{"query": "q<0>.jpg", "ap": 1.0, "ap_qe": 1.0}, {"query": "q1.jpg", "ap": 0.25, "ap_qe": None}]
    return query_records(GND, ranks, ranks_qe, best, best, offsets, per_query, top_k)


def test_query_records_mark_relevance_and_the_best_region_of_each_result():
    first, second = records()
    assert [(h.rank, h.name, h.status, h.region) for h in first.hits] == [
        (1, "b.jpg", "relevant", 1), (2, "c.jpg", "junk", 0)]
    assert [(h.name, h.status) for h in second.hits] == [("c.jpg", "relevant"), ("a.jpg", "relevant")]
    assert [h.name for h in first.hits_qe] == ["b.jpg", "a.jpg"] and first.hits_qe[1].status == "irrelevant"
    assert first.box == [10, 10, 50, 40] and second.ap == 0.25 and second.ap_qe is None


def test_query_records_refuse_outputs_of_another_run():
    with pytest.raises(ValueError, match=r"2 queries in gnd.json, but 1 per-query APs.*dvc repro"):
        query_records(GND, [[0]] * 2, [[0]] * 2, np.zeros((2, 3), int), np.zeros((2, 3), int), np.arange(4),
                      [{"ap": 1.0}], 2)


def test_the_method_grid_comes_from_its_own_metrics_file_when_there_is_one(tmp_path):
    (tmp_path / "synth.json").write_text(json.dumps({"mAP": 0.4, "methods": {"MAC": {"128": {"mAP": 0.1}}}}))
    assert read_method_grid(tmp_path, "synth") == {"MAC": {"128": {"mAP": 0.1}}}  # today's layout
    numbers = {m: {d: {k: c[k] for k in ("mAP", "mAP_qe")} for d, c in cells.items()} for m, cells in GRID.items()}
    (tmp_path / "synth_methods.json").write_text(json.dumps({"methods": numbers}))
    assert read_method_grid(tmp_path, "synth") == numbers  # metrics/<ds>_methods.json wins
    assert read_method_grid(tmp_path, "other") == {}
    # the reasons and warnings come from results/<ds>.json
    results = tmp_path / "results"
    results.mkdir()
    (results / "synth.json").write_text(json.dumps({"methods": GRID, "protocol": "original"}))
    assert read_method_grid(tmp_path, "synth", results) == GRID


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def page(tmp_path):
    rng = np.random.default_rng(0)
    images, thumbs = {}, {}
    for key in ("q0", "q1", "db0", "db1", "db2"):
        images[key] = rng.integers(0, 255, (60, 80, 3), np.uint8)
        thumbs[key] = Thumb(f"thumbs/{key}.jpg", 80, 60, 0.5, 0.5)
    polygons = {(i, r): np.array([[5, 5], [40, 8], [30, 50]]) for i in range(3) for r in range(3)}
    summary = {"n_images": 3, "n_queries": 2, "protocol": "original", "mAP": 0.625, "mAP_qe": 0.7, "D": 128,
               "n_qe": 2}
    html = render("toy", summary, GRID, records(), thumbs, polygons, 2)
    write_report(tmp_path / "report", html, images)
    return tmp_path / "report" / "index.html", html


def test_the_page_shows_the_grid_every_query_and_its_results(tmp_path):
    path, html = page(tmp_path)
    parsed = Collect()
    parsed.feed(html)
    text = " ".join(parsed.text)
    assert "q&lt;0&gt;.jpg" in html and "q<0>.jpg" in text  # names are escaped, and shown
    assert "0.625" in text and "n/a" in text and "0.300†" in text
    assert "D=256 is larger than the 239 axes" in html  # a null cell says why
    images = [a["href"] for tag, a in parsed.tags if tag == "image"]
    assert images.count("thumbs/db1.jpg") == 2 and all((path.parent / src).is_file() for src in images)
    assert sum(1 for tag, a in parsed.tags if tag == "polygon") == 8  # 2 queries x 2 results x (plain, QE)
    # Nothing is fetched from elsewhere: no http(s) address in src/href
    assert not [a for _, a in parsed.tags for k, v in a.items() if k in ("src", "href") and "//" in v]


def test_a_browser_loads_the_page_without_errors_and_sorts_it(tmp_path, browser):
    path, _ = page(tmp_path)
    browser.open(path)
    assert browser.console_errors() == []
    assert browser.evaluate("Array.from(document.querySelectorAll('#queries tbody tr td.q figcaption'))"
                            ".map(e => e.textContent)") == ["q<0>.jpg", "q1.jpg"]
    # Click "AP" (ascending), then again (descending)
    order = "Array.from(document.querySelectorAll('#queries tbody tr')).map(r => r.id)"
    browser.evaluate("document.querySelectorAll('#queries thead th')[2].click()")
    assert browser.evaluate(order) == ["q1", "q0"]
    browser.evaluate("document.querySelectorAll('#queries thead th')[2].click()")
    assert browser.evaluate(order) == ["q0", "q1"]
    # "AP + QE": the query without a value goes last either way
    browser.evaluate("document.querySelectorAll('#queries thead th')[3].click()")
    assert browser.evaluate(order) == ["q0", "q1"]
    # The QE switch shows the other ranking
    visible = ("Array.from(document.querySelectorAll('#q0 .hits')).filter(e => e.offsetParent !== null)"
               ".map(e => e.className)")
    assert browser.evaluate(visible) == ["hits plain"]
    browser.evaluate("document.getElementById('show-qe').click()")
    assert browser.evaluate(visible) == ["hits expanded"]
    assert browser.console_errors() == []
