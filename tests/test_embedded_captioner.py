"""The embedded CPU captioner: rendering, speech caching, honesty, and the real test video."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from longvideo_r1.captions.captioner import CaptionContext
from longvideo_r1.captions.distinctive import (
    DocumentFrequencies,
    Part,
    distinctive_words,
    part_lines,
)
from longvideo_r1.captions.embedded import (
    EMBEDDED_PLANS,
    EmbeddedCaptioner,
    child_texts,
    join_segments,
    keywords,
    leaves_of,
    limit_words,
    speech_window,
)
from longvideo_r1.captions.speech import SAMPLE_RATE, Segment, TranscriberSettings
from longvideo_r1.captions.visual import (
    ClipDescriptor,
    FrameDescriptor,
    VisualAnalyzer,
    VisualSettings,
)
from longvideo_r1.media.subtitles import Cue
from longvideo_r1.media.video import Frames
from longvideo_r1.tree import DEFAULT_PLANS, LevelPlan, Tree

# fakes -----------------------------------------------------------------------------------


@dataclass
class FakeFrame:
    time: float
    index: int
    image: Image.Image


def decoder_cost(times) -> int:
    """What the fake decoder charges: every distinct frame from a keyframe every 2 s."""
    return sum(i % 50 + 1 for i in {int(t * 25) for t in times})


class FakeVideo:
    """A 120 s, 25 fps video: green for the first half, red after; silent audio if any.

    Like the real one it answers with :class:`Frames` that say what the call
    decoded (:func:`decoder_cost`), which is more than it returns.
    """

    def __init__(self, has_audio: bool = False, duration: float = 120.0):
        self.info = SimpleNamespace(
            duration=duration, n_frames=int(duration * 25), has_audio=has_audio, path=Path("x")
        )
        self.fingerprint = f"fake-{has_audio}-{duration}"
        self.audio_calls: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def frames_at(self, times, max_side):
        out = []
        for t in times:
            colour = (40, 170, 50) if t < self.info.duration / 2 else (210, 30, 30)
            out.append(FakeFrame(float(t), int(t * 25), Image.new("RGB", (160, 90), colour)))
        return Frames(out, decoder_cost(times))

    def audio(self, sample_rate=16000, start=None, end=None):
        with self._lock:
            self.audio_calls.append((start, end))
        return np.zeros(round((end - start) * sample_rate), np.float32)


class DictArtifacts:
    def __init__(self):
        self.data: dict[str, Any] = {}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value


@dataclass
class FakeTranscriber:
    """A speaker who says word ``wN`` from N+0.2 s to N+0.6 s of the video, every second."""

    model_name: str = "fake-whisper"
    settings: TranscriberSettings = field(default_factory=TranscriberSettings)
    calls: int = 0

    @property
    def identity(self) -> str:
        return f"{self.model_name}:{self.settings.tag()}"

    def transcribe(self, audio, offset=0.0):
        from longvideo_r1.captions.speech import Word

        self.calls += 1
        end = offset + len(audio) / SAMPLE_RATE
        heard = [
            n for n in range(int(offset), int(end) + 1) if offset <= n + 0.2 and n + 0.6 <= end
        ]
        words = tuple(Word(n + 0.2, n + 0.6, f"w{n}") for n in heard)
        return [Segment(words[0].start, words[-1].end, " ".join(w.text for w in words), words)]


FAST_VISUAL = VisualAnalyzer(VisualSettings(detect_frames=0, ocr_frames=0, ocr=False))


def context(video, tree, node_id, cues=(), artifacts=None):
    return CaptionContext(
        video=video, tree=tree, node=tree.node(node_id), cues=list(cues), artifacts=artifacts
    )


def fake_tree(video) -> Tree:
    return Tree.for_video(video.info.duration, video.info.n_frames)


# pure rendering --------------------------------------------------------------------------


def test_keywords_rank_content_words():
    texts = ["The red van is parked.", "A red van and a bike.", "Bike, van, van!"]
    assert keywords(texts, 3) == ["van", "red", "bike"]


def test_join_segments_rebuilds_sentences_split_at_leaf_edges():
    parts = [Segment(0.2, 2.5, "Clip one, a cyclist"), Segment(2.6, 4.7, "rides past a taxi")]
    far = Segment(9.0, 10.0, "Later.")
    joined = join_segments([*parts, far])
    assert [s.text for s in joined] == ["Clip one, a cyclist rides past a taxi", "Later."]
    assert joined[0].start == 0.2 and joined[0].end == 4.7


def test_limit_words_cuts_on_word_boundaries():
    text = limit_words(["one two three", "four five six"], 4)
    assert text == "one two three\nfour…"
    assert limit_words(["a b"], 10) == "a b"


def test_speech_windows_are_fixed_groups_of_whole_leaves():
    tree = Tree.for_video(151.6, 3790)  # the test video: width 4, leaves of 2.37 s
    leaf = tree.node((1, 2, 3))
    window = speech_window(tree, leaf)
    assert leaf in window
    assert window == speech_window(tree, window[-1])
    assert window[-1].end - window[0].start <= 28.0
    assert len(leaves_of(tree, tree.node((2,)))) == 16


def test_identity_names_captioner_model_and_version():
    captioner = EmbeddedCaptioner()
    parts = captioner.identity.split(":")
    assert parts[0] == "embedded" and parts[1] == "cpu+whisper-base"
    assert parts[2].startswith("v1-auto-b1-vad-visv1")
    assert len(parts) == 3
    other = EmbeddedCaptioner(speech=False, ocr=False)
    assert other.identity != captioner.identity


# honesty and limits on a fake video -----------------------------------------------------


def test_video_without_audio_has_no_speech_line_and_no_error():
    video = FakeVideo(has_audio=False)
    tree = fake_tree(video)
    captioner = EmbeddedCaptioner(transcriber=FakeTranscriber(), analyzer=FAST_VISUAL)
    result = captioner.caption(context(video, tree, (1, 1, 1)))
    assert "speech" not in result.text.lower()
    assert result.text.startswith("0.0s-")
    assert "mostly green" in result.text
    assert len(result.frame_times) == EMBEDDED_PLANS["low"].frames
    # the video's count for the call, not the frames it returned
    assert result.frames_decoded == decoder_cost(result.frame_times) > len(result.frame_times)
    assert result.seconds > 0
    assert video.audio_calls == []


def test_a_failure_after_decoding_carries_the_frames_it_decoded():
    class Broken(FakeTranscriber):
        def transcribe(self, audio, offset=0.0):
            raise RuntimeError("the speech model fell over")

    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    captioner = EmbeddedCaptioner(transcriber=Broken(), analyzer=FAST_VISUAL)
    with pytest.raises(RuntimeError, match="fell over") as info:
        captioner.caption(context(video, tree, (1, 1, 1)))
    times = tree.sample_times((1, 1, 1), EMBEDDED_PLANS["low"].frames)
    assert info.value.spent.frames_decoded == decoder_cost(times) > 0
    assert info.value.spent.seconds > 0


@pytest.mark.slow
def test_real_whisper_on_silent_audio_says_no_speech_detected():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    captioner = EmbeddedCaptioner(analyzer=FAST_VISUAL)
    result = captioner.caption(context(video, tree, (1, 1, 1)))
    assert "No speech detected." in result.text
    assert 'Speech: "' not in result.text and "Speech:" not in result.text


@pytest.mark.slow
def test_leaf_transcripts_are_cached_and_reused_by_higher_levels():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    transcriber = FakeTranscriber()
    captioner = EmbeddedCaptioner(transcriber=transcriber, analyzer=FAST_VISUAL)
    artifacts = DictArtifacts()
    for leaf in tree.nodes(3):
        captioner.caption(context(video, tree, leaf.id, artifacts=artifacts))
    calls = transcriber.calls
    assert calls == len({speech_window(tree, leaf)[0].id for leaf in tree.nodes(3)})
    high = captioner.caption(context(video, tree, (1,), artifacts=artifacts))
    assert transcriber.calls == calls  # nothing transcribed twice
    assert len(video.audio_calls) == calls
    assert "w5" in high.text or "Speech keywords" in high.text
    keys = [k for k in artifacts.data if k.startswith("speech:fake-whisper:auto-b1-vad:v1:")]
    assert len(keys) == tree.count(3)


def test_each_word_lands_in_exactly_one_leaf():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    captioner = EmbeddedCaptioner(transcriber=FakeTranscriber(), analyzer=FAST_VISUAL)
    artifacts = DictArtifacts()
    said: list[str] = []
    for leaf in tree.nodes(3):
        segments = captioner.leaf_speech(context(video, tree, leaf.id, artifacts=artifacts), leaf)
        said.extend(w for s in segments for w in s.text.split())
    assert said == [f"w{i}" for i in range(int(video.info.duration))]


@pytest.mark.slow
def test_concurrent_leaves_transcribe_each_window_once():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    transcriber = FakeTranscriber()
    captioner = EmbeddedCaptioner(transcriber=transcriber, analyzer=FAST_VISUAL)
    artifacts = DictArtifacts()
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda n: captioner.caption(context(video, tree, n.id, artifacts=artifacts)),
                tree.nodes(3)[:20],
            )
        )
    windows = {speech_window(tree, n)[0].id for n in tree.nodes(3)[:20]}
    assert transcriber.calls == len(windows)


def test_without_artifacts_transcripts_are_kept_in_memory():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    transcriber = FakeTranscriber()
    captioner = EmbeddedCaptioner(transcriber=transcriber, analyzer=FAST_VISUAL)
    captioner.caption(context(video, tree, (1, 1, 1)))
    captioner.caption(context(video, tree, (1, 1, 2)))
    assert transcriber.calls == 1


@pytest.mark.slow
def test_word_limits_hold_with_long_subtitles_and_keywords_summarise():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    cues = [
        Cue(i * 0.5, i * 0.5 + 0.4, f"Line {i} about the harbour lighthouse and fishing boats")
        for i in range(240)
    ]
    captioner = EmbeddedCaptioner(transcriber=FakeTranscriber(), analyzer=FAST_VISUAL)
    artifacts = DictArtifacts()
    for node in tree.walk():
        result = captioner.caption(context(video, tree, node.id, cues, artifacts))
        assert len(result.text.split()) <= tree.plan(node.id).max_words, node.label
    high = captioner.caption(context(video, tree, (1,), cues, artifacts)).text
    assert "Speech keywords:" in high and "lighthouse" in high
    assert re.search(r"\(\+\d+ more lines\)", high)
    leaf = captioner.caption(context(video, tree, (1, 1, 1), cues, artifacts)).text
    assert '0.0s-0.4s "Line 0 about the harbour lighthouse and fishing boats"' in leaf


def test_shot_change_is_reported_with_its_time():
    video = FakeVideo(has_audio=False)
    tree = fake_tree(video)
    captioner = EmbeddedCaptioner(transcriber=FakeTranscriber(), analyzer=FAST_VISUAL)
    text = captioner.caption(context(video, tree, (2,))).text  # 30-60 s: green, then red
    assert "Shot changes at 60.0s" not in text  # 60 s is the node's end, not inside
    text = captioner.caption(context(video, tree, (2, 4))).text  # 52.5-60 s: all green
    assert "mostly green" in text and "red" not in text
    text = captioner.caption(context(video, tree, (3, 1))).text  # 60-67.5 s: red
    assert "mostly red" in text


# navigable captions: distinctive words per child -------------------------------------------


@dataclass
class ScriptTranscriber(FakeTranscriber):
    """Says the filler word ``basically`` every second, and ``script[n]`` in second n."""

    script: dict[int, str] = field(default_factory=dict)

    def transcribe(self, audio, offset=0.0):
        from longvideo_r1.captions.speech import Word

        self.calls += 1
        end = offset + len(audio) / SAMPLE_RATE
        words = []
        for n in range(int(offset), int(end) + 1):
            said = ["basically", *self.script.get(n, "").split()]
            for k, text in enumerate(said):
                a, b = n + 0.05 + 0.1 * k, n + 0.1 + 0.1 * k
                if offset <= a and b <= end:
                    words.append(Word(a, b, text))
        return [
            Segment(words[0].start, words[-1].end, " ".join(w.text for w in words), tuple(words))
        ]


SCRIPT = {40: "yellow umbrella", 50: "the red bus stops", 51: "the bus"}
"""On the 120 s fake video at width 4: (2, 2) is 37.5-45 s and (2, 3) is 45-52.5 s."""


def part_line(text: str, label: str) -> str:
    """The caption's line for the child ``label``, e.g. ``(2, 3)``."""
    found = [line for line in text.splitlines() if line.startswith(f"Part {label} ")]
    assert len(found) == 1, text
    return found[0]


