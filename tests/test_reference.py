"""Reference JSON caption format: tags, import, export, round trips, malformed files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from helpers_captions import IDENTITY, FakeContext, FakeInfo, FakeVideo

from longvideo_r1.captions.records import CaptionKey, CaptionRecord
from longvideo_r1.captions.reference import (
    DEFAULT_IMPORT_IDENTITY,
    ImportConflictError,
    ImportedCaptioner,
    ReferenceFormatError,
    ReferenceMismatchError,
    export_reference,
    export_reference_file,
    import_reference,
    import_reference_file,
    load_reference,
    reference_document,
    strip_caption_tags,
    wrap_caption_tags,
    write_reference,
)
from longvideo_r1.captions.service import CaptionService
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import CaptionError, ConfigError, LVR1Error
from longvideo_r1.tree import Tree

FP = "c" * 64


def tree_of(width: int, duration: float = 600.0) -> Tree:
    return Tree(duration=duration, n_frames=int(duration * 30), width=width)


def fill(store: CaptionStore, tree: Tree, identity: str = IDENTITY) -> None:
    """Every node captioned, with text that exercises escaping and unicode."""
    fps = tree.n_frames / tree.duration
    records = []
    for node in tree.walk():
        times = tree.sample_times(node.id, 3)
        records.append(
            CaptionRecord(
                fingerprint=FP,
                width=tree.width,
                node_id=node.id,
                identity=identity,
                text=f'{node.label} "quoted" \\ café 字幕\nline two <b>',
                frame_times=tuple(times),
                frame_ids=tuple(int(t * fps) for t in times),
                seconds=2.0,
            )
        )
    store.put_captions(records)


def document(width: int, duration: float = 600.0) -> dict:
    """A valid reference document built by hand, as the released files look."""
    tree = tree_of(width, duration)
    levels = []
    for depth, level in enumerate(("high", "medium", "low"), start=1):
        entries = []
        for k, node in enumerate(tree.nodes(depth), start=1):
            times = tree.sample_times(node.id, 2)
            entries.append(
                {
                    "segment_id": k,
                    "level": level,
                    "caption": f"<caption>{level} segment {k}</caption>",
                    "frame_time": times,
                    "frame_ids": [int(t * 30) for t in times],
                }
            )
        levels.append(entries)
    return {"video_name": "abc123.mp4", "width": width, "captions": levels}


def dump(tmp_path: Path, data: object, name: str = "ref.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# tags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("<caption>A man walks.</caption>", "A man walks."),
        ("  <caption>\n A man walks.\n</caption>\n", "A man walks."),
        ("Sure! <caption>A</caption> trailing chatter", "A"),
        ("<caption>draft</caption>\n<caption>final</caption>", "final"),
        ("<CAPTION>upper</Caption>", "upper"),
        ("<caption>cut off mid sentence", "cut off mid sentence"),
        ("only a closing tag</caption> junk", "only a closing tag"),
        ("  no tags at all  ", "no tags at all"),
        ("", ""),
    ],
)
def test_strip_caption_tags(raw: str, clean: str) -> None:
    assert strip_caption_tags(raw) == clean
    assert strip_caption_tags(clean) == clean  # idempotent


def test_wrap_caption_tags_never_doubles() -> None:
    assert wrap_caption_tags("A man walks.") == "<caption>A man walks.</caption>"
    assert wrap_caption_tags("<caption>A</caption>") == "<caption>A</caption>"
    assert strip_caption_tags(wrap_caption_tags("x\ny")) == "x\ny"


# round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("width", [3, 4, 5, 6, 7, 8])
def test_export_import_export_is_identical(tmp_path: Path, store: CaptionStore, width: int) -> None:
    tree = tree_of(width)
    fill(store, tree)
    first = export_reference(store, FP, tree, IDENTITY, "abc123.mp4", tmp_path / "one.json")
    report = import_reference(tmp_path / "one.json", store, FP, tree, identity="imported:again")
    assert report.counts == {"high": width, "medium": width**2, "low": width**3}
    assert report.notes == () and report.width == width and report.video_name == "abc123.mp4"
    second = export_reference(
        store, FP, tree, "imported:again", "abc123.mp4", tmp_path / "two.json"
    )
    assert first == second
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


@pytest.mark.parametrize("width", [3, 8])
def test_round_trip_through_a_fourth_level_file(
    tmp_path: Path, store: CaptionStore, width: int
) -> None:
    tree = tree_of(width)
    fill(store, tree)
    exported = export_reference(store, FP, tree, IDENTITY, "abc123.mp4")
    four = copy.deepcopy(exported)
    coarsest = {"segment_id": 1, "level": "video", "caption": "<caption>all</caption>"}
    four["captions"].insert(0, [coarsest])
    report = import_reference(dump(tmp_path, four), store, FP, tree, identity="imported:four")
    assert report.imported == width + width**2 + width**3
    assert len(report.notes) == 1 and "fourth, coarsest level" in report.notes[0]
    assert "skipped" in report.summary()
    assert export_reference(store, FP, tree, "imported:four", "abc123.mp4") == exported


def test_export_shape_matches_the_released_files(store: CaptionStore) -> None:
    tree = tree_of(4)
    fill(store, tree)
    doc = export_reference(store, FP, tree, IDENTITY, "abc123.mp4")
    assert list(doc) == ["video_name", "width", "captions"]
    assert [len(level) for level in doc["captions"]] == [4, 16, 64]
    low = doc["captions"][2][5]
    assert list(low) == ["segment_id", "level", "caption", "frame_time", "frame_ids"]
    assert low["segment_id"] == 6 and low["level"] == "low"
    assert low["caption"].startswith("<caption>(1, 2, 2) ")  # flat index 5 = (1, 2, 2)
    assert low["caption"].endswith("</caption>")


def test_import_maps_segments_through_the_tree(tmp_path: Path, store: CaptionStore) -> None:
    data = document(4)
    random_order = list(reversed(data["captions"][1]))  # any order is accepted
    data["captions"][1] = random_order
    report = import_reference(dump(tmp_path, data), store, FP, tree_of(4))
    assert report.identity == DEFAULT_IMPORT_IDENTITY
    get = store.get_caption
    assert get(CaptionKey(FP, 4, (2,), DEFAULT_IMPORT_IDENTITY)).text == "high segment 2"
    assert get(CaptionKey(FP, 4, (2, 1), DEFAULT_IMPORT_IDENTITY)).text == "medium segment 5"
    leaf = get(CaptionKey(FP, 4, (1, 2, 2), DEFAULT_IMPORT_IDENTITY))
    assert leaf.text == "low segment 6" and leaf.seconds == 0.0 and len(leaf.frame_ids) == 2


def test_reimport_overwrites_only_when_asked(tmp_path: Path, store: CaptionStore) -> None:
    data = document(3)
    import_reference(dump(tmp_path, data), store, FP, tree_of(3))
    again = import_reference(dump(tmp_path, data), store, FP, tree_of(3))
    assert (again.unchanged, again.replaced) == (39, 0)  # the same file twice changes nothing
    assert "39 already stored unchanged" in again.summary()
    data["captions"][0][0]["caption"] = "<caption>corrected</caption>"
    key = CaptionKey(FP, 3, (1,), DEFAULT_IMPORT_IDENTITY)
    with pytest.raises(ImportConflictError, match=r"1 of 39 captions differ .*--replace"):
        import_reference(dump(tmp_path, data), store, FP, tree_of(3))
    assert store.get_caption(key).text == "high segment 1"
    report = import_reference(dump(tmp_path, data), store, FP, tree_of(3), replace=True)
    assert (report.unchanged, report.replaced) == (38, 1) and "replaced 1" in report.summary()
    assert store.get_caption(key).text == "corrected"
    assert len(store.list_captions(FP, DEFAULT_IMPORT_IDENTITY, 3)) == 3 + 9 + 27


@pytest.mark.parametrize("identity", [IDENTITY, "embedded:features:v1", "imported:", "vlm"])
def test_imports_are_never_stored_as_a_model(
    tmp_path: Path, store: CaptionStore, identity: str
) -> None:
    """Imported text carries an imported:NAME identity, so it never passes as (or replaces)
    captions a captioner made."""
    tree = tree_of(3)
    fill(store, tree)
    made = store.list_captions(FP, IDENTITY, 3)
    with pytest.raises(ConfigError, match="imported:NAME"):
        import_reference(dump(tmp_path, document(3)), store, FP, tree, identity=identity)
    assert store.list_captions(FP, IDENTITY, 3) == made
    assert store.stats().captions == len(made)
    with pytest.raises(ConfigError, match="imported:NAME"):
        ImportedCaptioner(identity)


def test_export_refuses_incomplete_captions(store: CaptionStore) -> None:
    tree = tree_of(3)
    fill(store, tree)
    store.delete_captions(FP, IDENTITY, 3, [(2, 3, 1), (3, 1, 1)])
    with pytest.raises(CaptionError, match=r"2 of 39 captions are missing \(first \(2, 3, 1\)\)"):
        export_reference(store, FP, tree, IDENTITY, "abc123.mp4")
    with pytest.raises(CaptionError, match="39 of 39"):
        reference_document([], tree, "x.mp4")


def test_write_reference_unwritable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReferenceFormatError, match="cannot write"):
        write_reference({"a": 1}, tmp_path / "file" / "out.json")


# malformed files -------------------------------------------------------------------


def mutate(change):
    data = document(3)
    change(data)
    return data


def _del(entry: dict, name: str) -> None:
    del entry[name]


CASES = [
    ("top-level list", [1, 2], "top level must be a JSON object"),
    ("no width", mutate(lambda d: d.pop("width")), "missing field 'width'"),
    ("width text", mutate(lambda d: d.update(width="3")), "width must be an integer"),
    (
        "width mismatch",
        mutate(lambda d: d.update(width=4)),
        "width 4 does not match this video's tree width 3",
    ),
    ("name not str", mutate(lambda d: d.update(video_name=7)), "video_name must be a string"),
    ("captions dict", mutate(lambda d: d.update(captions={})), "captions must be a list"),
    ("two levels", mutate(lambda d: d["captions"].pop()), "has 2 levels, expected 3"),
    (
        "five levels",
        mutate(lambda d: d["captions"].extend([[], []])),
        "has 5 levels",
    ),
    (
        "short medium",
        mutate(lambda d: d["captions"][1].pop()),
        "medium level has 8 captions, expected 9 (width 3)",
    ),
    (
        "level name",
        mutate(lambda d: d["captions"][2][4].update(level="medium")),
        "low level, segment 5: level is 'medium', expected 'low'",
    ),
    (
        "missing caption",
        mutate(lambda d: _del(d["captions"][2][6], "caption")),
        "low level, segment 7: missing field 'caption'",
    ),
    (
        "missing segment id",
        mutate(lambda d: _del(d["captions"][0][1], "segment_id")),
        "high level, entry #2: missing field 'segment_id'",
    ),
    (
        "duplicate segment",
        mutate(lambda d: d["captions"][1][3].update(segment_id=3)),
        "medium level, segment 3: appears twice",
    ),
    (
        "segment out of range",
        mutate(lambda d: d["captions"][0][2].update(segment_id=4)),
        "high level, segment 4: segment_id must be an integer 1..3",
    ),
    (
        "segment zero",
        mutate(lambda d: d["captions"][0][0].update(segment_id=0)),
        "segment_id must be an integer 1..3, got 0",
    ),
    (
        "caption not text",
        mutate(lambda d: d["captions"][0][0].update(caption=None)),
        "high level, segment 1: caption must be a string",
    ),
    (
        "frame_time strings",
        mutate(lambda d: d["captions"][1][0].update(frame_time=["1.0"])),
        "medium level, segment 1: frame_time must be a list of numbers",
    ),
    (
        "frame_ids fractional",
        mutate(lambda d: d["captions"][1][0].update(frame_ids=[1.5])),
        "medium level, segment 1: frame_ids must be a list of integer",
    ),
    (
        "frame_time negative",
        mutate(lambda d: d["captions"][2][3].update(frame_time=[-1.0])),
        "low level, segment 4: frame_time must be a list of numbers (seconds, not negative)",
    ),
    (
        "frame_time beyond video",
        mutate(lambda d: d["captions"][2][26].update(frame_time=[5000.0])),
        "low level, segment 27 has frame times 5000.0-5000.0 s, outside its span here",
    ),
    (
        "entry not object",
        mutate(lambda d: d["captions"][2].__setitem__(0, "text")),
        "low level, entry #1: must be a JSON object",
    ),
    (
        "coarsest level not list",
        mutate(lambda d: d["captions"].insert(0, "x")),
        "coarsest (fourth) level must be a list",
    ),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_files_fail_in_one_line_and_write_nothing(
    tmp_path: Path, store: CaptionStore, data: object, expected: str
) -> None:
    path = dump(tmp_path, data, "bad_video.json")
    with pytest.raises(ReferenceFormatError) as info:
        import_reference(path, store, FP, tree_of(3))
    message = str(info.value)
    assert isinstance(info.value, LVR1Error)
    assert "\n" not in message
    assert message.startswith(str(path) + ": ")
    assert expected in message
    assert store.stats().captions == 0


def test_unreadable_files(tmp_path: Path) -> None:
    tree = tree_of(3)
    with pytest.raises(ReferenceFormatError, match="no such file"):
        load_reference(tmp_path / "absent.json", tree)
    with pytest.raises(ReferenceFormatError, match="is a directory"):
        load_reference(tmp_path, tree)
    (tmp_path / "bad.json").write_text('{"video_name": "x.mp4", "width": ')
    with pytest.raises(ReferenceFormatError, match=r"not valid JSON .* line 1"):
        load_reference(tmp_path / "bad.json", tree)
    (tmp_path / "latin.json").write_bytes(b'{"video_name": "caf\xe9"}')
    with pytest.raises(ReferenceFormatError, match="not UTF-8"):
        load_reference(tmp_path / "latin.json", tree)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"video_name": "x.mp4", "width": ' + "7" * 5000 + "}", "digits"),
    ],
    ids=["nested 100,000 deep", "a 5,000-digit number"],
)
def test_json_the_parser_cannot_hold_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(ReferenceFormatError) as info:
        load_reference(path, tree_of(3))
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON") and expected in message
    assert "\n" not in message


def test_integral_float_frame_ids_are_accepted(tmp_path: Path) -> None:
    data = document(3)
    data["captions"][0][0]["frame_ids"] = [3.0, 4.0]
    ref = load_reference(dump(tmp_path, data), tree_of(3))
    assert ref.captions[0].frame_ids == (3, 4)


# opened-video helpers and the imported captioner -------------------------------------


def test_file_helpers_take_an_opened_video(tmp_path: Path, store: CaptionStore) -> None:
    video = FakeVideo(fingerprint=FP, info=FakeInfo(Path("/v/abc123.mp4"), 600.0, 18000))
    tree = tree_of(3)
    report = import_reference_file(dump(tmp_path, document(3)), video, tree, store)
    assert report.notes == () and str(report).startswith("imported 39 captions")
    out = export_reference_file(tmp_path / "out.json", video, tree, store, DEFAULT_IMPORT_IDENTITY)
    exported = json.loads(out.read_text())
    assert exported["video_name"] == "abc123.mp4"
    assert exported["captions"][2][0]["caption"] == "<caption>low segment 1</caption>"
    same = FakeVideo(fingerprint=FP, info=FakeInfo(Path("/data/abc123.mkv"), 600.0, 18000))
    assert import_reference_file(tmp_path / "ref.json", same, tree, store).notes == ()


def test_a_file_named_for_another_video_is_refused_unless_forced(
    tmp_path: Path, store: CaptionStore
) -> None:
    other = FakeVideo(fingerprint=FP, info=FakeInfo(Path("/v/renamed.mkv"), 600.0, 18000))
    path = dump(tmp_path, document(3))
    with pytest.raises(ReferenceMismatchError) as info:
        import_reference_file(path, other, tree_of(3), store, "imported:x")
    assert str(info.value) == (
        f"{path}: written for video 'abc123.mp4', not 'renamed.mkv' "
        "(--force-match imports it anyway)"
    )
    assert store.stats().captions == 0
    forced = import_reference_file(path, other, tree_of(3), store, "imported:x", force_match=True)
    assert forced.imported == 39
    assert forced.notes == ("imported despite: written for video 'abc123.mp4', not 'renamed.mkv'",)


@pytest.mark.parametrize(("written_for", "last"), [(300.0, 297.2), (1200.0, 1188.9)])
def test_a_file_for_another_duration_is_refused_unless_forced(
    tmp_path: Path, store: CaptionStore, written_for: float, last: float
) -> None:
    """Same name, same width, but frame times of a shorter or longer video: refused."""
    path = dump(tmp_path, document(3, duration=written_for))
    with pytest.raises(ReferenceMismatchError) as info:
        import_reference(path, store, FP, tree_of(3, 600.0))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "--force-match" in message
    assert f"frame times run to {last:.1f} s, this video is 600.0 s long" in message
    assert store.stats().captions == 0
    report = import_reference(path, store, FP, tree_of(3, 600.0), force_match=True)
    assert report.imported == 39 and report.notes[0].startswith("imported despite: ")


def test_frame_times_a_frame_off_the_boundaries_still_match(
    tmp_path: Path, store: CaptionStore
) -> None:
    """The reference splits segments by whole frames, so its times may sit a frame past ours."""
    data = document(3)
    tree = tree_of(3)
    for depth, level in enumerate(data["captions"], start=1):
        for entry, node in zip(level, tree.nodes(depth), strict=True):
            entry["frame_time"] = [max(0.0, node.start - 1 / 30), node.end + 1 / 30]
    assert import_reference(dump(tmp_path, data), store, FP, tree).notes == ()


def test_imported_captioner_serves_imports_and_refuses_to_invent(
    tmp_path: Path, store: CaptionStore
) -> None:
    video = FakeVideo(fingerprint=FP, info=FakeInfo(Path("/v/abc123.mp4"), 600.0, 18000))
    tree = tree_of(3)
    import_reference_file(dump(tmp_path, document(3)), video, tree, store)
    store.delete_captions(FP, DEFAULT_IMPORT_IDENTITY, 3, [(3, 3, 3)])
    service = CaptionService(video, tree, ImportedCaptioner(), store, context_factory=FakeContext)
    assert service.get((2, 1)).text == "medium segment 4"
    report = service.build(progress=False)
    assert (report.cached, report.made) == (38, 0)
    assert report.failed == [
        (
            (3, 3, 3),
            f"node (3, 3, 3) has no caption under {DEFAULT_IMPORT_IDENTITY}: import a "
            "reference file that covers it, or use a captioner that makes captions",
        )
    ]
