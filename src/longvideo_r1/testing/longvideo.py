"""The long test video: half an hour of real footage and unique spoken facts, built once.

:mod:`longvideo_r1.testing.longplan` writes the script; this module makes
it a file with the test video's tools (footage from registry packages,
narration by ``espeak-ng``, the bundled ffmpeg): every segment is encoded
on its own (several at once, one encoder thread each), the segments are
joined by stream copy and the narration is muxed in. Beside the video go
``testvideo-long.srt`` (every sentence at the time it is said) and
``testvideo-long.json``, the manifest: the plan, the real times of every
sentence and the file's size and fingerprint.

Built once and reused. The build runs in a hidden folder beside the output
under a lock (a second process waits for it, then reuses its files), moves
the video and the subtitles into place, and writes the manifest last; it
removes the old manifest before anything else. So an interrupted build leaves
no manifest, and a video without a current manifest (missing, another recipe
or plan, another size or content) is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from longvideo_r1.errors import VideoError
from longvideo_r1.files import write_atomic
from longvideo_r1.media.video import Video, file_fingerprint
from longvideo_r1.testing.longplan import (
    CARD_COLOURS,
    CARD_OVERLAP,
    MIN_SPOKEN,
    SPEECH_LEAD,
    LongPlan,
    LongRecipe,
    SegmentPlan,
    plan_long_video,
)
from longvideo_r1.testing.sources import (
    _EXACT,
    SPEECH_RATE,
    VOICE,
    WORDS_PER_MINUTE,
    Log,
    _espeak,
    _log,
    _read_json,
    _run,
    default_data_dir,
    default_out_dir,
    ffmpeg_exe,
    gather_sources,
    speak,
)
from longvideo_r1.testing.testvideo import BuiltVideo, _write_wav, write_srt

RECIPE_VERSION = 1
"""Bump when the build changes the files for the same plan (encoder settings, muxing)."""

VIDEO_NAME = "testvideo-long"
GOP_SECONDS = 2  # a keyframe every 2 s, as in the test video
CRF, PRESET = 28, "veryfast"
AUDIO_BITRATE = "48k"


def default_long_dir() -> Path:
    """Where the long test video lives unless told otherwise: ``<data>/testvideo-long``."""
    return default_data_dir() / VIDEO_NAME


def build_long_testvideo(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    recipe: LongRecipe | None = None,
    force: bool = False,
    sources: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    log: Log | None = None,
) -> Path:
    """Build (or reuse) the long test video in ``out_dir``; returns the video's path.

    ``sources``: where the footage clips are kept (default: the test video's
    ``sources`` folder, so opencv-doc is fetched once for both). ``workers``:
    segments encoded at once (default: the CPU count, at most 4).
    """
    out = Path(out_dir).expanduser() if out_dir is not None else default_long_dir()
    out.mkdir(parents=True, exist_ok=True)
    recipe = recipe or LongRecipe()
    with _build_lock(out):
        plan = plan_long_video(recipe)
        if not force and current_manifest(out, plan) is not None:
            return out / f"{VIDEO_NAME}.mp4"
        _espeak()  # fail early, before anything is removed or fetched
        font = _font_file()
        (out / f"{VIDEO_NAME}.json").unlink(missing_ok=True)  # not a finished build from here
        work = out / f".{VIDEO_NAME}.build"
        shutil.rmtree(work, ignore_errors=True)  # what an interrupted build left
        work.mkdir()
        try:
            return _build(plan, out, work, font, sources, workers, log)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def load_long_testvideo(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    recipe: LongRecipe | None = None,
    log: Log | None = None,
) -> BuiltVideo:
    """Build the long test video if needed and return its files and manifest."""
    return BuiltVideo.beside(build_long_testvideo(out_dir, recipe=recipe, log=log))


def plan_digest(plan: LongPlan) -> str:
    """sha256 of the plan as the manifest records it: any change to the script rebuilds."""
    text = json.dumps(plan.to_manifest(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def current_manifest(out_dir: Path, plan: LongPlan) -> dict[str, Any] | None:
    """The manifest in ``out_dir`` if it describes a finished build of ``plan``, else None.

    Finished means: the manifest is there and readable, made by this recipe
    version from this plan, and the video it names has the recorded size and
    fingerprint, with its subtitles beside it. Anything else is a half-built,
    stale or damaged video.
    """
    manifest = _read_json(out_dir / f"{VIDEO_NAME}.json")
    if not isinstance(manifest, dict):
        return None
    if manifest.get("recipe_version") != RECIPE_VERSION:
        return None
    if manifest.get("plan_digest") != plan_digest(plan):
        return None
    video = out_dir / str(manifest.get("video", ""))
    subtitles = out_dir / str(manifest.get("subtitles", ""))
    if not (video.is_file() and subtitles.is_file()):
        return None
    if video.stat().st_size != manifest.get("size_bytes"):
        return None
    if file_fingerprint(video) != manifest.get("fingerprint"):
        return None
    return manifest


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """One builder per folder; others wait here, then find its files current."""
    with (out / f".{VIDEO_NAME}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _font_file() -> Path:
    """DejaVu Sans Bold from matplotlib (a dependency): the same glyphs on every machine."""
    spec = importlib.util.find_spec("matplotlib")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        if path.is_file():
            return path
    raise VideoError(
        "matplotlib's DejaVu font draws the long video's cards: pip install matplotlib"
    )


# ---------------------------------------------------------------------------------------
# the build


def _build(
    plan: LongPlan,
    out: Path,
    work: Path,
    font: Path,
    sources: str | os.PathLike[str] | None,
    workers: int | None,
    log: Log | None,
) -> Path:
    started = time.monotonic()
    clips = gather_sources(Path(sources) if sources else default_out_dir() / "sources", log)
    _log(log, f"speaking {len(plan.lines())} sentences with espeak-ng ...")
    track, times = _speech(plan, work)
    _check_cards(plan, times)
    _write_wav(work / "speech.wav", track)
    shutil.copyfile(font, work / "font.ttf")
    minutes = plan.duration / 60
    _log(log, f"encoding {len(plan.segments)} segments ({minutes:.0f} min of video) ...")
    parts = _encode_segments(plan, clips, work, workers)
    _mux(parts, work)
    video_path = out / f"{VIDEO_NAME}.mp4"
    manifest = _manifest(plan, work / "video.mp4", times, clips)
    os.replace(work / "video.mp4", video_path)
    cues = [
        {"start": times[line.id][0], "end": times[line.id][1], "text": line.fact.sentence}
        for line in plan.lines()
    ]
    write_srt(work / "video.srt", cues)
    os.replace(work / "video.srt", out / f"{VIDEO_NAME}.srt")
    manifest["build_seconds"] = round(time.monotonic() - started, 1)
    write_atomic(out / f"{VIDEO_NAME}.json", json.dumps(manifest, indent=2) + "\n")
    _log(log, f"wrote {video_path} in {manifest['build_seconds']:.0f} s")
    return video_path


def _speech(plan: LongPlan, work: Path) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    """One mono track with every sentence in its slot, and each line's (start, end) seconds."""
    track = np.zeros(round(plan.duration * SPEECH_RATE), dtype=np.int16)
    times: dict[str, tuple[float, float]] = {}
    for line in plan.lines():
        voice = speak(line.fact.sentence, work)
        seconds = len(voice) / SPEECH_RATE
        begin = line.slot[0] + SPEECH_LEAD
        if not MIN_SPOKEN <= seconds <= line.slot[1] - begin - 0.1:
            raise VideoError(
                f"recipe error: {line.fact.sentence!r} lasts {seconds:.2f} s; a sentence of the "
                f"long video must last {MIN_SPOKEN} s to {line.slot[1] - begin - 0.1:.2f} s"
            )
        at = round(begin * SPEECH_RATE)
        track[at : at + len(voice)] = voice
        times[line.id] = (round(begin, 3), round(begin + seconds, 3))
    return track, times


