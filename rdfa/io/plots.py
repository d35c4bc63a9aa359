"""Figures of the method comparison (Figure 1 / Table 1) and of the retrieval results (Figure 2).

matplotlib with the non-interactive Agg backend (no display needed); every
figure is written atomically. Also the small data reshaping that the DVC
plot files need (long records with a ``method`` field, drawn by the
``by_method`` template of ``.dvc/plots/``; mean interpolated precision-recall
curves).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .atomic import atomic_path

#: Colours of Figure 2's marks: relevant, irrelevant, junk ("ignored").
STATUS_COLOURS = {"relevant": "#2ca02c", "irrelevant": "#d62728", "junk": "#8c8c8c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 100) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def map_vs_d_records(methods: Mapping[str, Mapping[str, Mapping]], dims: Sequence[int],
                     key: str = "mAP") -> list[dict]:
    """DVC plot data of mAP against D: one record ``{"method", "D", key}`` per computed cell.

    ``methods`` is ``{method: {str(D): {"mAP": .., "mAP_qe": ..}}}``; ``key``
    picks the value. The long layout (a ``method`` field, rather than a field
    per method) lets one plot template draw a line per method whatever the
    method names are. Cells without a value (not learnable at that D) are
    left out, so every record has the same fields.
    """
    records = []
    for name, cells in methods.items():
        for dim in dims:
            value = (cells.get(str(dim)) or {}).get(key)
            if value is not None:
                records.append({"method": name, "D": int(dim), key: value})
    return records


def by_method_records(records: Sequence[Mapping], x: str, fields: Mapping[str, str], y: str) -> list[dict]:
    """Wide records (a field per curve) in the long layout of :func:`map_vs_d_records`.

    ``fields`` maps a field of ``records`` to the curve's name (the
    ``method`` of its records); its values are renamed ``y``.
    """
    return [{"method": label, x: record[x], y: record[field]}
            for field, label in fields.items() for record in records]


def plot_map_vs_d(methods: Mapping[str, Mapping[str, Mapping]], dims: Sequence[int],
                  path: str | Path, title: str) -> None:
    """Figure 1-style comparison: mAP against D, one line per method, without and with QE.

    Methods named ``<m>_full`` (uncropped queries) are drawn dashed in the
    colour of ``<m>``; missing cells leave gaps.
    """
    plt = _pyplot()
    base = [m for m in methods if not m.endswith("_full")]
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(base)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in zip(axes, ("mAP", "mAP_qe"), ("without QE", "with QE")):
        for name, cells in methods.items():
            root = name[:-len("_full")] if name.endswith("_full") else name
            ys = [(cells.get(str(d)) or {}).get(key) for d in dims]
            ys = [np.nan if y is None else y for y in ys]
            if all(np.isnan(ys)):
                continue
            full = name.endswith("_full")
            ax.plot(dims, ys, marker="s" if full else "o", fillstyle="none" if full else "full",
                    color=colours.get(root, "black"), linestyle="--" if full else "-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(dims), [str(d) for d in dims])
        ax.minorticks_off()
        ax.set_xlabel("D")
        ax.set_title(f"{title} ({label})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mAP")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    _save(fig, path)


def plot_note(path: str | Path, text: str) -> None:
    """A figure holding only ``text``, for a declared plot with nothing to draw (a dataset
    without queries): the file exists, as dvc.yaml says, and tells why it is empty."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    _save(fig, path)


def interpolated_precision(recall: np.ndarray, precision: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Interpolated precision at each recall level: the best precision at any recall >= it.

    (0 beyond the largest recall reached.) ``recall`` must be non-decreasing,
    as :func:`rdfa.evaluation.precision_recall_curve` returns it.
    """
    recall = np.asarray(recall, dtype=np.float64)
    best_after = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    idx = np.searchsorted(recall, levels, side="left")
    out = np.zeros(len(levels))
    inside = idx < len(recall)
    out[inside] = best_after[idx[inside]]
    return out


def mean_pr_records(curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
                    n_levels: int = 101) -> list[dict]:
    """Mean interpolated precision over queries at ``n_levels`` recall levels, one field per curve set.

    ``curves`` maps a field name (e.g. ``precision``, ``precision_qe``) to the
    per-query ``(recall, precision)`` curves. Returns DVC records
    ``{"recall": r, <field>: p, ...}``.
    """
    levels = np.linspace(0.0, 1.0, n_levels)
    means = {name: np.mean([interpolated_precision(r, p, levels) for r, p in per_query], axis=0)
             if per_query else np.zeros(n_levels) for name, per_query in curves.items()}
    return [{"recall": round(float(r), 4), **{k: round(float(v[i]), 6) for k, v in means.items()}}
            for i, r in enumerate(levels)]


def plot_pr(records: Sequence[Mapping], fields: Mapping[str, str], path: str | Path, title: str) -> None:
    """Mean interpolated precision-recall curves; ``fields`` maps record field -> legend label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    recall = [r["recall"] for r in records]
    for field, label in fields.items():
        ax.plot(recall, [r[field] for r in records], label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated, mean over queries)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_retrieval_examples(rows: Sequence[Mapping], path: str | Path, title: str) -> None:
    """Figure 2: each row a query (its box in green) and its top results.

    ``rows``: ``{"query": {"image": (H, W, 3) uint8, "name": str, "box": [x1, y1, x2, y2] or None},
    "results": [{"image": ..., "name": str, "status": "relevant"|"irrelevant"|"junk" or None,
    "polygon": (N, 2) (x, y) in the displayed image's pixels or None, "caption": str (optional)}, ...]}``.
    Results get a coloured mark at the top-left corner (green / red / gray;
    none without a status: a photo without ground truth) and their
    best-matched region shaded in yellow; the caption defaults to
    ``"<rank>. <name>"``.
    """
    from matplotlib.patches import Polygon, Rectangle

    plt = _pyplot()
    n_cols = 1 + max((len(r["results"]) for r in rows), default=0)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.2 * n_cols, 1.9 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, row in enumerate(rows):
        query = row["query"]
        ax = axes[i, 0]
        ax.imshow(query["image"])
        if query.get("box") is not None:
            x1, y1, x2, y2 = query["box"]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#00c000", linewidth=2))
        ax.set_title(query["name"], fontsize=7)
        for j, result in enumerate(row["results"], start=1):
            ax = axes[i, j]
            image = result["image"]
            ax.imshow(image)
            if result.get("polygon") is not None and len(result["polygon"]) >= 3:
                ax.add_patch(Polygon(result["polygon"], closed=True, facecolor="yellow", alpha=0.35,
                                     edgecolor="yellow", linewidth=1))
            if result.get("status") is not None:
                size = 0.12 * min(image.shape[:2])
                ax.add_patch(Rectangle((0, 0), size, size, color=STATUS_COLOURS[result["status"]]))
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
            ax.set_title(result.get("caption", f"{j}. {result['name']}"), fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
