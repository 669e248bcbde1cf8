"""video.py against an independent oracle, and the test-video builder's promises.

The oracle decodes every frame sequentially with plain PyAV (no seeking) and
says which frame is shown at each time; :class:`Video` must return exactly
that frame, pixel for pixel, on the real test video and on clips built to be
awkward (variable frame rate, lying header, rotation, B-frames).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from longvideo_r1.errors import VideoError
from longvideo_r1.media.video import Video, file_fingerprint
from longvideo_r1.testing import testvideo
from longvideo_r1.testing.sources import CLIPS, ffmpeg_exe
from longvideo_r1.testing.testvideo import (
    RECIPE_VERSION,
    BuiltVideo,
    build_long_video,
    build_test_video,
)
from longvideo_r1.tree import width_for_duration

REPO = Path(__file__).resolve().parents[1]
RESIZE = "AREA"  # the interpolation video.py uses, so pixels compare exactly
OPENS = ["sample", "no_audio", "vfr", "lying_duration", "rotated", "huge"]
FAIL_ON_OPEN = [
    "missing",
    "directory",
    "empty",
    "text",
    "truncated",
    "truncated_faststart",
    "corrupt_index",
    "audio_only",
]


# ---------------------------------------------------------------------------------------
# oracle: decode everything in order, no seeking


@dataclass
class Oracle:
    times: np.ndarray  # presentation time of each frame, from the first frame
    images: dict[int, np.ndarray]  # the frames asked for, at the asked size
    header_frames: int
    rotation: int

    def index_at(self, t: float) -> int:
        i = int(np.searchsorted(self.times, t + 1e-6, side="right")) - 1
        return min(max(i, 0), len(self.times) - 1)


def oracle(path: Path, keep: set[int] | None, max_side: int | None) -> Oracle:
    """Sequential decode; keeps images of frames in ``keep`` (all if None)."""
    kept: dict[int, np.ndarray] = {}
    pts: list[int] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        header_frames = stream.frames
        tb = float(stream.time_base)
        rotation = 0
        for i, frame in enumerate(container.decode(stream)):
            if i == 0:
                rotation = round(frame.rotation / 90) * 90 % 360
            pts.append(frame.pts)
            if keep is None or i in keep:
                kept[i] = _image(frame, max_side, rotation)
    times = (np.asarray(pts, dtype=np.int64) - pts[0]) * tb
    assert np.all(np.diff(times) > 0), "decoder output should be in display order"
    return Oracle(times, kept, header_frames, rotation)


def _image(frame: av.VideoFrame, max_side: int | None, rotation: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = 1.0 if max_side is None or max(w, h) <= max_side else max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = frame.reformat(
        width=size[0], height=size[1], format="rgb24", interpolation=RESIZE
    ).to_image()
    image = image.rotate(rotation, expand=True) if rotation else image
    return np.asarray(image)


def assert_exact(path: Path, times: list[float], max_side: int | None = 160) -> Video:
    """frames_at(times) equals the oracle's frame for every time."""
    reference = oracle(path, None, max_side)
    video = Video.open(path)
    frames = video.frames_at(times, max_side)
    assert len(frames) == len(times)
    for t, frame in zip(times, frames, strict=True):
        expected = reference.index_at(t)
        assert frame.index == expected, f"t={t}: got frame {frame.index}, oracle {expected}"
        assert frame.time == pytest.approx(reference.times[expected], abs=1e-9)
        assert np.array_equal(np.asarray(frame.image), reference.images[expected]), f"t={t}"
    return video


def random_times(duration: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in rng.uniform(-0.5, duration + 0.5, n)]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


# ---------------------------------------------------------------------------------------
# metadata


def test_metadata_matches_manifest(test_video: BuiltVideo) -> None:
    m = test_video.manifest
    with Video.open(test_video.path) as video:
        info = video.info
    assert abs(info.duration - m["duration"]) <= 1 / m["fps"]
    assert info.n_frames == m["n_frames"]
    assert info.fps == pytest.approx(m["fps"], rel=1e-3)
    assert (info.width, info.height, info.rotation) == (m["width"], m["height"], 0)
    assert info.has_audio
    assert [s.kind for s in info.streams] == ["video", "audio"]
    assert info.streams[0].codec == "h264"
    assert info.container_duration == pytest.approx(info.duration, abs=0.1)
    assert info.size_bytes == test_video.path.stat().st_size == m["size_bytes"]
    assert width_for_duration(info.duration) == m["tree_width"] == 4


