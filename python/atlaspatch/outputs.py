"""Where a run's outputs go: the same layout for the CLI's --output and the pipeline's outdir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def patches_dir(self) -> Path:
        return self.root / "patches"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def visualization_dir(self) -> Path:
        return self.root / "visualization"

    def h5(self, stem: str) -> Path:
        return self.patches_dir / f"{stem}.h5"

    def lock(self, stem: str) -> Path:
        return self.patches_dir / f"{stem}.lock"
