"""The videos a server offers: found under the data folder, opened once, thumbnails cached.

A video's id is the start of its content fingerprint, so it names the same
video whatever its path and a request never carries a path to open. Sessions
(video, tree, caption store, captioner) are opened the way ``lvr1 ask`` opens
them, once per video, and kept until the server stops. Uploads stream into a
temporary file in the data folder's ``uploads/`` and are renamed into place
only once they decode as a video; anything too large or undecodable is gone.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.concurrency import run_in_threadpool

from longvideo_r1.agent.session import VideoSession, tree_payload
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.config import Settings
from longvideo_r1.errors import VideoError
from longvideo_r1.files import atomic_path
from longvideo_r1.media.video import Video, file_fingerprint
from longvideo_r1.server.paths import VIDEO_SUFFIXES, DataDir, NotFound, ServerError
from longvideo_r1.tree import NodeId, parse_node_id

ID_LENGTH = 16
"""Hex digits of the fingerprint that make a video's id."""
THUMB_SIDE = 160
THUMBS_KEPT = 2048
"""Thumbnails held in memory (a few KB each), least recently used dropped first."""
UPLOAD_FOLDER = "uploads"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class UploadTooLarge(ServerError):
    """An upload over the server's size limit."""

    status = 413


class NotAVideo(ServerError):
    """An upload or a registered file that does not decode as a video."""

    status = 422


