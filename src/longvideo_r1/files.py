"""Files that are never half-written, and file names for arbitrary ids.

Traces, evaluation records, trajectories and exported caption files are all
read back by a rerun after a crash or a kill; each is written through
:func:`atomic_writer`, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]")


@contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A text file that appears whole at ``path`` when the block ends, or not at all.

    Large exports stream through it without being held in memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through :func:`atomic_writer`."""
    with atomic_writer(Path(path)) as handle:
        handle.write(text)
    return Path(path)


def safe_name(item_id: str) -> str:
    """A file name for an id; ids with other characters get a hash so two never meet."""
    cleaned = _UNSAFE.sub("_", item_id).lstrip(".") or "_"
    if cleaned == item_id and len(cleaned) <= 120:
        return cleaned
    return f"{cleaned[:100]}-{hashlib.sha256(item_id.encode()).hexdigest()[:10]}"
