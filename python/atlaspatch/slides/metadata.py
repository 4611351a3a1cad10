"""Microns-per-pixel and base magnification from slide properties, the way pathologists' scanners record them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SlideError

MPP_RANGE = (0.1, 10.0)

# (upper mpp bound, nominal magnification): mpp below the bound means this magnification
MAGNIFICATION_BY_MPP: tuple[tuple[float, int], ...] = (
    (0.16, 80),
    (0.2, 60),
    (0.3, 40),
    (0.6, 20),
    (1.2, 10),
    (2.4, 5),
)

_MPP_KEYS = ("openslide.mpp-x", "openslide.mpp-y", "openslide.mirax.MPP", "aperio.MPP")
_MAG_KEYS = ("openslide.objective-power", "aperio.AppMag", "hamamatsu.SourceLens")
_TEXT_KEYS = ("openslide.comment", "tiff.ImageDescription")
_MPP_IN_TEXT = re.compile(r"\bMPP\s*[=:]\s*([0-9]*\.?[0-9]+)", re.IGNORECASE)
_MICRONS_PER_UNIT = {"centimeter": 10_000.0, "cm": 10_000.0, "inch": 25_400.0}


@dataclass(frozen=True)
class ScaleInfo:
    mpp: float
    mpp_source: str
    magnification: int
    magnification_source: str


def _as_float(value: object) -> float | None:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number == number else None


def _mpp_from_keys(props: Mapping[str, str]) -> tuple[float, str] | None:
    x, y = _as_float(props.get("openslide.mpp-x")), _as_float(props.get("openslide.mpp-y"))
    if x and y:
        return (x + y) / 2, "openslide.mpp-x/y"
    for key in _MPP_KEYS:
        value = _as_float(props.get(key))
        if value:
            return value, key
    return None


def _mpp_from_text(props: Mapping[str, str]) -> tuple[float, str] | None:
    for key in _TEXT_KEYS:
        match = _MPP_IN_TEXT.search(props.get(key, "") or "")
        if match and _as_float(match.group(1)):
            return float(match.group(1)), key
    return None


def _mpp_from_resolution(props: Mapping[str, str]) -> tuple[float, str] | None:
    resolution = _as_float(props.get("tiff.XResolution"))
    unit = (props.get("tiff.ResolutionUnit") or "").strip().lower()
    if resolution and unit in _MICRONS_PER_UNIT:
        return _MICRONS_PER_UNIT[unit] / resolution, "tiff.XResolution"
    return None


def objective_power(props: Mapping[str, str]) -> tuple[int, str] | None:
    for key in _MAG_KEYS:
        value = _as_float(props.get(key))
        if value:
            return int(value), key
    return None


def _mpp_from_objective(props: Mapping[str, str]) -> tuple[float, str] | None:
    power = objective_power(props)
    if power:
        return 10.0 / power[0], f"10/{power[1]}"
    return None


def magnification_for_mpp(mpp: float) -> int:
    for bound, magnification in MAGNIFICATION_BY_MPP:
        if mpp < bound:
            return magnification
    raise SlideError(f"mpp {mpp:g} µm/px is too coarse to infer a magnification (needs < 2.4)")


def check_plausible(mpp: float, source: str) -> float:
    mpp = round(mpp, 4)
    low, high = MPP_RANGE
    if not low <= mpp <= high:
        raise SlideError(
            f"implausible mpp {mpp:g} µm/px (from {source}; expected {low:g}-{high:g}): "
            "give the right value with --mpp-csv"
        )
    return mpp


def resolve_scale(props: Mapping[str, str], mpp_override: float | None = None) -> ScaleInfo:
    """mpp from an override or the slide, and the base magnification.

    With an override the magnification follows from it, so the override wins everywhere; otherwise the
    scanner's objective power wins and the mpp table is the fallback.
    """
    if mpp_override is not None:
        mpp = check_plausible(mpp_override, "--mpp-csv")
        return ScaleInfo(mpp, "--mpp-csv", magnification_for_mpp(mpp), "mpp (--mpp-csv)")
    found = _mpp_from_keys(props) or _mpp_from_text(props) or _mpp_from_resolution(props) or _mpp_from_objective(props)
    if found is None:
        raise SlideError("no mpp and no magnification in the slide metadata: give the mpp with --mpp-csv")
    mpp = check_plausible(*found)
    power = objective_power(props)
    if power:
        return ScaleInfo(mpp, found[1], power[0], power[1])
    return ScaleInfo(mpp, found[1], magnification_for_mpp(mpp), "mpp")


def descriptive_attrs(props: Mapping[str, str]) -> dict[str, str]:
    """vendor / institution / stain, as AtlasPatch records them (first matching key wins)."""
    wanted = {
        "vendor": ("openslide.vendor", "tiff.Make"),
        "institution": ("aperio.Institution", "institution"),
        "stain": ("aperio.Stain", "stain"),
    }
    found: dict[str, str] = {}
    lowered = {k.lower(): v for k, v in props.items()}
    for name, keys in wanted.items():
        for key in keys:
            if props.get(key):
                found[name] = str(props[key])
                break
            matches = [v for k, v in lowered.items() if key.lower() in k and v]
            if matches:
                found[name] = str(matches[0])
                break
    return found
