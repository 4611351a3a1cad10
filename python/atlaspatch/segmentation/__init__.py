from .contours import TissueContours, mask_to_contours, rasterize
from .registry import SEGMENTERS, Segmenter, build_segmenter
from .thumbnail import Thumbnail, read_thumbnail

__all__ = [
    "SEGMENTERS",
    "Segmenter",
    "Thumbnail",
    "TissueContours",
    "build_segmenter",
    "mask_to_contours",
    "rasterize",
    "read_thumbnail",
]
