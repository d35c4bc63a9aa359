"""Evaluation: official Oxford AP, revisitop mAP/mP@k, and the evaluate stage."""
import json
import subprocess
import sys

import numpy as np
import pytest

from rdfa.evaluation import (
    average_precision_oxford,
    check_ranks,
    mean_average_precision,
    precision_at_kappas,
    precision_recall_curve,
    revisited_map,
)
from rdfa.io.evaluation import EvaluationInputError, evaluate_files
from rdfa.io.groundtruth import oxford_query_prefixes, parse_oxford_style, read_name_list
from rdfa.metrics import non_numeric_leaves

# --------------------------------------------------------------------------- Oxford AP

def test_oxford_ap_hand_computed():
    # hit (recall .5, precision 1), miss, hit (recall 1, precision 2/3)
    expected = 0.5 * (1 + 1) / 2 + 0.5 * (0.5 + 2 / 3) / 2
    assert average_precision_oxford([0, 1, 2], [0, 2], []) == pytest.approx(expected)
    # the junk image is skipped: both positives at the top
    assert average_precision_oxford([0, 1, 2], [0, 2], [1]) == pytest.approx(1.0)


def test_oxford_ap_truncated_list_never_retrieves_missing_positives():
    assert average_precision_oxford([0], [0, 5], []) == pytest.approx(0.5)
    assert average_precision_oxford([3, 4], [0, 5], []) == 0.0


def test_oxford_ap_duplicate_positives_count_once():
    assert average_precision_oxford([0, 1, 2], [2, 2, 0], []) == average_precision_oxford([0, 1, 2], [0, 2], [])


def test_oxford_ap_without_positives_raises():
    with pytest.raises(ValueError, match="no positives"):
        average_precision_oxford([0, 1], [], [])


def test_precision_recall_curve_area_is_the_oxford_ap():
    rng = np.random.default_rng(0)
    ranked = rng.permutation(50)
    positives, junk = ranked[[0, 3, 7, 20, 41]], ranked[[2, 9]]
    recall, precision = precision_recall_curve(ranked, positives, junk)
    assert recall[0] == 0 and precision[0] == 1 and recall[-1] == pytest.approx(1.0)
    assert len(recall) == len(ranked) - len(junk) + 1
    assert np.trapezoid(precision, recall) == pytest.approx(average_precision_oxford(ranked, positives, junk))


@pytest.fixture(scope="module")
def oxford(shared_dir):
    ox = shared_dir / "datasets" / "oxford5k"
    gt_dir = ox / "gt_files_170407"
    gnd = parse_oxford_style(gt_dir, read_name_list(ox / "imlist.txt"))
    ref = json.loads((shared_dir / "reference" / "oxford5k_ap_cases.json").read_text())
    return gnd, oxford_query_prefixes(gt_dir), ref


def test_oxford_reference_cases(oxford):
    gnd, prefixes, ref = oxford
    position = {name: i for i, name in enumerate(gnd["imlist"])}
    assert len(ref["cases"]) == 25
    for case in ref["cases"]:
        entry = gnd["gnd"][prefixes.index(case["query"])]
        ranked = [position[ref["imlist"][i] + ".jpg"] for i in case["ranked"]]
        ap = average_precision_oxford(ranked, entry["ok"], entry["junk"])
        assert ap == pytest.approx(case["ap"], abs=1e-5), case["query"]


def test_mean_average_precision_matches_per_query_ap(oxford):
    gnd, prefixes, ref = oxford
    cases = ref["cases"][:5]
    sub = [gnd["gnd"][prefixes.index(c["query"])] for c in cases]
    mean_ap, aps = mean_average_precision([c["ranked"] for c in cases], sub)
    assert aps == pytest.approx([c["ap"] for c in cases], abs=1e-5)
    assert mean_ap == pytest.approx(np.mean([c["ap"] for c in cases]), abs=1e-5)


def test_mean_average_precision_skips_queries_without_positives():
    mean_ap, aps = mean_average_precision([[0, 1], [1, 0]], [{"ok": [1], "junk": []}, {"ok": [], "junk": []}])
    assert aps == [pytest.approx(0.25), None]
    assert mean_ap == pytest.approx(0.25)


# --------------------------------------------------------------------------- revisited

