"""Table 1 (rdfa.table, stages/table.py) on a small results fixture, and the evaluation's --methods."""
import json
import subprocess
import sys

import pytest

from rdfa.io.evaluation import EvaluationInputError, evaluate_files
from rdfa.io.results import TableError, check_training_sets, load_results
from rdfa.table import render_table


def cells(values, dims=(128, 256, 512)):
    out = {}
    for dim, value in zip(dims, values):
        if value is None:
            out[str(dim)] = {"mAP": None, "mAP_qe": None, "reason": f"methods.D={dim} is too large"}
        else:
            out[str(dim)] = {"mAP": value, "mAP_qe": value + 0.05}
    return out


@pytest.fixture
def results():
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


def test_columns_follow_the_datasets_with_paper_columns_beside(results):
    header, _, _ = rows_of(render_table(results))
    assert header == ["Method", "D", "synth", "synth full", "oxford5k", "Oxford (paper)",
                      "OF (paper)", "Paris (paper)", "Holidays (paper)"]


def test_cells_ours_paper_na_and_warnings(results):
    _, rows, _ = rows_of(render_table(results))
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


def test_qe_rows_come_below(results):
    _, rows, lines = rows_of(render_table(results))
    assert rows[("O2_R (proposed) + QE", "512M")]["synth"] == "0.448"
    assert rows[("O2_R (proposed) + QE", "512M")]["Oxford (paper)"] == "0.816"
    assert rows[("CroW [5] + QE", "256")]["Oxford (paper)"] == "0.692"
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    first_qe = next(i for i, label in enumerate(labels) if label.endswith("+ QE"))
    assert all(label.endswith("+ QE") for label in labels[first_qe:])
    assert not any(label.endswith("+ QE") for label in labels[:first_qe])


def test_notes_name_the_whitening_and_the_reasons(results):
    text = render_table(results)
    assert "synth: whitening learned on its own database" in text
    assert "oxford5k: whitening learned on the database of paris6k" in text
    assert "n/a MAC at D = 256, 512: methods.D=256 is too large" in text
    assert "† whitening" in text and "MAC at D = 128" in text


def test_methods_beyond_table_1_get_rows_of_their_own(results):
    # variants added to the methods stage (e.g. another whitening option) are never dropped
    results["synth"]["methods"]["O2_R+shrink"] = cells([0.5, 0.45, None])
    results["synth"]["methods"]["O2_R+shrink_full"] = cells([0.55, 0.5, None])
    header, rows, lines = rows_of(render_table(results))
    assert rows[("O2_R+shrink", "128")]["synth"] == "0.500"
    assert rows[("O2_R+shrink", "128")]["synth full"] == "0.550"
    assert rows[("O2_R+shrink", "512")]["synth"] == "n/a"
    assert rows[("O2_R+shrink + QE", "256")]["synth"] == "0.500"
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels.index("O2_R+shrink") > labels.index("O2_R (proposed)")   # after the paper's methods


def test_a_users_regional_method_gets_its_d_per_region(results):
    # the methods stage lists every regional method (a plugin's too) in its info: "128M", as O2_R
    results["synth"]["methods"]["MyRegions"] = cells([0.5, 0.45, 0.4])
    results["synth"]["methods"]["MyGlobal"] = cells([0.3, None, None])
    results["synth"]["methods_info"]["regional"] = ["O1_R", "O2_R", "MyRegions"]
    _, rows, _ = rows_of(render_table(results))
    assert rows[("MyRegions", "128M")]["synth"] == "0.500" and ("MyRegions", "128") not in rows
    assert rows[("MyGlobal", "128")]["synth"] == "0.300"
    assert ("O2_R (proposed)", "512M") in rows


@pytest.mark.slow
def test_the_stage_writes_the_table_and_names_a_missing_file(tmp_path, results, repo_dir):
    (tmp_path / "results").mkdir()
    for ds, r in results.items():
        (tmp_path / "results" / f"{ds}.json").write_text(json.dumps(r))
    params = tmp_path / "params.yaml"
    params.write_text("datasets: [synth, oxford5k]\n")
    out = tmp_path / "reports" / "table.md"

    def run():
        return subprocess.run([sys.executable, str(repo_dir / "stages" / "table.py"), "--params", str(params),
                               "--results-dir", str(tmp_path / "results"), "--out", str(out)],
                              capture_output=True, text=True, timeout=120)

    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == render_table(results)
    params.write_text("datasets: [synth, paris6k]\n")
    proc = run()
    assert proc.returncode == 2 and "paris6k.json: results file not found (run the pipeline on paris6k)" in proc.stderr
    with pytest.raises(TableError, match="paris6k.json"):
        load_results(tmp_path / "results", ["synth", "paris6k"])


def test_rows_follow_the_results_order_then_the_papers_methods(results):
    """The methods stage writes Table 1's order, then the methods a user registered (plugins/): the
    table keeps that order, whatever the names; the methods only the paper reports come after."""
    mac = results["synth"]["methods"].pop("MAC")
    results["synth"]["methods"] = {"MAC": mac, "MAC2": cells([0.4231, None, None]), **results["synth"]["methods"]}
    _, rows, lines = rows_of(render_table(results))
    labels = list(dict.fromkeys(line.split("|")[1].strip() for line in lines[2:]))
    assert labels[:6] == ["MAC", "MAC2", "O2_R (proposed)", "CroW [5]", "SPoC [1]", "R-MAC [6]"]
    assert rows[("MAC2", "128")]["synth"] == "0.423" and rows[("MAC2", "256")]["synth"] == "n/a"
    assert rows[("MAC2 + QE", "128")]["synth"] == "0.473"


