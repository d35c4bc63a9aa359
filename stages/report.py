#!/usr/bin/env python3
"""Stage `report`: an HTML page of the run, every query with what came back (Figure 2 for every query).

Writes ``reports/<ds>/index.html`` and its thumbnails (``reports/<ds>/thumbs/``),
self-contained: open the file in a browser, no server or network. At the
top, the mAP of every method and D without and with QE (Table 1's grid, from
the metrics, with the reasons and warnings of ``results/<ds>.json``); then
every query with its AP and AP after QE (sortable), its thumbnail with its
box, and its top ``report.top_k`` results (``ranks.json``, or
``ranks_qe.json`` with the page's QE switch), each marked relevant /
irrelevant / junk, with the best-matched region (``matches.h5``) drawn. A
dataset without queries (a training set) gets a page saying so.
"""
from __future__ import annotations

import logging
import sys

import h5py

from rdfa.evaluation import is_revisited
from rdfa.io.atomic import read_json
from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.hulls import RegionHulls
from rdfa.io.images import load_rgb, thumbnail
from rdfa.io.report import Thumb, query_records, read_method_grid, render, render_no_queries, write_report
from rdfa.io.stage import run_stage
from rdfa.regions import rescale_points
from rdfa.settings import Settings

log = logging.getLogger("rdfa.report")


#: Appended to the message of a missing input.
BEFORE = " (run the stages before `report`: dvc repro)"


def main(dataset: str, settings: Settings, paths) -> None:
    top_k, size = settings.report.top_k, settings.report.thumbnail
    gnd = load_gnd(paths.data, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: a page saying so, no query to show", dataset, NO_QUERIES)
        page = render_no_queries(dataset, len(gnd["imlist"]), read_json(paths.search_info, "search info", BEFORE))
        return write_report(paths.report, page, {})
    with h5py.File(paths.matches, "r") as m:
        best, best_qe, db_offsets = m["best_region"][()], m["best_region_qe"][()], m["db_offsets"][()]
    records = query_records(gnd, read_json(paths.ranks, "ranks", BEFORE),
                            read_json(paths.ranks_qe, "ranks after QE", BEFORE), best, best_qe, db_offsets,
                            read_json(paths.per_query_ap, "per-query APs", BEFORE), top_k)
    # Thumbnails of the queries and of the database images shown, once each (tiles are
    # `size` wide at most, 3/4 of it high: a row of results stays compact).
    images, thumbs = {}, {}

    def add(key: str, name: str) -> None:
        small, sx, sy = thumbnail(load_rgb(paths.images / name), size * 3 // 4, size)
        images[key] = small
        thumbs[key] = Thumb(f"thumbs/{key}.jpg", small.shape[1], small.shape[0], sx, sy)

    for record in records:
        add(f"q{record.index}", record.name)
    shown = {(hit.index, hit.region): hit.name for r in records for hit in r.hits + r.hits_qe}
    polygons = {}
    with RegionHulls(paths) as hulls:
        for (i, region), name in sorted(shown.items()):
            if f"db{i}" not in thumbs:
                add(f"db{i}", name)
            polygon, _ = hulls.polygon(name, region)
            polygons[i, region] = rescale_points(polygon, (thumbs[f"db{i}"].sx, thumbs[f"db{i}"].sy))
    metrics = read_json(paths.metrics, "metrics", BEFORE)
    info = read_json(paths.search_info, "search info", BEFORE)
    summary = {"n_images": len(gnd["imlist"]), "n_queries": len(gnd["qimlist"]),
               "protocol": "revisited (Medium)" if is_revisited(gnd["gnd"]) else "original",
               "mAP": metrics.get("mAP"), "mAP_qe": metrics.get("mAP_qe"), "D": info.get("D"),
               "n_qe": info.get("n_qe")}
    grid = read_method_grid(paths.metrics.parent, dataset, paths.results.parent)
    write_report(paths.report, render(dataset, summary, grid, records, thumbs, polygons, top_k), images)
    log.info("wrote %s: %d queries, %d thumbnails", paths.report / "index.html", len(records), len(images))


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.report]))
