"""The HTML report of a dataset's run: Table 1's grid, and every query with its top results (Figure 2).

One self-contained page, ``reports/<ds>/index.html``, with its thumbnails in
``thumbs/`` beside it: no server, no network, no script or style from
elsewhere. The mAP of every method and D (with and without QE) comes first;
then one row per query with its AP (the table sorts by any column), its
thumbnail (the box drawn) and its top results, each marked relevant /
irrelevant / junk with the best-matched region drawn over it; a switch shows
the ranking after region QE instead.

:func:`query_records` gathers what a row shows from the pipeline's outputs,
:func:`render` turns records into the page (pure: strings in, a string out),
:func:`write_report` writes the page and the thumbnails atomically. A dataset
without queries (a training set) gets a page saying so
(:func:`render_no_queries`).
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..evaluation import is_revisited, positives_and_junk, relevance
from .atomic import atomic_path
from .plots import STATUS_COLOURS

#: The best-matched region's colour, as in Figure 2.
REGION_COLOUR = "#ffd400"
#: The query box's colour, as in Figure 2.
BOX_COLOUR = "#00c000"


@dataclass
class Hit:
    """One result of a query: database image ``index`` at ``rank``, its relevance, its best-matched region."""

    rank: int
    index: int
    name: str
    status: str  # relevant / irrelevant / junk
    region: int  # row of the region among the image's regions


@dataclass
class QueryRecord:
    index: int
    name: str
    box: list | None
    ap: float | None
    ap_qe: float | None
    hits: list[Hit] = field(default_factory=list)
    hits_qe: list[Hit] = field(default_factory=list)


def read_method_grid(metrics_dir: Path, dataset: str, results_dir: Path | None = None) -> dict:
    """Table 1's grid ``{method: {D: {"mAP", "mAP_qe", ["reason"], ["warning"]}}}`` of a dataset.

    The numbers from ``metrics/<ds>_methods.json`` when it exists (the grid in
    a metrics file of its own), else from the ``methods`` object of
    ``metrics/<ds>.json``; ``{}`` when neither holds one. The explanations
    (why a cell is null, a whitening warning) from the ``methods`` of
    ``results_dir/<ds>.json`` when given: metrics files keep numbers only.
    """
    def methods_of(path: Path) -> dict:
        data = json.loads(path.read_text()) if path.is_file() else {}
        methods = data.get("methods", {}) if isinstance(data, dict) else {}
        return methods if isinstance(methods, dict) else {}

    own = metrics_dir / f"{dataset}_methods.json"
    grid = methods_of(own if own.is_file() else metrics_dir / f"{dataset}.json")
    notes = methods_of(results_dir / f"{dataset}.json") if results_dir is not None else {}

    def explained(method: str, dim: str, cell: dict) -> dict:
        note = (notes.get(method) or {}).get(dim) or {}
        return {**cell, **{k: note[k] for k in ("reason", "warning") if k in note}}

    return {method: {dim: explained(method, dim, cell) for dim, cell in cells.items()}
            for method, cells in grid.items()}


def query_records(gnd: dict, ranks: Sequence, ranks_qe: Sequence, best: np.ndarray, best_qe: np.ndarray,
                  db_offsets: np.ndarray, per_query: Sequence[Mapping], top_k: int) -> list[QueryRecord]:
    """One record per query: its AP (``per_query`` from the evaluation) and its top ``top_k`` results.

    ``best``/``best_qe`` are matches.h5's ``(n_queries, n_images)`` best region
    rows (stacked over the database; ``db_offsets`` gives each image's first row).
    """
    n_q = len(gnd["qimlist"])
    if len(per_query) != n_q or len(ranks) != n_q or len(ranks_qe) != n_q:
        raise ValueError(f"{n_q} queries in gnd.json, but {len(per_query)} per-query APs, {len(ranks)} ranked "
                         f"lists and {len(ranks_qe)} after QE: re-run the pipeline (`dvc repro`)")
    revisited = is_revisited(gnd["gnd"])
    records = []
    for q, (name, entry) in enumerate(zip(gnd["qimlist"], gnd["gnd"])):
        pos, junk = positives_and_junk(entry, revisited)

        def hits(ranked, rows):
            return [Hit(r, int(i), gnd["imlist"][i], relevance(int(i), pos, junk), int(rows[i] - db_offsets[i]))
                    for r, i in enumerate(ranked[:top_k], start=1)]

        records.append(QueryRecord(q, name, entry.get("bbx"), per_query[q].get("ap"), per_query[q].get("ap_qe"),
                                   hits(ranks[q], best[q]), hits(ranks_qe[q], best_qe[q])))
    return records


# --- rendering --------------------------------------------------------------------------------

@dataclass
class Thumb:
    """A thumbnail file (relative to the page) and its size; ``sx``, ``sy``: scale from the original image."""

    src: str
    width: int
    height: int
    sx: float
    sy: float


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _points(polygon: np.ndarray) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in np.asarray(polygon).reshape(-1, 2))


def tile(thumb: Thumb, caption: str, css: str, polygon: np.ndarray | None = None, box=None, title: str = "") -> str:
    """One thumbnail as inline SVG (the image and, drawn over it, a region polygon or a box) with a caption."""
    e = html.escape
    shapes = ""
    if polygon is not None and len(polygon) >= 3:
        shapes += f'<polygon class="region" points="{_points(polygon)}"/>'
    if box is not None:
        x1, y1, x2, y2 = box[0] * thumb.sx, box[1] * thumb.sy, box[2] * thumb.sx, box[3] * thumb.sy
        shapes += f'<rect class="box" x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}"/>'
    return (f'<figure class="{css}" title="{e(title)}"><svg width="{thumb.width}" height="{thumb.height}" '
            f'viewBox="0 0 {thumb.width} {thumb.height}" role="img" aria-label="{e(caption)}">'
            f'<image href="{e(thumb.src)}" width="{thumb.width}" height="{thumb.height}"/>{shapes}</svg>'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def grid_table(grid: Mapping[str, Mapping[str, Mapping]]) -> str:
    """Table 1: a row per method, for each D a column without and one with QE; the best of each column in bold."""
    if not grid:
        return "<p>No method comparison in the metrics (the methods stage has not run).</p>"
    dims = sorted({d for cells in grid.values() for d in cells}, key=lambda d: int(d))
    best = {}
    for d in dims:
        for key in ("mAP", "mAP_qe"):
            values = [(cells.get(d) or {}).get(key) for cells in grid.values()]
            values = [v for v in values if v is not None]
            best[d, key] = max(values) if values else None
    head = "".join(f'<th colspan="2">D = {html.escape(d)}</th>' for d in dims)
    sub = "<th>mAP</th><th>+ QE</th>" * len(dims)
    rows = []
    for method, cells in grid.items():
        tds = []
        for d in dims:
            cell = cells.get(d) or {}
            for key in ("mAP", "mAP_qe"):
                value = cell.get(key)
                note = cell.get("reason") or cell.get("warning") or ""
                css = "na" if value is None else "best" if value == best[d, key] else ""
                mark = "†" if value is not None and cell.get("warning") else ""
                tds.append(f'<td class="{css}" title="{html.escape(note)}">{_num(value)}{mark}</td>')
        rows.append(f"<tr><th>{html.escape(method)}</th>{''.join(tds)}</tr>")
    return (f'<table class="grid"><thead><tr><th rowspan="2">method</th>{head}</tr><tr>{sub}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def query_row(record: QueryRecord, thumbs: Mapping[str, Thumb], polygons: Mapping[tuple, np.ndarray]) -> str:
    """One query's row: number, thumbnail (box drawn), APs, top results without and with QE.

    ``thumbs``: by ``q<i>`` (queries) and ``db<i>`` (database images);
    ``polygons``: the best-matched region by ``(db index, region row)``, in
    that image's thumbnail pixels.
    """
    e = html.escape

    def results(hits: list[Hit], css: str) -> str:
        tiles = "".join(tile(thumbs[f"db{h.index}"], f"{h.rank}. {h.name}", h.status,
                             polygons[h.index, h.region], title=f"{h.name}: {h.status}") for h in hits)
        return f'<div class="hits {css}">{tiles}</div>'

    sort_ap = "" if record.ap is None else f"{record.ap:.6f}"
    sort_qe = "" if record.ap_qe is None else f"{record.ap_qe:.6f}"
    query = tile(thumbs[f"q{record.index}"], record.name, "query", box=record.box, title=record.name)
    return (f'<tr id="q{record.index}"><td data-v="{record.index}">{record.index}</td>'
            f'<td class="q" data-v="{e(record.name)}">{query}</td>'
            f'<td data-v="{sort_ap}">{_num(record.ap)}</td><td data-v="{sort_qe}">{_num(record.ap_qe)}</td>'
            f"<td>{results(record.hits, 'plain')}{results(record.hits_qe, 'expanded')}</td></tr>")


STYLE = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.5em; margin: 0 0 .2em; }} h2 {{ font-size: 1.2em; margin: 1.2em 0 .4em; }}
table {{ border-collapse: collapse; }}
.grid td, .grid th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
.grid tbody th {{ text-align: left; }} .grid .best {{ font-weight: bold; }} .grid .na {{ color: #999; }}
#queries > thead th {{ position: sticky; top: 0; background: #f4f4f4; cursor: pointer; padding: 4px 8px;
  border-bottom: 2px solid #bbb; user-select: none; white-space: nowrap; }}
#queries > thead th.nosort {{ cursor: default; }}
#queries > tbody > tr > td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }}
th[aria-sort=ascending]::after {{ content: " \\25B2"; }} th[aria-sort=descending]::after {{ content: " \\25BC"; }}
figure {{ display: inline-block; margin: 2px; text-align: center; vertical-align: top; }}
figure svg {{ display: block; border: 3px solid transparent; }}
figcaption {{ font-size: 11px; max-width: 170px; overflow-wrap: anywhere; }}
figure.relevant svg {{ border-color: {STATUS_COLOURS["relevant"]}; }}
figure.irrelevant svg {{ border-color: {STATUS_COLOURS["irrelevant"]}; }}
figure.junk svg {{ border-color: {STATUS_COLOURS["junk"]}; }}
polygon.region {{ fill: {REGION_COLOUR}; fill-opacity: .3; stroke: {REGION_COLOUR}; stroke-width: 2; }}
rect.box {{ fill: none; stroke: {BOX_COLOUR}; stroke-width: 2; }}
.hits {{ display: flex; flex-wrap: wrap; }}
body:not(.qe) .hits.expanded, body.qe .hits.plain {{ display: none; }}
.legend span {{ display: inline-block; width: .9em; height: .9em; vertical-align: middle; margin: 0 .2em 0 .8em; }}
"""

# Sorting by a column (numbers by value, n/a last) and the QE switch: plain DOM, no library.
SCRIPT = """
(function () {
  var table = document.getElementById('queries');
  var headers = table.tHead.rows[0].cells;
  function key(row, col) { return row.cells[col].getAttribute('data-v'); }
  function sortBy(col, numeric, dir) {
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (numeric) {
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        return dir * (parseFloat(x) - parseFloat(y));
      }
      return dir * x.localeCompare(y);
    });
    rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    for (var i = 0; i < headers.length; i++) { headers[i].removeAttribute('aria-sort'); }
    headers[col].setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
  }
  Array.prototype.forEach.call(headers, function (th, col) {
    if (!th.hasAttribute('data-sort')) { return; }
    th.addEventListener('click', function () {
      var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
      sortBy(col, th.getAttribute('data-sort') === 'num', dir);
    });
  });
  var qe = document.getElementById('show-qe');
  qe.addEventListener('change', function () { document.body.classList.toggle('qe', qe.checked); });
  document.body.classList.toggle('qe', qe.checked);
})();
"""


def page_head(dataset: str) -> str:
    """The start of every report page, down to its heading."""
    e = html.escape
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(dataset)}: retrieval report</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style></head>
<body>
<h1>{e(dataset)}: retrieval report</h1>
"""


def render(dataset: str, summary: Mapping, grid: Mapping, records: Sequence[QueryRecord],
           thumbs: Mapping[str, Thumb], polygons: Mapping[tuple, np.ndarray], top_k: int) -> str:
    """The whole page. ``summary``: ``n_images``, ``n_queries``, ``protocol``, ``mAP``, ``mAP_qe``, ``D``, ``n_qe``."""
    e = html.escape
    legend = "".join(f'<span style="background:{STATUS_COLOURS[s]}"></span>{s}' for s in STATUS_COLOURS)
    legend += f'<span style="background:{REGION_COLOUR}"></span>best-matched region'
    legend += f'<span style="border:2px solid {BOX_COLOUR}"></span>query box'
    rows = "".join(query_row(r, thumbs, polygons) for r in records)
    return page_head(dataset) + f"""
