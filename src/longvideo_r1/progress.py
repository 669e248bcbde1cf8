"""One progress bar on stderr for long runs: caption builds and trajectory runs.

rich is imported only when a bar is shown, so a run without one (tests,
scripts) never loads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, **changes: Any) -> None:
        """``advance``, ``description`` or a field of the bar's columns, as rich takes them."""


class _NoBar:
    """No terminal output: scripts and tests read the report at the end."""

    def update(self, **changes: Any) -> None:
        pass


@dataclass
class _RichBar:
    progress: Any
    task: Any

    def update(self, **changes: Any) -> None:
        self.progress.update(self.task, **changes)


@contextmanager
def progress_bar(
    show: bool,
    *,
    title: str,
    status: str,
    description: str,
    total: int,
    done: int,
    **fields: Any,
) -> Iterator[Bar]:
    """A rich bar on stderr, or nothing when ``show`` is false.

    The columns are ``title``, the bar, done of total, ``status``, elapsed and
    ETA; ``title`` and ``status`` are rich column templates (``{task.description}``,
    ``{task.fields[name]}``), ``fields`` the starting values of the fields they
    name. Work already done starts the bar as done without counting as this
    run's, so the ETA reflects the speed of the work being done now.
    """
    if not show:
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(title),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(status),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, completed=done, **fields)
        yield _RichBar(progress, task)