@pytest.fixture(scope="module")
def revisited_ref(shared_dir):
    return json.loads((shared_dir / "reference" / "revisited_map_cases.json").read_text())


@pytest.mark.parametrize("setup", ["easy", "medium", "hard"])
def test_revisited_reference(revisited_ref, setup):
    result = revisited_map(revisited_ref["ranks"], revisited_ref["gnd"], revisited_ref["kappas"])[setup]
    expected = revisited_ref["expected"][setup]
    assert [a is None for a in result["aps"]] == [a is None for a in expected["aps"]]
    assert [a for a in result["aps"] if a is not None] == pytest.approx(
        [a for a in expected["aps"] if a is not None], abs=1e-9)
    assert result["mAP"] == pytest.approx(expected["map"], abs=1e-9)
    assert list(result["mP@k"]) == ["1", "5", "10"]
    assert list(result["mP@k"].values()) == pytest.approx(expected["mp_at_k"], abs=1e-9)


def test_revisited_reference_has_an_empty_query(revisited_ref):
    # The reference exercises the "no positives" rule; keep it that way.
    assert None in revisited_ref["expected"]["easy"]["aps"]


def test_precision_at_kappas_caps_k_at_last_positive():
    # positives at 1-based ranks 1 and 3: P@1 = 1, P@5 -> k capped to 3 -> 2/3
    assert precision_at_kappas(np.array([0, 2]), [1, 5]) == pytest.approx([1.0, 2 / 3])
    assert precision_at_kappas(np.array([], dtype=int), [1, 5]).tolist() == [0.0, 0.0]


def test_check_ranks_rejects_bad_lists():
    with pytest.raises(ValueError, match="3 ranked lists for 2 queries"):
        check_ranks([[0], [1], [2]], 2, 5)
    with pytest.raises(ValueError, match=r"ranks\[1\] holds index 7, outside the 5"):
        check_ranks([[0], [7]], 2, 5)
    with pytest.raises(ValueError, match="more than once"):
        check_ranks([[0, 0]], 1, 5)
    with pytest.raises(ValueError, match="integer"):
        check_ranks([[0.5]], 1, 5)


# --------------------------------------------------------------------------- stage

ORIGINAL_GND = {"imlist": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "qimlist": ["q1.jpg", "q2.jpg"],
                "gnd": [{"ok": [0, 2], "junk": [1], "bbx": None},
                        {"ok": [3], "junk": [], "bbx": [0, 0, 5, 5]}]}