def navigable(transcriber=None, **kwargs) -> EmbeddedCaptioner:
    transcriber = transcriber or ScriptTranscriber(script=SCRIPT)
    return EmbeddedCaptioner(
        transcriber=transcriber, analyzer=FAST_VISUAL, navigable=True, **kwargs
    )


def test_the_child_that_holds_a_fact_lists_its_words_in_the_parent_caption():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    high = navigable().caption(context(video, tree, (2,), artifacts=DictArtifacts())).text
    assert "Distinctive words per part:" in high
    assert part_line(high, "(2, 2)") == "Part (2, 2) 37.5s-45.0s: yellow, umbrella."
    third = part_line(high, "(2, 3)")
    assert third.startswith("Part (2, 3) 45.0s-52.5s: bus, red, stops")  # said twice: first
    assert "umbrella" not in third
    assert part_line(high, "(2, 1)").endswith(": nothing distinctive.")
    medium = navigable().caption(context(video, tree, (2, 2), artifacts=DictArtifacts())).text
    leaf = tree.leaf_at(40.5)
    assert "umbrella" in part_line(medium, leaf.label)


def test_filler_said_everywhere_is_never_listed_though_it_is_the_most_frequent():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    captioner = navigable()
    text = captioner.caption(context(video, tree, (2,), artifacts=DictArtifacts())).text
    parts = [line for line in text.splitlines() if line.startswith("Part ")]
    assert len(parts) == tree.width
    assert not any("basically" in line for line in parts)
    assert keywords([text], 1) == ["basically"]  # frequency alone would pick the filler


