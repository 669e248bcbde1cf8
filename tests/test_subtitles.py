"""Subtitle loading, lookup and weaving: every line of a node reaches exactly one frame slot."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longvideo_r1.errors import VideoError
from longvideo_r1.media.subtitles import (
    Cue,
    clean_cue_text,
    cues_between,
    find_subtitles,
    load_subtitles,
    weave,
)

SRT = """1
00:00:01,000 --> 00:00:02,500
<i>Where were</i> you
last night?

2
00:00:03,250 --> 00:00:04,000
{\\an8}<font color="#ffff00">At the harbour.</font>

3
00:01:05,100 --> 00:01:07,900
Tom &amp; Jerry
"""

VTT = """WEBVTT
Kind: captions

NOTE a comment block

intro
00:00:01.000 --> 00:00:02.500 align:start position:10%
<v Anna>Where were <b>you</b>?</v>

00:03.250 --> 00:04.000
<c.yellow>At the</c> <00:00:03.600>harbour.

00:01:05.100 --> 00:01:07.900
caf&eacute;&nbsp;time
"""


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_srt_cues_have_seconds_and_plain_text(tmp_path):
    cues = load_subtitles(write(tmp_path / "a.srt", SRT))
    assert cues == [
        Cue(1.0, 2.5, "Where were you last night?"),
        Cue(3.25, 4.0, "At the harbour."),
        Cue(65.1, 67.9, "Tom & Jerry"),
    ]


def test_vtt_cues_have_seconds_speaker_and_plain_text(tmp_path):
    cues = load_subtitles(write(tmp_path / "a.vtt", VTT))
    assert cues == [
        Cue(1.0, 2.5, "Anna: Where were you?"),
        Cue(3.25, 4.0, "At the harbour."),
        Cue(65.1, 67.9, "café time"),
    ]


def test_encodings_bom_and_windows_1252(tmp_path):
    text = "1\n00:00:01,000 --> 00:00:02,000\nCafé crème\n"
    assert load_subtitles(write(tmp_path / "a.srt", "\ufeff" + text))[0].text == "Café crème"
    assert load_subtitles(write(tmp_path / "b.srt", text, "cp1252"))[0].text == "Café crème"
    assert load_subtitles(write(tmp_path / "c.srt", text, "utf-16"))[0].text == "Café crème"


def test_empty_and_header_only_files_have_no_cues(tmp_path):
    assert load_subtitles(write(tmp_path / "a.srt", "")) == []
    assert load_subtitles(write(tmp_path / "a.vtt", "WEBVTT\n\nNOTE nothing yet\n")) == []


def test_a_broken_block_keeps_the_good_cues(tmp_path):
    text = SRT.replace("2\n00:00:03,250 --> 00:00:04,000", "2\nnot a timing line")
    cues = load_subtitles(write(tmp_path / "a.srt", text))
    assert [c.text for c in cues] == ["Where were you last night?", "Tom & Jerry"]


def test_unordered_cues_are_sorted_and_empty_ones_dropped(tmp_path):
    text = (
        "1\n00:00:05,000 --> 00:00:06,000\nlater\n\n"
        "2\n00:00:01,000 --> 00:00:02,000\nearlier\n\n"
        "3\n00:00:03,000 --> 00:00:04,000\n<i></i>\n"
    )
    assert [c.text for c in load_subtitles(write(tmp_path / "a.srt", text))] == [
        "earlier",
        "later",
    ]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.srt", None, "subtitle file not found"),
        ("subs.ass", "[Script Info]", "unsupported subtitle format '.ass'"),
        ("noext", "1\n", "unsupported subtitle format '(no extension)'"),
        ("garbage.srt", "hello\nthis is not a subtitle file\n", "no valid SRT cue"),
        ("garbage.vtt", "hello\n00:01.000 --> 00:02.000\nhi\n", "not WebVTT"),
        ("badtime.vtt", "WEBVTT\n\nfoo --> bar\nhi\n", "cannot parse subtitle file"),
    ],
)
def test_errors_are_one_line_and_name_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    with pytest.raises(VideoError) as info:
        load_subtitles(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_a_directory_is_not_a_subtitle_file(tmp_path):
    (tmp_path / "d.srt").mkdir()
    with pytest.raises(VideoError, match="not a file"):
        load_subtitles(tmp_path / "d.srt")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<b>bold</b> and <u>under</u>", "bold and under"),
        ("{\\an8}{\\i1}top{\\i0}", "top"),
        ("two\nlines", "two lines"),
        ("<v.loud Bob Smith>Hey!", "Bob Smith: Hey!"),
        ("<ruby>漢<rt>kan</rt></ruby>字", "漢字"),
        ("a &lt;tag&gt; kept as text", "a <tag> kept as text"),
        ("x < y and y > z", "x < y and y > z"),
    ],
)
def test_clean_cue_text(raw, clean):
    assert clean_cue_text(raw) == clean


def test_find_subtitles_prefers_the_exact_stem(tmp_path):
    video = tmp_path / "movie.mp4"
    video.touch()
    assert find_subtitles(video) is None
    (tmp_path / "movie2.srt").touch()
    (tmp_path / "movie.part2.srt").touch()
    assert find_subtitles(video) is None
    (tmp_path / "movie.pt-BR.vtt").touch()
    (tmp_path / "movie.en.srt").touch()
    assert find_subtitles(video) == tmp_path / "movie.en.srt"
    (tmp_path / "movie.vtt").touch()
    assert find_subtitles(video) == tmp_path / "movie.vtt"
    (tmp_path / "movie.srt").touch()
    assert find_subtitles(video) == tmp_path / "movie.srt"


def test_find_subtitles_in_a_missing_folder_is_none(tmp_path):
    assert find_subtitles(tmp_path / "nowhere" / "a.mp4") is None


def test_cues_between_is_half_open():
    cues = [
        Cue(0, 5, "a"),
        Cue(5, 6, "b"),
        Cue(9, 12, "c"),
        Cue(10, 10, "instant"),
        Cue(12, 13, "d"),
    ]
    assert [c.text for c in cues_between(cues, 5, 10)] == ["b", "c"]
    assert [c.text for c in cues_between(cues, 10, 12)] == ["c", "instant"]
    assert [c.text for c in cues_between(cues, 4.9, 5)] == ["a"]


def test_weave_keeps_lines_between_sparse_frames():
    # Two frames over a 60 s node; most lines cover neither sampled instant.
    frames = [15.0, 45.0]
    cues = [
        Cue(-3, 1, "began before the node"),
        Cue(2, 4, "before the first frame"),
        Cue(15, 16, "at the first frame"),
        Cue(20, 21, "between frames"),
        Cue(44, 47, "starts just before the second frame"),
        Cue(45, 46, "at the second frame"),
        Cue(50, 55, "after the last frame"),
        Cue(59, 70, "runs past the end"),
        Cue(60, 61, "outside"),
    ]
    slots = weave(frames, cues, 0, 60)
    assert [[c.text for c in s] for s in slots] == [
        [
            "began before the node",
            "before the first frame",
            "at the first frame",
            "between frames",
            "starts just before the second frame",
        ],
        ["at the second frame", "after the last frame", "runs past the end"],
    ]


def test_weave_needs_ordered_frames():
    with pytest.raises(ValueError):
        weave([], [Cue(0, 1, "a")], 0, 10)
    with pytest.raises(ValueError):
        weave([5, 1], [], 0, 10)


times = st.floats(min_value=-20, max_value=120, allow_nan=False)


@st.composite
def cue_lists(draw):
    out = []
    for i in range(draw(st.integers(0, 30))):
        start = draw(times)
        length = draw(st.floats(min_value=0, max_value=30, allow_nan=False))
        out.append(Cue(start, start + length, f"line {i}"))
    return out


@given(
    frames=st.lists(
        st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=40
    ),
    cues=cue_lists(),
    start=st.floats(min_value=0, max_value=50, allow_nan=False),
    length=st.floats(min_value=0.5, max_value=60, allow_nan=False),
)
def test_weave_places_every_overlapping_cue_once_in_order(frames, cues, start, length):
    end = start + length
    frames = sorted(frames)
    slots = weave(frames, cues, start, end)
    assert len(slots) == len(frames)
    woven = [c for slot in slots for c in slot]
    expected = [c for c in cues if c.start < end and (c.end > start or c.start >= start)]
    # every overlapping cue exactly once (texts are unique), nothing else
    assert sorted(c.text for c in woven) == sorted(c.text for c in expected)
    # in time order when the slots are read in order
    assert [c.start for c in woven] == sorted(c.start for c in woven)
    # each cue sits with the last frame at or before its start (first slot if none)
    for i, slot in enumerate(slots):
        for cue in slot:
            if i > 0:
                assert frames[i] <= cue.start
            if i + 1 < len(frames):
                assert cue.start < frames[i + 1]
