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
    """A slide by its name; a dangling link counts, so that the run reports it instead of skipping it."""
    if path.name.startswith(".") or path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def _as_source(path: Path) -> SlideSource:
    if path.suffix.lower() in DICOM_EXTENSIONS and not path.is_dir():  # a file of the series, or a dangling link
        return SlideSource(path.parent, slide_stem(path.parent))
    return SlideSource(path, slide_stem(path))


def _folder_id(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _walk(folder: Path, skip: Path | None) -> Iterator[Path]:
    """Every file below `folder`, following links to folders but entering each folder once (a link back up the
    tree would loop forever; an alias would list its slides twice), and never `skip` (the run's own output)."""
    skipped = _folder_id(skip) if skip is not None else None
    seen = {_folder_id(folder)}
    for root, dirs, names in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(root, d)), d)):  # real folders first
            identity = _folder_id(Path(root) / name)
            if identity is not None and identity not in seen and identity != skipped:
                seen.add(identity)
                kept.append(name)
        dirs[:] = kept
        for name in names:
            yield Path(root) / name


def _scan(folder: Path, recursive: bool, skip: Path | None) -> list[Path]:
    entries = _walk(folder, skip) if recursive else folder.iterdir()
    files = [p for p in entries if _is_candidate(p)]
    if not recursive:
        skipped = _folder_id(skip) if skip is not None else None
        for sub in folder.iterdir():
            if not sub.is_dir() or _folder_id(sub) == skipped:
                continue
            if any(_is_candidate(p) and p.suffix.lower() in DICOM_EXTENSIONS for p in sub.iterdir()):
                files.extend(p for p in sub.iterdir() if p.suffix.lower() in DICOM_EXTENSIONS)
    return files


def _one_per_file(sources: set[SlideSource]) -> list[SlideSource]:
    """Sorted, with one slide reached by several paths under the same stem (links) kept once."""
    kept: dict[tuple[str, str], SlideSource] = {}
    for source in sorted(sources, key=lambda s: str(s.path)):
        kept.setdefault((source.stem, os.path.realpath(source.path)), source)
    return sorted(kept.values(), key=lambda s: str(s.path))


def find_slides(path: str | Path, recursive: bool = False, output: Path | None = None) -> list[SlideSource]:
    """Slides under `path`, sorted; a DICOM series folder counts once; `output` (the run's output folder, which
    may lie inside `path`) is never searched. Stems must be unique in a run."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    if path.is_file():
        return [_as_source(path)]
    sources = _one_per_file({_as_source(p) for p in _scan(path, recursive, output)})
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
