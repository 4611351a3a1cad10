"""What an existing per-slide H5 holds, and whether it can serve a request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from ..errors import H5Error
from . import schema
from .attrs import read_attrs

# a broken file is never replaced unasked: the user keeps it for inspection and decides
REBUILD_ADVICE = "move it aside to rebuild this slide (or re-run with --force, which rebuilds every slide)"


@dataclass
class H5State:
    path: Path
    exists: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    tissue_attrs: dict[str, Any] | None = None
    num_patches: int | None = None  # None: not tiled (or never finished)
    features: dict[str, int] = field(default_factory=dict)  # name -> rows
    feature_widths: dict[str, int] = field(default_factory=dict)  # name -> D (0 if not 2-D)
    feature_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> dataset attrs
    slide_features: list[str] = field(default_factory=list)

    @property
    def has_tissue(self) -> bool:
        return self.tissue_attrs is not None

    @property
    def is_tiled(self) -> bool:
        return self.num_patches is not None

    @property
    def written_by_atlaspatch_upstream(self) -> bool:
        """A file from AtlasPatch itself records no provenance; only its own fields can be compared."""
        return self.is_tiled and schema.TOOL_VERSION not in self.attrs


def _num_patches(handle: h5py.File, attrs: Mapping[str, Any]) -> int | None:
    if schema.COORDS not in handle:
        return None
    coords = handle[schema.COORDS]
    if coords.ndim != 2 or coords.shape[1] != schema.COORDS_COLUMNS:
        raise H5Error(f"coords has shape {coords.shape}, expected (N, {schema.COORDS_COLUMNS})")
    if schema.NUM_PATCHES not in attrs:
        return None
    declared = int(attrs[schema.NUM_PATCHES])
    if declared != coords.shape[0]:
        raise H5Error(f"num_patches says {declared} but coords has {coords.shape[0]} rows")
    return declared


def inspect_h5(path: Path) -> H5State:
    state = H5State(path=path, exists=path.exists())
    if not state.exists:
        return state
    try:
        with h5py.File(path, "r") as handle:
            state.attrs = read_attrs(handle)
            if schema.TISSUE in handle:
                state.tissue_attrs = read_attrs(handle[schema.TISSUE])
            state.num_patches = _num_patches(handle, state.attrs)
            if schema.FEATURES in handle:
                for name, dataset in handle[schema.FEATURES].items():
                    if isinstance(dataset, h5py.Dataset):
                        state.features[name] = int(dataset.shape[0])
                        state.feature_widths[name] = int(dataset.shape[1]) if dataset.ndim == 2 else 0
                        state.feature_attrs[name] = read_attrs(dataset)
            if schema.SLIDE_FEATURES in handle:
                state.slide_features = sorted(handle[schema.SLIDE_FEATURES].keys())
    except H5Error as exc:
        raise H5Error(f"existing {path.name} is malformed ({exc}); {REBUILD_ADVICE}") from None
    except (OSError, KeyError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise H5Error(
            f"existing {path.name} is unreadable (truncated or corrupt: {reason}); {REBUILD_ADVICE}"
        ) from None
    return state


def complete_features(state: H5State, name: str, dim: int) -> bool:
    """Whether features/<name> can be reused: all rows present, the right width, and (if we wrote it) finished.

    AtlasPatch writes no attrs on features, so its datasets are judged by their row count, as AtlasPatch does.
    """
    if not state.is_tiled or name not in state.features or state.features[name] != state.num_patches:
        return False
    if state.feature_widths.get(name) != dim:
        return False
    attrs = state.feature_attrs.get(name, {})
    if schema.FEATURE_ENCODER in attrs or schema.FEATURE_COMPLETE in attrs:
        return bool(attrs.get(schema.FEATURE_COMPLETE, False))
    return True


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return bool(have) == bool(want)
    if isinstance(want, float) or isinstance(have, float):
        try:
            return abs(float(have) - float(want)) <= 1e-9
        except (TypeError, ValueError):
            return False
    return str(have) == str(want)


def geometry_mismatches(state: H5State, wanted: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, in file, requested) for every geometry/filter field that differs."""
    have = dict(state.attrs)
    if "step_size" not in have and "overlap" in have and "patch_size" in have:
        have["step_size"] = int(have["patch_size"]) - int(have["overlap"])
    fields = schema.ATLASPATCH_GEOMETRY_FIELDS if state.written_by_atlaspatch_upstream else schema.GEOMETRY_FIELDS
    if _same(have.get("fast_mode"), True) and _same(wanted.get("fast_mode"), True):
        fields = tuple(f for f in fields if f not in schema.PIXEL_FILTER_FIELDS)  # fast mode reads no pixels
    return [(name, have.get(name), wanted[name]) for name in fields if not _same(have.get(name), wanted[name])]


def made_from_another_slide(state: H5State, dimensions: tuple[int, int]) -> str | None:
    """Why the H5 belongs to another slide (its level-0 size differs from this slide's), or None."""
    expected = (state.attrs.get("level0_width"), state.attrs.get("level0_height"))
    if None in expected or tuple(int(v) for v in expected) == tuple(dimensions):
        return None
    return (
        f"{state.path.name} was made from a {int(expected[0])}x{int(expected[1])} px slide, "
        f"not this {dimensions[0]}x{dimensions[1]} px one"
    )


def describe_mismatches(mismatches: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{name} {have} (file) != {want} (requested)" for name, have, want in mismatches)