def _check_cards(plan: LongPlan, times: dict[str, tuple[float, float]]) -> None:
    """Every card said to be on screen during a sentence is, by the sentence's real times."""
    for segment in plan.segments:
        card = segment.card
        if card is None or card.during is None:
            continue
        start, end = times[card.during]
        if min(end, card.end) - max(start, card.start) < CARD_OVERLAP - 1e-6:
            raise VideoError(
                f"recipe error: card {card.text!r} ({card.start}-{card.end} s) is not shown "
                f"while {card.during} is said ({start}-{end} s)"
            )


def _encode_segments(
    plan: LongPlan, clips: dict[str, Path], work: Path, workers: int | None
) -> list[Path]:
    """Encode every segment to its own file, a few at once; returns them in order."""
    lengths = {}
    for key in {s.footage for s in plan.segments}:
        with Video.open(clips[key]) as video:
            lengths[key] = video.info.duration
    jobs = workers or min(4, os.cpu_count() or 1)
    parts = [work / f"segment-{s.index:03d}.mp4" for s in plan.segments]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = [
            pool.submit(_encode_segment, plan, s, clips[s.footage], lengths[s.footage], part, work)
            for s, part in zip(plan.segments, parts, strict=True)
        ]
        for future in done:
            future.result()
    return parts


