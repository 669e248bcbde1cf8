"""User-facing errors.

Every failure a user can cause or fix (a bad file, an unreachable endpoint, an
invalid node id) is raised as an :class:`LVR1Error` whose message is one
readable line. The CLI prints that line and exits non-zero; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Any

_SPACE_RE = re.compile(r"\s+")


def one_line(text: object, limit: int = 200) -> str:
    """Collapse whitespace and shorten, so any error fits a one-line message or table cell."""
    flat = _SPACE_RE.sub(" ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def validation_line(exc: Any, whole: str = "file") -> str:
    """``where: what`` of a pydantic ValidationError's first problem (``whole`` when the
    problem is with the input as a whole)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    return f"{where}: {first['msg']}"


class LVR1Error(Exception):
    """A failure explained in one line, shown to the user without a traceback."""

    exit_code = 2


class VideoError(LVR1Error):
    """The file is missing, unreadable, not a video, or corrupt."""


class TreeError(LVR1Error, ValueError):
    """A node id or tree parameter is invalid."""


class EndpointError(LVR1Error):
    """A model endpoint could not be reached or answered with an error."""


class CaptionError(LVR1Error):
    """A captioner could not produce a caption for a node."""


class StoreError(LVR1Error):
    """The caption store could not be opened, read or written."""


class ConfigError(LVR1Error):
    """Settings are missing or contradict each other."""
