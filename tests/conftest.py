"""Shared pytest set-up.

The real powermetrics captures are part of the repository, in ``tests/data/powermetrics``
(SOURCES.md there says where each came from), so a clone with nothing beside it passes.
"""
from __future__ import annotations

from pathlib import Path

import pytest

POWERMETRICS_FIXTURES = Path(__file__).resolve().parent / "data" / "powermetrics"


@pytest.fixture(scope="session")
def powermetrics_fixtures() -> Path:
    """Directory of the real powermetrics captures (see SOURCES.md there)."""
    if not POWERMETRICS_FIXTURES.is_dir():
        pytest.fail(f"powermetrics captures not found at {POWERMETRICS_FIXTURES} (tests/data/ is part of the "
                    "repository: is the checkout complete?)")
    return POWERMETRICS_FIXTURES