def test_leaves_get_no_part_lines_and_the_setting_off_changes_nothing():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    artifacts = DictArtifacts()
    leaf = navigable().caption(context(video, tree, (2, 2, 1), artifacts=artifacts)).text
    assert "Part " not in leaf and "Distinctive" not in leaf
    plain = EmbeddedCaptioner(transcriber=ScriptTranscriber(script=SCRIPT), analyzer=FAST_VISUAL)
    high = plain.caption(context(video, tree, (2,), artifacts=artifacts)).text
    assert "Part " not in high and "Distinctive" not in high


def test_navigable_captions_transcribe_the_whole_video_once_and_reuse_it():
    video = FakeVideo(has_audio=True)
    tree = fake_tree(video)
    transcriber = ScriptTranscriber(script=SCRIPT)
    artifacts = DictArtifacts()
    captioner = navigable(transcriber)
    captioner.caption(context(video, tree, (1,), artifacts=artifacts))
    windows = len({speech_window(tree, leaf)[0].id for leaf in tree.nodes(3)})
    assert transcriber.calls == windows  # the whole video, for the document frequencies
    for node in [*tree.nodes(1), *tree.nodes(2)[:3], *tree.nodes(3)[:5]]:
        captioner.caption(context(video, tree, node.id, artifacts=artifacts))
    other = ScriptTranscriber(script=SCRIPT)  # another process with the same store
    navigable(other).caption(context(video, tree, (3,), artifacts=artifacts))
    assert (transcriber.calls, other.calls) == (windows, 0)


