#!/usr/bin/env python3
"""Stage `methods`: Table 1 and Figure 1, every registered method side by side.

The methods are ``rdfa.methods``'s: Table 1's ten (MAC, SPoC, CroW, R-MAC, R-MAC+G, GeM, O1_W,
O1_R, O2_W, O2_R), then every ``plugins/*.py`` of the project (docs/adding-a-method.md). Each is
pooled from the stored feature maps (or descriptors.h5's rows), l2-normalised, whitened at every
D of ``methods.D`` (and every mode of ``methods.compare_whitening``, named ``<method>_<mode>``),
searched without and with QE, with cropped and, with ``methods.full_query``, uncropped boxed
queries (``<method>_full``), and scored with the dataset's protocol (``rdfa.methods.table1``).
Whitening is learned on the database of ``whitening.train_on[<dataset>]`` (default: itself).

Writes ``features/<ds>/methods.json`` (``{"methods": {name: {D: {"mAP", "mAP_qe", ["reason"],
["warning"]}}}, "info": {...}}``, which ``evaluate.py --methods`` turns into
``metrics/<ds>_methods.json``), ``method_fits.h5`` and ``method_vectors.h5`` (for the distractor
stages: ``rdfa.io.method_vectors``) and ``plots/<ds>/``: ``map_vs_d.json``, ``map_vs_d_qe.json``,
``.png`` (mAP against D), ``pr.json``/``.png`` (O2_R's precision-recall, from ranks*.json) and
``figure2.png`` (from matches.h5). A dataset without queries gets no cells and plots that say so.
"""
from __future__ import annotations

import logging
import os
import sys

import numpy as np

from rdfa import methods as registry
from rdfa.evaluation import is_revisited
from rdfa.io import plots
from rdfa.io.atomic import write_json
from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.method_vectors import write_method_files
from rdfa.io.provenance import check_same_basis, check_training_source, require_training_files
from rdfa.io.stage import Paths, run_stage
from rdfa.io.table1 import (
    compare_all,
    descriptor_shape,
    figure_rows,
    group_keys,
    pool_maps,
    pool_stored,
    read_ranks,
    stored_whitening,
)
from rdfa.methods.table1 import boxed_queries, config, pr_records
from rdfa.settings import Settings
from rdfa.whitening import D_RULE

log = logging.getLogger("rdfa.methods")

#: What the stage writes under plots/<dataset>/ (dvc.yaml declares them as its plots).
PLOT_FILES = ("map_vs_d.json", "map_vs_d_qe.json", "map_vs_d.png", "pr.json", "pr.png", "figure2.png")
#: The curves of pr.json / pr.png: field of the records -> name.
PR_CURVES = {"precision": "O2_R", "precision_qe": "O2_R + QE"}


def method_settings(s) -> registry.MethodSettings:
    m = s.methods
    return registry.MethodSettings(m.gem_p, m.crow_a, m.crow_b, m.rmac_levels, m.rmac_overlap, s.weights.beta_eps)


def pooled_rows(paths: Paths, gnd: dict, groups: list[str], methods: list, s, desc: str) -> dict:
    """``{name: {group: Rows}}`` of every method on the entries of ``groups``."""
    keys = {group: group_keys(gnd, group) for group in groups}
    out = pool_maps(paths, keys, methods, method_settings(s), s.runtime.worker_count(),
                    paths.root.absolute() / "plugins", s.runtime.executor_options(), desc)
    for group in groups:
        boxed = boxed_queries(gnd) if group == "full" else None
        out[group].update(pool_stored(paths.descriptors, group, keys[group], methods, method_settings(s), boxed))
    return {m.name: {group: out[group][m.name] for group in groups} for m in methods}


def write_figures(paths: Paths, gnd: dict, s) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall of the proposed method and Figure 2, from the ranking stage's results."""
    out = paths.plots
    ranks, ranks_qe = read_ranks(paths.ranks), read_ranks(paths.ranks_qe)
    records = plots.mean_pr_records(pr_records(gnd, ranks, ranks_qe))
    write_json(out / "pr.json", plots.by_method_records(records, "recall", PR_CURVES, "precision"))
    plots.plot_pr(records, PR_CURVES, out / "pr.png", f"{paths.dataset}: proposed method (O2_R)")
    rows = figure_rows(paths, gnd, ranks, s.methods.figure_queries, s.methods.figure_top_k)
    plots.plot_retrieval_examples(rows, out / "figure2.png", f"{paths.dataset}: top results; green/red/gray = "
                                  "relevant/irrelevant/junk, yellow = best-matched region")
    return ranks, ranks_qe


def write_no_queries(paths: Paths, conf, train_on: str, n_images: int) -> None:
    note = "no queries: a training set only"
    log.info("%s: %s: no method searched, methods.json and the plots written empty", paths.dataset, NO_QUERIES)
    write_json(paths.methods, {"methods": {}, "info": {
        "queries": 0, "n_images": n_images, "note": note, "whitening": conf.modes[0][1].record(),
        "whitening_learned_on": train_on, "D": list(conf.dims)}})
    write_method_files(paths.method_fits, paths.method_vectors, {}, conf.modes[0][1].record(), train_on, conf.dims, [])
    for name in PLOT_FILES:
        if name.endswith(".json"):
            write_json(paths.plots / name, [])
        else:
            plots.plot_note(paths.plots / name, f"{paths.dataset}: {note}")