def test_real_avi_header_frame_count_is_ignored(test_video: BuiltVideo) -> None:
    """opencv-doc's tree.avi header counts 444 clock ticks; 68 frames really exist."""
    tree = test_video.path.parent / "sources" / "tree.avi"
    reference = oracle(tree, set(), None)
    with Video.open(tree) as video:
        assert video.info.n_frames == len(reference.times) == 68
        assert reference.header_frames != video.info.n_frames
        assert video.info.duration == pytest.approx(29.6, abs=0.1)


# ---------------------------------------------------------------------------------------
# frame-exact sampling


def test_frames_at_is_frame_exact_on_the_test_video(test_video: BuiltVideo) -> None:
    duration = test_video.manifest["duration"]
    times = random_times(duration, 40, seed=1)
    fps = test_video.manifest["fps"]
    times += [0.0, 1 / fps, 2 / fps - 1e-9, duration - 1e-3, duration + 5, -3.0]
    assert_exact(test_video.path, times, max_side=96).close()


@pytest.mark.parametrize("name", ["sample", "vfr", "rotated", "lying_duration"])
def test_frames_at_is_frame_exact_on_awkward_clips(bad_inputs: dict[str, Path], name: str) -> None:
    path = bad_inputs[name]
    with Video.open(path) as video:
        duration = video.info.duration
        frame_times = [float(t) for t in oracle(path, set(), None).times]
    times = random_times(duration, 30, seed=2) + frame_times[::7] + [frame_times[-1] + 0.5]
    assert_exact(path, times, max_side=None).close()


@pytest.mark.parametrize("source", ["tree.avi", "vtest.avi"])
def test_frames_at_is_frame_exact_on_real_avi_sources(test_video: BuiltVideo, source: str) -> None:
    path = test_video.path.parent / "sources" / source
    with Video.open(path) as video:
        duration = video.info.duration
    assert_exact(path, random_times(duration, 20, seed=3)).close()


def test_awkward_clips_have_distinct_frames(bad_inputs: dict[str, Path]) -> None:
    """Frame-exact comparisons mean something only if neighbouring frames differ."""
    for name in ("sample", "vfr", "rotated"):
        reference = oracle(bad_inputs[name], None, 96)
        images = [reference.images[i].astype(np.int16) for i in sorted(reference.images)]
        diffs = [np.abs(a - b).mean() for a, b in zip(images, images[1:], strict=False)]
        assert min(diffs) > 0.5, name


def test_frames_come_back_in_request_order(test_video: BuiltVideo) -> None:
    times = [100.0, 3.0, 50.0, 3.0, 0.0, 151.0, 50.0]
    with Video.open(test_video.path) as video:
        frames = video.frames_at(times, 128)
        singles = [video.frames_at([t], 128)[0] for t in times]
    assert [f.index for f in frames] == [s.index for s in singles]
    assert [f.index for f in frames] == [round(t * 25) for t in [100, 3, 50, 3, 0, 151, 50]]
    for f, s in zip(frames, singles, strict=True):
        assert np.array_equal(np.asarray(f.image), np.asarray(s.image))


def test_frames_by_index_matches_frames_at(test_video: BuiltVideo) -> None:
    with Video.open(test_video.path) as video:
        by_index = video.frames_by_index([3789, 0, 1234, 1234], 96)
        by_time = video.frames_at([f.time for f in by_index], 96)
        assert [f.index for f in by_index] == [3789, 0, 1234, 1234]
        assert [f.index for f in by_time] == [3789, 0, 1234, 1234]
        for a, b in zip(by_index, by_time, strict=True):
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        for bad in (-1, 3790):
            with pytest.raises(VideoError, match="out of range"):
                video.frames_by_index([bad])
        with pytest.raises(VideoError):
            video.frames_at([float("nan")])
        assert video.frames_at([]) == []