def test_word_limits_hold_with_part_lines():
    video = FakeVideo(has_audio=True)
    script = {n: f"alpha{n} beta{n} gamma{n} delta{n} epsilon{n}" for n in range(0, 120, 2)}
    artifacts = DictArtifacts()
    captioner = navigable(ScriptTranscriber(script=script))
    for words in (400, 120, 30, 8):
        plans = {k: LevelPlan(p.frames, p.max_side, words) for k, p in DEFAULT_PLANS.items()}
        tree = Tree.for_video(video.info.duration, video.info.n_frames, plans=plans)
        for node_id in [(1,), (2, 3), (4, 4, 4)]:
            text = captioner.caption(context(video, tree, node_id, artifacts=artifacts)).text
            assert len(text.split()) <= words, (words, text)
            parts = [line for line in text.splitlines() if line.startswith("Part ")]
            assert len(parts) in (0, tree.width if len(node_id) < 3 else 0), text
            listed = [len(line.split(": ", 1)[1].split(", ")) for line in parts]
            if len(node_id) == 1 and words >= 120:  # each medium child says 20 rare words
                assert listed == [8 if words == 400 else 5] * tree.width, text


def test_without_speech_subtitles_of_the_node_are_the_documents():
    video = FakeVideo(has_audio=False)
    tree = fake_tree(video)
    cues = [Cue(t + 0.1, t + 0.5, "So basically here we are") for t in np.arange(30, 60, 1.875)]
    cues.append(Cue(41.0, 42.0, "A lighthouse"))
    captioner = navigable(speech=False)
    text = captioner.caption(context(video, tree, (2,), cues)).text
    assert part_line(text, "(2, 2)").endswith(": lighthouse.")
    assert part_line(text, "(2, 1)").endswith(": nothing distinctive.")
    assert video.audio_calls == []


