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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import av
import av.error
import numpy as np
from PIL import Image

from longvideo_r1.errors import VideoError

_T = TypeVar("_T")
_RESIZE = "AREA"
"""swscale interpolation for downscaling: the fastest of the good filters here."""

_FINGERPRINT_CHUNK = 1 << 20
_FINGERPRINT_VERSION = b"lvr1-fingerprint-v1"
_POOL_MAX_IDLE = 4
_MAX_RESEEKS = 8
_TIME_EPS = 1e-6
"""Seconds of slack when mapping a time to a frame, so ``t = i / fps`` computed
in floating point still lands on frame ``i``."""

_AV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, MemoryError)
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


@dataclass(frozen=True)
class _Index:
    """Presentation timestamps of all frames and keyframes, in display order."""

    pts: np.ndarray  # int64, sorted, one per frame
    times: np.ndarray  # float64 seconds from the first frame
    key_pts: np.ndarray  # int64, sorted keyframe timestamps
    time_base: Fraction
    duration: float

    def frame_at(self, t: float) -> int:
        """Index of the frame shown at ``t``: last frame starting at or before it."""
        i = int(np.searchsorted(self.times, t + _TIME_EPS, side="right")) - 1
        return min(max(i, 0), len(self.pts) - 1)

    def keyframe_before(self, pts: int) -> int:
        """Position in ``key_pts`` of the last keyframe at or before ``pts`` (0 if none)."""
        return max(int(np.searchsorted(self.key_pts, pts, side="right")) - 1, 0)


@dataclass(frozen=True)
class _Display:
    """How decoded pictures map to upright display pictures."""

    width: int  # decoded picture size
    height: int
    sar: Fraction  # sample (pixel) aspect ratio
    rotation: int  # degrees counter-clockwise, one of 0, 90, 180, 270


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


def _check_file(path: Path) -> int:
    """Reject what is not a readable, non-empty regular file, naming it."""
    if not path.exists():
        raise VideoError(f"video file not found: {path}")
    if path.is_dir():
        raise VideoError(f"{path} is a directory, not a video file")
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as exc:
        raise VideoError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise VideoError(f"{path} is empty (0 bytes)")
    return size


def _reason(exc: BaseException) -> str:
    """The cause of a PyAV/OS error as one short line, without the path twice."""
    strerror = getattr(exc, "strerror", None)
    if strerror:
        text = str(strerror)
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _open_container(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except _AV_ERRORS as exc:
        raise VideoError(
            f"cannot open {path} as a video (not a media file, or corrupt): {_reason(exc)}"
        ) from None


def _video_stream(
    container: av.container.InputContainer, path: Path
) -> av.video.stream.VideoStream:
    """The first real video stream (cover art attached as a picture is not video)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    if not container.streams:
        raise VideoError(f"{path} contains no media streams (damaged, or not a video)")
    kinds = ", ".join(sorted({s.type for s in container.streams}))
    raise VideoError(f"{path} has no video stream (only {kinds})")


# ---------------------------------------------------------------------------------------
# helpers: index


def _build_index(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> _Index:
    """Demux (no decoding) every video packet and keep display timestamps and keyframes."""
    all_pts: list[int] = []
    key_pts: list[int] = []
    last_end = None
    _video_only(container, stream)
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                raise VideoError(
                    f"{path} has video packets without timestamps (a raw elementary stream?); "
                    "remux it first, e.g. ffmpeg -i IN -c copy OUT.mp4"
                )
            all_pts.append(pts)
            if packet.is_keyframe:
                key_pts.append(pts)
            end = pts + (packet.duration or 0)
            last_end = end if last_end is None else max(last_end, end)
    except _AV_ERRORS as exc:
        raise VideoError(f"cannot read the video packets of {path}: {_reason(exc)}") from None
    if not all_pts:
        raise VideoError(f"{path} has a video stream but no video frames")
    pts_arr = np.unique(np.asarray(all_pts, dtype=np.int64))
    keys = np.unique(np.asarray(key_pts, dtype=np.int64))
    if len(keys) == 0 or keys[0] > pts_arr[0]:
        # Streams whose first packet is not flagged (some AVI/TS files) still
        # decode from their start: treat the first frame as a seek point.
        keys = np.unique(np.concatenate([pts_arr[:1], keys]))
    time_base = stream.time_base or Fraction(1, 1)
    tb = float(time_base)
    times = (pts_arr - pts_arr[0]).astype(np.float64) * tb
    duration = _duration(pts_arr, last_end, tb)
    return _Index(pts=pts_arr, times=times, key_pts=keys, time_base=time_base, duration=duration)


def _duration(pts: np.ndarray, last_end: int | None, tb: float) -> float:
    """First frame start to last frame end; the last frame lasts a typical interval
    when its packet does not say."""
    last_pts = int(pts[-1])
    if last_end is None or last_end <= last_pts:
        step = float(np.median(np.diff(pts))) if len(pts) > 1 else 0.0
        last_end = last_pts + step
    span = (last_end - int(pts[0])) * tb
    if span <= 0:
        span = 1.0 / 25.0  # a single still frame: give it one nominal frame of time
    return float(span)


def _check_not_truncated(stream: av.video.stream.VideoStream, path: Path, size: int) -> None:
    """A file whose own sample index points past its end was cut short."""
    try:
        entries = stream.index_entries
        n = len(entries)
        if n == 0:
            return
        last = entries[n - 1]
        end = int(last.pos) + int(last.size)
    except _AV_ERRORS + (AttributeError, IndexError):
        return
    if last.pos >= 0 and end > size:
        raise VideoError(
            f"{path} is truncated: its index needs {end} bytes but the file has {size}"
        )


def _probe_display(path: Path) -> _Display:
    """Decode the first frame: proves the stream decodes and gives the rotation.

    A fresh container reads from the start without seeking, so formats that
    cannot seek still open.
    """
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        _configure_decoder(stream)
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        frames = _decoded_frames(container, stream)
        try:
            frame = next(frames, None)
        finally:
            frames.close()
    except _AV_ERRORS as exc:
        raise VideoError(f"cannot decode the first frame of {path}: {_reason(exc)}") from None
    finally:
        container.close()
    if frame is None:
        raise VideoError(f"{path} has video packets but none of them decodes (corrupt?)")
    try:
        rotation = (round(frame.rotation / 90) * 90) % 360
    except _AV_ERRORS + (ValueError, TypeError, AttributeError):
        rotation = 0
    if not sar or sar <= 0:
        sar = Fraction(1, 1)
    return _Display(width=frame.width, height=frame.height, sar=Fraction(sar), rotation=rotation)


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


# ---------------------------------------------------------------------------------------
# helpers: decoding


def _video_only(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> None:
    """Tell the demuxer to skip other streams' data: about 25% faster indexing."""
    for other in container.streams:
        if other.index != stream.index:
            other.discard = av.stream.Discard.all


def _configure_decoder(stream: av.video.stream.VideoStream) -> None:
    """Let FFmpeg pick slice/frame threads; huge frames use one thread to bound memory."""
    pixels = (stream.width or 0) * (stream.height or 0)
    if pixels > 4096 * 2160:
        stream.thread_type = "SLICE"
    else:
        stream.thread_type = "AUTO"


def _decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.VideoFrame]:
    """Frames from the current demuxer position to the end, flushing the decoder at EOF.

    Pre-roll packets (edit lists) are decoded too; FFmpeg drops their frames.
    """
    for packet in container.demux(stream):
        yield from packet.decode()


