"""What the caption store keeps: its tables, the records its rows read into, and their checks.

The schema is versioned by ``PRAGMA user_version``: a new store is created at
version 1 and brought up to :data:`SCHEMA_VERSION` by the same migrations an
old store goes through, so the two can never differ. A row that cannot be read
back (a hand-edited ``frame_times``, a truncated JSON value) raises a one-line
:class:`DamagedRowError` naming the row and how to repair it, never a traceback.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvideo_r1.errors import StoreError, one_line
from longvideo_r1.tree import LEVELS, NodeId, format_node_id, parse_node_id

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of the schema this module writes."""

APPLICATION_ID = 0x4C565231
"""``PRAGMA application_id`` ("LVR1"): tells our stores from other SQLite files."""

_CAPTION_TABLE = """(
    fingerprint TEXT NOT NULL,
    width INTEGER NOT NULL,
    node TEXT NOT NULL,
    identity TEXT NOT NULL,
    text TEXT NOT NULL,
    frame_times TEXT NOT NULL,
    frame_ids TEXT NOT NULL,
    seconds REAL NOT NULL,
    frames_decoded INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, width, node, identity)
)"""

SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS videos (
    fingerprint TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    duration REAL NOT NULL,
    n_frames INTEGER NOT NULL,
    width INTEGER NOT NULL,
    registered_at REAL NOT NULL
)""",
    f"CREATE TABLE IF NOT EXISTS captions {_CAPTION_TABLE}",
    """CREATE TABLE IF NOT EXISTS failures (
    fingerprint TEXT NOT NULL,
    width INTEGER NOT NULL,
    node TEXT NOT NULL,
    identity TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, width, node, identity)
)""",
    """CREATE TABLE IF NOT EXISTS artifacts (
    fingerprint TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, key)
)""",
)
"""The first schema: every store starts here and migrates up."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # who is making which caption now, so two processes never both pay for one
        """CREATE TABLE IF NOT EXISTS claims (
    fingerprint TEXT NOT NULL,
    width INTEGER NOT NULL,
    node TEXT NOT NULL,
    identity TEXT NOT NULL,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, width, node, identity)
)""",
        # a --force rebuild's new captions, swapped in when all are made
        f"CREATE TABLE IF NOT EXISTS staged_captions {_CAPTION_TABLE}",
        # what failed attempts spent, kept after the caption finally lands
        "ALTER TABLE failures ADD COLUMN seconds REAL NOT NULL DEFAULT 0",
        "ALTER TABLE failures ADD COLUMN frames_decoded INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE failures ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE failures ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE failures ADD COLUMN resolved_at REAL",
    ),
}
"""Statements that take a store from version ``n - 1`` to version ``n``."""

TABLES = ("videos", "captions", "failures", "artifacts", "claims", "staged_captions")
CAPTION_COLUMNS = (
    "fingerprint, width, node, identity, text, frame_times, frame_ids, seconds, "
    "frames_decoded, prompt_tokens, completion_tokens, created_at"
)
FAILURE_COLUMNS = (
    "fingerprint, width, node, identity, error, attempts, last_at, seconds, frames_decoded, "
    "prompt_tokens, completion_tokens, resolved_at"
)
KEY_WHERE = "fingerprint = ? AND width = ? AND node = ? AND identity = ?"


class DamagedRowError(StoreError):
    """A stored row cannot be read back; the message names it and how to repair it.

    Exit status 1, not 2: the store's content is damaged, the command line is fine.
    """

    exit_code = 1


# records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionKey:
    """What a caption's content depends on; the primary key of captions and failures."""

    fingerprint: str
    width: int
    node_id: NodeId
    identity: str

    @property
    def label(self) -> str:
        return format_node_id(self.node_id)