def test_on_screen_text_counts_for_the_child_its_frame_falls_in():
    tree = Tree.for_video(120.0, 3000)
    frames = tuple(
        FrameDescriptor(t, int(t * 25), 0.5, (), text=("HARBOUR 1987",) if t == 40.0 else None)
        for t in (32.0, 40.0, 48.0)
    )
    look = ClipDescriptor(30.0, 60.0, frames, (), ())
    said = [Segment(46.0, 47.0, "the harbour master")]
    assert child_texts(tree.node((2, 2)), look, said, []) == ["HARBOUR 1987"]
    assert child_texts(tree.node((2, 3)), look, said, []) == ["the harbour master"]


def test_identity_says_the_captions_are_navigable():
    plain, nav = EmbeddedCaptioner(), EmbeddedCaptioner(navigable=True)
    assert nav.identity == plain.identity + "-nav1"
    assert len(nav.identity.split(":")) == 3


def test_tf_idf_prefers_rare_words_and_drops_words_said_everywhere():
    leaves = [["basically the bus"]] * 4 + [["basically an umbrella"]] + [["basically"]] * 3
    frequencies = DocumentFrequencies.of(leaves)
    assert (frequencies.documents, frequencies.counts["bus"]) == (8, 4)
    assert frequencies.idf("basically") == 0
    part = ["bus bus basically basically basically basically", "umbrella"]
    assert distinctive_words(part, frequencies, 5) == ["umbrella", "bus"]
    assert distinctive_words(part, frequencies, 1) == ["umbrella"]
    # no documents: every word weighs the same and frequency ranks them
    assert distinctive_words(part, DocumentFrequencies(), 5) == ["basically", "bus", "umbrella"]


@given(
    st.lists(st.lists(st.sampled_from(["bus", "umbrella", "seventeen"]), max_size=9), max_size=8),
    st.integers(min_value=0, max_value=120),
)
@settings(max_examples=200, deadline=None)
def test_part_lines_fit_their_budget_and_name_every_part_or_none(words, budget):
    parts = [Part(f"(1, {i + 1})", "0.0s-9.5s", tuple(w)) for i, w in enumerate(words)]
    lines = part_lines(parts, budget)
    assert sum(len(line.split()) for line in lines) <= budget
    assert len(lines) in (0, len(parts) + 1 if parts else 0)
    if lines:  # every part lists its first words, as many as the others or all it has
        listed = [line.split(": ", 1)[1].rstrip(".").split(", ") for line in lines[1:]]
        keep = max(len(words) for words in listed)
        for words, part in zip(listed, parts, strict=True):
            assert words == (list(part.words[:keep]) or ["nothing distinctive"])


