"""Finding slides in a path, and per-slide mpp overrides."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .reader import SUPPORTED_EXTENSIONS, slide_stem

DICOM_EXTENSIONS = (".dcm", ".dicom")


@dataclass(frozen=True)
class SlideSource:
    """A slide to process: what to open and the stem its outputs are named after."""

    path: Path
    stem: str


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in SUPPORTED_EXTENSIONS


def _as_source(path: Path) -> SlideSource:
    if path.is_file() and path.suffix.lower() in DICOM_EXTENSIONS:
        return SlideSource(path.parent, slide_stem(path.parent))
    return SlideSource(path, slide_stem(path))


def _walk(folder: Path) -> Iterator[Path]:
    for root, _dirs, names in os.walk(folder, followlinks=True):
        for name in names:
            yield Path(root) / name


def _scan(folder: Path, recursive: bool) -> list[Path]:
    entries = _walk(folder) if recursive else folder.iterdir()
    files = [p for p in entries if _is_candidate(p)]
    if not recursive:
        for sub in folder.iterdir():
            if sub.is_dir() and any(_is_candidate(p) and p.suffix.lower() in DICOM_EXTENSIONS for p in sub.iterdir()):
                files.extend(p for p in sub.iterdir() if p.suffix.lower() in DICOM_EXTENSIONS)
    return files


def find_slides(path: str | Path, recursive: bool = False) -> list[SlideSource]:
    """Slides under `path`, sorted; a DICOM series folder counts once. Stems must be unique in a run."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    if path.is_file():
        return [_as_source(path)]
    unique = {_as_source(p) for p in _scan(path, recursive)}
    sources = sorted(unique, key=lambda s: str(s.path))
    if not sources:
        raise ConfigError(f"{path}: no slides found (extensions: {' '.join(SUPPORTED_EXTENSIONS)})")
    _refuse_stem_collisions(sources)
    return sources


def _refuse_stem_collisions(sources: list[SlideSource]) -> None:
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for source in sources:
        by_stem[source.stem].append(source.path)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        listing = "; ".join(f"{stem}: {', '.join(map(str, paths))}" for stem, paths in sorted(clashes.items()))
        raise ConfigError(f"slides with the same stem would write the same H5 ({listing}); rename or split the run")


def read_mpp_csv(path: str | Path) -> dict[str, float]:
    """`wsi,mpp` rows keyed by slide stem (a `wsi` given as a file name or path matches by its stem)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "wsi" not in fields or "mpp" not in fields:
                raise ConfigError(f"mpp CSV {path}: needs a header with columns wsi,mpp (found: {','.join(fields)})")
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as exc:
        raise ConfigError(f"mpp CSV {path}: {exc.strerror or exc}") from None
    overrides: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        if not row["wsi"] and not row["mpp"]:
            continue
        try:
            mpp = float(row["mpp"])
        except ValueError:
            raise ConfigError(f"mpp CSV {path} line {line}: mpp {row['mpp']!r} is not a number") from None
        if not row["wsi"] or not mpp > 0:
            raise ConfigError(f"mpp CSV {path} line {line}: needs a slide name and a positive mpp")
        name = Path(row["wsi"]).name
        for key in {name, Path(name).stem}:
            overrides[key] = mpp
    if not overrides:
        raise ConfigError(f"mpp CSV {path}: no rows")
    return overrides


def mpp_override_for(stem: str, overrides: dict[str, float] | None) -> float | None:
    return (overrides or {}).get(stem)


def unmatched_mpp_rows(sources: list[SlideSource], overrides: dict[str, float] | None) -> list[str]:
    """Slide names in an mpp CSV that no slide of this run has (a typo there would silently not apply)."""
    stems = {source.stem for source in sources}
    unmatched = [key for key in overrides or {} if key not in stems and Path(key).stem not in stems]
    return sorted(key for key in unmatched if not any(other != key and Path(other).stem == key for other in unmatched))
