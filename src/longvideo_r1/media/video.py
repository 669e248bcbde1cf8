"""Video files: metadata, frames at times or indices, audio, content fingerprint.

Everything above this module asks it two questions: "what does the video look
like at time t?" and "how long is it, really?". Both are answered from the
video packets' own timestamps, never from the container header, which can be
wrong (AVI headers count clock ticks rather than frames; edited or damaged
files carry stale durations). :attr:`VideoInfo.container_duration` keeps the
header's claim for diagnostics.

Time axis. ``t = 0`` is the first displayed video frame; every time in and
out of this module (frames, audio windows) is on that axis. The frame shown at
``t`` is the last frame whose presentation time is ``<= t`` (the first frame
for earlier ``t``), so variable-frame-rate video is sampled exactly.

Index. :meth:`Video.open` demuxes the video stream once without decoding
(other streams are discarded unread) and keeps, in numpy arrays, every
frame's presentation timestamp and every keyframe's timestamp: about 16 bytes
per frame, 3 MB for two hours at 25 fps. Measured on the 2-core build
machine with a warm page cache: 0.05 s for the 2.5-minute test video, 1.05 s
for a 2-hour 640x360 H.264 file (180,000 frames, 364 MB); reading the packets
through PyAV is the floor there (0.7 s). It also decodes the first frame,
which proves the stream decodes and yields the display matrix (rotation).

Sampling. Requested times are mapped to frame indices, sorted and
de-duplicated; the decoder seeks to the keyframe before the first target,
decodes forward, and seeks again only when a keyframe lies between the
current position and the next target (decoding through is never cheaper
then). Each frame is converted to RGB at its final size straight from the
decoder's YUV planes, so an 8000x8000 source never exists as a full-size RGB
image and memory does not grow with video length or with the number of frames
skipped. Measured on the test video (GOP 2 s): a leaf's 32 frames at 512 px in
0.08 s, a medium node's 64 at 362 px in 0.18 s, a high node's 128 at 256 px
in 0.8 s; on the 2-hour loop a high node (30 minutes, 128 frames, one seek
each) in 2.1 s, peak RSS 143 MB.

Cost. A sampled frame costs every frame decoded from the keyframe before it,
so a sparse call decodes many more frames than it returns (the embedded
captioner's plans on the test video: about 21x for a high node, 5x for a
leaf). Each sampling call returns :class:`Frames`, a list that also carries
``decoded``: the frames *this call* decoded, the number to charge to the call.
:attr:`Video.frames_decoded` is the running total over all calls of the
object; with several threads sampling at once, the change in it around one
call includes the others' work.

Threads. A PyAV container is not thread-safe, so each sampling call borrows a
container of its own from a small per-video pool (opening a new one when all
are busy) and returns it afterwards. Calls from several threads run in
parallel (PyAV releases the GIL while demuxing and decoding) and never share
decoder state; the pool only saves re-parsing the file header on every call.
The pool and the running decoded-frame total are guarded by one lock each. Four
threads sampling the 2-hour loop finish in about half the sequential time on
two cores.

Errors. Every failure a user can cause (missing file, directory, empty,
not a video, audio-only, truncated, corrupt) raises :class:`VideoError` with
one line naming the file; PyAV exceptions never escape. A truncated file is
caught on open (its own sample index points past its end). Damaged frame data
inside an intact file can only be found by decoding it: a sampling call that
reaches it raises, naming the time, rather than returning concealed garbage,
so the caption layer records a failure for that node and carries on.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import av
import numpy as np
from PIL import Image

from longvideo_r1.errors import VideoError
from longvideo_r1.media.decode import (
    _AV_ERRORS,
    _build_index,
    _check_file,
    _check_not_truncated,
    _configure_decoder,
    _decode_audio,
    _decoded_frames,
    _Display,
    _frame_pts,
    _Index,
    _open_container,
    _probe_display,
    _reason,
    _scaled_size,
    _upright,
    _video_only,
    _video_stream,
)

_T = TypeVar("_T")
_RESIZE = "AREA"
"""swscale interpolation for downscaling: the fastest of the good filters here."""

_FINGERPRINT_CHUNK = 1 << 20
_FINGERPRINT_VERSION = b"lvr1-fingerprint-v1"
_POOL_MAX_IDLE = 4
_MAX_RESEEKS = 8
_SUBTITLE_SUFFIXES = (".srt", ".vtt")


@dataclass(frozen=True)
class StreamInfo:
    """One stream of the container, as a user would list it."""

    index: int
    kind: str  # "video" | "audio" | "subtitle" | "data"
    codec: str
    language: str | None


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, measured from its packets rather than its header."""

    path: Path
    size_bytes: int
    duration: float
    container_duration: float | None
    fps: float
    n_frames: int
    width: int
    height: int
    rotation: int
    has_audio: bool
    streams: tuple[StreamInfo, ...]