@dataclass(frozen=True)
class VideoEntry:
    """One video file of the data folder, as the list shows it."""

    id: str
    name: str
    size: int
    known: bool = False
    """lvr1 has opened it before (it is in the caption store): the page offers it first."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "size": self.size, "known": self.known}


class VideoLibrary:
    """Ids to files, open sessions and thumbnails of the data folder's videos; thread-safe."""

    def __init__(self, data: DataDir, settings: Settings, max_upload: int) -> None:
        self.data = data
        self.settings = settings
        self.max_upload = max_upload
        self._lock = threading.Lock()
        self._fingerprints: dict[tuple[Path, int, int], str] = {}
        self._paths: dict[str, Path] = {}
        self._sessions: dict[str, VideoSession] = {}
        self._opening: dict[str, threading.Lock] = {}
        self._thumbs: OrderedDict[tuple[str, NodeId], bytes] = OrderedDict()

    # finding ---------------------------------------------------------------------------

    def entries(self) -> list[VideoEntry]:
        """Every video file under the data folder (fingerprinted, not decoded: fast)."""
        found: dict[str, VideoEntry] = {}
        for path in self.data.videos():
            try:
                entry = self._entry(path)
            except VideoError:
                continue  # unreadable: not offered
            found.setdefault(entry.id, entry)
        known = self._known()
        return [replace(e, known=e.id in known) for e in found.values()]

    def _known(self) -> set[str]:
        """Ids of the videos the caption store has met (any lvr1 command that opened them)."""
        with CaptionStore(self.settings.store_path()) as store:
            return {v.fingerprint[:ID_LENGTH] for v in store.list_videos()}

    def entry(self, video_id: str) -> VideoEntry:
        """The video with this id, looking again at the folder if it is not known yet."""
        with self._lock:
            path = self._paths.get(video_id)
        if path is not None and path.is_file():
            return self._entry(path)
        for entry in self.entries():
            if entry.id == video_id:
                return entry
        raise NotFound(f"no video with id {video_id!r} in the data folder")

    def _entry(self, path: Path) -> VideoEntry:
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            fingerprint = self._fingerprints.get(key)
        if fingerprint is None:
            fingerprint = file_fingerprint(path)
        video_id = fingerprint[:ID_LENGTH]
        with self._lock:
            self._fingerprints[key] = fingerprint
            self._paths[video_id] = path
        return VideoEntry(video_id, self.data.name_of(path), stat.st_size)

    def register(self, relative: str) -> VideoEntry:
        """A file named inside the data folder, checked to decode, its session opened."""
        path = self.data.resolve(relative)
        if not path.is_file():
            raise NotFound(f"no file {relative!r} in the data folder")
        entry = self._entry(path)
        self.session(entry.id)
        return entry

    # sessions --------------------------------------------------------------------------

    def session(self, video_id: str) -> VideoSession:
        """The video's session, opened on first use (decoding its index) and then kept."""
        entry = self.entry(video_id)
        with self._lock:
            gate = self._opening.setdefault(video_id, threading.Lock())
        with gate:
            with self._lock:
                session = self._sessions.get(video_id)
            if session is not None:
                return session
            path = self.data.resolve(entry.name)
            try:
                session = VideoSession.open(path, self.settings)
            except VideoError as exc:
                raise NotAVideo(str(exc)) from None
            with self._lock:
                self._sessions[video_id] = session
            return session

    def tree(self, video_id: str) -> dict[str, Any]:
        """The tree with spans and whatever captions are cached, named by the data folder."""
        session = self.session(video_id)
        payload = tree_payload(session.video, session.tree, session.cached_captions())
        payload["video"] = self.entry(video_id).name
        payload["id"] = video_id
        return payload

    def file(self, video_id: str) -> Path:
        """The video's file, for the page's player (checked inside the folder again)."""
        return self.data.resolve(self.entry(video_id).name)

    def thumbnail(self, video_id: str, node_text: str) -> bytes:
        """One JPEG frame from the middle of a node's span, decoded once."""
        session = self.session(video_id)
        node = session.tree.node(session.tree.validate(parse_node_id(node_text)))
        key = (video_id, node.id)
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        frames = session.video.frames_at([(node.start + node.end) / 2], max_side=THUMB_SIDE)
        out = io.BytesIO()
        frames[0].image.convert("RGB").save(out, format="JPEG", quality=80)
        data = out.getvalue()
        with self._lock:
            self._thumbs[key] = data
            while len(self._thumbs) > THUMBS_KEPT:
                self._thumbs.popitem(last=False)
        return data

    # uploads ---------------------------------------------------------------------------

    def upload_target(self, name: str) -> Path:
        """Where an upload called ``name`` lands: ``uploads/`` under the data folder, a free
        name with a video suffix, never an existing file."""
        given = PurePosixPath(str(name).replace("\\", "/")).name
        suffix = PurePosixPath(given).suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            known = ", ".join(sorted(VIDEO_SUFFIXES))
            raise NotAVideo(f"an upload's name must end in a video suffix ({known}), got {name!r}")
        folder = self.data.root / UPLOAD_FOLDER
        folder.mkdir(exist_ok=True)
        if not self.data.holds(folder):
            raise ServerError(f"{UPLOAD_FOLDER}/ leads out of the data folder; uploads are off")
        stem = _UNSAFE.sub("_", PurePosixPath(given).stem).strip("._")[:100] or "upload"
        target, n = folder / f"{stem}{suffix}", 1
        while target.exists():
            n += 1
            target = folder / f"{stem}-{n}{suffix}"
        return target

    async def upload(
        self, name: str, declared: int | None, body: AsyncIterator[bytes]
    ) -> VideoEntry:
        """Stream ``body`` to a temporary file, refuse it past the limit, keep it only if it
        decodes; the temporary is removed on every refusal."""
        if declared is not None and declared > self.max_upload:
            raise UploadTooLarge(self._too_large(declared))
        target = self.upload_target(name)
        with atomic_path(target) as tmp:
            size = 0
            with tmp.open("wb") as out:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_upload:
                        raise UploadTooLarge(self._too_large(size, at_least=True))
                    out.write(chunk)
            if size == 0:
                raise NotAVideo("the upload is empty")
            await run_in_threadpool(_check_decodes, tmp, name)
        return self._entry(target)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        limit_mb = self.max_upload / (1 << 20)
        got = f"{'over ' if at_least else ''}{size} bytes"
        return f"the upload is too large ({got}); the limit is {limit_mb:g} MiB (--max-upload-mb)"

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()


def _check_decodes(path: Path, name: str) -> None:
    """Open and index the file as ``lvr1`` would, so a kept upload is one it can read."""
    try:
        Video.open(path).close()
    except VideoError as exc:
        reason = str(exc).replace(str(path), name)
        raise NotAVideo(f"the upload is not a decodable video: {reason}") from None
