"""How often the retrieval guide's first offer holds the segment a question's clue is in.

On the shipped test bench (16 questions about the 151.6 s test video, width
4), for each question: the K medium segments the guide (``--guide K``) offers
in round 1, after the opening's high-level captions, and whether one of them
overlaps a clue interval. Printed against the rate at which K medium
segments drawn at random would (the clue intervals of some questions span
many segments, so chance is not K/16). No reasoning model runs: this
measures the ranking alone, not whether a navigator follows it.

The high-level captions are made first if the store lacks them, as the
opening of every run does; with the embedded captioner that also stores each
leaf's speech transcript, which is what the guide reads of a segment whose
caption is not stored yet (its digest).

    python benchmarks/bench_guide.py --store runs/store-v5.sqlite
    python benchmarks/bench_guide.py --store /tmp/fresh.sqlite --digests-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longvideo_r1.agent.guide import Guide, StoredTexts
from longvideo_r1.agent.session import VideoSession
from longvideo_r1.config import load_settings
from longvideo_r1.testing.testbench import load_testbench
from longvideo_r1.testing.testvideo import load_test_video


class DigestsOnly:
    """Rank by the words spoken in each segment alone, as on a tree nobody built yet."""

    def __init__(self, texts: StoredTexts) -> None:
        self.texts = texts

    def text(self, node_id):
        return self.texts.digest(node_id)


def chance(n: int, good: int, k: int) -> float:
    """Probability that ``k`` of ``n`` segments drawn at random include one of ``good``."""
    miss = 1.0
    for i in range(min(k, n)):
        miss *= max(0, n - good - i) / (n - i)
    return 1.0 - miss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="caption store (SQLite)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2], help="guide sizes")
    parser.add_argument("--digests-only", action="store_true", help="ignore stored medium captions")
    args = parser.parse_args()

    video = load_test_video()
    settings = load_settings(None, {"store": str(args.store), "levers": "off"})  # plain captions
    questions = list(load_testbench(subtitles=video.path.parent))
    with VideoSession.open(video.path, settings) as session:
        tree = session.tree
        highs = {node.id for node in tree.nodes(1)}
        for node_id in sorted(highs):
            session.service.get(node_id)  # the opening makes them anyway
        stored = StoredTexts(session.service)
        texts = DigestsOnly(stored) if args.digests_only else stored
        for k in args.k:
            hits, expected = 0, 0.0
            for q in questions:
                clues = [tuple(c) for c in q.clue_intervals]
                good = {
                    n.id for n in tree.nodes(2) if any(n.start < e and n.end > s for s, e in clues)
                }
                offer = Guide(tree, texts, q.question, k).offered(highs)
                hits += bool(good & set(offer))
                expected += chance(len(tree.nodes(2)), len(good), k)
            print(
                f"K={k}: the first offer holds a clue segment in {hits}/{len(questions)} "
                f"questions (K random segments: {expected:.1f}/{len(questions)})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
