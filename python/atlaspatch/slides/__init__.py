from .discovery import SlideSource, find_slides, read_mpp_csv
from .metadata import ScaleInfo, resolve_scale
from .reader import SUPPORTED_EXTENSIONS, Slide, open_slide

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ScaleInfo",
    "Slide",
    "SlideSource",
    "find_slides",
    "open_slide",
    "read_mpp_csv",
    "resolve_scale",
]
