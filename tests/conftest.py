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