# the real test video -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(test_video):
    from longvideo_r1.media.subtitles import load_subtitles
    from longvideo_r1.media.video import Video

    video = Video.open(test_video.path)
    tree = Tree.for_video(video.info.duration, video.info.n_frames)
    cues = load_subtitles(test_video.subtitles)
    yield SimpleNamespace(video=video, tree=tree, cues=cues, manifest=test_video.manifest)
    video.close()


@pytest.fixture(scope="module")
def captioner() -> EmbeddedCaptioner:
    return EmbeddedCaptioner(cpu_threads=2)


CONTENT_STOP = {"clip", "one", "two", "three", "four", "five", "six", "seven", "then", "his"}


def content_words(text: str) -> set[str]:
    return {w for w in keywords([text], 100) if w not in CONTENT_STOP}


def spoken_part(text: str) -> str:
    """The caption's speech lines only (so visual words cannot satisfy a speech check)."""
    return " ".join(line for line in text.splitlines() if line.startswith("Speech"))


@pytest.mark.slow
def test_real_leaves_quote_what_is_said(real, captioner):
    """Leaves around "Clip three. A hand lifts a yellow box above a white table." (no .srt)."""
    said = real.manifest["segments"][2]["said"][0]
    leaves = real.tree.covering(said["start"], said["end"], 3)
    artifacts = DictArtifacts()
    texts = [
        captioner.caption(context(real.video, real.tree, leaf.id, (), artifacts)).text
        for leaf in leaves
    ]
    heard = content_words(" ".join(spoken_part(t) for t in texts))
    expected = content_words(said["text"])
    assert len(heard & expected) >= len(expected) // 2, (heard, expected)
    assert all(len(t.split()) <= real.tree.plan(leaves[0].id).max_words for t in texts)


@pytest.mark.slow
@pytest.mark.parametrize("node_id", [(2,), (2, 3), (2, 3, 1)])
def test_real_nodes_report_the_frames_the_video_decoded(real, node_id):
    """The reported count is the decoder's work for the node, many times the frames it samples."""
    captioner = EmbeddedCaptioner(
        transcriber=FakeTranscriber(), analyzer=FAST_VISUAL, speech=False, ocr=False
    )
    before = real.video.frames_decoded
    result = captioner.caption(context(real.video, real.tree, node_id))
    assert result.frames_decoded == real.video.frames_decoded - before
    assert result.frames_decoded > 2 * len(result.frame_times)


@pytest.mark.slow
def test_real_leaf_keeps_subtitles_verbatim(real, captioner):
    cue = real.cues[0]
    leaf = real.tree.leaf_at(cue.start + 0.1)
    text = captioner.caption(context(real.video, real.tree, leaf.id, real.cues)).text
    assert f'"{cue.text}"' in text
    assert f"{cue.start:.1f}s-{cue.end:.1f}s" in text


