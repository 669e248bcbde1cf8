"""The traces a server offers: those in its trace folders, by an id that is not a path.

``lvr1 ask`` (and the server itself) keeps traces in one folder beside the
caption cache; ``lvr1 eval`` writes ``OUT/<method>/traces/``. The shelf looks
in the folders it was given: each folder's own ``*.json`` files and those of
any ``traces/`` folder below it, so an eval output folder can be given whole.
A trace is named by a hash of its path, so a request can only fetch files the
shelf listed, and summaries are cached by file size and time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvideo_r1.agent.trace import Trace, TraceError
from longvideo_r1.server.paths import NotFound


@dataclass(frozen=True)
class TraceSummary:
    """One stored trace, as the list of earlier questions shows it."""

    id: str
    source: str
    question: str
    choices: list[str] | None
    fingerprint: str | None
    status: str
    answer: str | None
    rounds: int
    seconds: float
    started_at: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TraceShelf:
    """The trace folders of one server; safe to use from several threads."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = [Path(f).expanduser() for f in folders]
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self._summaries: dict[tuple[Path, int, int], TraceSummary | None] = {}

    def _files(self) -> Iterator[tuple[Path, Path]]:
        """(folder, file) for each trace file, links out of its folder skipped."""
        for folder in self.folders:
            if not folder.is_dir():
                continue
            root = folder.resolve()
            for top, dirs, files in os.walk(root, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                here = Path(top)
                if here != root and here.name != "traces":
                    continue
                for name in sorted(files):
                    path = here / name
                    if name.endswith(".json") and not name.startswith("."):
                        real = path.resolve()
                        if real.is_relative_to(root) and real.is_file():
                            yield root, real

    def list(self, fingerprint: str | None = None) -> list[TraceSummary]:
        """Every readable trace, newest first; only one video's with ``fingerprint`` (a prefix)."""
        found = []
        for root, path in self._files():
            summary = self._summary(root, path)
            if summary is None:
                continue
            if fingerprint and not (summary.fingerprint or "").startswith(fingerprint):
                continue
            found.append(summary)
        return sorted(found, key=lambda s: s.started_at, reverse=True)

    def load(self, trace_id: str) -> Trace:
        """The trace with this id (looking at the folders again if it is not known yet)."""
        with self._lock:
            path = self._paths.get(trace_id)
        if path is None:
            self.list()
            with self._lock:
                path = self._paths.get(trace_id)
        if path is None or not path.is_file():
            raise NotFound(f"no trace with id {trace_id!r}")
        return Trace.load(path)

    def id_of(self, path: Path) -> str:
        """The id of a trace file (the server's own new traces are named before listing)."""
        real = Path(path).resolve()
        trace_id = hashlib.sha256(str(real).encode()).hexdigest()[:16]
        with self._lock:
            self._paths[trace_id] = real
        return trace_id

    def _summary(self, root: Path, path: Path) -> TraceSummary | None:
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._summaries:
                return self._summaries[key]
        try:
            trace = Trace.load(path)
        except TraceError:
            summary = None  # another JSON file (an eval record, a manifest): not offered
        else:
            rel = path.relative_to(root).as_posix()
            summary = TraceSummary(
                id=self.id_of(path),
                source=f"{root.name}/{rel}",
                question=trace.question,
                choices=trace.choices,
                fingerprint=trace.fingerprint,
                status=trace.status,
                answer=trace.answer,
                rounds=len(trace.rounds),
                seconds=round(trace.cost.end_to_end_seconds, 2),
                started_at=trace.started_at.isoformat(),
            )
        with self._lock:
            self._summaries[key] = summary
        return summary
