"""The PyAV side of :class:`~longvideo_r1.media.video.Video`: open, index, decode, resample.

Everything here talks to PyAV and turns its failures into one-line
:class:`VideoError` messages: opening and validating a file, the
timestamp index built by demuxing, decoder settings and frame geometry,
and decoding an audio window. Kept apart so that :mod:`longvideo_r1.media.video`
reads as the contract (what a video is, which frames a call returns, what it
cost) and this module as the mechanics behind it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from PIL import Image

from longvideo_r1.errors import VideoError

_TIME_EPS = 1e-6
"""Seconds of slack when mapping a time to a frame, so ``t = i / fps`` computed
in floating point still lands on frame ``i``."""

_AV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, MemoryError)


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


# ---------------------------------------------------------------------------------------
# helpers: files


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