REVISITED_GND = {"imlist": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "qimlist": ["q1.jpg", "q2.jpg"],
                 "gnd": [{"easy": [0], "hard": [2], "junk": [1], "bbx": None},
                         {"easy": [], "hard": [3], "junk": [], "bbx": None}]}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _run(repo_dir, *args):
    return subprocess.run([sys.executable, str(repo_dir / "stages" / "evaluate.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=repo_dir, timeout=60)


def test_contract_mode_original(tmp_path, repo_dir):
    gnd = _write(tmp_path / "gnd.json", ORIGINAL_GND)
    ranks = _write(tmp_path / "ranks.json", [[0, 1, 2, 3], [0, 3]])
    proc = _run(repo_dir, "--gnd", gnd, "--ranks", ranks)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # q2: a miss (precision 0), then its one positive at rank 2: (0 + 1/2) / 2
    assert out["aps"] == pytest.approx([1.0, 0.25])
    assert out["mAP"] == pytest.approx(np.mean(out["aps"]))


def test_contract_mode_revisited_default(tmp_path, repo_dir):
    gnd = _write(tmp_path / "gnd.json", REVISITED_GND)
    ranks = _write(tmp_path / "ranks.json", [[2, 0, 1, 3], [3, 0]])
    proc = _run(repo_dir, "--gnd", gnd, "--ranks", ranks)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"easy", "medium", "hard"}
    assert out["easy"]["aps"] == [pytest.approx(1.0), None]   # hard image 2 is junk in Easy
    assert out["easy"]["mAP"] == pytest.approx(1.0)
    assert out["medium"]["aps"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert out["hard"]["aps"][0] == pytest.approx(1.0)        # easy image 0 is junk in Hard
    assert out["easy"]["mP@k"] == {"1": 1.0, "5": 1.0, "10": 1.0}


def test_contract_mode_refuses_revisited_on_original_gnd(tmp_path, repo_dir):
    gnd = _write(tmp_path / "gnd.json", ORIGINAL_GND)
    ranks = _write(tmp_path / "ranks.json", [[0], [3]])
    proc = _run(repo_dir, "--gnd", gnd, "--ranks", ranks, "--protocol", "revisited")
    assert proc.returncode != 0
    assert "gnd.json" in proc.stderr and "revisited" in proc.stderr


def test_stage_mode_writes_metrics_results_and_per_query(tmp_path, repo_dir):
    gnd = _write(tmp_path / "gnd.json", REVISITED_GND)
    ranks = _write(tmp_path / "ranks.json", [[1, 0, 2, 3], [0, 1, 2, 3]])
    ranks_qe = _write(tmp_path / "ranks_qe.json", [[2, 0, 1, 3], [3, 0, 1, 2]])
    info = _write(tmp_path / "info.json", {"backbone": "vgg16"})
    out, per_query = tmp_path / "metrics" / "ds.json", tmp_path / "pq.json"
    results_path = tmp_path / "results" / "ds.json"
    proc = _run(repo_dir, "--gnd", gnd, "--ranks", ranks, "--ranks-qe", ranks_qe, "--out", out,
                "--per-query-out", per_query, "--info", info, "--results", results_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    # the headline: numbers only, Easy/Medium/Hard flat enough for short DVC column names
    assert set(metrics) == {"mAP", "mAP_qe", "n_images", "n_queries", "n_scored", "easy", "medium", "hard"}
    assert metrics["n_images"] == 4 and metrics["n_queries"] == 2
    assert metrics["n_scored"] == 2                       # Medium: both queries have a positive
    # Medium: q1 positives {0, 2} after junk 1 -> AP 1; q2 positive 3 at rank 4 -> AP (0 + 1/4) / 2
    assert metrics["mAP"] == metrics["medium"]["mAP"] == pytest.approx((1.0 + 0.125) / 2)
    assert metrics["mAP_qe"] == metrics["medium"]["mAP_qe"] == pytest.approx(1.0)
    assert metrics["hard"]["mAP_qe"] == pytest.approx(1.0)
    assert set(metrics["easy"]) == {"mAP", "mAP_qe", "mP@1", "mP@5", "mP@10"}
    assert metrics["mAP"] == round(metrics["mAP"], 6)
    assert non_numeric_leaves(metrics) == []
    # the results: the same headline, and what explains it
    results = json.loads(results_path.read_text())
    assert {k: results[k] for k in metrics} == metrics
    assert results["protocol"] == "revisited"
    assert results["info"] == {"backbone": "vgg16"}
    assert set(results["qe"]["easy"]) == {"mAP", "mP@k"}
    records = json.loads(per_query.read_text())
    assert [r["query"] for r in records] == ["q1.jpg", "q2.jpg"]
    assert records[1]["ap_easy"] is None and records[1]["ap_qe"] == pytest.approx(1.0)
    assert records[0]["ap"] == pytest.approx(1.0) and records[1]["ap"] == pytest.approx(0.125)
    assert records[0]["ap_easy"] == pytest.approx(1.0) and metrics["easy"]["mAP"] == pytest.approx(1.0)


def test_stage_mode_original_via_main(tmp_path):
    gnd = _write(tmp_path / "gnd.json", ORIGINAL_GND)
    ranks = _write(tmp_path / "ranks.json", [[0, 1, 2, 3], [3, 0]])
    out = tmp_path / "m.json"
    metrics = evaluate_files(gnd, ranks, out_path=out, ranks_qe_path=ranks)
    assert json.loads(out.read_text()) == metrics
    assert metrics == {"mAP": 1.0, "mAP_qe": 1.0, "n_images": 4, "n_queries": 2, "n_scored": 2}


@pytest.mark.slow
def test_stage_mode_takes_a_training_set_without_queries_and_makes_up_no_map(tmp_path, repo_dir):
    gnd = _write(tmp_path / "gnd.json", {"imlist": ["a.jpg", "b.jpg"], "qimlist": [], "gnd": []})
    ranks = _write(tmp_path / "ranks.json", [])
    methods = _write(tmp_path / "methods.json", {"methods": {}, "info": {"queries": 0}})
    paths = {name: tmp_path / f"{name}.json" for name in ("metrics", "grid", "results", "per_query")}
    proc = _run(repo_dir, "--gnd", gnd, "--ranks", ranks, "--ranks-qe", ranks, "--out", paths["metrics"],
                "--methods", methods, "--methods-out", paths["grid"], "--results", paths["results"],
                "--per-query-out", paths["per_query"])
    assert proc.returncode == 0, proc.stderr
    assert f"{tmp_path.name}: no queries (a training set)" in proc.stderr
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics == {"mAP": None, "mAP_qe": None, "n_images": 2, "n_queries": 0, "n_scored": 0}
    assert json.loads(paths["grid"].read_text()) == {"methods": {}}
    assert json.loads(paths["per_query"].read_text()) == []
    results = json.loads(paths["results"].read_text())
    assert results["protocol"] is None and "training set" in results["note"]
    # Contract mode still wants queries: there is nothing to evaluate.
    proc = _run(repo_dir, "--gnd", gnd, "--ranks", ranks)
    assert proc.returncode == 2 and "'qimlist' is empty" in proc.stderr


def test_n_scored_counts_the_queries_with_a_positive(tmp_path):
    gnd = dict(ORIGINAL_GND, gnd=[{"ok": [0], "junk": [], "bbx": None}, {"ok": [], "junk": [1], "bbx": None}])
    gnd = _write(tmp_path / "gnd.json", gnd)
    ranks = _write(tmp_path / "ranks.json", [[0, 1], [1, 0]])
    metrics = evaluate_files(gnd, ranks, out_path=tmp_path / "m.json")
    assert metrics["n_queries"] == 2 and metrics["n_scored"] == 1 and metrics["mAP"] == 1.0


def test_non_numeric_leaves_names_every_string():
    tree = {"a": 1, "b": {"c": None, "d": "why", "e": {"f": 0.5, "g": [1]}}, "h": True}
    assert non_numeric_leaves(tree) == ["b.d", "b.e.g", "h"]


@pytest.mark.parametrize("ranks, message", [
    ([[0, 1, 9], [3]], "index 9, outside the 4"),
    ([[0, 1]], "1 ranked lists for 2 queries"),
])
def test_stage_mode_bad_ranks_write_nothing(tmp_path, repo_dir, ranks, message):
    gnd = _write(tmp_path / "gnd.json", ORIGINAL_GND)
    good = _write(tmp_path / "good.json", [[0], [3]])
    bad = _write(tmp_path / "bad_ranks.json", ranks)
    out, per_query = tmp_path / "out.json", tmp_path / "pq.json"
    # the bad file is the QE one: the good main ranks must not lead to a partial write
    proc = _run(repo_dir, "--gnd", gnd, "--ranks", good, "--ranks-qe", bad, "--out", out,
                "--per-query-out", per_query)
    assert proc.returncode != 0
    assert "bad_ranks.json" in proc.stderr and message in proc.stderr
    assert not out.exists() and not per_query.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_ranks.json", "gnd.json", "good.json"]


def test_stage_mode_bad_info_writes_nothing(tmp_path):
    gnd = _write(tmp_path / "gnd.json", ORIGINAL_GND)
    ranks = _write(tmp_path / "ranks.json", [[0], [3]])
    info = _write(tmp_path / "info.json", [1, 2])
    out = tmp_path / "out.json"
    with pytest.raises(EvaluationInputError, match="info.json.*JSON object"):
        evaluate_files(gnd, ranks, out_path=out, info_path=info)
    assert not out.exists()


def test_membership_lookup_is_isin():
    """The AP walk's membership test (a lookup table for small indices) answers as np.isin does,
    for permutations, repeats, negative and outsized indices and empty sets."""
    from rdfa.evaluation import _member

    rng = np.random.default_rng(0)
    cases = [(rng.permutation(500), rng.choice(600, 40)), (rng.integers(0, 50, 300), rng.integers(0, 50, 10)),
             (np.array([3, -1, 7, 2 ** 40]), np.array([2 ** 40, -1])), (np.arange(5), np.empty(0, dtype=np.int64)),
             (np.empty(0, dtype=np.int64), np.arange(3))]
    for values, members in cases:
        np.testing.assert_array_equal(_member(values, members), np.isin(values, members))
