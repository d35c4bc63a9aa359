"""Table 1 generator (stages/table.py) on a small metrics fixture, and evaluate.py --methods."""
import json

import pytest

from stages import evaluate as evaluate_stage
from stages import table


def cells(values, dims=(128, 256, 512)):
    out = {}
    for dim, value in zip(dims, values):
        if value is None:
            out[str(dim)] = {"mAP": None, "mAP_qe": None, "reason": f"methods.D={dim} is too large"}
        else:
            out[str(dim)] = {"mAP": value, "mAP_qe": value + 0.05}
    return out


@pytest.fixture
def metrics():
    synth = {"mAP": 0.4, "methods": {
        "MAC": cells([0.4231, None, None]),
        "O2_R": cells([0.6176, 0.5086, 0.3983]),
        "O2_R_full": cells([0.52, 0.44, 0.405]),
    }, "methods_info": {"whitening_learned_on": "synth", "protocol": "original", "n_qe": 10}}
    synth["methods"]["MAC"]["128"]["warning"] = "PCA-whitening to D=128 learned on only 240 descriptors"
    oxford = {"mAP": 0.7, "methods": {
        "CroW": cells([0.6, 0.65, 0.7]),
        "O2_R": cells([0.68, 0.72, 0.74]),
    }, "methods_info": {"whitening_learned_on": "paris6k", "protocol": "original", "n_qe": 10}}
    return {"synth": synth, "oxford5k": oxford}


def rows_of(text):
    """{(method label, D): [cells]} and the header of the Markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        parts = [c.strip() for c in line.strip("|").split("|")]
        rows[(parts[0], parts[1])] = dict(zip(header[2:], parts[2:]))
    return header, rows, lines


def test_columns_follow_the_datasets_with_paper_columns_beside(metrics):
    header, _, _ = rows_of(table.render_table(metrics))
    assert header == ["Method", "D", "synth", "synth full", "oxford5k", "Oxford (paper)",
                      "OF (paper)", "Paris (paper)", "Holidays (paper)"]


def test_cells_ours_paper_na_and_warnings(metrics):
    _, rows, _ = rows_of(table.render_table(metrics))
    assert rows[("O2_R (proposed)", "512M")] == {
        "synth": "0.398", "synth full": "0.405", "oxford5k": "0.740", "Oxford (paper)": "0.741",
        "OF (paper)": "0.730", "Paris (paper)": "0.802", "Holidays (paper)": "0.886"}
    assert rows[("CroW [5]", "512")]["Oxford (paper)"] == "0.682"
    assert rows[("CroW [5]", "512")]["Paris (paper)"] == "0.796"
    assert rows[("CroW [5]", "512")]["Holidays (paper)"] == "0.849"
    assert rows[("CroW [5]", "512")]["synth"] == "—"  # not run on synth
    assert rows[("MAC", "128")]["synth"] == "0.423†"
    assert rows[("MAC", "256")]["synth"] == "n/a"
    assert rows[("MAC", "256")]["oxford5k"] == "—"
    assert rows[("SPoC [1]", "256")]["Oxford (paper)"] == "0.531"  # paper-only row still shown
    assert rows[("SPoC [1]", "256")]["OF (paper)"] == "0.589"


def test_qe_rows_come_below(metrics):
    _, rows, lines = rows_of(table.render_table(metrics))
    assert rows[("O2_R (proposed) + QE", "512M")]["synth"] == "0.448"
    assert rows[("O2_R (proposed) + QE", "512M")]["Oxford (paper)"] == "0.816"
    assert rows[("CroW [5] + QE", "256")]["Oxford (paper)"] == "0.692"
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    first_qe = next(i for i, label in enumerate(labels) if label.endswith("+ QE"))
    assert all(label.endswith("+ QE") for label in labels[first_qe:])
    assert not any(label.endswith("+ QE") for label in labels[:first_qe])


def test_notes_name_the_whitening_and_the_reasons(metrics):
    text = table.render_table(metrics)
    assert "synth: whitening learned on its own database" in text
    assert "oxford5k: whitening learned on the database of paris6k" in text
    assert "n/a MAC at D = 256, 512: methods.D=256 is too large" in text
    assert "† whitening" in text and "MAC at D = 128" in text


def test_main_writes_the_table_and_names_a_missing_file(tmp_path, metrics):
    (tmp_path / "metrics").mkdir()
    for ds, m in metrics.items():
        (tmp_path / "metrics" / f"{ds}.json").write_text(json.dumps(m))
    params = tmp_path / "params.yaml"
    params.write_text("datasets: [synth, oxford5k]\n")
    out = tmp_path / "reports" / "table.md"
    assert table.cli(["--params", str(params), "--metrics-dir", str(tmp_path / "metrics"), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Table 1")
    params.write_text("datasets: [synth, paris6k]\n")
    with pytest.raises(table.TableError, match="paris6k.json"):
        table.main(params, tmp_path / "metrics", out)


def test_evaluate_merges_methods_into_the_metrics(tmp_path):
    gnd = tmp_path / "gnd.json"
    gnd.write_text(json.dumps({"imlist": ["a", "b", "c"], "qimlist": ["q"],
                               "gnd": [{"ok": [1], "junk": [], "bbx": None}]}))
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps([[1, 0, 2]]))
    methods = tmp_path / "methods.json"
    methods.write_text(json.dumps({"methods": {"MAC": cells([0.1234567, None])},
                                   "info": {"whitening_learned_on": "x"}}))
    out = tmp_path / "metrics.json"
    metrics = evaluate_stage.main(gnd, ranks, out_path=out, methods_path=methods)
    assert metrics["mAP"] == 1.0
    assert metrics["methods"]["MAC"]["128"]["mAP"] == 0.123457
    assert metrics["methods"]["MAC"]["256"]["mAP"] is None
    assert metrics["methods_info"] == {"whitening_learned_on": "x"}
    assert json.loads(out.read_text()) == metrics
    methods.write_text(json.dumps({"methods": {"MAC": {"128": {"mAP": 0.1}}}}))
    with pytest.raises(evaluate_stage.EvaluationInputError, match="mAP_qe"):
        evaluate_stage.main(gnd, ranks, out_path=out, methods_path=methods)
    with pytest.raises(evaluate_stage.EvaluationInputError, match="--methods need --out"):
        evaluate_stage.main(gnd, ranks, methods_path=methods)