@pytest.mark.slow
def test_real_full_tree(real, captioner, capsys):
    """Every node of the test video, without subtitles (speech only), timed per level."""
    artifacts = DictArtifacts()
    times: dict[str, list[float]] = {"high": [], "medium": [], "low": []}
    texts = {}
    started = time.perf_counter()
    for depth in (3, 2, 1):
        for node in real.tree.nodes(depth):
            t0 = time.perf_counter()
            result = captioner.caption(context(real.video, real.tree, node.id, (), artifacts))
            times[node.level].append(time.perf_counter() - t0)
            texts[node.id] = result.text
            assert len(result.text.split()) <= real.tree.plan(node.id).max_words
            assert re.match(rf"{node.start:.1f}s-", result.text), result.text
    total = time.perf_counter() - started
    minutes = real.video.info.duration / 60
    with capsys.disabled():
        for level, ts in times.items():
            print(
                f"\n{level}: {len(ts)} nodes, mean {np.mean(ts):.2f}s, max {max(ts):.2f}s", end=""
            )
        print(f"\nfull tree {total:.1f}s = {total / minutes:.1f}s per minute of video")
    # Every sentence is heard by the leaves it spans.
    for segment in real.manifest["segments"]:
        for said in segment["said"]:
            leaves = real.tree.covering(said["start"], said["end"], 3)
            heard = content_words(" ".join(spoken_part(texts[leaf.id]) for leaf in leaves))
            expected = content_words(said["text"])
            assert len(heard & expected) >= max(1, len(expected) // 3), (said["text"], heard)
    # Leaves with no narration at all say so and quote nothing.
    spans = [(s["start"], s["end"]) for seg in real.manifest["segments"] for s in seg["said"]]
    for leaf in real.tree.nodes(3):
        if all(b + 0.5 < leaf.start or a - 0.5 > leaf.end for a, b in spans):
            assert "No speech detected." in texts[leaf.id], texts[leaf.id]
    # People are detected in the pedestrians clip, a face in the car clip.
    pedestrians = real.manifest["segments"][1]
    medium = real.tree.covering(pedestrians["start"] + 5, pedestrians["end"] - 5, 2)
    assert sum("people detected" in texts[n.id] for n in medium) >= len(medium) // 2
    assert total < 600


@pytest.mark.slow
def test_real_navigable_high_caption_names_each_clip_at_its_child(real):
    """Speech alone: the bow tie's and the rabbit's parts name them, no other part does."""
    captioner = EmbeddedCaptioner(cpu_threads=2, navigable=True)
    artifacts = DictArtifacts()
    lines = {}
    for high in ((3,), (4,)):
        text = captioner.caption(context(real.video, real.tree, high, (), artifacts)).text
        assert len(text.split()) <= real.tree.plan(high).max_words
        lines.update({child.id: part_line(text, child.label) for child in real.tree.children(high)})
    for said, word in ((105.5, "tie"), (148.0, "rabbit")):
        holder = real.tree.covering(said, said + 0.1, 2)[0].id
        assert [k for k, line in lines.items() if word in line.split(": ", 1)[1]] == [holder]


class TitleCardVideo(FakeVideo):
    """Frames carry a large title, as a title card or lower third would."""

    def frames_at(self, times, max_side):
        from PIL import ImageDraw, ImageFont

        try:
            font = ImageFont.truetype("DejaVuSans-Bold.ttf", 40)
        except OSError:
            font = ImageFont.load_default(size=40)
        out = []
        for t in times:
            image = Image.new("RGB", (640, 360), (20, 40, 90))
            ImageDraw.Draw(image).text((40, 150), "HARBOUR 1987", fill="white", font=font)
            out.append(FakeFrame(float(t), int(t * 25), image))
        return Frames(out, decoder_cost(times))


@pytest.mark.slow
def test_on_screen_text_is_quoted_with_its_time():
    pytest.importorskip("rapidocr_onnxruntime")
    video = TitleCardVideo(has_audio=False)
    tree = fake_tree(video)
    analyzer = VisualAnalyzer(VisualSettings(detect_frames=0))
    captioner = EmbeddedCaptioner(transcriber=FakeTranscriber(), analyzer=analyzer)
    text = captioner.caption(context(video, tree, (1, 1, 1))).text
    assert re.search(r'On-screen text: \d+\.\ds "HARBOUR 1987"', text), text
    assert text.count("HARBOUR") == 1  # read on two frames, quoted once


@given(
    st.lists(st.text(alphabet="ab c", min_size=1, max_size=40), min_size=1, max_size=30),
    st.integers(min_value=0, max_value=120),
)
@settings(max_examples=200, deadline=None)
def test_fit_never_exceeds_its_budget(items, budget):
    from longvideo_r1.captions.embedded import _fit, word_count

    items = [i for i in items if i.split()]
    line = _fit("Subtitles: ", items, budget, "more lines") if items else None
    assert line is None or word_count(line) <= budget
