import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Read-only material the project cannot download; it lies beside the checkout.
SHARED = Path(os.environ.get("RDFA_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} not found: tests read the read-only shared/ folder beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium page (tests/browser.py), or a skip saying why there is none."""
    from browser import Page, chromium_path

    if chromium_path() is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it "
                    "when it runs as root)")
    with Page() as page:
        yield page
