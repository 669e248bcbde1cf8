"""The caption store: one SQLite file that keeps every caption ever made.

Captions are the expensive part of the system (one VLM call each), so they are
kept across runs, shared between processes (``lvr1 caption`` building while
``lvr1 ask`` reads) and never left half written. A caption is keyed by what
determines its content: the video's content fingerprint, the tree width (node
``(1, 2)`` covers a different span at width 4 than at width 3), the node id
and the captioner identity (name, model, prompt version). Paths never key
anything: a moved or renamed video keeps its captions.

Concurrency: one connection per store object, guarded by a lock. SQLite admits
one writer at a time anyway and every operation here takes microseconds next
to the seconds a caption costs, so a lock loses nothing; it keeps threads of
one process from contending through file locks and busy retries, gives the
connection a clear owner for :meth:`CaptionStore.close`, and makes each
method's transaction atomic with respect to the other threads. Processes
contend through SQLite itself: WAL lets readers run beside the writer, writes
start with ``BEGIN IMMEDIATE`` so a transaction never has to upgrade a read
lock (the case ``busy_timeout`` cannot retry), and ``busy_timeout`` waits out
the other process's write. Processes also share who is making which caption:
a claim row with a lease (:meth:`CaptionStore.claim`), so one makes a node
and the others wait and read it.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvideo_r1.captions.records import (
    APPLICATION_ID,
    CAPTION_COLUMNS,
    FAILURE_COLUMNS,
    KEY_WHERE,
    MIGRATIONS,
    SCHEMA_V1,
    SCHEMA_VERSION,
    TABLES,
    CaptionKey,
    CaptionRecord,
    Claim,
    ClaimOwner,
    DamagedRowError,
    FailureRecord,
    StoreStats,
    VideoRecord,
    artifact_from_row,
    caption_from_row,
    failure_from_row,
    filters,
    key_params,
    lapsed,
)
from longvideo_r1.config import default_store_path
from longvideo_r1.errors import StoreError, one_line
from longvideo_r1.tree import NodeId, format_node_id, parse_node_id

# the store -------------------------------------------------------------------------


class CaptionStore:
    """Captions, failures, video metadata and per-video artifacts in one SQLite file.

    Every public method is one transaction and safe to call from any thread;
    several processes may open the same file. Errors a user can cause (a path
    that is a directory, not a database, corrupt or read-only) raise a
    one-line :class:`StoreError` naming the file.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 30.0):
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self._timeout = timeout
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._conn = self._open()

    # lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; the store object is unusable afterwards."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> CaptionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CaptionStore({str(self.path)!r})"

    def _open(self) -> sqlite3.Connection:
        """Connect, switch to WAL and create or check the schema.

        Everything a user can get wrong about the path surfaces here, at open,
        rather than at the first caption an hour into a build.
        """
        if self.path.is_dir():
            raise StoreError(f"caption store {self.path} is a directory, not a SQLite file")
        for folder in (self.path.parent, *self.path.parent.parents):
            if folder.exists() and not folder.is_dir():
                raise StoreError(f"cannot create caption store {self.path}: {folder} is a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder of caption store {self.path}: {exc.strerror or exc}"
            ) from None
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"caption store {self.path} is read-only")
        if not os.access(self.path.parent, os.W_OK):
            raise StoreError(f"cannot write caption store {self.path}: folder is read-only")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=self._timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # shared by threads under self._lock
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")  # a caption costs far more than an fsync
            self._init_schema(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise _store_error(self.path, exc) from None
        except StoreError:
            if conn is not None:
                conn.close()
            raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, retrying while another process holds the lock it needs.

        The first switch of a new file needs an exclusive lock, which two
        processes opening a fresh store at once can contend for.
        """
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables of a new store, or check an existing one is ours and migrate it.

        A new store and an old one take the same steps (version 1, then each
        migration), in one transaction: a crash mid-migration leaves the old version.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id not in (0, APPLICATION_ID):
                raise StoreError(f"{self.path} is a SQLite file of another application")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"caption store {self.path} has schema version {version}, newer than "
                    f"this longvideo-r1 understands ({SCHEMA_VERSION}); upgrade longvideo-r1"
                )
            if version == 0:
                tables = {
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                if tables - set(TABLES):
                    raise StoreError(f"{self.path} is a SQLite file of another application")
                for statement in SCHEMA_V1:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                version = 1
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        """The open connection; a forked child opens its own instead of sharing the parent's."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._conn = self._open()
        if self._conn is None:
            raise StoreError(f"caption store {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it lands or, on any error or crash, none of it."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(self.path, exc) from None
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read under the lock; WAL gives each statement a consistent snapshot."""
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from None

    # videos --------------------------------------------------------------------

    def register_video(self, video: VideoRecord) -> None:
        """Record (or refresh) a video's metadata; the latest path and width win."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO videos (fingerprint, path, duration, n_frames, width, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(fingerprint) DO UPDATE SET "
                "path = excluded.path, duration = excluded.duration, "
                "n_frames = excluded.n_frames, width = excluded.width, "
                "registered_at = excluded.registered_at",
                (
                    video.fingerprint,
                    str(video.path),
                    float(video.duration),
                    int(video.n_frames),
                    int(video.width),
                    video.registered_at or time.time(),
                ),
            )

    def get_video(self, fingerprint: str) -> VideoRecord | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT fingerprint, path, duration, n_frames, width, registered_at "
                "FROM videos WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
        return VideoRecord(*row) if row else None

    def list_videos(self) -> list[VideoRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT fingerprint, path, duration, n_frames, width, registered_at "
                "FROM videos ORDER BY registered_at"
            ).fetchall()
        return [VideoRecord(*row) for row in rows]

    # captions ------------------------------------------------------------------

    def put_caption(self, record: CaptionRecord, replace: bool = False) -> CaptionRecord:
        """Store a caption and resolve the node's failure; return what is stored now.

        Without ``replace`` the first caption of a key wins, so when two
        processes race to make the same node both end up serving the same text.
        """
        return self._put_one(record, replace, "captions")

    def put_captions(self, records: Iterable[CaptionRecord], replace: bool = False) -> int:
        """Store many captions in one transaction (all or none); return how many were given."""
        count = 0
        with self._write() as conn:
            for record in records:
                self._insert_caption(conn, record, replace, "captions")
                count += 1
        return count

    def _put_one(self, record: CaptionRecord, replace: bool, table: str) -> CaptionRecord:
        with self._write() as conn:
            self._insert_caption(conn, record, replace, table)
            row = conn.execute(
                f"SELECT {CAPTION_COLUMNS} FROM {table} WHERE {KEY_WHERE}", key_params(record.key)
            ).fetchone()
            return caption_from_row(row, self.path, table)

    @staticmethod
    def _insert_caption(
        conn: sqlite3.Connection, record: CaptionRecord, replace: bool, table: str
    ) -> None:
        conflict = (
            "DO UPDATE SET text = excluded.text, frame_times = excluded.frame_times, "
            "frame_ids = excluded.frame_ids, seconds = excluded.seconds, "
            "frames_decoded = excluded.frames_decoded, prompt_tokens = excluded.prompt_tokens, "
            "completion_tokens = excluded.completion_tokens, created_at = excluded.created_at"
            if replace
            else "DO NOTHING"
        )
        conn.execute(
            f"INSERT INTO {table} ({CAPTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT(fingerprint, width, node, identity) {conflict}",
            (
                *key_params(record.key),
                record.text,
                json.dumps([float(t) for t in record.frame_times], allow_nan=False),
                json.dumps([int(i) for i in record.frame_ids]),
                float(record.seconds),
                int(record.frames_decoded),
                int(record.prompt_tokens),
                int(record.completion_tokens),
                record.created_at or time.time(),
            ),
        )
        _resolve_failure(conn, record.key)

    def get_caption(self, key: CaptionKey) -> CaptionRecord | None:
        return self._get_one(key, "captions")

    def _get_one(self, key: CaptionKey, table: str) -> CaptionRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {CAPTION_COLUMNS} FROM {table} WHERE {KEY_WHERE}", key_params(key)
            ).fetchone()
        return caption_from_row(row, self.path, table) if row else None

    def list_captions(
        self,
        fingerprint: str,
        identity: str,
        width: int | None = None,
        depth: int | None = None,
    ) -> list[CaptionRecord]:
        """Captions of a video by one captioner, coarse levels first, in time order.

        Pass the tree's ``width``: captions made for another width share node
        ids but not spans, and are only listed without it (for stats, exports
        of everything).
        """
        where, params = filters(fingerprint=fingerprint, identity=identity, width=width)
        with self._read() as conn:
            rows = conn.execute(f"SELECT {CAPTION_COLUMNS} FROM captions{where}", params).fetchall()
        records = [caption_from_row(row, self.path) for row in rows]
        if depth is not None:
            records = [r for r in records if len(r.node_id) == depth]
        return sorted(records, key=lambda r: (r.width, len(r.node_id), r.node_id))

    def delete_captions(
        self,
        fingerprint: str,
        identity: str,
        width: int | None = None,
        nodes: Iterable[NodeId] | None = None,
    ) -> int:
        """Forget captions: all of a video and captioner, or only some; count them."""
        where, params = filters(fingerprint=fingerprint, identity=identity, width=width)
        with self._write() as conn:
            if nodes is None:
                return conn.execute(f"DELETE FROM captions{where}", params).rowcount
            return sum(
                conn.execute(
                    f"DELETE FROM captions{where} AND node = ?", (*params, format_node_id(n))
                ).rowcount
                for n in nodes
            )

    # staged captions (a --force rebuild) -----------------------------------------

    def stage_caption(self, record: CaptionRecord) -> CaptionRecord:
        """Keep a rebuild's new caption aside; the old one is served until :meth:`swap_staged`.

        First staged caption of a key wins, as in :meth:`put_caption`.
        """
        return self._put_one(record, False, "staged_captions")

    def get_staged(self, key: CaptionKey) -> CaptionRecord | None:
        return self._get_one(key, "staged_captions")

    def staged_nodes(self, fingerprint: str, identity: str, width: int) -> set[NodeId]:
        """Nodes an unfinished rebuild has remade already (read without decoding the rows)."""
        where, params = filters(fingerprint=fingerprint, identity=identity, width=width)
        with self._read() as conn:
            rows = conn.execute(f"SELECT node FROM staged_captions{where}", params).fetchall()
        return {_node(row[0], self.path) for row in rows}

    def swap_staged(
        self, fingerprint: str, identity: str, width: int, nodes: Iterable[NodeId]
    ) -> int:
        """Replace the served captions of ``nodes`` by their staged ones, in one transaction.

        Readers see all old or all new captions of the nodes, never a gap; a
        node with nothing staged keeps its caption. Returns how many were swapped.
        """
        where, params = filters(fingerprint=fingerprint, identity=identity, width=width)
        swapped = 0
        with self._write() as conn:
            for node in nodes:
                node_params = (*params, format_node_id(node))
                swapped += conn.execute(
                    f"INSERT INTO captions ({CAPTION_COLUMNS}) SELECT {CAPTION_COLUMNS} "
                    f"FROM staged_captions{where} AND node = ? ON CONFLICT(fingerprint, "
                    "width, node, identity) DO UPDATE SET text = excluded.text, "
                    "frame_times = excluded.frame_times, frame_ids = excluded.frame_ids, "
                    "seconds = excluded.seconds, frames_decoded = excluded.frames_decoded, "
                    "prompt_tokens = excluded.prompt_tokens, "
                    "completion_tokens = excluded.completion_tokens, "
                    "created_at = excluded.created_at",
                    node_params,
                ).rowcount
                conn.execute(f"DELETE FROM staged_captions{where} AND node = ?", node_params)
        return swapped

    # claims --------------------------------------------------------------------

    def claim(
        self, key: CaptionKey, owner: ClaimOwner, lease: float, staged: bool = False
    ) -> Claim:
        """Claim the making of a caption, unless it is stored or someone else is making it.

        One transaction reads the caption (the staged one for a rebuild) and
        the claim, so a caption stored and released between two steps can't
        be made twice. A claim whose lease ran out, or whose process on this
        host is gone, is taken over. Claiming again what one holds renews it.
        """
        table = "staged_captions" if staged else "captions"
        now = time.time()
        with self._write() as conn:
            params = key_params(key)
            row = conn.execute(
                f"SELECT {CAPTION_COLUMNS} FROM {table} WHERE {KEY_WHERE}", params
            ).fetchone()
            if row is not None:
                return Claim(ours=False, record=caption_from_row(row, self.path, table))
            held = conn.execute(
                f"SELECT owner, host, pid, expires_at FROM claims WHERE {KEY_WHERE}", params
            ).fetchone()
            if held is not None and held[0] != owner.name and not lapsed(*held[1:], now):
                return Claim(ours=False, holder=held[0], expires_at=held[3])
            conn.execute(
                "INSERT INTO claims (fingerprint, width, node, identity, owner, host, pid, "
                "claimed_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(fingerprint, width, node, identity) DO UPDATE SET "
                "owner = excluded.owner, host = excluded.host, pid = excluded.pid, "
                "claimed_at = excluded.claimed_at, expires_at = excluded.expires_at",
                (*params, owner.name, owner.host, owner.pid, now, now + lease),
            )
        return Claim(ours=True, holder=owner.name, expires_at=now + lease)

    def renew_claims(self, keys: Iterable[CaptionKey], owner: ClaimOwner, lease: float) -> int:
        """Extend the leases ``owner`` still holds (a long call must not lose its claim)."""
        expires = time.time() + lease
        with self._write() as conn:
            return sum(
                conn.execute(
                    f"UPDATE claims SET expires_at = ? WHERE {KEY_WHERE} AND owner = ?",
                    (expires, *key_params(key), owner.name),
                ).rowcount
                for key in keys
            )

    def release_claim(self, key: CaptionKey, owner: ClaimOwner) -> bool:
        """Give a claim up (caption stored, or the call failed); True if it was still ours."""
        with self._write() as conn:
            cursor = conn.execute(
                f"DELETE FROM claims WHERE {KEY_WHERE} AND owner = ?",
                (*key_params(key), owner.name),
            )
            return cursor.rowcount > 0

    # failures ------------------------------------------------------------------

    def record_failure(
        self,
        key: CaptionKey,
        error: str,
        seconds: float = 0.0,
        frames_decoded: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> FailureRecord:
        """Remember a node's latest error, count the attempt and add what it spent."""
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO failures ({FAILURE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, NULL) "
                "ON CONFLICT(fingerprint, width, node, identity) DO UPDATE SET "
                "error = excluded.error, attempts = failures.attempts + 1, "
                "last_at = excluded.last_at, seconds = failures.seconds + excluded.seconds, "
                "frames_decoded = failures.frames_decoded + excluded.frames_decoded, "
                "prompt_tokens = failures.prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = failures.completion_tokens + excluded.completion_tokens, "
                "resolved_at = NULL",
                (
                    *key_params(key),
                    one_line(error, 500),
                    time.time(),
                    float(seconds),
                    int(frames_decoded),
                    int(prompt_tokens),
                    int(completion_tokens),
                ),
            )
            row = conn.execute(
                f"SELECT {FAILURE_COLUMNS} FROM failures WHERE {KEY_WHERE}", key_params(key)
            ).fetchone()
            return failure_from_row(row, self.path)

    def clear_failure(self, key: CaptionKey) -> bool:
        """Mark a node's failure resolved (its cost stays counted); True if there was one."""
        with self._write() as conn:
            return _resolve_failure(conn, key) > 0

    def list_failures(
        self,
        fingerprint: str | None = None,
        identity: str | None = None,
        width: int | None = None,
        resolved: bool = False,
    ) -> list[FailureRecord]:
        """Nodes whose last attempt failed (and with ``resolved`` those made since)."""
        where, params = filters(fingerprint=fingerprint, width=width, identity=identity)
        if not resolved:
            where += (" AND" if where else " WHERE") + " resolved_at IS NULL"
        with self._read() as conn:
            rows = conn.execute(f"SELECT {FAILURE_COLUMNS} FROM failures{where}", params).fetchall()
        records = [failure_from_row(row, self.path) for row in rows]
        return sorted(records, key=lambda r: (r.fingerprint, r.identity, len(r.node_id), r.node_id))

    # artifacts -----------------------------------------------------------------

    def get_artifact(self, fingerprint: str, key: str) -> Any | None:
        """A stored JSON value, or None when absent (so don't store a bare null)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT value FROM artifacts WHERE fingerprint = ? AND key = ?",
                (fingerprint, key),
            ).fetchone()
        return artifact_from_row(row[0], self.path, fingerprint, key) if row else None

    def put_artifact(self, fingerprint: str, key: str, value: Any) -> None:
        """Store a JSON-serialisable value, replacing any previous one."""
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO artifacts (fingerprint, key, value, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(fingerprint, key) DO UPDATE SET value = excluded.value, "
                "created_at = excluded.created_at",
                (fingerprint, key, text, time.time()),
            )

    def artifacts(self, fingerprint: str) -> ArtifactCache:
        """The artifact cache of one video, as captioners receive it."""
        return ArtifactCache(self, fingerprint)

    # stats ---------------------------------------------------------------------

    def stats(self, fingerprint: str | None = None, identity: str | None = None) -> StoreStats:
        """Counts and summed cost, failed attempts included, for reports."""
        where, params = filters(fingerprint=fingerprint, identity=identity)
        fp_where, fp_params = filters(fingerprint=fingerprint)
        spend = (
            "COALESCE(SUM(seconds), 0), COALESCE(SUM(frames_decoded), 0), "
            "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)"
        )
        with self._read() as conn:
            totals = conn.execute(f"SELECT COUNT(*), {spend} FROM captions{where}", params)
            totals = totals.fetchone()
            by_identity = dict(
                conn.execute(
                    f"SELECT identity, COUNT(*) FROM captions{where} GROUP BY identity", params
                ).fetchall()
            )
            failed = conn.execute(
                "SELECT COALESCE(SUM(resolved_at IS NULL), 0), COALESCE(SUM(attempts), 0), "
                f"{spend} FROM failures{where}",
                params,
            ).fetchone()
            videos = conn.execute(f"SELECT COUNT(*) FROM videos{fp_where}", fp_params).fetchone()
            artifacts = conn.execute(
                f"SELECT COUNT(*) FROM artifacts{fp_where}", fp_params
            ).fetchone()
        return StoreStats(
            videos=videos[0],
            captions=totals[0],
            failures=int(failed[0]),
            artifacts=artifacts[0],
            seconds=float(totals[1]),
            frames_decoded=int(totals[2]),
            prompt_tokens=int(totals[3]),
            completion_tokens=int(totals[4]),
            captions_by_identity=by_identity,
            failed_attempts=int(failed[1]),
            failed_seconds=float(failed[2]),
            failed_frames_decoded=int(failed[3]),
            failed_prompt_tokens=int(failed[4]),
            failed_completion_tokens=int(failed[5]),
        )


@dataclass(frozen=True)
class ArtifactCache:
    """Per-video key/value cache (speech transcript, shot cuts, ...) kept in the store.

    Captioners get one through ``CaptionContext.artifacts`` so work shared by
    many nodes of a video is done once across nodes, threads and runs.
    Namespace keys by what made them, e.g. ``"speech:whisper-base:v1"``.
    """

    store: CaptionStore
    fingerprint: str

    def get(self, key: str) -> Any | None:
        return self.store.get_artifact(self.fingerprint, key)

    def put(self, key: str, value: Any) -> None:
        self.store.put_artifact(self.fingerprint, key, value)


# helpers ---------------------------------------------------------------------------


def _resolve_failure(conn: sqlite3.Connection, key: CaptionKey) -> int:
    """Close a node's open failure; the row and what it spent stay for the accounts."""
    return conn.execute(
        f"UPDATE failures SET resolved_at = ? WHERE {KEY_WHERE} AND resolved_at IS NULL",
        (time.time(), *key_params(key)),
    ).rowcount


def _node(text: str, path: Path) -> NodeId:
    """A node id column; a damaged one names the store (a staged row: rerun --force)."""
    try:
        return parse_node_id(text)
    except ValueError as exc:
        raise DamagedRowError(
            f"caption store {path}: a staged caption has a damaged node ({one_line(exc, 120)}); "
            f"delete the staged rows: sqlite3 {shlex.quote(str(path))} 'DELETE FROM staged_captions'"
        ) from None


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """Turn SQLite's message into one line a user can act on."""
    message = str(exc)
    if "file is not a database" in message:
        return StoreError(f"caption store {path} is not a SQLite database")
    if "malformed" in message:
        return StoreError(f"caption store {path} is corrupt ({message}); move it aside")
    if "readonly" in message:
        return StoreError(f"caption store {path} is read-only")
    if "unable to open" in message:
        return StoreError(f"cannot open caption store {path} ({message})")
    if "locked" in message:
        return StoreError(f"caption store {path} stayed locked by another process ({message})")
    return StoreError(f"caption store {path}: {one_line(message, 500)}")