def test_a_training_set_gets_a_line_and_no_column(results):
    results["oxford5k"]["methods_info"]["whitening_learned_on"] = "paris6k"
    results["paris6k"] = {"mAP": None, "mAP_qe": None, "n_images": 6392, "n_queries": 0, "n_scored": 0,
                          "methods": {}, "methods_info": {"queries": 0, "whitening_learned_on": "paris6k"}}
    text = render_table(results)
    header, _, _ = rows_of(text)
    assert "paris6k" not in header and "Paris (paper)" in header  # the paper's column stays, as for any dataset not run
    assert "- paris6k: no queries, a training set (no column): its database learns the whitening of oxford5k." in text


def test_a_whitening_learned_on_a_changed_training_set_is_refused_naming_both(tmp_path, results):
    results["oxford5k"]["info"] = {"whitening_learned_on": "paris6k", "whitening_train_digest": "a" * 64}
    results["paris6k"] = {"n_queries": 0, "methods": {}, "info": {"whitening_learned_on": "paris6k",
                                                                  "whitening_train_digest": "a" * 64}}
    check_training_sets(results, tmp_path)
    results["paris6k"]["info"]["whitening_train_digest"] = "b" * 64
    with pytest.raises(TableError, match=r"oxford5k's whitening was learned on paris6k's descriptors as they "
                       r"were \(digest a{12}\), but paris6k's have changed since .*`dvc repro -s -f pca@oxford5k"):
        check_training_sets(results, tmp_path)
    del results["oxford5k"]["info"]["whitening_train_digest"]  # results of an older run: not checked
    check_training_sets(results, tmp_path)


def test_evaluate_splits_methods_into_metrics_and_results(tmp_path):
    gnd = tmp_path / "gnd.json"
    gnd.write_text(json.dumps({"imlist": ["a", "b", "c"], "qimlist": ["q"],
                               "gnd": [{"ok": [1], "junk": [], "bbx": None}]}))
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps([[1, 0, 2]]))
    methods = tmp_path / "methods.json"
    grid = {"MAC": cells([0.1234567, None]), "R-MAC+G": cells([0.2, 0.3])}
    grid["MAC"]["128"]["warning"] = "poorly conditioned"
    grid["R-MAC+G"]["128"]["n_train"] = 240          # any other field explains: results only
    info = {"whitening_learned_on": "x", "query_regions": {"q": "all"}}
    methods.write_text(json.dumps({"methods": grid, "info": info}))
    out, methods_out, results_path = tmp_path / "m.json", tmp_path / "m_methods.json", tmp_path / "r.json"
    metrics = evaluate_files(gnd, ranks, out_path=out, methods_path=methods, methods_out=methods_out,
                             results_path=results_path)
    assert metrics == {"mAP": 1.0, "n_images": 3, "n_queries": 1, "n_scored": 1}
    assert json.loads(out.read_text()) == metrics
    assert json.loads(methods_out.read_text()) == {"methods": {
        "MAC": {"128": {"mAP": 0.123457, "mAP_qe": 0.173457}, "256": {"mAP": None, "mAP_qe": None}},
        "R-MAC+G": {"128": {"mAP": 0.2, "mAP_qe": 0.25}, "256": {"mAP": 0.3, "mAP_qe": 0.35}}}}
    results = json.loads(results_path.read_text())
    assert results["protocol"] == "original" and results["mAP"] == 1.0
    assert results["methods"]["MAC"]["256"]["reason"] == "methods.D=256 is too large"
    assert results["methods"]["MAC"]["128"]["warning"] == "poorly conditioned"
    assert results["methods"]["R-MAC+G"]["128"]["n_train"] == 240
    assert results["methods_info"] == info
    # the table stage reads exactly this file
    assert "n/a MAC at D = 256: methods.D=256 is too large" in render_table({"toy": results})


@pytest.mark.parametrize("cell, message", [
    ({"128": {"mAP": 0.1}}, "mAP_qe"),
    ({"128": {"mAP": "0.1", "mAP_qe": None}}, r"methods\['MAC'\]\['128'\]\['mAP'\] must be a number"),
])
def test_evaluate_refuses_a_bad_methods_file(tmp_path, cell, message):
    gnd = tmp_path / "gnd.json"
    gnd.write_text(json.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"ok": [0], "junk": [], "bbx": None}]}))
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps([[0]]))
    methods = tmp_path / "methods.json"
    methods.write_text(json.dumps({"methods": {"MAC": cell}}))
    out = tmp_path / "m.json"
    with pytest.raises(EvaluationInputError, match=message):
        evaluate_files(gnd, ranks, out_path=out, methods_path=methods, methods_out=tmp_path / "g.json")
    assert not out.exists()
    with pytest.raises(EvaluationInputError, match="need --out"):
        evaluate_files(gnd, ranks, methods_path=methods)
    with pytest.raises(EvaluationInputError, match="--methods-out needs --methods"):
        evaluate_files(gnd, ranks, out_path=out, methods_out=tmp_path / "g.json")
