"""Encoders: patch encoders (pixels → per-patch features) and, later, slide encoders (features → one vector)."""