def _encode_segment(
    plan: LongPlan, segment: SegmentPlan, clip: Path, length: float, out: Path, work: Path
) -> None:
    """The footage looped from its offset, fitted to the frame, with the card drawn on it."""
    r = plan.recipe
    frames = segment.frame_end - segment.frame_start
    chain = (
        f"[0:v]setpts=PTS-STARTPTS,fps={r.fps},"
        f"scale={r.width}:{r.height}:force_original_aspect_ratio=decrease:flags=bicubic,"
        f"pad={r.width}:{r.height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p,"
        f"trim=end_frame={frames},setpts=PTS-STARTPTS{_card_filters(plan, segment)}[v]"
    )
    gop = GOP_SECONDS * r.fps
    offset = f"{segment.offset * length * 0.999:.3f}"
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-stream_loop", "-1", "-ss", offset, "-i", str(clip), "-filter_complex", chain,
           "-map", "[v]", "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
           "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", "-bf", "0",
           "-threads", "1", "-pix_fmt", "yuv420p", "-r", str(r.fps), "-an",
           *_EXACT.split(), str(out)]  # fmt: skip
    _run(cmd, f"encode segment {segment.index} of the long video", cwd=work)


def _card_filters(plan: LongPlan, segment: SegmentPlan) -> str:
    """drawbox + drawtext for the segment's card (frames relative to the segment), or ''."""
    card = segment.card
    if card is None:
        return ""
    fill, ink = CARD_COLOURS[card.colour]
    first, last = card.frame_start - segment.frame_start, card.frame_end - segment.frame_start - 1
    when = f"enable='between(n,{first},{last})'"
    size = plan.recipe.height // 6
    return (
        f",drawbox=x=iw*0.1:y=ih*0.15:w=iw*0.8:h=ih*0.7:color={fill}:t=fill:{when}"
        f",drawtext=fontfile=font.ttf:text='{card.text}':fontsize={size}:fontcolor={ink}"
        f":x=(w-tw)/2:y=(h-th)/2:{when}"
    )


def _mux(parts: list[Path], work: Path) -> None:
    """Join the segments by stream copy and add the narration as AAC."""
    listing = work / "segments.txt"
    listing.write_text("".join(f"file '{p.name}'\n" for p in parts), encoding="utf-8")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "concat", "-safe", "0", "-i", listing.name, "-i", "speech.wav",
           "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac",
           "-b:a", AUDIO_BITRATE, "-ac", "1", *_EXACT.split(), "-movflags", "+faststart",
           "video.mp4"]  # fmt: skip
    _run(cmd, "join the long video's segments", cwd=work)


def _manifest(
    plan: LongPlan, video_path: Path, times: dict[str, tuple[float, float]], clips: dict[str, Path]
) -> dict[str, Any]:
    """The plan, the sentences' real times and the file's facts, checked against the recipe."""
    with Video.open(video_path) as video:
        info = video.info
        if (
            info.n_frames != plan.n_frames
            or abs(info.duration - plan.duration) > 1 / plan.recipe.fps
        ):
            raise VideoError(
                f"built {video_path.name} has {info.n_frames} frames / {info.duration:.3f} s, "
                f"the recipe says {plan.n_frames} / {plan.duration:.3f} s"
            )
        fingerprint = video.fingerprint
    manifest = plan.to_manifest()
    for segment in manifest["segments"]:
        for cue in segment["said"]:
            cue["start"], cue["end"] = times[cue["id"]]
    used = {s.footage for s in plan.segments}
    return {
        "recipe_version": RECIPE_VERSION,
        "plan_digest": plan_digest(plan),
        "video": f"{VIDEO_NAME}.mp4",
        "subtitles": f"{VIDEO_NAME}.srt",
        "size_bytes": video_path.stat().st_size,
        "fingerprint": fingerprint,
        "gop_frames": GOP_SECONDS * plan.recipe.fps,
        "encoder": {"preset": PRESET, "crf": CRF, "audio_bitrate": AUDIO_BITRATE},
        "speech": {
            "sample_rate": SPEECH_RATE,
            "voice": VOICE,
            "words_per_minute": WORDS_PER_MINUTE,
        },
        **manifest,
        "source_files": {k: _source_record(clips[k]) for k in sorted(used)},
    }


def _source_record(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "fingerprint": file_fingerprint(path)}
