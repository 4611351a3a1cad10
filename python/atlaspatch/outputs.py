"""Where a run's outputs go: the same layout for the CLI's --output and the pipeline's outdir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


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

    def ensure_writable(self) -> None:
        """Refuse, once and up front, an output no slide could be written to (a file, a read-only place), instead of
        failing every slide with the same OS error. Creates nothing."""
        existing = self.patches_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(f"--output {self.root}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--output {self.root}: {existing} is not writable")
