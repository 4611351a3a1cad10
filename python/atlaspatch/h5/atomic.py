"""Crash-safe H5 output: build a temp file beside the target, then rename it into place.

A process killed at any point leaves either the previous file or the new one, never a half-written file
under the final name. Leftover temp files carry a recognisable prefix and are removed by the next run that
holds the slide's lock.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

TEMP_MARK = ".tmp."


def temp_path_for(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARK}{uuid.uuid4().hex}")


def _is_temp_of(name: str, final: Path) -> bool:
    """Exactly `.<final name>.tmp.<uuid hex>`: compared as text, because a stem may hold glob characters
    ("a[1]") or be a prefix of another slide's ("a" and "a.h5")."""
    prefix = f".{final.name}{TEMP_MARK}"
    suffix = name[len(prefix) :]
    return name.startswith(prefix) and len(suffix) == 32 and all(c in "0123456789abcdef" for c in suffix)


def leftover_temps(final: Path) -> list[Path]:
    if not final.parent.is_dir():
        return []
    return sorted(path for path in final.parent.iterdir() if _is_temp_of(path.name, final))


def remove_leftover_temps(final: Path) -> None:
    """Only call while holding the slide's lock: then every such temp belongs to a dead run."""
    for path in leftover_temps(final):
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_h5(final: Path, start_from: Path | None = None) -> Iterator[h5py.File]:
    """Yield an H5 opened for writing that becomes `final` only when the block finishes without error.

    `start_from` (possibly `final` itself, or a staged input) is copied first and never modified.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(final)
    try:
        if start_from is not None:
            shutil.copyfile(start_from, temp)
        with h5py.File(temp, "a" if start_from is not None else "w") as handle:
            yield handle
        _fsync(temp)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
