"""Table 1 of the paper as Markdown: ours beside the published numbers, from every dataset's results.

Rows are the methods at each D (regional methods as ``128M``: D per region, as
the paper writes it), in the order the results list them, then the same with
query expansion; columns are the datasets, each followed by its
uncropped-query column (``<ds> full``, Table 1's "OF") when the results have
``<method>_full`` cells, and by the paper's column for Oxford5k, Paris6k and
Holidays. The paper's columns of datasets not run are appended, so its Table
1 is always there to compare with. ``n/a`` marks a D that the whitening cannot
be learned at (reason listed under the table), ``†`` a cell whose whitening was
flagged as poorly conditioned, ``—`` nothing. A dataset without queries (a
training set, ``n_queries`` 0) gets no column, only a line under the table
naming the datasets whose whitening it learns.

``results`` is ``{dataset: results/<dataset>.json}`` as ``stages/evaluate.py
--results`` writes it (``rdfa.io.results`` reads them). No file I/O here.
"""
from __future__ import annotations

#: The paper's name of a method where it gives one.
LABELS = {"SPoC": "SPoC [1]", "CroW": "CroW [5]", "R-MAC": "R-MAC [6]", "R-MAC+G": "R-MAC+G (grid + global MAC)",
          "O2_R": "O2_R (proposed)"}
#: Methods with one descriptor per candidate region: the paper writes their D as "128M" (a user's
#: regional methods too: the methods stage lists them in its info, ``regional``).
REGIONAL = ("O1_R", "O2_R")
FULL = "_full"

#: The paper's datasets (its Table 1 columns) and the dataset names of this project.
PAPER_COLUMNS = {"oxford": "Oxford", "of": "OF", "paris": "Paris", "holidays": "Holidays"}
PAPER_DATASET = {"oxford5k": ("oxford", "of"), "paris6k": ("paris", None), "holidays": ("holidays", None)}

#: Table 1 of Jeong et al. (mAP): {(method, with QE): {D: {column: value}}}; "of" = uncropped Oxford.
PAPER = {
    ("SPoC", False): {256: {"oxford": 0.531, "of": 0.589, "holidays": 0.802}},
    ("CroW", False): {128: {"oxford": 0.592, "paris": 0.746},
                      256: {"oxford": 0.654, "paris": 0.779, "holidays": 0.831},
                      512: {"oxford": 0.682, "paris": 0.796, "holidays": 0.849}},
    ("R-MAC", False): {256: {"oxford": 0.561, "paris": 0.729},
                       512: {"oxford": 0.669, "paris": 0.830}},
    ("O2_R", False): {128: {"oxford": 0.682, "of": 0.690, "paris": 0.786, "holidays": 0.875},
                      256: {"oxford": 0.725, "of": 0.717, "paris": 0.798, "holidays": 0.882},
                      512: {"oxford": 0.741, "of": 0.730, "paris": 0.802, "holidays": 0.886}},
    ("CroW", True): {128: {"paris": 0.827},
                     256: {"oxford": 0.692, "paris": 0.850},
                     512: {"oxford": 0.722, "paris": 0.855}},
    ("O2_R", True): {128: {"oxford": 0.750, "of": 0.745, "paris": 0.851},
                     256: {"oxford": 0.791, "of": 0.768, "paris": 0.862},
                     512: {"oxford": 0.816, "of": 0.781, "paris": 0.864}},
}

NONE, NA, WARN = "—", "n/a", "†"


def _training_set(results: dict) -> bool:
    """A dataset without queries (a training set): nothing to put in a column."""
    return results.get("n_queries") == 0


def _root(name: str) -> str:
    """The method a ``<method>_full`` variant (uncropped queries) belongs to."""
    return name[:-len(FULL)] if name.endswith(FULL) else name


def _columns(results: dict[str, dict]) -> list[tuple[str, str, object]]:
    """``(header, kind, key)``: kind ``ours`` (key = (dataset, method suffix)) or ``paper`` (key = column)."""
    columns, used = [], set()
    for ds, m in results.items():
        if _training_set(m):
            continue
        methods = m.get("methods", {})
        paper_cols = PAPER_DATASET.get(ds, (None, None))
        columns.append((ds, "ours", (ds, "")))
        if paper_cols[0]:
            columns.append((f"{PAPER_COLUMNS[paper_cols[0]]} (paper)", "paper", paper_cols[0]))
            used.add(paper_cols[0])
        if any(name.endswith(FULL) for name in methods):
            columns.append((f"{ds} full", "ours", (ds, FULL)))
            if paper_cols[1]:
                columns.append((f"{PAPER_COLUMNS[paper_cols[1]]} (paper)", "paper", paper_cols[1]))
                used.add(paper_cols[1])
    columns += [(f"{label} (paper)", "paper", key) for key, label in PAPER_COLUMNS.items() if key not in used]
    return columns


