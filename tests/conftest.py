"""Shared pytest set-up.

The powermetrics captures live outside the repository, in ``../shared/fixtures``
(CI clones the repository with ``shared/`` beside it).
"""
from __future__ import annotations

from pathlib import Path

import pytest

POWERMETRICS_FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures" / "powermetrics"


@pytest.fixture(scope="session")
def powermetrics_fixtures() -> Path:
    """Directory of the real powermetrics captures (see SOURCES.md there)."""
    if not POWERMETRICS_FIXTURES.is_dir():
        pytest.fail(f"powermetrics captures not found at {POWERMETRICS_FIXTURES.resolve()} "
                    "(clone the repository with shared/ beside it)")
    return POWERMETRICS_FIXTURES