@dataclass(frozen=True)
class CaptionRecord:
    """One stored caption with what it cost to make (zero for imported ones)."""

    fingerprint: str
    width: int
    node_id: NodeId
    identity: str
    text: str
    frame_times: tuple[float, ...] = ()
    frame_ids: tuple[int, ...] = ()
    seconds: float = 0.0
    frames_decoded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: float = 0.0

    @property
    def key(self) -> CaptionKey:
        return CaptionKey(self.fingerprint, self.width, self.node_id, self.identity)

    @property
    def label(self) -> str:
        return format_node_id(self.node_id)


@dataclass(frozen=True)
class FailureRecord:
    """A node's failed attempts: the last error, how many, and what they spent together.

    ``resolved_at`` is set when the caption finally lands (or the failure is
    cleared): the row stays, so what the failed calls cost is never lost.
    """

    fingerprint: str
    width: int
    node_id: NodeId
    identity: str
    error: str
    attempts: int
    last_at: float
    seconds: float = 0.0
    frames_decoded: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    resolved_at: float | None = None

    @property
    def key(self) -> CaptionKey:
        return CaptionKey(self.fingerprint, self.width, self.node_id, self.identity)


@dataclass(frozen=True)
class VideoRecord:
    """What the store knows about a video, so captions can be listed without opening it."""

    fingerprint: str
    path: str
    duration: float
    n_frames: int
    width: int
    registered_at: float = 0.0


@dataclass(frozen=True)
class StoreStats:
    """Counts and the total cost of the stored captions (optionally of one video/identity).

    ``failures`` counts nodes whose last attempt failed; the ``failed_*`` sums
    are what every failed attempt spent, including those of nodes made since.
    """

    videos: int
    captions: int
    failures: int
    artifacts: int
    seconds: float
    frames_decoded: int
    prompt_tokens: int
    completion_tokens: int
    captions_by_identity: dict[str, int] = field(default_factory=dict)
    failed_attempts: int = 0
    failed_seconds: float = 0.0
    failed_frames_decoded: int = 0
    failed_prompt_tokens: int = 0
    failed_completion_tokens: int = 0


_HOST = socket.gethostname()


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim: a token per caption service, in a process on a host.

    The pid lets a claim of a process that died on this host be taken over at
    once instead of when its lease runs out (SQLite's WAL needs every process
    of a store on one host anyway; the lease covers pid namespaces).
    """

    token: str
    host: str = _HOST
    pid: int = 0

    @classmethod
    def current(cls, token: str) -> ClaimOwner:
        """The owner for this process; a forked child gets its own (another pid)."""
        return cls(token=token, host=_HOST, pid=os.getpid())

    @property
    def name(self) -> str:
        return f"{self.host}/{self.pid}/{self.token}"


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: the caption if stored, else whether the claim is now ours."""

    ours: bool
    record: CaptionRecord | None = None
    holder: str = ""
    """The owner making the caption, when it is someone else."""
    expires_at: float = 0.0


def lapsed(host: str, pid: int, expires_at: float, now: float) -> bool:
    """A claim nobody is honouring: its lease ran out, or its process on this host is gone."""
    if expires_at <= now:
        return True
    if host != _HOST or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, someone else's
        return False
    return False


# rows ------------------------------------------------------------------------------


def key_params(key: CaptionKey) -> tuple[str, int, str, str]:
    return (key.fingerprint, int(key.width), format_node_id(key.node_id), key.identity)


