"""Navigable captions: does a parent's caption name the asked object at the child that holds it?

For each test-bench question, the clue intervals say which medium (and low)
nodes hold the fact, and :data:`ASKED` lists the question's asked object, as
the reader must match it (the box, the bow tie, the window; not the answer).
The script captions the test video's high and medium levels with the
embedded captioner twice into one store, without and with
``--navigable-captions`` (the second run reuses the first's transcripts), and
counts, per level:

- attributed: an asked word appears in the parent's caption where it is tied
  to the child holding the clue: in that child's ``Part`` line, or in a timed
  quote (speech, subtitles, on-screen text) that starts inside the child;
- part line: the same, counting the ``Part`` lines only;
- anywhere: an asked word appears somewhere in the parent's caption, which
  does not tell the reader which child holds it.

A question with several clues (which came first, how many) counts when every
clue's child is named. Two questions ask about no object (the very end, the
number of clips) and count as misses.

    python benchmarks/bench_navcap.py --store /tmp/navcap.sqlite                # with the .srt
    python benchmarks/bench_navcap.py --store /tmp/navcap-nosub.sqlite --no-subtitles
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from longvideo_r1.captions.embedded import EmbeddedCaptioner  # noqa: E402
from longvideo_r1.captions.store import CaptionStore  # noqa: E402
from longvideo_r1.media.video import file_fingerprint  # noqa: E402
from longvideo_r1.testing.testbench import load_testbench  # noqa: E402
from longvideo_r1.testing.testvideo import load_test_video  # noqa: E402
from longvideo_r1.tree import Tree  # noqa: E402

ASKED: dict[str, tuple[tuple[str, ...], ...]] = {
    "tv-01": (("box",),),
    "tv-02": (("bow", "tie"),),
    "tv-03": (("rabbit",),),
    "tv-04": (("brick", "building"),),
    "tv-05": (("wall",),),
    "tv-06": (("window",),),
    "tv-07": (("cyclist",),),
    "tv-08": (("box",), ("bow", "tie"), ("cup",), ("rabbit",)),
    "tb-01": (("cyclist",),),
    "tb-02": (("bow", "tie"),),
    "tb-03": (("table",),),
    "tb-04": (("grass", "path"),),
    "tb-05": (("box",),),
    "tb-06": (),
    "tb-07": (),
    "tb-08": (("hand",), ("hand",), ("hand",)),
}
"""Per question, per clue interval (in order): the words that name the asked object."""

_PART_RE = re.compile(r"^Part \(([\d, ]+)\) [^:]*: (.*)$")
_QUOTE_RE = re.compile(r'(\d+\.\d)s(?:-\d+\.\d+s)? "([^"]*)"')
_WORD_RE = re.compile(r"[a-z]+")


def words_of(text: str) -> set[str]:
    """Lower-case words, with a plural's singular too (boxes -> box, hands -> hand)."""
    out = set()
    for w in _WORD_RE.findall(text.lower()):
        out.add(w)
        out.update({w[:-2], w[:-1]} if w.endswith("es") else {w[:-1]} if w.endswith("s") else ())
    return out


@dataclass(frozen=True)
class Found:
    attributed: bool
    part_line: bool
    anywhere: bool


def find(caption: str, child_id: tuple[int, ...], start: float, end: float, asked) -> Found:
    """Where the parent's caption names an asked word for the child ``child_id``."""
    asked = set(asked)
    in_part = False
    for line in caption.splitlines():
        m = _PART_RE.match(line)
        if m and tuple(int(x) for x in m.group(1).split(",")) == child_id:
            in_part = bool(asked & words_of(m.group(2)))
    quoted = any(
        start <= float(t) < end and asked & words_of(text) for t, text in _QUOTE_RE.findall(caption)
    )
    return Found(in_part or quoted, in_part, bool(asked & words_of(caption)))


def score(captions: dict, tree: Tree, depth: int) -> dict[str, Found]:
    """Per question: every clue's asked words found at one of its children of ``depth``."""
    out = {}
    for q in load_testbench():
        facts = ASKED[q.id]
        if not facts:
            out[q.id] = Found(False, False, False)
            continue
        per_fact = []
        for asked, (a, b) in zip(facts, q.clue_intervals, strict=False):  # tb-05: the box only
            hits = [
                find(captions.get(child.id[:-1], ""), child.id, child.start, child.end, asked)
                for child in tree.covering(a, b, depth)
            ]
            per_fact.append(
                Found(*(any(getattr(h, f) for h in hits) for f in Found.__dataclass_fields__))
            )
        out[q.id] = Found(
            *(all(getattr(h, f) for h in per_fact) for f in Found.__dataclass_fields__)
        )
    return out


def caption_levels(video: Path, store: Path, navigable: bool) -> None:
    """``lvr1 caption`` of the high and medium levels, as a user runs it."""
    argv = [sys.executable, "-m", "longvideo_r1.cli", "caption", str(video), "--store", str(store)]
    argv += ["--levels", "high,medium", "--quiet"]
    argv.append("--navigable-captions" if navigable else "--no-navigable-captions")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(argv, check=True, env=env)


def table(results: dict[str, dict[str, Found]], levels: Sequence[str]) -> list[str]:
    heads = [f"{lvl} {name}" for lvl in levels for name in ("plain", "navigable")]
    lines = ["| question | asked | " + " | ".join(heads) + " |", "|---" * (2 + len(heads)) + "|"]
    qids = list(ASKED)

    def cell(found: Found) -> str:
        return (
            "part"
            if found.part_line
            else "quote"
            if found.attributed
            else ("elsewhere" if found.anywhere else "-")
        )

    for qid in qids:
        asked = " / ".join("|".join(a) for a in ASKED[qid]) or "(none)"
        row = [cell(results[h][qid]) for h in heads]
        lines.append(f"| {qid} | {asked} | " + " | ".join(row) + " |")
    for field, name in (
        ("attributed", "attributed"),
        ("part_line", "part line"),
        ("anywhere", "anywhere"),
    ):
        counts = [sum(getattr(results[h][q], field) for q in qids) for h in heads]
        lines.append(f"| **{name}** | of {len(qids)} | " + " | ".join(map(str, counts)) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="caption store (default: a temporary one)")
    parser.add_argument(
        "--no-subtitles", action="store_true", help="caption from speech alone (hide the .srt)"
    )
    args = parser.parse_args()
    built = load_test_video()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store.sqlite"
        video = built.path
        if args.no_subtitles:  # the same file (same fingerprint) with no .srt beside it
            video = Path(tmp) / built.path.name
            video.symlink_to(built.path)
        for navigable in (False, True):
            caption_levels(video, store, navigable)
        fingerprint = file_fingerprint(built.path)
        tree = Tree.for_video(built.manifest["duration"], built.manifest["n_frames"])
        results = {}
        with CaptionStore(store) as db:
            for navigable in (False, True):
                identity = EmbeddedCaptioner(navigable=navigable).identity
                records = db.list_captions(fingerprint, identity, width=tree.width)
                captions = {r.node_id: r.text for r in records}
                name = "navigable" if navigable else "plain"
                results[f"high {name}"] = score(captions, tree, 2)
                results[f"medium {name}"] = score(captions, tree, 3)
    print("\n".join(table(results, ("high", "medium"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
