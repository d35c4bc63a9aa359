"""tools/stage_deps.py: each DVC stage declares exactly the project code it runs (issue 22, item 6)."""
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

spec = importlib.util.spec_from_file_location("stage_deps", REPO / "tools" / "stage_deps.py")
stage_deps = sys.modules["stage_deps"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_deps)


def test_every_stage_declares_exactly_the_code_it_runs():
    result = stage_deps.compare(REPO)
    text, n = stage_deps.report(result)
    assert n == 0, f"dvc.yaml's code deps are not those the stages run (fix: python tools/stage_deps.py --write):\n{text}"
    # the walk does reach into the package: a stage's list is more than its script
    assert len(stage_deps.code_deps(next(s for s in stage_deps.load_stages(REPO / "dvc.yaml")
                                         if s.name == "features"), REPO)) > 3


def make_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


# A small project: pkg/ (package with a sub-package), stages/run.py, and a module outside the project.
PROJECT = {
    "pkg/__init__.py": "",
    "pkg/a.py": """\
        import os
        import numpy as np
        from .b import f          # relative import
        def g():
            from pkg.sub import lazy   # function-level (lazy) import of a submodule through its package
            return lazy
        """,
    "pkg/b.py": """\
        from . import a           # a cycle: a imports b, b imports a
        def f():
            pass
        """,
    "pkg/unused.py": "x = 1\n",
    "pkg/sub/__init__.py": "from ..c import C   # two levels up\n",
    "pkg/sub/lazy.py": "",
    "pkg/sub/deep/__init__.py": "",
    "pkg/sub/deep/leaf.py": "",
    "pkg/c.py": "C = 1\n",
    "stages/helper.py": "import json\n",
    "stages/run.py": """\
        import sys
        import helper             # beside the script: first on sys.path
        from pkg import a
        if sys.argv:
            import pkg.sub.deep.leaf
        """,
    "other.py": "import pkg.unused\n",
}


def rel(paths, root):
    return sorted(p.relative_to(root.resolve()).as_posix() for p in paths)


def test_walk_follows_lazy_relative_and_package_imports_through_a_cycle(tmp_path):
    make_tree(tmp_path, PROJECT)
    got = rel(stage_deps.walk(tmp_path / "stages" / "run.py", tmp_path), tmp_path)
    assert got == ["pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/c.py",
                   "pkg/sub/__init__.py", "pkg/sub/deep/__init__.py", "pkg/sub/deep/leaf.py", "pkg/sub/lazy.py",
                   "stages/helper.py", "stages/run.py"]


def test_importing_a_module_runs_each_parent_package_init(tmp_path):
    make_tree(tmp_path, {"p/__init__.py": "", "p/q/__init__.py": "", "p/q/r.py": "", "s.py": "import p.q.r\n"})
    assert rel(stage_deps.walk(tmp_path / "s.py", tmp_path), tmp_path) == [
        "p/__init__.py", "p/q/__init__.py", "p/q/r.py", "s.py"]


def test_a_relative_import_beyond_the_top_package_is_an_error(tmp_path):
    make_tree(tmp_path, {"p/__init__.py": "", "p/m.py": "from ...x import y\n", "s.py": "import p.m\n"})
    with pytest.raises(stage_deps.StageDepsError, match=r"m\.py, line 1: relative import beyond"):
        stage_deps.walk(tmp_path / "s.py", tmp_path)


DVC_YAML = """\
# a comment at the top
stages:
  first:
    foreach: ${datasets}
    do:
      cmd: python stages/run.py --dataset ${item}
      deps:
        - stages/run.py
        - pkg/unused.py
        - data/${item}   # data: kept in place
        - features/${item}/x.h5
      params:
        - a
      outs:
        - out/${item}

  # the one at the end
  methods:
    cmd: >-
      python stages/helper.py
      --flag
    deps:
      - results
      - pkg/sub    # a package's folder: more than the code run
    outs:
      - y
"""


def run_tool(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "stage_deps.py"), *args, "--root", str(root)],
                          capture_output=True, text=True, timeout=60)


def test_check_names_gaps_and_extras_and_write_makes_the_lists_exact(tmp_path):
    make_tree(tmp_path, PROJECT)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    proc = run_tool(tmp_path, "--check")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert "first: 9 gaps, 1 extras" in lines and "  extra: pkg/unused.py" in lines
    assert "  gap:   pkg/sub/lazy.py" in lines and "  gap:   plugins" in lines  # methods loads plugins/
    assert lines[lines.index("methods: 2 gaps, 1 extras") + 3] == "  extra: pkg/sub"
    assert lines[-1] == "total: 11 gaps (10 distinct files), 2 extras, 2 stages"

    proc = run_tool(tmp_path, "--write")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["first: ok", "methods: ok", "total: 0 gaps (0 distinct files), 0 extras, 2 stages"]
    text = (tmp_path / "dvc.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["stages"]["first"]["do"]["deps"] == [
        "pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/c.py", "pkg/sub/__init__.py", "pkg/sub/deep/__init__.py",
        "pkg/sub/deep/leaf.py", "pkg/sub/lazy.py", "stages/helper.py", "stages/run.py",
        "data/${item}", "features/${item}/x.h5"]
    assert doc["stages"]["methods"]["deps"] == ["plugins", "stages/helper.py", "results"]
    # everything but the code entries is as it was: comments, the other keys, the blank line
    assert text.replace("".join(f"        - {d}\n" for d in doc["stages"]["first"]["do"]["deps"][:10]), "") \
        .replace("      - plugins\n      - stages/helper.py\n", "") == \
        DVC_YAML.replace("        - stages/run.py\n        - pkg/unused.py\n", "").replace(
            "      - pkg/sub    # a package's folder: more than the code run\n", "")
    # written lists are a fixed point
    assert run_tool(tmp_path, "--write").returncode == 0 and (tmp_path / "dvc.yaml").read_text() == text


def test_a_stage_whose_script_is_missing_is_named(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: python stages/nope.py\n")
    proc = run_tool(tmp_path, "--check")
    assert proc.returncode == 2 and "stage s: stages/nope.py (from its cmd) not found" in proc.stderr