def filters(**columns: Any) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause over the columns that are not None."""
    present = [(name, value) for name, value in columns.items() if value is not None]
    if not present:
        return "", ()
    clause = " WHERE " + " AND ".join(f"{name} = ?" for name, _ in present)
    return clause, tuple(value for _, value in present)


def caption_from_row(row: tuple[Any, ...], path: Path, table: str = "captions") -> CaptionRecord:
    """Read one caption row, or say in one line which row is damaged and how to repair it."""
    (fp, width, node, identity, text, times, ids, seconds, frames, prompt, completion, at) = row
    column = "node"
    try:
        node_id = parse_node_id(str(node))
        column = "frame_times"
        frame_times = tuple(float(t) for t in _json_list(times))
        column = "frame_ids"
        frame_ids = tuple(int(i) for i in _json_list(ids))
        column = "cost columns"
        return CaptionRecord(
            fingerprint=fp,
            width=int(width),
            node_id=node_id,
            identity=identity,
            text=str(text),
            frame_times=frame_times,
            frame_ids=frame_ids,
            seconds=float(seconds),
            frames_decoded=int(frames),
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
            created_at=float(at),
        )
    except (ValueError, TypeError, OverflowError) as exc:
        raise _damaged_caption(path, table, row, column, exc) from None


def _json_list(text: Any) -> list[Any]:
    value = json.loads(text)
    if not isinstance(value, list):
        raise TypeError(f"a JSON {type(value).__name__}, not a list")
    return value


def _damaged_caption(
    path: Path, table: str, row: tuple[Any, ...], column: str, exc: Exception
) -> DamagedRowError:
    fp, width, node, identity = row[:4]
    what = "caption" if table == "captions" else "staged caption (of an unfinished --force build)"
    try:
        levels = f" --levels {LEVELS[len(parse_node_id(str(node))) - 1]}"
    except (ValueError, IndexError):
        levels = ""
    delete = (
        f"DELETE FROM {table} WHERE fingerprint = {_sql(fp)} AND identity = {_sql(identity)} "
        f"AND width = {width} AND node = {_sql(node)}"
    )
    remake = (
        "import the reference file again"
        if str(identity).startswith("imported:")
        else f"remake it with `lvr1 caption VIDEO --captioner ... --force{levels}`"
    )
    return DamagedRowError(
        f"caption store {path}: the stored {what} of video {fp}, captioner {identity}, "
        f"width {width}, node {node} is damaged ({column}: {one_line(exc, 120)}); {remake} "
        f"or delete the row: {_sqlite_command(path, delete)}"
    )


def _sqlite_command(path: Path, sql: str) -> str:
    """A shell line that runs ``sql`` on the store (the SQL in double quotes, readable)."""
    quoted = "".join("\\" + c if c in '"$`\\' else c for c in sql)
    return f'sqlite3 {shlex.quote(str(path))} "{quoted}"'


def _sql(value: Any) -> str:
    """A SQL string literal, for the repair commands the errors print."""
    return "'" + str(value).replace("'", "''") + "'"


def failure_from_row(row: tuple[Any, ...], path: Path) -> FailureRecord:
    (fp, width, node, identity, error, attempts, last_at, *spent, resolved_at) = row
    try:
        node_id = parse_node_id(str(node))
    except ValueError as exc:
        raise DamagedRowError(
            f"caption store {path}: a failure row of video {fp}, captioner {identity} has a "
            f"damaged node ({one_line(exc, 120)}); delete it: "
            + _sqlite_command(
                path,
                f"DELETE FROM failures WHERE fingerprint = {_sql(fp)} "
                f"AND identity = {_sql(identity)} AND node = {_sql(node)}",
            )
        ) from None
    seconds, frames, prompt, completion = spent
    return FailureRecord(
        fp,
        int(width),
        node_id,
        identity,
        error,
        int(attempts),
        float(last_at),
        float(seconds),
        int(frames),
        int(prompt),
        int(completion),
        resolved_at,
    )


def artifact_from_row(value: str, path: Path, fingerprint: str, key: str) -> Any:
    """An artifact's JSON value; a damaged one names itself (it is remade once deleted)."""
    try:
        return json.loads(value)
    except ValueError as exc:
        raise DamagedRowError(
            f"caption store {path}: artifact {key!r} of video {fingerprint} is damaged "
            f"({one_line(exc, 120)}); delete it and it is remade: "
            + _sqlite_command(
                path,
                f"DELETE FROM artifacts WHERE fingerprint = {_sql(fingerprint)} "
                f"AND key = {_sql(key)}",
            )
        ) from None
