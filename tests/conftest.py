"""Shared fixtures: where the real survey data lives (../shared/data from the project root)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# fnet-run --backend auto remembers its measured choice under $FNET_CACHE_DIR: keep the tests' out of ~/.cache
os.environ.setdefault("FNET_CACHE_DIR", tempfile.mkdtemp(prefix="fnet-test-cache-"))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def require_shared(*parts: str) -> Path:
    """Path inside ../shared/data, or skip the test with a reason when the folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real survey data not found at {path} (CI always has ../shared/data)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real survey data folder."""
    return require_shared()
