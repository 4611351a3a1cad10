"""AtlasPatch-NF: whole-slide images to tissue contours, patch coordinates, patch features and slide embeddings."""

__version__ = "0.1.0"