def main(dataset: str, settings: Settings, paths: Paths) -> None:
    s = settings
    conf = config(s)
    train_on = s.training_dataset(dataset)
    gnd = load_gnd(paths.data, need_queries=False)
    if not gnd["qimlist"]:
        return write_no_queries(paths, conf, train_on, len(gnd["imlist"]))
    added = registry.load_plugins(paths.root / "plugins")
    methods = registry.methods()
    cross = train_on != dataset
    source = Paths(paths.root, train_on)
    if cross:  # the other dataset's K -> K' basis (our pca stage learned it there) and database
        require_training_files(dataset, train_on, source.features, source.regions, source.descriptors)
        check_same_basis(dataset, train_on, paths.descriptors, source.descriptors)
    if paths.whitened.is_file():
        check_training_source(paths, dataset)
    log.info("%s: %d database images, %d queries; methods %s; D in %s; whitening %s learned on %s; N_QE=%d",
             dataset, len(gnd["imlist"]), len(gnd["qimlist"]), ", ".join(m.name for m in methods), list(conf.dims),
             " / ".join(w.label for _, w in conf.modes), train_on, conf.n_qe)
    stored = stored_whitening(paths.whitened, train_on, descriptor_shape(source.descriptors), conf.dims,
                              conf.modes[0][1])
    boxed = boxed_queries(gnd)
    groups = ["db", "query"] + (["full"] if s.methods.full_query and len(boxed) else [])
    test = pooled_rows(paths, gnd, groups, methods, s, f"methods {dataset}")
    if cross:
        train_gnd = load_gnd(source.data, need_queries=False)
        train = {k: v["db"] for k, v in pooled_rows(source, train_gnd, ["db"], methods, s,
                                                    f"methods {train_on} db (whitening)").items()}
    else:
        train = {name: rows["db"] for name, rows in test.items()}
    workers = s.runtime.workers or os.cpu_count() or 1
    threads = s.runtime.blas_threads or max(1, (os.cpu_count() or 1) // workers)
    done = compare_all(methods, test, train, gnd, conf, stored, workers, threads)
    stored_ranks = write_figures(paths, gnd, s)
    cells, check = {}, {}
    for method in methods:  # methods.json in registration order: Table 1's, then the plugins'
        cells.update(done[method.name].cells)
        if done[method.name].main_ranks is not None:
            ranks, ranks_qe = done[method.name].main_ranks
            same = np.array_equal(ranks, stored_ranks[0]) and np.array_equal(ranks_qe, stored_ranks[1])
            check[f"{method.name}_matches_ranking_stage"] = bool(same)
            if not same:
                log.warning("%s at D=%d ranks differently from %s / %s: are they up to date?", method.name,
                            conf.main_dim, paths.ranks, paths.ranks_qe)
    info = {
        "whitening": conf.modes[0][1].record(),
        "whitening_compared": [w.record() for _, w in conf.modes[1:]],
        "whitening_learned_on": train_on,
        "whitening_on_test_database": not cross,
        "whitening_train_vectors": {m.name: done[m.name].n_train for m in methods},
        "whitening_D_rule": D_RULE,
        "D": list(conf.dims),
        "n_qe": conf.n_qe,
        "qe": "average QE (query + top N_QE, l2) for one-descriptor methods; region QE (eq. 8) for "
              + ", ".join(m.name for m in methods if m.kind == "regional"),
        "regional": [m.name for m in methods if m.kind == "regional"],  # D per region: "128M" in Table 1
        "rmac": "R-MAC: Tolias et al.'s grid only; R-MAC+G: with the whole-image MAC as one more region",
        "protocol": "revisited (Medium)" if is_revisited(gnd["gnd"]) else "original",
        "full_query": "full" in groups,
        "queries_with_box": int(len(boxed)),
        "O2_R_whitening": f"the whitening stage's ({paths.whitened.name}, D={stored.dim})" if stored else "fitted here",
        "plugins": added,
    }
    info.update(check)
    write_json(paths.methods, {"methods": cells, "info": info})
    exports = {m.name: done[m.name].export for m in methods if done[m.name].export is not None}
    write_method_files(paths.method_fits, paths.method_vectors, exports, info["whitening"], train_on, conf.dims, boxed)
    write_json(paths.plots / "map_vs_d.json", plots.map_vs_d_records(cells, conf.dims, "mAP"))
    write_json(paths.plots / "map_vs_d_qe.json", plots.map_vs_d_records(cells, conf.dims, "mAP_qe"))
    plots.plot_map_vs_d(cells, conf.dims, paths.plots / "map_vs_d.png", paths.dataset)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [
        p.methods, p.method_fits, p.method_vectors, *(p.plots / n for n in PLOT_FILES)]))
