"""bench/index.py at a tiny size: the table's columns and rows, the goals, the JSON rows, the scratch folder gone."""
import json

from conftest import load_bench


def load(repo_dir):
    return load_bench("index")


def test_bench_index_prints_a_table_of_every_method(repo_dir, tmp_path, capsys):
    bench = load(repo_dir)
    out = tmp_path / "rows.json"
    assert bench.main(["--images", "2000", "--queries", "5", "--nlist", "16", "--m", "16", "--train-size", "4000",
                       "--nprobe", "4", "8", "--gen-images", "300", "--tmp", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert lines[0] == ("| images | regions | method | build s | bytes/image | 5 queries s | ms/query (median) | "
                        "ms/query (p95) | recall@100 |")
    methods = [line.split(" | ")[2] for line in lines[2:]]
    assert methods == ["exact", "ivfpq nlist=16 m=16x8 nprobe=4 shortlist=2000",
                       "ivfpq nlist=16 m=16x8 nprobe=8 shortlist=2000", "flat shortlist=2000"]
    assert all(line.startswith("| 2000 | 16000 | ") for line in lines[2:])
    assert "| 8192 |" in lines[2] and lines[2].endswith("| 1.000 |")  # exact: the stored float16 rows only
    assert "FAISS at 2000 images (goal < 20 ms a query at recall@100 >= 0.95)" in printed
    records = json.loads(out.read_text())
    assert [r["method"] for r in records] == methods and all(0 <= r["recall@100"] <= 1 for r in records)
    assert records[-1]["recall@100"] == 1.0  # flat with a shortlist of 2000 regions: every image of a query's top 100
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]  # the database and index files deleted
