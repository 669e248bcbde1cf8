"""Bad and odd input files: small synthetic videos that each break one assumption.

Truncated, corrupt, lying header, variable frame rate, rotation, no audio,
huge resolution ...: the video layer's error paths and edge cases are tested
on these. They need only the bundled ffmpeg (no espeak, no opencv-doc), and
each tricky one is checked to have the property it is named for, down to
patching a Matroska header in place (the EBML helpers at the end).
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import av

from longvideo_r1.errors import VideoError
from longvideo_r1.testing.sources import (
    _EXACT,
    Log,
    _ffmpeg,
    _log,
    _read_json,
)

BAD_RECIPE = 1
"""Version of the bad-input recipe; bump when a fixture changes."""


def build_bad_inputs(
    directory: str | os.PathLike[str], *, log: Log | None = None
) -> dict[str, Path]:
    """Write small synthetic files that each break one assumption; returns them by name.

    Needs only the bundled ffmpeg (no espeak, no opencv-doc). Must raise
    :class:`VideoError` on open: ``missing``, ``directory``, ``empty``, ``text``,
    ``truncated`` (moov lost), ``truncated_faststart`` (index intact, data cut),
    ``corrupt_index``, ``audio_only``. Opens, then raises when the damaged part
    is decoded: ``corrupt`` (garbage in the middle of the frame data). Valid
    but unusual (must work): ``sample`` (the clean 6 s source of the damaged
    ones), ``no_audio``, ``huge`` (8000x8000), ``vfr`` (30 fps, then 5 fps, then
    30 fps), ``lying_duration`` (Matroska header claims 3x the real length),
    ``rotated`` (display matrix: 90 degrees counter-clockwise).
    """
    root = Path(directory).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    paths = _bad_paths(root)
    stamp = root / "bad_inputs.json"
    if _read_json(stamp) == {"recipe_version": BAD_RECIPE} and all(
        p.exists() for k, p in paths.items() if k != "missing"
    ):
        return paths
    _log(log, f"writing bad-input fixtures into {root} ...")
    for writer in _BAD_WRITERS:
        writer(paths)
    _check_odd_inputs(paths)
    stamp.write_text(json.dumps({"recipe_version": BAD_RECIPE}) + "\n")
    return paths


def _bad_paths(root: Path) -> dict[str, Path]:
    names = {
        "missing": "missing.mp4",
        "directory": "directory.mp4",
        "empty": "empty.mp4",
        "text": "notes.mp4",
        "sample": "sample.mp4",
        "truncated": "truncated.mp4",
        "truncated_faststart": "truncated_faststart.mp4",
        "corrupt": "corrupt.mp4",
        "corrupt_index": "corrupt_index.mp4",
        "audio_only": "audio_only.m4a",
        "no_audio": "no_audio.mp4",
        "huge": "huge.mp4",
        "vfr": "vfr.mp4",
        "lying_duration": "lying_duration.mkv",
        "rotated": "rotated.mp4",
    }
    return {key: root / name for key, name in names.items()}


_X264 = "-c:v libx264 -preset veryfast -pix_fmt yuv420p -threads 2"
_PATTERN = "-f lavfi -i testsrc2=size=320x180:rate=25"
_VFR = "testsrc2=size=320x180:rate=30:duration=6,select=not(between(t\\,2\\,4))+not(mod(n\\,6))"
"""30 fps, then only every 6th frame (5 fps) from 2 s to 4 s, then 30 fps again."""


def _write_trivial(paths: dict[str, Path]) -> None:
    """Missing, directory, empty and text files."""
    paths["missing"].unlink(missing_ok=True)
    if paths["directory"].exists() and not paths["directory"].is_dir():
        paths["directory"].unlink()
    paths["directory"].mkdir(exist_ok=True)
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("These are meeting notes, not a video.\nSecond line.\n")


def _write_sample(paths: dict[str, Path]) -> None:
    """6 s of moving test pattern with a tone, moov at the end (as ffmpeg writes by default)."""
    _ffmpeg(
        "write the sample clip",
        f"{_PATTERN}:duration=6 -f lavfi -i sine=frequency=440:sample_rate=16000:duration=6",
        f"{_X264} -g 25 -bf 2 -c:a aac -b:a 48k {_EXACT}",
        paths["sample"],
    )


def _write_damaged(paths: dict[str, Path]) -> None:
    """Truncated, corrupt-data and corrupt-index variants of the sample."""
    data = paths["sample"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])  # the index (moov) is at the end
    fast = paths["truncated_faststart"].with_name(".faststart.mp4")
    _ffmpeg(
        "remux the sample", "-i", paths["sample"], f"-c copy -movflags +faststart {_EXACT}", fast
    )
    fast_data = fast.read_bytes()
    fast.unlink()
    paths["truncated_faststart"].write_bytes(fast_data[: len(fast_data) * 6 // 10])
    rng = random.Random(20240601)
    corrupt = bytearray(data)
    third = len(corrupt) // 3
    corrupt[third : 2 * third] = rng.randbytes(third)
    paths["corrupt"].write_bytes(bytes(corrupt))
    broken = bytearray(fast_data)
    moov = broken.find(b"moov")
    broken[moov + 40 : moov + 2000] = rng.randbytes(1960)
    paths["corrupt_index"].write_bytes(bytes(broken))


def _write_streams(paths: dict[str, Path]) -> None:
    """Audio-only, video-only and huge-resolution files."""
    _ffmpeg(
        "write the audio-only file",
        f"-f lavfi -i sine=frequency=330:sample_rate=16000:duration=3 -c:a aac -b:a 48k {_EXACT}",
        paths["audio_only"],
    )
    _ffmpeg(
        "write the video without audio",
        f"{_PATTERN}:duration=4 {_X264} -g 25 {_EXACT}",
        paths["no_audio"],
    )
    _ffmpeg(
        "write the huge-resolution clip",
        "-f lavfi -i testsrc2=size=8000x8000:rate=2:duration=1.5",
        f"-c:v libx264 -preset ultrafast -pix_fmt yuv420p -threads 2 {_EXACT}",
        paths["huge"],
    )


def _write_timing(paths: dict[str, Path]) -> None:
    """Variable frame rate, lying duration header and rotation."""
    _ffmpeg(
        "write the variable-frame-rate clip",
        f"-f lavfi -i {_VFR} -fps_mode passthrough {_X264} -g 30 {_EXACT}",
        paths["vfr"],
    )
    honest = paths["lying_duration"].with_name(".honest.mkv")
    _ffmpeg("remux the sample to Matroska", "-i", paths["sample"], f"-c copy {_EXACT}", honest)
    data = bytearray(honest.read_bytes())
    honest.unlink()
    _scale_mkv_duration(data, 3.0)
    paths["lying_duration"].write_bytes(bytes(data))
    _ffmpeg(
        "write the rotated clip",
        "-display_rotation 90 -i",
        paths["no_audio"],
        f"-c copy {_EXACT}",
        paths["rotated"],
    )


_BAD_WRITERS = (_write_trivial, _write_sample, _write_damaged, _write_streams, _write_timing)


def _check_odd_inputs(paths: dict[str, Path]) -> None:
    """Prove each tricky fixture has the property it is named for, with plain PyAV.

    A different ffmpeg could silently write a constant-rate "vfr" clip or an
    honest header; then the tests using them would prove nothing.
    """
    with av.open(str(paths["lying_duration"])) as container:
        stream = container.streams.video[0]
        header = container.duration / av.time_base
        pts = [p.pts for p in container.demux(stream) if p.size]
        real = (max(pts) - min(pts) + 1) * float(stream.time_base)
    if not header > 2 * real:
        raise VideoError(f"fixture check: {paths['lying_duration']} header says {header:.2f} s")
    with av.open(str(paths["vfr"])) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.size)
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    if len(steps) < 2 or max(steps) < 4 * min(steps):
        raise VideoError(f"fixture check: {paths['vfr']} has a constant frame rate")
    with av.open(str(paths["rotated"])) as container:
        rotation = next(container.decode(video=0)).rotation
    if rotation != 90:
        raise VideoError(f"fixture check: {paths['rotated']} has rotation {rotation}, not 90")


# EBML (Matroska) ids: Segment, Info, Duration.
_SEGMENT, _INFO, _DURATION = 0x18538067, 0x1549A966, 0x4489


def _ebml_vint(data: bytes | bytearray, pos: int, keep_marker: bool) -> tuple[int, int]:
    """Read an EBML variable-length integer at ``pos``; returns (value, length)."""
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise VideoError("not a Matroska file (bad EBML number)")
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    return value, length


def _ebml_children(data: bytearray, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(id, payload start, payload end) for each element in ``data[start:end]``."""
    pos = start
    while pos < end:
        eid, n_id = _ebml_vint(data, pos, keep_marker=True)
        size, n_size = _ebml_vint(data, pos + n_id, keep_marker=False)
        body = pos + n_id + n_size
        stop = end if size == (1 << (7 * n_size)) - 1 else body + size  # unknown size
        yield eid, body, min(stop, end)
        pos = stop


def _scale_mkv_duration(data: bytearray, factor: float) -> None:
    """Multiply the Segment Info Duration in place: the header then lies about the length."""
    for eid, body, end in _ebml_children(data, 0, len(data)):
        if eid != _SEGMENT:
            continue
        for info_id, info_body, info_end in _ebml_children(data, body, end):
            if info_id != _INFO:
                continue
            for field, f_body, f_end in _ebml_children(data, info_body, info_end):
                if field == _DURATION:
                    fmt = ">d" if f_end - f_body == 8 else ">f"
                    (value,) = struct.unpack(fmt, data[f_body:f_end])
                    data[f_body:f_end] = struct.pack(fmt, value * factor)
                    return
    raise VideoError("the Matroska file has no Segment Info Duration to patch")