def _frame_pts(frame: av.VideoFrame, path: Path) -> int:
    if frame.pts is not None:
        return int(frame.pts)
    if frame.dts is not None:
        return int(frame.dts)
    raise VideoError(
        f"{path} decodes to frames without timestamps; remux it (ffmpeg -i IN -c copy OUT.mp4)"
    )


def _scaled_size(width: int, height: int, sar: Fraction, max_side: int | None) -> tuple[int, int]:
    """Display size (pixel aspect applied) bounded by ``max_side``; never upscaled.

    Returned as the size to convert the decoded (unrotated) picture to; the
    rotation only swaps the sides afterwards.
    """
    shown_w_f, h_f = float(width * sar), float(height)
    scale = 1.0
    if max_side is not None and max(shown_w_f, h_f) > max_side:
        scale = max_side / max(shown_w_f, h_f)
    return max(1, round(shown_w_f * scale)), max(1, round(h_f * scale))


_TRANSPOSE = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def _upright(image: Image.Image, rotation: int) -> Image.Image:
    """Apply the display matrix rotation (counter-clockwise degrees, as FFmpeg reports it)."""
    op = _TRANSPOSE.get(rotation)
    return image.transpose(op) if op is not None else image


# ---------------------------------------------------------------------------------------
# helpers: audio


def _decode_audio(
    container: av.container.InputContainer, index: _Index, rate: int, lo: float, hi: float
) -> np.ndarray:
    """Decode ``[lo, hi)`` seconds (video time axis) of the first audio stream to mono float32.

    Sample ``k`` of the result is at ``lo + k / rate``: if the audio stream
    starts after ``lo`` the gap is filled with silence so speech stays aligned
    with frames and subtitles.
    """
    stream = container.streams.audio[0]
    origin = float(index.pts[0] * index.time_base)  # video t=0 in absolute seconds
    start_abs, end_abs = origin + lo, origin + hi
    tb = stream.time_base or Fraction(1, av.time_base)
    container.seek(max(0, int(start_abs / tb)), stream=stream, backward=True)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks: list[np.ndarray] = []
    first_time: float | None = None
    for frame in _audio_frames(container, stream, end_abs):
        if first_time is None:
            first_time = frame.time if frame.time is not None else start_abs
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if first_time is None or not chunks:
        return np.zeros(0, dtype=np.float32)
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    offset = round((first_time - start_abs) * rate)
    if offset > 0:
        samples = np.concatenate([np.zeros(offset, dtype=np.float32), samples])
        offset = 0
    begin = -offset
    want = round((hi - lo) * rate) if math.isfinite(hi) else len(samples) - begin
    return np.ascontiguousarray(samples[begin : begin + max(0, want)])


def _audio_frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, end_abs: float
) -> Iterator[av.AudioFrame]:
    """Decoded audio frames from the current position until ``end_abs`` seconds."""
    for packet in container.demux(stream):
        for frame in packet.decode():
            if frame.time is not None and frame.time >= end_abs:
                return
            yield frame
