"""The data folder guard: every path a request names resolves inside the data folder.

The server reads videos only from one folder the user chose (``--data``). A
request may name a file there by its path relative to that folder; this module
is the one place such a path is read, and it refuses what could reach
anything else: absolute paths, drive letters, ``..`` parts, NUL bytes, and
names whose symbolic links lead out of the folder (the path is resolved,
links followed, before it is compared with the folder's own resolved path).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from longvideo_r1.errors import ConfigError, LVR1Error

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
)
"""File name endings listed as videos (a file is only known to be one once it decodes)."""


class ServerError(LVR1Error):
    """A refused request; ``status`` is its HTTP status."""

    status = 400


class PathRefused(ServerError):
    """A path that is absolute, climbs out of the data folder or links out of it."""

    status = 403


class NotFound(ServerError):
    """An unknown video, trace, run or node, or a file that is not there."""

    status = 404


@dataclass(frozen=True)
class DataDir:
    """The folder the server may read videos from (and write uploads into)."""

    root: Path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> DataDir:
        """The folder, resolved once; a missing one is refused before the server starts."""
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"data folder not found: {folder} (give --data DIR or $LVR1_DATA)")
        return cls(folder.resolve())

    def resolve(self, relative: str) -> Path:
        """The real path of ``relative`` inside the folder, or :class:`PathRefused`."""
        text = str(relative).strip()
        if not text:
            raise PathRefused("the path is empty: name a file inside the data folder")
        if "\x00" in text:
            raise PathRefused("the path holds a NUL byte")
        posix = PurePosixPath(text.replace("\\", "/"))
        windows = PureWindowsPath(text)
        if posix.is_absolute() or windows.drive or windows.is_absolute():
            raise PathRefused(
                f"absolute paths are refused: {text!r} (give one inside the data folder)"
            )
        if ".." in posix.parts:
            raise PathRefused(f"'..' is refused in paths: {text!r}")
        full = (self.root / posix).resolve()
        if not self.holds(full):
            raise PathRefused(f"{text!r} leads out of the data folder (a symbolic link out of it)")
        return full

    def holds(self, path: Path) -> bool:
        """Whether ``path``, links followed, is the folder or inside it."""
        real = path.resolve()
        return real == self.root or real.is_relative_to(self.root)

    def name_of(self, path: Path) -> str:
        """The folder-relative name a page shows for a file (never the server's own path)."""
        return path.resolve().relative_to(self.root).as_posix()

    def videos(self) -> Iterator[Path]:
        """Video files under the folder in name order: hidden names, links that lead out
        and folders reached through links are skipped."""
        for top, dirs, files in os.walk(self.root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(top) / name
                if name.startswith(".") or path.suffix.lower() not in VIDEO_SUFFIXES:
                    continue
                if self.holds(path) and path.resolve().is_file():
                    yield path.resolve()
