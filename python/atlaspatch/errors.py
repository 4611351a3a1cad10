"""Errors that reach the user as one line: what went wrong and what to do about it."""

from __future__ import annotations


class AtlasPatchError(Exception):
    """Base for every expected failure; its message is shown to the user without a traceback."""


class SlideError(AtlasPatchError):
    """The slide cannot be used: unreadable, unsupported, or missing the metadata we need."""


class ConfigError(AtlasPatchError):
    """The request itself is invalid (options, geometry, encoder combination)."""


class ReuseConflict(AtlasPatchError):
    """An existing output was produced with other settings and would be silently overwritten."""


class LockHeld(AtlasPatchError):
    """Another live process is working on the same slide output."""


class H5Error(AtlasPatchError):
    """An existing H5 file is unreadable or structurally wrong."""


class WeightsError(AtlasPatchError):
    """Model weights are missing, gated or malformed."""


def one_line(exc: BaseException) -> str:
    """Render any exception as a single line, for summaries and logs."""
    text = str(exc).strip() or type(exc).__name__
    text = " ".join(text.split())
    if isinstance(exc, AtlasPatchError):
        return text
    return f"{type(exc).__name__}: {text}"