def _cell(results: dict[str, dict], key: tuple[str, str], method: str, dim: int, qe: bool) -> str:
    ds, suffix = key
    cell = results[ds].get("methods", {}).get(method + suffix, {}).get(str(dim))
    if cell is None:
        return NONE
    value = cell.get("mAP_qe" if qe else "mAP")
    if value is None:
        return NA if cell.get("reason") else NONE
    return f"{value:.3f}" + (WARN if cell.get("warning") else "")


def _dims(results: dict[str, dict], method: str, qe: bool) -> list[int]:
    dims = {int(d) for m in results.values() for name, cells in m.get("methods", {}).items()
            if name in (method, method + FULL) for d in cells}
    return sorted(dims | set(PAPER.get((method, qe), {})))


def _notes(results: dict[str, dict]) -> list[str]:
    lines = []
    for ds, m in results.items():
        info = m.get("methods_info") or {}
        if _training_set(m):
            users = [other for other, r in results.items()
                     if other != ds and (r.get("methods_info") or {}).get("whitening_learned_on") == ds]
            learns = (f"its database learns the whitening of {', '.join(users)}" if users
                      else "no dataset here learns its whitening on it (whitening.train_on)")
            lines.append(f"- {ds}: no queries, a training set (no column): {learns}.")
            continue
        if not m.get("methods"):
            lines.append(f"- {ds}: no method comparison in its results (run the `methods` stage and "
                         "`evaluate.py --methods`).")
            continue
        learned = info.get("whitening_learned_on", "?")
        where = "its own database, as the paper" if learned == ds else f"the database of {learned}"
        protocol = info.get("protocol", m.get("protocol", "?"))
        lines.append(f"- {ds}: whitening learned on {where}; protocol {protocol}; QE with N_QE = "
                     f"{info.get('n_qe', '?')} (average QE for one-descriptor methods, region QE, eq. 8, "
                     "for O1_R and O2_R).")
        # One line per method (its _full variant shares the whitening, hence the same cells).
        reasons: dict[str, tuple[list[str], str]] = {}
        warned: dict[str, list[str]] = {}
        for name, cells in m["methods"].items():
            root = _root(name)
            for dim, cell in cells.items():
                if cell.get("mAP") is None and cell.get("reason"):
                    dims, _ = reasons.setdefault(root, ([], cell["reason"]))
                    if dim not in dims:
                        dims.append(dim)
                if cell.get("warning") and dim not in warned.setdefault(root, []):
                    warned[root].append(dim)
        for name, (dims, reason) in reasons.items():
            lines.append(f"  - {NA} {name} at D = {', '.join(dims)}: {reason}")
        if any(warned.values()):
            cells = "; ".join(f"{name} at D = {', '.join(dims)}" for name, dims in warned.items() if dims)
            lines.append(f"  - {WARN} whitening learned on fewer than 4D vectors (see whitening_note), "
                         f"poorly conditioned: {cells}")
    return lines


def _row_methods(results: dict[str, dict]) -> list[str]:
    """The methods in the order the results list them (the methods stage writes Table 1's order,
    then any method a user registered), then those only the paper reports: a method is never
    dropped, and the paper's rows are there even for datasets not run."""
    ours = [_root(name) for r in results.values() for name in r.get("methods", {})]
    return list(dict.fromkeys(ours + [method for method, _ in PAPER]))


def render_table(results: dict[str, dict]) -> str:
    """Markdown Table 1 for ``{dataset: results}`` (see the module docstring)."""
    columns = _columns(results)
    regional = set(REGIONAL).union(*((r.get("methods_info") or {}).get("regional", []) for r in results.values()))
    header = ["Method", "D"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * len(columns)) + "|"]
    for qe in (False, True):
        for method in _row_methods(results):
            label = LABELS.get(method, method) + (" + QE" if qe else "")
            for dim in _dims(results, method, qe):
                per_region = method in regional or any(method.startswith(f"{r}_") for r in regional)
                row = [label, f"{dim}M" if per_region else str(dim)]
                for _, kind, key in columns:
                    if kind == "paper":
                        value = PAPER.get((method, qe), {}).get(dim, {}).get(key)
                        row.append(NONE if value is None else f"{value:.3f}")
                    else:
                        row.append(_cell(results, key, method, dim, qe))
                lines.append("| " + " | ".join(row) + " |")
    title = ["# Table 1: mAP of the baselines and the paper's variants", "",
             "Ours: every method from the same feature maps (`stages/methods.py`); `<ds> full` = queries "
             "not cropped to their box, all their candidate regions used (the paper's OF); `<ds>+<set>` = "
             "the same with a distractor set added to the database (`distractors:`). "
             "(paper) = the published Table 1 of Jeong et al. (VGG19). "
             f"`{NA}` = D not learnable from the training vectors, `{WARN}` = whitening warning, "
             f"`{NONE}` = not reported / not run.", ""]
    return "\n".join(title + lines + ["", "Notes:", ""] + _notes(results)) + "\n"