@dataclass
class Frame:
    """One decoded frame: its presentation time (seconds), index and RGB image.

    ``time`` is when this frame starts being shown, which is at or before the
    time that was asked for; ``image`` is upright with longest side <= max_side.
    """

    time: float
    index: int
    image: Image.Image


class Frames(list[Frame]):
    """The frames of one sampling call, in request order, and what the call decoded.

    A plain list of :class:`Frame` to everything that only wants the frames.
    ``decoded`` counts the frames the decoder produced for this call: each
    sampled frame costs the frames from the keyframe before it, so it is at
    least the number of distinct frames returned, and many times that for
    sparse samples. Slicing or copying gives a plain list without it.
    """

    decoded: int

    def __init__(self, frames: Iterable[Frame] = (), decoded: int = 0) -> None:
        super().__init__(frames)
        self.decoded = decoded

    def __repr__(self) -> str:
        return f"Frames({list.__repr__(self)}, decoded={self.decoded})"


@dataclass
class _Run:
    """One seek-and-decode-forward pass of a sampling call."""

    container: av.container.InputContainer
    key: int  # position in the keyframe list to seek to
    targets: list[int]  # sorted distinct frame indices of the whole call
    pos: int  # next target to fill
    max_side: int | None
    decoded: int = 0
    overshot: bool = False