@pytest.mark.parametrize("max_side", [64, 256, 362, 512, 640, 1024, None])
def test_max_side_keeps_aspect_and_never_upscales(
    test_video: BuiltVideo, bad_inputs: dict[str, Path], max_side: int | None
) -> None:
    with Video.open(test_video.path) as video:
        (frame,) = video.frames_at([10.0], max_side)
    limit = 640 if max_side is None else min(640, max_side)
    assert max(frame.image.size) == limit
    assert frame.image.size[0] / frame.image.size[1] == pytest.approx(640 / 360, rel=0.02)
    assert frame.image.mode == "RGB"
    with Video.open(bad_inputs["rotated"]) as video:
        (frame,) = video.frames_at([1.0], max_side)
    limit = 320 if max_side is None else min(320, max_side)
    assert frame.image.height == limit and frame.image.width < frame.image.height


def test_close_targets_share_one_seek(test_video: BuiltVideo) -> None:
    """Ten neighbouring frames cost one decode run, not ten seeks."""
    gop = test_video.manifest["gop_frames"]
    with Video.open(test_video.path) as video:
        video.frames_by_index(range(gop * 10 + 30, gop * 10 + 40), 64)
        assert video.frames_decoded <= 40 + 2
        before = video.frames_decoded
        far = [gop * k + 1 for k in (3, 20, 40, 60)]
        video.frames_by_index(far, 64)
        assert video.frames_decoded - before <= 2 * len(far)


