import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Read-only material the project cannot download; it lies beside the checkout.
SHARED = Path(os.environ.get("RDFA_SHARED", REPO.parent / "shared"))


def load_bench(name: str):
    """``bench/<name>.py`` as a module (the bench scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} not found: tests read the read-only shared/ folder beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory):
    """``dvc repro`` of the reduced synth (tests/test_pipeline.py's REDUCED, the local executor), once per
    session: ``(root, dvc's output, pristine)``. ``root`` is never changed: a test that changes parameters or
    outputs works on its own copy (tests/test_pipeline.py's ``fresh_project``); ``pristine`` is a copy of it
    taken right after the run (no .dvc, .git or reports), to compare with."""
    from test_pipeline import REDUCED, copy_project, dvc, set_params

    root = tmp_path_factory.mktemp("project")
    copy_project(root)
    set_params(root, REDUCED)
    out = dvc(root, "repro")
    pristine = tmp_path_factory.mktemp("pristine") / "project"
    shutil.copytree(root, pristine, symlinks=True, ignore=shutil.ignore_patterns(".dvc", ".git", "reports"))
    return root, out, pristine


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium page (tests/browser.py), or a skip saying why there is none."""
    from browser import Page, chromium_path

    if chromium_path() is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it "
                    "when it runs as root)")
    with Page() as page:
        yield page
