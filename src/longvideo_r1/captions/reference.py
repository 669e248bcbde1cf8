"""Import and export of the reference JSON caption format.

The reference system keeps one JSON file per video::

    {"video_name": "<id>.mp4", "width": w,
     "captions": [HIGH, MEDIUM, LOW]}

each level a list of ``{"segment_id", "level", "caption", "frame_time",
"frame_ids"}`` ordered by ``segment_id``, the 1-based flat index of the
segment among the ``w^k`` of its level, with the caption text wrapped in
``<caption>...</caption>``. Some released files put a fourth, coarsest level
first; it has no node in our tree, so import skips it and says so.

Importing lets the released caption sets be navigated and evaluated without
re-captioning; exporting lets our captions feed tools written for the
reference. Segment ids map to node ids only through :class:`~.tree.Tree`.

Imported text keeps its provenance: it is stored only under an
``imported:NAME`` identity, never under a captioner that makes captions, so
it can neither pass as a model's work nor overwrite it. A file written for
another video (by name, or by frame times that do not fit this video's
duration) is refused unless the caller forces the match, and captions an
earlier import stored are overwritten only when asked.
The ``<caption>`` tag helpers live here because this is where the tag is a
file format; captioners import them to read model output.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvideo_r1.captions.captioner import CaptionContext, Captioner, CaptionResult
from longvideo_r1.captions.records import CaptionRecord
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import CaptionError, ConfigError, LVR1Error, one_line
from longvideo_r1.files import write_atomic
from longvideo_r1.tree import LEVELS, NodeId, Tree, format_node_id

IMPORTED_PREFIX = "imported:"
"""Every identity imported captions are stored under starts with this, and no other does."""

DEFAULT_IMPORT_IDENTITY = f"{IMPORTED_PREFIX}reference"
"""Captioner identity that imported captions are stored under unless the caller names one."""

_FIELDS = ("segment_id", "level", "caption", "frame_time", "frame_ids")


class ReferenceFormatError(LVR1Error, ValueError):
    """A reference caption file is malformed, does not fit this video's tree, or can't be written."""


class ReferenceMismatchError(ReferenceFormatError):
    """A valid reference file written for another video: its name or its duration differs."""


class ImportConflictError(LVR1Error):
    """An import would overwrite different captions stored under its identity, unasked."""


def check_import_identity(identity: str) -> str:
    """``identity`` if it is ``imported:NAME``; anything else would let imported text pass
    as (and replace) the captions of a captioner that makes them."""
    if not identity.startswith(IMPORTED_PREFIX):
        raise ConfigError(
            f"imported captions are stored as imported:NAME, not as {identity!r}: imported "
            "text must never pass as the captions of a model"
        )
    if not identity[len(IMPORTED_PREFIX) :].strip():
        raise ConfigError(f"imported:NAME needs a NAME, got {identity!r}")
    return identity


# <caption> tags ---------------------------------------------------------------------

_BLOCK_RE = re.compile(r"<\s*caption\s*>(.*?)<\s*/\s*caption\s*>", re.S | re.I)
_OPEN_RE = re.compile(r"<\s*caption\s*>", re.I)
_CLOSE_RE = re.compile(r"<\s*/\s*caption\s*>", re.I)


def strip_caption_tags(text: str) -> str:
    """The caption inside ``<caption>...</caption>``, trimmed.

    Model output may carry text around the tags, several blocks (a draft,
    then the final one: the last wins) or be cut off after the opening tag
    (the rest is kept, so a caption is not lost to a length limit). Text
    without tags is returned trimmed, so the function is idempotent.
    """
    blocks = _BLOCK_RE.findall(text)
    if blocks:
        return blocks[-1].strip()
    opening = _OPEN_RE.search(text)
    if opening:
        return _CLOSE_RE.sub("", text[opening.end() :]).strip()
    closing = _CLOSE_RE.search(text)
    if closing:
        return text[: closing.start()].strip()
    return text.strip()


def wrap_caption_tags(text: str) -> str:
    """``<caption>text</caption>`` as the released files write it (never double-wrapped)."""
    return f"<caption>{strip_caption_tags(text)}</caption>"


# parsed files -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceCaption:
    """One validated segment of a reference file, already mapped to its node."""

    node_id: NodeId
    segment_id: int
    level: str
    text: str
    frame_times: tuple[float, ...]
    frame_ids: tuple[int, ...]


@dataclass(frozen=True)
class ReferenceFile:
    """A validated reference file: its captions in tree order and what was skipped."""

    source: str
    video_name: str
    width: int
    captions: tuple[ReferenceCaption, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportReport:
    """What an import stored, under which identity, and what it skipped.

    ``counts`` are the file's captions per level; of those, ``unchanged`` were
    already stored with the same text and frames, and ``replaced`` overwrote
    different ones (only when the import was asked to replace).
    """

    source: str
    video_name: str
    width: int
    identity: str
    counts: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    unchanged: int = 0
    replaced: int = 0

    @property
    def imported(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        levels = ", ".join(f"{n} {level}" for level, n in self.counts.items())
        text = f"imported {self.imported} captions ({levels}) from {self.source} as {self.identity}"
        parts = [text]
        if self.unchanged:
            parts.append(f"{self.unchanged} already stored unchanged")
        if self.replaced:
            parts.append(f"replaced {self.replaced} that differed")
        return "; ".join([*parts, *self.notes])

    def __str__(self) -> str:
        return self.summary()


def load_reference(path: str | os.PathLike[str], tree: Tree) -> ReferenceFile:
    """Read and validate a reference file against this video's tree."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ReferenceFormatError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ReferenceFormatError(f"{source}: is a directory, not a JSON file") from None
    except UnicodeDecodeError:
        raise ReferenceFormatError(f"{source}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ReferenceFormatError(
            f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ReferenceFormatError(f"{source}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer longer than Python will convert
        raise ReferenceFormatError(f"{source}: not valid JSON ({one_line(exc)})") from None
    except OSError as exc:
        raise ReferenceFormatError(f"{source}: cannot read ({exc.strerror or exc})") from None
    return parse_reference(data, tree, source)


def parse_reference(data: Any, tree: Tree, source: str = "<reference>") -> ReferenceFile:
    """Validate decoded JSON; every error is one line naming the file, level and segment."""
    if not isinstance(data, dict):
        raise ReferenceFormatError(f"{source}: top level must be a JSON object")
    for name in ("video_name", "width", "captions"):
        if name not in data:
            raise ReferenceFormatError(f"{source}: missing field {name!r}")
    video_name = data["video_name"]
    if not isinstance(video_name, str):
        raise ReferenceFormatError(f"{source}: video_name must be a string")
    width = data["width"]
    if not _is_int(width):
        raise ReferenceFormatError(f"{source}: width must be an integer, got {width!r}")
    if width != tree.width:
        raise ReferenceFormatError(
            f"{source}: width {width} does not match this video's tree width {tree.width}"
        )
    levels, notes = _split_levels(data["captions"], source)
    captions: list[ReferenceCaption] = []
    for depth, entries in enumerate(levels, start=1):
        captions.extend(_parse_level(entries, depth, tree, source))
    return ReferenceFile(source, video_name, width, tuple(captions), tuple(notes))


def _split_levels(levels: Any, source: str) -> tuple[list[Any], list[str]]:
    """The three levels we know, dropping (and noting) a leading coarsest one."""
    if not isinstance(levels, list):
        raise ReferenceFormatError(f"{source}: captions must be a list of levels")
    if len(levels) not in (len(LEVELS), len(LEVELS) + 1):
        raise ReferenceFormatError(
            f"{source}: captions has {len(levels)} levels, expected 3 (high, medium, low) "
            "or 4 (a coarsest level first)"
        )
    notes = []
    if len(levels) == len(LEVELS) + 1:
        extra = levels[0]
        if not isinstance(extra, list):
            raise ReferenceFormatError(f"{source}: the coarsest (fourth) level must be a list")
        notes.append(
            f"skipped the fourth, coarsest level ({len(extra)} caption(s)): "
            "it has no node in the tree"
        )
        levels = levels[1:]
    for depth, entries in enumerate(levels, start=1):
        if not isinstance(entries, list):
            raise ReferenceFormatError(f"{source}: {LEVELS[depth - 1]} level must be a list")
    return levels, notes


def _parse_level(entries: list[Any], depth: int, tree: Tree, source: str) -> list[ReferenceCaption]:
    """Check one level's count and entries and return them in segment order."""
    level = LEVELS[depth - 1]
    expected = tree.count(depth)
    if len(entries) != expected:
        raise ReferenceFormatError(
            f"{source}: {level} level has {len(entries)} captions, expected {expected} "
            f"(width {tree.width})"
        )
    parsed: dict[int, ReferenceCaption] = {}
    for position, entry in enumerate(entries, start=1):
        caption = _parse_entry(entry, position, depth, tree, source)
        if caption.segment_id in parsed:
            raise ReferenceFormatError(
                f"{source}: {level} level, segment {caption.segment_id}: appears twice"
            )
        parsed[caption.segment_id] = caption
    return [parsed[k] for k in sorted(parsed)]


def _parse_entry(
    entry: Any, position: int, depth: int, tree: Tree, source: str
) -> ReferenceCaption:
    """Validate one segment entry; errors name it by segment id when it has one."""
    level = LEVELS[depth - 1]
    where = f"{source}: {level} level, entry #{position}"
    if not isinstance(entry, dict):
        raise ReferenceFormatError(f"{where}: must be a JSON object")
    segment_id = entry.get("segment_id")
    if _is_int(segment_id):
        where = f"{source}: {level} level, segment {segment_id}"
    for name in _FIELDS:
        if name not in entry:
            raise ReferenceFormatError(f"{where}: missing field {name!r}")
    if not _is_int(segment_id) or not 1 <= segment_id <= tree.count(depth):
        raise ReferenceFormatError(
            f"{where}: segment_id must be an integer 1..{tree.count(depth)}, got {segment_id!r}"
        )
    if entry["level"] != level:
        raise ReferenceFormatError(f"{where}: level is {entry['level']!r}, expected {level!r}")
    if not isinstance(entry["caption"], str):
        raise ReferenceFormatError(f"{where}: caption must be a string")
    times = _numbers(entry["frame_time"], f"{where}: frame_time")
    ids = _integers(entry["frame_ids"], f"{where}: frame_ids")
    return ReferenceCaption(
        node_id=tree.from_flat(depth, segment_id - 1),
        segment_id=segment_id,
        level=level,
        text=strip_caption_tags(entry["caption"]),
        frame_times=times,
        frame_ids=ids,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: Any, where: str) -> tuple[float, ...]:
    ok = isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in value
    )
    if not ok:
        raise ReferenceFormatError(f"{where} must be a list of numbers (seconds, not negative)")
    return tuple(float(v) for v in value)


def _integers(value: Any, where: str) -> tuple[int, ...]:
    ok = isinstance(value, list) and all(
        _is_int(v) or (isinstance(v, float) and v.is_integer()) for v in value
    )
    if not ok:
        raise ReferenceFormatError(f"{where} must be a list of integer frame indices")
    return tuple(int(v) for v in value)


# is the file this video's? ---------------------------------------------------------

FRAME_SLACK_S = 1.0
"""Seconds a frame time may sit outside its segment's span here (at least; also two
frames and 0.2% of the duration): the reference splits segments by whole frames and
measures the duration its own way, so its boundaries may differ from ours a little."""


def mismatches(ref: ReferenceFile, tree: Tree, video_name: str | None = None) -> list[str]:
    """Why the file looks written for another video (empty when it fits this one).

    Files name videos by dataset id, so names are compared without their
    extension; ``video_name`` None skips the name (a caller without a video file).
    """
    found = []
    if video_name is not None and Path(ref.video_name).stem != Path(video_name).stem:
        found.append(f"written for video {ref.video_name!r}, not {video_name!r}")
    misfit = _duration_misfit(ref, tree)
    if misfit:
        found.append(misfit)
    return found


def _duration_misfit(ref: ReferenceFile, tree: Tree) -> str | None:
    """The first segment whose frame times fall outside its span in this video's tree.

    Segments split the video evenly, so a file made for a longer or shorter
    video (by more than about a leaf) puts some segment's frames where that
    segment is not here; the file carries no duration of its own to compare.
    """
    frame = tree.duration / max(tree.n_frames, 1)
    slack = max(FRAME_SLACK_S, 2 * frame, 0.002 * tree.duration)
    for caption in ref.captions:
        if not caption.frame_times:
            continue
        node = tree.node(caption.node_id)
        first, last = min(caption.frame_times), max(caption.frame_times)
        if first < node.start - slack or last > node.end + slack:
            latest = max(t for c in ref.captions for t in c.frame_times)
            return (
                f"{caption.level} level, segment {caption.segment_id} has frame times "
                f"{first:.1f}-{last:.1f} s, outside its span here ({node.start:.1f}-"
                f"{node.end:.1f} s): the file's frame times run to {latest:.1f} s, this video "
                f"is {tree.duration:.1f} s long"
            )
    return None


def _match_notes(
    ref: ReferenceFile, tree: Tree, video_name: str | None, force_match: bool
) -> list[str]:
    """Refuse a file for another video unless forced; forced, say what did not match."""
    problems = mismatches(ref, tree, video_name)
    if problems and not force_match:
        raise ReferenceMismatchError(
            f"{ref.source}: {'; '.join(problems)} (--force-match imports it anyway)"
        )
    notes = [f"imported despite: {problem}" for problem in problems]
    if not any(caption.frame_times for caption in ref.captions):
        notes.append("the file has no frame times, so its duration was not checked")
    return notes


# import / export --------------------------------------------------------------------


def import_reference(
    path: str | os.PathLike[str],
    store: CaptionStore,
    fingerprint: str,
    tree: Tree,
    identity: str = DEFAULT_IMPORT_IDENTITY,
    *,
    video_name: str | None = None,
    force_match: bool = False,
    replace: bool = False,
) -> ImportReport:
    """Validate a reference file and check it is this video's, then store it in one transaction.

    ``identity`` must be ``imported:NAME``. Nothing is written unless the whole
    file is valid and fits the video (its name when ``video_name`` is given, and
    its duration), or ``force_match``. Captions already stored under ``identity``
    that equal the file's are kept; different ones are overwritten only with
    ``replace``, and without it they refuse the whole import, naming how many.
    """
    check_import_identity(identity)
    ref = load_reference(path, tree)
    notes = [*ref.notes, *_match_notes(ref, tree, video_name, force_match)]
    records = _records(ref, fingerprint, tree, identity)
    stored = {r.node_id: r for r in store.list_captions(fingerprint, identity, width=tree.width)}
    changed = {
        r.node_id for r in records if r.node_id in stored and not _same(stored[r.node_id], r)
    }
    if changed and not replace:
        first = next(r.node_id for r in records if r.node_id in changed)
        raise ImportConflictError(
            f"{ref.source}: {len(changed)} of {len(records)} captions differ from those already "
            f"stored for this video as {identity} (first {format_node_id(first)}); --replace "
            "overwrites them, or import under another --captioner imported:NAME"
        )
    fresh = [r for r in records if r.node_id not in stored or r.node_id in changed]
    store.put_captions(fresh, replace=replace)
    counts = {level: 0 for level in LEVELS}
    for caption in ref.captions:
        counts[caption.level] += 1
    unchanged = sum(1 for r in records if r.node_id in stored) - len(changed)
    return ImportReport(
        source=ref.source,
        video_name=ref.video_name,
        width=ref.width,
        identity=identity,
        counts=counts,
        notes=tuple(notes),
        unchanged=unchanged,
        replaced=len(changed),
    )


def _records(
    ref: ReferenceFile, fingerprint: str, tree: Tree, identity: str
) -> list[CaptionRecord]:
    """The file's captions as store records of this video, all stamped with one time."""
    now = time.time()
    return [
        CaptionRecord(
            fingerprint=fingerprint,
            width=tree.width,
            node_id=caption.node_id,
            identity=identity,
            text=caption.text,
            frame_times=caption.frame_times,
            frame_ids=caption.frame_ids,
            created_at=now,
        )
        for caption in ref.captions
    ]


def _same(stored: CaptionRecord, new: CaptionRecord) -> bool:
    """Whether importing ``new`` would change what is stored (text or frames)."""
    return (stored.text, tuple(stored.frame_times), tuple(stored.frame_ids)) == (
        new.text,
        tuple(new.frame_times),
        tuple(new.frame_ids),
    )


def reference_document(records: Iterable[CaptionRecord], tree: Tree, video_name: str) -> dict:
    """The reference JSON object for a complete set of captions of one tree.

    Raises :class:`CaptionError` naming the first missing node, because
    consumers of the format index levels by position and a gap would shift
    every later segment.
    """
    by_node = {record.node_id: record for record in records}
    levels = []
    for depth in range(1, len(LEVELS) + 1):
        missing = [n.id for n in tree.nodes(depth) if n.id not in by_node]
        if missing:
            total = sum(tree.count(d) for d in range(1, len(LEVELS) + 1))
            absent = sum(1 for n in tree.walk() if n.id not in by_node)
            raise CaptionError(
                f"cannot export {video_name}: {absent} of {total} captions are missing "
                f"(first {format_node_id(missing[0])}); build them first"
            )
        levels.append([_entry(by_node[n.id], tree) for n in tree.nodes(depth)])
    return {"video_name": video_name, "width": tree.width, "captions": levels}


def _entry(record: CaptionRecord, tree: Tree) -> dict[str, Any]:
    return {
        "segment_id": tree.flat_index(record.node_id) + 1,
        "level": LEVELS[len(record.node_id) - 1],
        "caption": wrap_caption_tags(record.text),
        "frame_time": list(record.frame_times),
        "frame_ids": list(record.frame_ids),
    }


def export_reference(
    store: CaptionStore,
    fingerprint: str,
    tree: Tree,
    identity: str,
    video_name: str,
    path: str | os.PathLike[str] | None = None,
) -> dict:
    """The reference document of one video's captions by one captioner; written if ``path``."""
    records = store.list_captions(fingerprint, identity, width=tree.width)
    document = reference_document(records, tree, video_name)
    if path is not None:
        write_reference(document, path)
    return document


def import_reference_file(
    path: str | os.PathLike[str],
    video: Any,
    tree: Tree,
    store: CaptionStore,
    identity: str = DEFAULT_IMPORT_IDENTITY,
    *,
    force_match: bool = False,
    replace: bool = False,
) -> ImportReport:
    """:func:`import_reference` for an opened video (``.fingerprint``, ``.info.path``).

    Reference files name videos by dataset id, so the file's ``video_name`` must
    match the video's file name without its extension (``abc123.mp4`` fits
    ``/data/abc123.mkv``); a renamed video needs ``force_match``.
    """
    return import_reference(
        path,
        store,
        video.fingerprint,
        tree,
        identity,
        video_name=Path(video.info.path).name,
        force_match=force_match,
        replace=replace,
    )


def export_reference_file(
    path: str | os.PathLike[str],
    video: Any,
    tree: Tree,
    store: CaptionStore,
    identity: str,
) -> Path:
    """Write an opened video's captions by ``identity`` as a reference file named after it."""
    name = Path(video.info.path).name
    document = export_reference(store, video.fingerprint, tree, identity, name)
    return write_reference(document, path)


class ImportedCaptioner(Captioner):
    """The captioner behind ``--captioner imported:NAME``: serves imported captions only.

    Imported captions live in the store under their identity; asking this
    captioner for a node the import did not cover fails (and is recorded)
    rather than silently mixing in captions of another model.
    """

    def __init__(self, identity: str = DEFAULT_IMPORT_IDENTITY):
        self._identity = check_import_identity(identity)

    @property
    def identity(self) -> str:
        return self._identity

    def caption(self, ctx: CaptionContext) -> CaptionResult:
        raise CaptionError(
            f"node {ctx.node.label} has no caption under {self.identity}: import a reference "
            "file that covers it, or use a captioner that makes captions"
        )


def write_reference(document: dict, path: str | os.PathLike[str]) -> Path:
    """Write a document atomically, so a reader never sees half a file."""
    target = Path(path)
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    try:
        write_atomic(target, text)
    except OSError as exc:
        raise ReferenceFormatError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return target