<p>{summary['n_images']} database images, {summary['n_queries']} queries, {e(str(summary['protocol']))} protocol.
Proposed method (O2_R, D = {summary.get('D', 'n/a')}): mAP <b>{_num(summary.get('mAP'))}</b>, with region QE
(N_QE = {summary.get('n_qe', 'n/a')}) <b>{_num(summary.get('mAP_qe'))}</b>.</p>
<h2>mAP of every method (Table 1)</h2>
<p>Methods named <code>&lt;method&gt;_full</code> use the queries uncropped (the paper's OF).
n/a: D not learnable from the training vectors; †: whitening warning (hover a cell for the reason).</p>
{grid_table(grid)}
<h2>Queries</h2>
<p class="legend">Top {top_k} results of each query.{legend}</p>
<p><label><input type="checkbox" id="show-qe"> show the ranking after region query expansion</label>
&nbsp;Click a column heading to sort.</p>
<table id="queries"><thead><tr><th data-sort="num" aria-sort="ascending">#</th><th data-sort="text">query</th>
<th data-sort="num">AP</th><th data-sort="num">AP + QE</th><th class="nosort">top {top_k} results</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""


def render_no_queries(dataset: str, n_images: int, info: Mapping) -> str:
    """The page of a dataset without queries (a training set): what it is, and that nothing was searched.

    ``info``: its ``search_info.json`` (``D``, what its whitening was learned on).
    """
    e = html.escape
    return page_head(dataset) + f"""
<p>{n_images} database images and no queries: {e(dataset)} is a training set, whose database learns
the whitening of the datasets that name it in <code>whitening.train_on</code>. Nothing was searched:
no mAP, no query to show.</p>
<p>Its database's descriptors: D = {e(str(info.get('D', 'n/a')))}, whitened as learned on
{e(str(info.get('whitening_learned_on', dataset)))} ({e(str(info.get('whitening_train_descriptors', 'n/a')))}
region descriptors).</p>
</body></html>
"""


def write_report(out_dir: Path, page: str, images: Mapping[str, np.ndarray]) -> None:
    """Write ``index.html`` and ``thumbs/<key>.jpg`` for each thumbnail image, as one folder, atomically."""
    from PIL import Image

    with atomic_path(out_dir, directory=True) as tmp:
        tmp.chmod(0o755)  # a temporary folder is private; the report is meant to be read (and served)
        (tmp / "thumbs").mkdir()
        for key, image in images.items():
            Image.fromarray(image).save(tmp / "thumbs" / f"{key}.jpg", quality=85)
        (tmp / "index.html").write_text(page, encoding="utf-8")
