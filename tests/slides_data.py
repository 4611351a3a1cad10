"""Where the tests find real slides: $ATLASPATCH_TEST_DATA, else ../shared/data/slides beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"


def slides_dir() -> Path:
    value = os.environ.get("ATLASPATCH_TEST_DATA", "").strip()
    return Path(value).expanduser() if value else SHARED_SLIDES


def slide_path(name: str) -> Path:
    """A test slide by file name; skips the test (saying where it looked) when it is not available."""
    path = slides_dir() / name
    if not path.exists():
        pytest.skip(f"test slide {name} not found in {slides_dir()} (set ATLASPATCH_TEST_DATA)")
    return path