class Video:
    """An opened video file. Use :meth:`open`; close it or use it as a context manager."""

    def __init__(self, path: Path, info: VideoInfo, index: _Index, display: _Display) -> None:
        """Internal: use :meth:`Video.open`, which validates and indexes the file."""
        self.path = path
        self.info = info
        self._index = index
        self._display = display
        self._fingerprint: str | None = None
        self._count_lock = threading.Lock()
        self._frames_decoded = 0
        self._pool_lock = threading.Lock()
        self._pool: list[av.container.InputContainer] = []
        self._closed = False

    # opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Video:
        """Open, validate and index a video file, or raise a one-line :class:`VideoError`."""
        path = Path(path).expanduser()
        size = _check_file(path)
        container = _open_container(path)
        try:
            stream = _video_stream(container, path)
            index = _build_index(container, stream, path)
            _check_not_truncated(stream, path, size)
            display = _probe_display(path)
            info = _make_info(path, size, container, stream, index, display)
        finally:
            container.close()
        return cls(path, info, index, display)

    # identity --------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """sha256 hex of the file size and three 1 MiB chunks (start, middle, end).

        It identifies the *content*, not the path: a copy elsewhere has the same
        fingerprint, an edited file a different one (unless the edit misses all
        sampled chunks and keeps the size). Reading 3 MiB keeps it instant on
        multi-gigabyte files; caches key on it.
        """
        if self._fingerprint is None:
            self._fingerprint = file_fingerprint(self.path)
        return self._fingerprint

    @property
    def frames_decoded(self) -> int:
        """Frames actually decoded so far by all calls on this object (not just returned).

        A running total shared by every thread; the cost of one call is its
        result's :attr:`Frames.decoded`.
        """
        with self._count_lock:
            return self._frames_decoded

    def _count(self, n: int) -> None:
        with self._count_lock:
            self._frames_decoded += n

    # frames ----------------------------------------------------------------------------

    def frames_at(self, times: Iterable[float], max_side: int | None = None) -> Frames:
        """The frame shown at each time, in request order (duplicates allowed).

        Times before the first frame give the first frame, times past the end
        the last. ``max_side`` bounds the longest side of the upright image
        (aspect kept, never upscaled); ``None`` keeps the display size. The
        result's ``decoded`` is how many frames this call decoded.
        """
        indices = []
        for t in times:
            t = float(t)
            if not math.isfinite(t):
                raise VideoError(f"cannot sample time {t} from {self.path}: not a finite number")
            indices.append(self._index.frame_at(t))
        return self._frames(indices, max_side)

    def frames_by_index(self, indices: Iterable[int], max_side: int | None = None) -> Frames:
        """Frames by display-order index in ``[0, n_frames)``, in request order (see ``frames_at``)."""
        wanted = [int(i) for i in indices]
        n = self.info.n_frames
        for i in wanted:
            if not 0 <= i < n:
                raise VideoError(f"frame index {i} is out of range 0..{n - 1} for {self.path}")
        return self._frames(wanted, max_side)

    def _frames(self, indices: Sequence[int], max_side: int | None) -> Frames:
        """Decode the distinct frames once, then answer in request order."""
        if max_side is not None and max_side < 1:
            raise VideoError(f"max_side must be a positive number of pixels, got {max_side}")
        if not indices:
            return Frames()
        images, decoded = self._with_container(
            lambda c: self._decode(c, sorted(set(indices)), max_side)
        )
        times = self._index.times
        return Frames(
            (Frame(time=float(times[i]), index=i, image=images[i]) for i in indices), decoded
        )

    def _decode(
        self, container: av.container.InputContainer, targets: list[int], max_side: int | None
    ) -> tuple[dict[int, Image.Image], int]:
        """Decode the sorted target frames, seeking only when a keyframe is in between.

        Returns the images by index and how many frames were decoded for them.
        """
        pts = self._index.pts
        images: dict[int, Image.Image] = {}
        decoded = 0
        pos = 0  # next target to fill
        reseeks = 0
        key = self._index.keyframe_before(int(pts[targets[0]]))
        while pos < len(targets):
            run = _Run(container, key, targets, pos, max_side)
            self._decode_run(run, images)
            self._count(run.decoded)
            decoded += run.decoded
            if run.overshot:
                # The demuxer landed after the frame we need (index quirks of some
                # containers): start one keyframe earlier.
                reseeks += 1
                if key == 0 or reseeks > _MAX_RESEEKS:
                    t = self._index.times[targets[pos]]
                    raise VideoError(f"cannot seek to {t:.3f} s in {self.path}")
                key -= 1
                continue
            pos = run.pos
            if pos < len(targets):
                key = self._index.keyframe_before(int(pts[targets[pos]]))
        return images, decoded

    def _decode_run(self, run: _Run, out: dict[int, Image.Image]) -> None:
        """Seek to ``run.key`` and decode forward, filling ``out`` from ``run.targets``.

        Each hit is converted to its small RGB image at once, so no full-size
        decoded picture outlives the next one. The run ends when all targets
        are filled, or right after a fill when the next target lies past a
        keyframe still ahead (the caller seeks there: decoding through would
        only cost more).
        """
        index, targets = self._index, run.targets
        seek_pts = int(index.key_pts[run.key])
        previous: av.VideoFrame | None = None
        try:
            stream = run.container.streams.video[0]
            run.container.seek(seek_pts, stream=stream, backward=True)
            for frame in _decoded_frames(run.container, stream):
                run.decoded += 1
                fpts = _frame_pts(frame, self.path)
                want = int(index.pts[targets[run.pos]])
                if previous is None and fpts > want and run.key > 0:
                    run.overshot = True
                    return
                filled = False
                while run.pos < len(targets) and fpts >= int(index.pts[targets[run.pos]]):
                    exact = fpts == int(index.pts[targets[run.pos]]) or previous is None
                    # A frame missing from the decoder output is answered with the
                    # last frame shown before it.
                    out[targets[run.pos]] = self._to_image(
                        frame if exact else previous, run.max_side
                    )
                    run.pos += 1
                    filled = True
                if run.pos == len(targets):
                    return
                if filled:
                    next_key = index.keyframe_before(int(index.pts[targets[run.pos]]))
                    if next_key > run.key and int(index.key_pts[next_key]) > fpts:
                        return
                previous = frame
        except _AV_ERRORS as exc:
            t = index.times[targets[min(run.pos, len(targets) - 1)]]
            raise VideoError(
                f"cannot decode {self.path} near {t:.3f} s (corrupt data?): {_reason(exc)}"
            ) from None
        # End of stream: targets past the last decodable frame get the last one.
        if previous is None:
            t = index.times[targets[run.pos]]
            raise VideoError(f"cannot decode {self.path} near {t:.3f} s: no frame decodes there")
        while run.pos < len(targets):
            out[targets[run.pos]] = self._to_image(previous, run.max_side)
            run.pos += 1

    def _to_image(self, frame: av.VideoFrame, max_side: int | None) -> Image.Image:
        """RGB at the final size straight from YUV, then turned upright."""
        width, height = _scaled_size(frame.width, frame.height, self._display.sar, max_side)
        try:
            rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation=_RESIZE)
            image = rgb.to_image()
        except _AV_ERRORS as exc:
            raise VideoError(f"cannot convert a frame of {self.path}: {_reason(exc)}") from None
        return _upright(image, self._display.rotation)

    # audio -----------------------------------------------------------------------------

    def audio(
        self, sample_rate: int = 16000, start: float | None = None, end: float | None = None
    ) -> np.ndarray:
        """Mono float32 samples of ``[start, end)`` seconds (default: all), at ``sample_rate``.

        Only the window is decoded (the demuxer seeks first). The result is
        ``round((end - start) * sample_rate)`` samples long unless the audio
        stream ends sooner. Raises :class:`VideoError` if there is no audio.
        """
        if not self.info.has_audio:
            raise VideoError(f"{self.path} has no audio stream")
        if sample_rate < 1:
            raise VideoError(f"sample_rate must be positive, got {sample_rate}")
        lo = max(0.0, float(start) if start is not None else 0.0)
        hi = float(end) if end is not None else math.inf
        if not (math.isfinite(lo) and hi > lo):
            return np.zeros(0, dtype=np.float32)
        container = _open_container(self.path)
        try:
            return _decode_audio(container, self._index, sample_rate, lo, hi)
        except _AV_ERRORS as exc:
            raise VideoError(f"cannot decode audio of {self.path}: {_reason(exc)}") from None
        finally:
            container.close()

    # subtitles -------------------------------------------------------------------------

    def subtitle_path(self) -> Path | None:
        """A ``.srt``/``.vtt`` beside the file with the same stem (also ``stem.<lang>.srt``)."""
        return find_subtitle_file(self.path)

    # containers ------------------------------------------------------------------------

    def _with_container(self, work: Callable[[av.container.InputContainer], _T]) -> _T:
        """Run ``work(container)`` on a container no other thread is using."""
        container = self._borrow()
        ok = False
        try:
            result = work(container)
            ok = True
            return result
        finally:
            self._give_back(container, healthy=ok)

    def _borrow(self) -> av.container.InputContainer:
        with self._pool_lock:
            if self._closed:
                raise VideoError(f"{self.path} was closed; open it again to read frames")
            if self._pool:
                return self._pool.pop()
        container = _open_container(self.path)
        stream = container.streams.video[0]
        _video_only(container, stream)
        _configure_decoder(stream)
        return container

    def _give_back(self, container: av.container.InputContainer, healthy: bool) -> None:
        with self._pool_lock:
            if healthy and not self._closed and len(self._pool) < _POOL_MAX_IDLE:
                self._pool.append(container)
                return
        container.close()

    def close(self) -> None:
        """Release the pooled containers; later frame reads raise :class:`VideoError`."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for container in pool:
            container.close()

    def __enter__(self) -> Video:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Video({str(self.path)!r}, {i.duration:.2f} s, {i.n_frames} frames, "
            f"{i.width}x{i.height})"
        )