def test_each_call_reports_the_frames_it_decoded(test_video: BuiltVideo) -> None:
    """``Frames.decoded`` is this call's decoding: keyframe-to-target runs, not frames returned."""
    m = test_video.manifest
    gop, fps, duration, n = m["gop_frames"], m["fps"], m["duration"], m["n_frames"]
    with Video.open(test_video.path) as video:
        for j in [0, 1, 10, gop - 1]:  # frame j after a keyframe: the decoder decodes j + 1
            before = video.frames_decoded
            frames = video.frames_by_index([gop * 7 + j], 32)
            assert frames.decoded == j + 1 == video.frames_decoded - before
        dense = [i / fps for i in range(400, 432)]  # one leaf-like run of 32 frames
        sparse = [duration * (k + 0.5) / 32 for k in range(32)]  # 32 over the whole video
        late = [(gop * k + gop - 2) / fps for k in range(0, n // gop, 3)]  # late in every 3rd GOP
        odd = [5.0, 5.0, 5.0, -1.0, duration + 9]  # duplicates and clamped ends
        decoded = {}
        for name, plan in [("dense", dense), ("sparse", sparse), ("late", late), ("odd", odd)]:
            before = video.frames_decoded
            frames = video.frames_at(plan, 48)
            assert isinstance(frames, list) and len(frames) == len(plan)
            assert frames.decoded == video.frames_decoded - before  # what the decoder did
            assert frames.decoded >= len({f.index for f in frames})
            decoded[name] = frames.decoded
        assert decoded["dense"] <= len(dense) + gop  # one run from one keyframe
        assert decoded["sparse"] > 5 * len(sparse)  # each sample decodes from its keyframe
        assert decoded["late"] == len(late) * (gop - 1)
        assert video.frames_at([], 48).decoded == 0


def test_parallel_sampling_is_identical_and_counted(test_video: BuiltVideo) -> None:
    duration = test_video.manifest["duration"]
    jobs = [random_times(duration, 24, seed=s) for s in range(6)]
    with Video.open(test_video.path) as video:
        expected = []
        for times in jobs:
            before = video.frames_decoded
            frames = video.frames_at(times, 96)
            assert frames.decoded == video.frames_decoded - before
            expected.append(([np.asarray(f.image) for f in frames], frames.decoded))
        before = video.frames_decoded
        results: dict[int, list[np.ndarray]] = {}
        decoded: dict[int, int] = {}
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                frames = video.frames_at(jobs[k], 96)
                results[k] = [np.asarray(f.image) for f in frames]
                decoded[k] = frames.decoded
            except BaseException as exc:  # reported below, in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for k, (images, n) in enumerate(expected):
            assert all(np.array_equal(a, b) for a, b in zip(results[k], images, strict=True))
            assert decoded[k] == n  # each call's own count, whatever ran beside it
        assert video.frames_decoded - before == sum(n for _, n in expected)


def test_rotation_matches_ffmpeg_autorotate(bad_inputs: dict[str, Path]) -> None:
    """The display matrix really is there, and our upright frame is what ffmpeg shows."""
    path = bad_inputs["rotated"]
    with av.open(str(path)) as container:
        raw = next(container.decode(video=0))
        assert raw.rotation == 90 and (raw.width, raw.height) == (320, 180)
    with Video.open(path) as video:
        assert (video.info.width, video.info.height, video.info.rotation) == (180, 320, 90)
        ours = np.asarray(video.frames_at([0.0])[0].image).astype(np.int16)
    shown = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1"]
        + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    theirs = np.frombuffer(shown, dtype=np.uint8).reshape(320, 180, 3).astype(np.int16)
    assert np.abs(ours - theirs).mean() < 4  # colour conversion may differ by rounding


# ---------------------------------------------------------------------------------------
# audio and subtitles


def test_audio_window_length_and_speech(test_video: BuiltVideo) -> None:
    cue = test_video.manifest["segments"][2]["said"][0]
    with Video.open(test_video.path) as video:
        for rate in (16000, 8000):
            window = video.audio(rate, cue["start"], cue["end"])
            assert window.dtype == np.float32 and window.ndim == 1
            assert len(window) == round((cue["end"] - cue["start"]) * rate)
        speech = video.audio(16000, cue["start"], cue["end"])
        silence = video.audio(16000, cue["start"] - 0.45, cue["start"] - 0.05)
        assert len(silence) == 6400
        assert np.abs(speech).mean() > 0.01 > np.abs(silence).mean()
        tail = video.audio(16000, 150.0, 500.0)
        assert 0 < len(tail) <= round(1.7 * 16000)
        assert len(video.audio(16000, 5.0, 5.0)) == 0


def test_audio_of_a_silent_video_raises(bad_inputs: dict[str, Path]) -> None:
    with Video.open(bad_inputs["no_audio"]) as video:
        assert not video.info.has_audio
        assert video.frames_at([1.0], 64)
        with pytest.raises(VideoError, match="no audio") as err:
            video.audio()
    one_line(err.value)


def test_subtitle_path(test_video: BuiltVideo, bad_inputs: dict[str, Path], tmp_path: Path) -> None:
    with Video.open(test_video.path) as video:
        assert video.subtitle_path() == test_video.subtitles
    clip = tmp_path / "talk.mp4"
    shutil.copy(bad_inputs["sample"], clip)
    with Video.open(clip) as video:
        assert video.subtitle_path() is None
        (tmp_path / "talk.other.srt.bak").write_text("x")
        (tmp_path / "talkative.srt").write_text("x")
        assert video.subtitle_path() is None
        (tmp_path / "talk.en.srt").write_text("x")
        assert video.subtitle_path() == tmp_path / "talk.en.srt"
        (tmp_path / "talk.vtt").write_text("x")
        assert video.subtitle_path() == tmp_path / "talk.vtt"
        (tmp_path / "talk.srt").write_text("x")
        assert video.subtitle_path() == tmp_path / "talk.srt"


# ---------------------------------------------------------------------------------------
# fingerprint


def test_fingerprint_is_content_based(test_video: BuiltVideo, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "renamed.mp4"
    copy.parent.mkdir()
    shutil.copy(test_video.path, copy)
    with Video.open(test_video.path) as a, Video.open(copy) as b:
        assert a.fingerprint == b.fingerprint == file_fingerprint(copy)
        assert a.fingerprint == test_video.manifest["fingerprint"]
        assert len(a.fingerprint) == 64
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert file_fingerprint(copy) != file_fingerprint(test_video.path)


def _bytes_read() -> int:
    """Bytes this process has read through read() calls so far (Linux ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_fingerprint_reads_three_chunks_of_a_huge_file(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(8 << 30)  # sparse 8 GiB
    before = _bytes_read()
    first = file_fingerprint(big)
    assert _bytes_read() - before <= 3 * (1 << 20) + (1 << 16)  # start, middle, end MiB
    with big.open("r+b") as fh:
        fh.seek(4 << 30)
        fh.write(b"x")
    assert file_fingerprint(big) != first


# ---------------------------------------------------------------------------------------
# bad and odd inputs


@pytest.mark.parametrize("name", FAIL_ON_OPEN)
def test_bad_inputs_fail_on_open_with_one_line(bad_inputs: dict[str, Path], name: str) -> None:
    path = bad_inputs[name]
    with pytest.raises(VideoError) as err:
        Video.open(path)
    assert path.name in one_line(err.value)


def test_corrupt_data_fails_when_decoded(bad_inputs: dict[str, Path]) -> None:
    path = bad_inputs["corrupt"]
    with Video.open(path) as video:  # the index is intact
        with pytest.raises(VideoError) as err:
            video.frames_by_index(range(video.info.n_frames), 32)
        assert path.name in one_line(err.value)
        assert video.frames_at([0.0], 32)  # the undamaged start still decodes


@pytest.mark.parametrize("name", OPENS)
def test_odd_but_valid_inputs_open_and_sample(bad_inputs: dict[str, Path], name: str) -> None:
    with Video.open(bad_inputs[name]) as video:
        times = [0.0, video.info.duration / 2, video.info.duration]
        frames = video.frames_at(times, 256)
    assert all(max(f.image.size) <= 256 for f in frames)


def test_lying_duration_fixture_really_lies(bad_inputs: dict[str, Path]) -> None:
    path = bad_inputs["lying_duration"]
    decoded = oracle(path, set(), None)
    with av.open(str(path)) as container:
        header = container.duration / av.time_base
    with Video.open(path) as video:
        info = video.info
    assert header == pytest.approx(3 * info.duration, rel=0.02)
    assert info.container_duration == pytest.approx(header)
    assert info.n_frames == len(decoded.times) == 150
    assert info.duration == pytest.approx(decoded.times[-1] + 1 / 25, abs=1e-6)


def test_vfr_fixture_really_varies(bad_inputs: dict[str, Path]) -> None:
    path = bad_inputs["vfr"]
    times = oracle(path, set(), None).times
    steps = np.round(np.diff(times), 4)
    assert set(steps.tolist()) >= {round(1 / 30, 4), round(6 / 30, 4)}
    with Video.open(path) as video:
        fps = video.info.fps
        assert fps == pytest.approx(130 / 6, rel=1e-3)
        # An average-rate shortcut (index = t * fps) picks the wrong frame here.
        wrong = [t for t in np.arange(0, 6, 0.1) if int(t * fps) != video.frames_at([t])[0].index]
    assert len(wrong) > 10


def test_huge_resolution_samples_with_bounded_memory(bad_inputs: dict[str, Path]) -> None:
    """8000x8000: opened, sampled and shrunk without a full-size RGB copy (checked in a child)."""
    code = (
        "import sys\n"
        "from longvideo_r1.media.video import Video\n"
        "v = Video.open(sys.argv[1])\n"
        "assert (v.info.width, v.info.height) == (8000, 8000)\n"
        "frames = v.frames_at([0, 0.5, 1.0, 1.4] * 8, 512)\n"
        "assert all(f.image.size == (512, 512) for f in frames)\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(bad_inputs["huge"])],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_mb = int(done.stdout.strip())
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a large
    # pytest process would report the parent's peak. A full-size RGB copy per frame would need
    # 32 x 192 MB; the decoder's reference frames (96 MB each at this size) fit the bound.
    assert peak_mb < 1024, f"peak RSS {peak_mb} MB"


def test_closed_video_refuses_frames(bad_inputs: dict[str, Path]) -> None:
    with Video.open(bad_inputs["sample"]) as video:
        assert video.frames_at([1.0], 32)
    with pytest.raises(VideoError, match="closed"):
        video.frames_at([1.0], 32)


# ---------------------------------------------------------------------------------------
# the test video itself


def test_manifest_segments_tile_the_video(test_video: BuiltVideo) -> None:
    m = test_video.manifest
    segments = m["segments"]
    assert m["recipe_version"] == RECIPE_VERSION
    assert [s["key"] for s in segments] == [c.key for c in CLIPS]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == m["duration"]
    assert segments[-1]["frame_end"] == m["n_frames"]
    for a, b in zip(segments, segments[1:], strict=False):
        assert a["end"] == b["start"] and a["frame_end"] == b["frame_start"]
    for s in segments:
        assert s["start"] == s["frame_start"] / m["fps"]
        assert s["said"] and all(s["start"] < c["start"] < c["end"] < s["end"] for c in s["said"])
    assert 150 <= m["duration"] <= 180
    for q in m["questions"]:
        assert q["answer"] in "ABCD"[: len(q["choices"])]
        assert all(0 <= a < b <= m["duration"] for a, b in q["clue_intervals"])


def test_srt_matches_manifest(test_video: BuiltVideo) -> None:
    blocks = test_video.subtitles.read_text(encoding="utf-8").strip().split("\n\n")
    said = [c for s in test_video.manifest["segments"] for c in s["said"]]
    assert len(blocks) == len(said)
    for block, cue in zip(blocks, said, strict=True):
        _, span, text = block.split("\n")
        assert text == cue["text"]
        start = span.split(" --> ")[0]
        h, m, rest = start.split(":")
        sec, ms = rest.split(",")
        assert int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000 == pytest.approx(
            cue["start"], abs=1e-3
        )


def test_segment_boundaries_are_cuts(test_video: BuiltVideo) -> None:
    segments = test_video.manifest["segments"]
    with Video.open(test_video.path) as video:
        for s in segments[1:]:
            before, after = video.frames_by_index([s["frame_start"] - 1, s["frame_start"]], 64)
            a = np.asarray(before.image).astype(np.int16)
            b = np.asarray(after.image).astype(np.int16)
            assert np.abs(a - b).mean() > 10, s["key"]


def test_build_is_idempotent(test_video: BuiltVideo, monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = test_video.path.stat().st_mtime_ns

    def no_encode(*args, **kwargs):
        raise AssertionError("a current test video was encoded again")

    monkeypatch.setattr(testvideo, "_encode", no_encode)
    monkeypatch.setattr(testvideo, "gather_sources", no_encode)
    assert build_test_video(test_video.path.parent) == test_video.path
    assert test_video.path.stat().st_mtime_ns == stamp
    manifest = json.loads(test_video.manifest_path.read_text())
    assert manifest == test_video.manifest


def test_script_is_a_thin_cli(test_video: BuiltVideo, tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_test_video.py"
    out_dir = str(test_video.path.parent)
    done = subprocess.run(
        [sys.executable, str(script), "--quiet", "--out", out_dir],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout.strip() == str(test_video.path)
    bad = subprocess.run(
        [sys.executable, str(script), "--quiet", "--out", out_dir, "--long", "-5"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_long_video_loops_by_stream_copy(test_video: BuiltVideo, tmp_path: Path) -> None:
    path = build_long_video(test_video.path, 1200, tmp_path)  # its speed: bench_caption.py
    with Video.open(path) as video:
        assert video.info.duration == pytest.approx(1200, abs=2)
        assert video.info.n_frames == pytest.approx(1200 * 25, rel=0.01)
        loop = test_video.manifest["duration"]
        first, later = video.frames_at([20.0, 20.0 + 3 * loop], 64)
    diff = np.abs(np.asarray(first.image).astype(int) - np.asarray(later.image).astype(int))
    assert diff.mean() < 8  # the same picture, a few loops later
    blocks = path.with_suffix(".srt").read_text().strip().split("\n\n")
    assert len(blocks) >= 7 * 8
    late = blocks[7 * 8].split("\n")[1].split(" --> ")[0]  # first cue of the 8th copy
    h, m, rest = late.split(":")
    start = int(h) * 3600 + int(m) * 60 + float(rest.replace(",", "."))
    with Video.open(path) as video:
        speech = video.audio(16000, start, start + 0.5)
        silence = video.audio(16000, start - 0.4, start - 0.05)
    assert np.abs(speech).mean() > 0.01 > np.abs(silence).mean()  # cues follow the loops
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    assert peak_mb < 4096


def test_images_are_pil(test_video: BuiltVideo) -> None:
    with Video.open(test_video.path) as video:
        (frame,) = video.frames_at([1.0], 32)
    assert isinstance(frame.image, Image.Image)
