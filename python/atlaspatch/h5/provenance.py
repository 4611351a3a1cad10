"""File attributes describing the slide and the tool that wrote the H5."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .. import __version__
from ..slides.reader import Slide
from . import schema


def slide_attrs(slide: Slide) -> dict[str, Any]:
    width, height = slide.dimensions
    attrs: dict[str, Any] = {
        "wsi_path": str(slide.path.resolve()),
        "filename": slide.stem,
        "level0_width": int(width),
        "level0_height": int(height),
        "level0_magnification": int(slide.magnification),
        "magnification": int(slide.magnification),
        "mpp": float(slide.mpp),
        "mpp_source": slide.scale.mpp_source,
        "magnification_source": slide.scale.magnification_source,
        "backend": slide.reader.backend,
        "creation_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        schema.TOOL_VERSION: __version__,
    }
    attrs.update(slide.extra_attrs)
    return attrs