# ---------------------------------------------------------------------------------------
# helpers: files


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content fingerprint of a file: sha256 of its size and start/middle/end 1 MiB chunks."""
    path = Path(path)
    try:
        size = path.stat().st_size
        digest = hashlib.sha256(_FINGERPRINT_VERSION + struct.pack("<Q", size))
        with path.open("rb") as fh:
            if size <= 3 * _FINGERPRINT_CHUNK:
                digest.update(fh.read())
            else:
                for offset in (0, (size - _FINGERPRINT_CHUNK) // 2, size - _FINGERPRINT_CHUNK):
                    fh.seek(offset)
                    digest.update(fh.read(_FINGERPRINT_CHUNK))
    except OSError as exc:
        raise VideoError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def find_subtitle_file(video_path: str | os.PathLike[str]) -> Path | None:
    """``stem.srt``/``stem.vtt`` beside the video, else ``stem.<lang>.srt``/``.vtt``.

    Exact-stem files win; among language-tagged ones the alphabetically first
    is taken so the choice is stable.
    """
    video_path = Path(video_path)
    for suffix in _SUBTITLE_SUFFIXES:
        candidate = video_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    try:
        siblings = sorted(video_path.parent.iterdir())
    except OSError:
        return None
    prefix = video_path.stem + "."
    for candidate in siblings:
        name = candidate.name
        if not (name.startswith(prefix) and candidate.suffix.lower() in _SUBTITLE_SUFFIXES):
            continue
        middle = name[len(prefix) : -len(candidate.suffix)]
        if middle and "." not in middle and candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------
# helpers: info


def _make_info(
    path: Path,
    size: int,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _Index,
    display: _Display,
) -> VideoInfo:
    width, height = _scaled_size(display.width, display.height, display.sar, None)
    if display.rotation in (90, 270):
        width, height = height, width
    n = len(index.pts)
    header = container.duration / av.time_base if container.duration else None
    return VideoInfo(
        path=path,
        size_bytes=size,
        duration=index.duration,
        container_duration=header,
        fps=n / index.duration,
        n_frames=n,
        width=width,
        height=height,
        rotation=display.rotation,
        has_audio=bool(container.streams.audio),
        streams=tuple(_stream_info(s) for s in container.streams),
    )


def _stream_info(stream: av.stream.Stream) -> StreamInfo:
    kind = stream.type if stream.type in ("video", "audio", "subtitle") else "data"
    try:
        codec = stream.codec_context.name if stream.codec_context else stream.codec.name
    except _AV_ERRORS + (AttributeError, ValueError):
        codec = "unknown"
    language = stream.language if stream.language not in (None, "und", "") else None
    return StreamInfo(index=stream.index, kind=kind, codec=codec, language=language)
