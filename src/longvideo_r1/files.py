"""Files that are never half-written, folders with one writer, file names for arbitrary ids.

Traces, evaluation records, trajectories, exported caption files and model
weights are all read back by a rerun after a crash or a kill; each is written
through :func:`atomic_writer` (or :func:`atomic_path` for writers that want a
file name), so a reader sees the old file or the new one. A file appears with
the permissions ``open()`` would give it (``0o666`` less the umask), so results
stay readable by the other users and containers the umask lets read them.

Run folders that a rerun resumes (evaluation runs, trajectory folders) take
:func:`folder_lock`: a second writer is refused at once, in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from longvideo_r1.errors import ConfigError

try:  # POSIX; elsewhere the atomic writes work and folders go unlocked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
LOCK_NAME = ".lock"
"""The lock file of a folder with one writer; it stays, empty, between runs."""


def _create_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new hidden file next to ``path``, created as ``open()`` would create it.

    ``tempfile.mkstemp`` makes its files ``0o600``, which a rename would carry
    to the target; the kernel applies the umask to ``0o666`` here instead
    (and a default ACL of the folder, if any).
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, _CREATE, 0o666)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable: after a crash the new name is there, not the old.

    Best effort: some file systems cannot fsync a folder, and the rename has happened anyway.
    """
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """Rename the finished temporary file over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_writer(path: Path, binary: bool = False, suffix: str = ".tmp") -> Iterator[IO[Any]]:
    """A file that appears whole at ``path`` when the block ends, or not at all.

    Large exports and model weights stream through it without being held in
    memory. An exception in the block (a failed check included) leaves the old
    file as it was and no temporary behind. Text is UTF-8; ``suffix`` names the
    temporaries, so a folder's owner can find those of a killed writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path, suffix)
    try:
        mode = "wb" if binary else "w"
        with os.fdopen(fd, mode, encoding=None if binary else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file name beside ``path``, for writers that open the file themselves.

    The name ends in ``path``'s suffix (tools that pick a format from it keep
    working). When the block ends the file is fsynced and renamed over
    ``path``; an exception removes it instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path, f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through :func:`atomic_writer`."""
    with atomic_writer(Path(path)) as handle:
        handle.write(text)
    return Path(path)


@contextlib.contextmanager
def folder_lock(folder: Path, writer: str) -> Iterator[None]:
    """One ``writer`` (e.g. ``lvr1 eval``) per folder; a second one is refused at once.

    Two runs on one folder would both pass its manifest check and mix their
    records. The lock is ``flock`` on ``folder/.lock``: the OS drops it when
    the process dies, even by SIGKILL, so a stale lock never blocks a rerun.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / LOCK_NAME).open("a")
    except OSError as exc:
        raise ConfigError(
            f"cannot use {folder}: {exc.strerror or exc}; use another --out"
        ) from None
    try:
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"another {writer} is writing to {folder}; wait for it or use another --out"
            ) from None
        yield
    finally:
        handle.close()


def safe_name(item_id: str) -> str:
    """A file name for an id; ids with other characters get a hash so two never meet."""
    cleaned = _UNSAFE.sub("_", item_id).lstrip(".") or "_"
    if cleaned == item_id and len(cleaned) <= 120:
        return cleaned
    return f"{cleaned[:100]}-{hashlib.sha256(item_id.encode()).hexdigest()[:10]}"
