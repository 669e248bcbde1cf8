"""Test doubles for the store and caption service, and a script to run them in a child process.

The doubles follow the design contract (``video.fingerprint``, ``video.info``,
``captioner.identity``, ``captioner.caption(ctx)``) without decoding video or
calling a model, so the service is tested before and apart from video.py and
captioners.py. Run as a script, this module builds captions or hammers a store
in a separate process, for the kill, interrupt and multi-process tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvideo_r1.captions.captioner import CallCost
from longvideo_r1.captions.records import CaptionKey, CaptionRecord
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import CaptionError
from longvideo_r1.tree import Node, NodeId, Tree, format_node_id, parse_node_id

HELPER = Path(__file__).resolve()
IDENTITY = "test:scripted:v1"


@dataclass(frozen=True)
class FakeInfo:
    path: Path
    duration: float
    n_frames: int


@dataclass
class FakeVideo:
    """Just enough of ``Video`` for the service: a fingerprint and its info."""

    fingerprint: str = "f" * 64
    info: FakeInfo = field(default_factory=lambda: FakeInfo(Path("/videos/demo.mp4"), 90.0, 900))
    frames_decoded: int = 0


@dataclass
class FakeResult:
    text: str
    frame_times: list[float]
    frame_ids: list[int]
    frames_decoded: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class FakeContext:
    """Stands in for ``captioners.CaptionContext`` (same fields)."""

    video: Any
    tree: Tree
    node: Node
    cues: list[Any]
    artifacts: Any


@dataclass(frozen=True)
class FakeCue:
    start: float
    end: float
    text: str


def tree_for(video: FakeVideo, width: int) -> Tree:
    return Tree.for_video(video.info.duration, video.info.n_frames, width=width)


def expected_text(node_id: NodeId) -> str:
    """Deterministic caption of a node, long enough that a torn write would show."""
    label = format_node_id(node_id)
    return f"Caption of {label}. " + " ".join(f"detail-{i}" for i in range(200))


def expected_times(tree: Tree, node_id: NodeId, frames: int = 4) -> list[float]:
    return tree.sample_times(node_id, frames)


FAILED_CALL_FRAMES = 7
"""What a scripted failure reports having decoded before it failed."""


class ScriptedCaptioner:
    """Captions every node with :func:`expected_text`, slowly or failing on request.

    Counts and optionally logs every call (to a file, one node per line) so
    tests can prove which nodes were asked for, across processes. A scripted
    failure reports what it spent (``exc.spent``), as the real captioners do;
    a crash (a bug) does not.
    """

    def __init__(
        self,
        identity: str = IDENTITY,
        delay: float = 0.0,
        fail: set[NodeId] | None = None,
        crash: set[NodeId] | None = None,
        log_path: Path | None = None,
        frames: int = 4,
        wrap_tags: bool = False,
        prefix: str = "",
    ):
        self.identity = identity
        self.delay = delay
        self.fail = set(fail or ())
        self.crash = set(crash or ())
        self.log_path = log_path
        self.frames = frames
        self.wrap_tags = wrap_tags
        self.prefix = prefix
        self.calls: list[NodeId] = []
        self.contexts: list[Any] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def caption(self, ctx: Any) -> FakeResult:
        node_id = ctx.node.id
        with self._lock:
            self.calls.append(node_id)
            self.contexts.append(ctx)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(format_node_id(node_id) + "\n")
        try:
            if self.delay:
                time.sleep(self.delay)
            if node_id in self.fail:
                error = CaptionError(f"scripted failure for node {format_node_id(node_id)}")
                error.spent = CallCost(FAILED_CALL_FRAMES, 30, 5, seconds=0.25)
                raise error
            if node_id in self.crash:
                raise ValueError("scripted bug\nspanning two lines")
            times = expected_times(ctx.tree, node_id, self.frames)
            fps = ctx.tree.n_frames / ctx.tree.duration
            text = self.prefix + expected_text(node_id)
            return FakeResult(
                text=f"<caption>{text}</caption>" if self.wrap_tags else text,
                frame_times=times,
                frame_ids=[int(t * fps) for t in times],
                frames_decoded=self.frames,
                prompt_tokens=100,
                completion_tokens=20,
                seconds=0.5,
            )
        finally:
            with self._lock:
                self.active -= 1


def make_record(
    fingerprint: str, width: int, node: NodeId, identity: str = IDENTITY, text: str | None = None
) -> CaptionRecord:
    return CaptionRecord(
        fingerprint=fingerprint,
        width=width,
        node_id=node,
        identity=identity,
        text=text if text is not None else expected_text(node),
        frame_times=(0.5, 1.5),
        frame_ids=(5, 15),
        seconds=1.0,
        frames_decoded=2,
        prompt_tokens=10,
        completion_tokens=3,
    )


def read_log(path: Path) -> list[NodeId]:
    if not path.exists():
        return []
    return [parse_node_id(line) for line in path.read_text().splitlines() if line.strip()]


# child-process entry points -----------------------------------------------------------


def _build(args: argparse.Namespace) -> int:
    """Build all captions of a fake video with a slow captioner; print the report as JSON."""
    from longvideo_r1.captions.service import CaptionService

    video = FakeVideo(fingerprint=args.fingerprint)
    tree = tree_for(video, args.width)
    captioner = ScriptedCaptioner(delay=args.delay, log_path=args.log)
    with CaptionStore(args.store) as store:
        service = CaptionService(video, tree, captioner, store, context_factory=FakeContext)
        if args.go is not None:  # start together with the other builds
            args.go.with_name(f"{args.go.name}-ready-{args.log.stem}").touch()
            deadline = time.monotonic() + 60
            while not args.go.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        report = service.build(workers=args.workers, progress=False)
    print(
        json.dumps(
            {
                "made": report.made,
                "cached": report.cached,
                "failed": len(report.failed),
                "interrupted": report.interrupted,
                "remaining": report.remaining,
                "frames_decoded": report.cost.frames_decoded,
                "service_frames_decoded": service.cost.frames_decoded,
                "service_made": service.cost.made,
            }
        ),
        flush=True,
    )
    return 0


def _write(args: argparse.Namespace) -> int:
    """Write and read a store as one of several concurrent processes."""
    tree = Tree(duration=100.0, n_frames=1000, width=8)
    leaves = [n.id for n in tree.nodes(3)]
    store = CaptionStore(args.store, timeout=60)
    if args.go is not None:  # start together with the other writers
        (args.go.parent / f"ready-{args.worker}").touch()
        deadline = time.monotonic() + 60
        while not args.go.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    start = time.time()
    mine = leaves[args.worker * args.n : (args.worker + 1) * args.n]
    for i, node in enumerate(mine):
        store.put_caption(make_record("fp-proc", 8, node))
        store.put_caption(make_record("fp-shared", 8, leaves[i % args.contested]))
        key = CaptionKey("fp-proc-fail", 8, node, IDENTITY)
        store.record_failure(key, f"worker {args.worker} attempt")
        store.put_artifact(f"fp-art-{args.worker}", f"k{i}", {"i": i, "w": args.worker})
        if store.get_caption(CaptionKey("fp-proc", 8, node, IDENTITY)) is None:
            raise SystemExit(f"caption {node} lost right after writing it")
        store.list_captions("fp-proc", IDENTITY, 8)
    store.close()
    summary = {"worker": args.worker, "written": len(mine), "start": start, "end": time.time()}
    print(json.dumps(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build")
    build.add_argument("--store", type=Path, required=True)
    build.add_argument("--log", type=Path, required=True)
    build.add_argument("--fingerprint", default="k" * 64)
    build.add_argument("--width", type=int, default=3)
    build.add_argument("--delay", type=float, default=0.1)
    build.add_argument("--workers", type=int, default=3)
    build.add_argument("--go", type=Path, help="wait for this file to exist before building")
    write = sub.add_parser("write")
    write.add_argument("--store", type=Path, required=True)
    write.add_argument("--worker", type=int, required=True)
    write.add_argument("--n", type=int, default=50)
    write.add_argument("--contested", type=int, default=10)
    write.add_argument("--go", type=Path, help="wait for this file to exist before writing")
    args = parser.parse_args(argv)
    return _build(args) if args.command == "build" else _write(args)


if __name__ == "__main__":
    sys.exit(main())
