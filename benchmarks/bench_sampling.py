"""Frame sampling for caption plans and video_qa clips: our PyAV layer vs decord 0.6.0.

decord is what the reference decodes with. Both sides get the same file and the
same plan (the timestamps ``tree.py`` asks for) and return frames resized to
the plan's longest side; each runs in its own subprocess so its peak memory is
its own.

    python benchmarks/bench_sampling.py                   # the test video
    python benchmarks/bench_sampling.py --video long.mp4  # any file
    python benchmarks/bench_sampling.py --long 7200       # test video looped to 2 h

Prints one table row per (plan, decoder): seconds, frames per second, frames
decoded and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def plan_times(video_path: str, plan: str, leaves: int, seed: int) -> tuple[list[list[float]], int]:
    """Per call, the timestamps one caption level or a set of video_qa clips asks for."""
    from longvideo_r1.media.video import Video
    from longvideo_r1.tree import LEVELS, Tree

    with Video.open(video_path) as video:
        tree = Tree.for_video(video.info.duration, video.info.n_frames)
    if plan == "video_qa":
        rng = random.Random(seed)
        picks = rng.sample(tree.nodes(3), min(leaves, tree.count(3)))
        return [tree.qa_times(n.id) for n in picks], tree.qa_plan.max_side
    depth = LEVELS.index(plan) + 1
    return [tree.sample_times(n.id) for n in tree.nodes(depth)], tree.plans[plan].max_side


def run_ours(video_path: str, calls: list[list[float]], max_side: int) -> dict:
    from longvideo_r1.media.video import Video

    start = time.perf_counter()
    frames = 0
    with Video.open(video_path) as video:
        for times in calls:
            frames += len(video.frames_at(times, max_side))
        decoded = video.frames_decoded
    return {"seconds": time.perf_counter() - start, "frames": frames, "decoded": decoded}


def run_decord(video_path: str, calls: list[list[float]], max_side: int, threads: int) -> dict:
    """The reference's way: decord reader, frame indices from time * fps, resize after.

    ``threads`` 0 is decord's default (FFmpeg picks, as our PyAV layer does);
    on a 2-core machine 1 thread made decord 1.2-2x faster, so 1 is the default.
    """
    import decord
    from PIL import Image

    start = time.perf_counter()
    reader = decord.VideoReader(video_path, ctx=decord.cpu(0), num_threads=threads)
    fps = reader.get_avg_fps()
    n = len(reader)
    frames = 0
    for times in calls:
        indices = [min(n - 1, int(t * fps)) for t in times]
        batch = reader.get_batch(indices).asnumpy()
        for array in batch:
            image = Image.fromarray(array)
            scale = max_side / max(image.size)
            if scale < 1:
                image = image.resize(
                    (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                    Image.BICUBIC,
                )
            frames += 1
    return {"seconds": time.perf_counter() - start, "frames": frames, "decoded": None}


def child(args: argparse.Namespace) -> None:
    calls, max_side = plan_times(args.video, args.plan, args.leaves, args.seed)
    if args.decoder == "pyav":
        result = run_ours(args.video, calls, max_side)
    else:
        result = run_decord(args.video, calls, max_side, args.decord_threads)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["calls"] = len(calls)
    print(json.dumps(result))


def measure(video: str, plan: str, decoder: str, leaves: int, seed: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--video", video, "--plan", plan]
    cmd += ["--decoder", decoder, "--leaves", str(leaves), "--seed", str(seed)]
    cmd += ["--decord-threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", help="video file (default: the project's test video)")
    parser.add_argument("--long", type=float, help="loop the test video to this many seconds")
    parser.add_argument("--plans", default="high,medium,low,video_qa")
    parser.add_argument("--leaves", type=int, default=16, help="video_qa clips to sample")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--decord-threads",
        type=int,
        default=1,
        help="decord's decoder threads (default 1, its fastest on 2 cores; 0: FFmpeg picks, "
        "as our PyAV layer does)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--decoder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from longvideo_r1.testing.testvideo import build_long_video, build_test_video

    video = args.video or str(build_test_video(None))
    if args.long:
        video = str(build_long_video(Path(video), args.long))
    print(f"video: {video}")
    print(f"decord threads: {args.decord_threads} (0: FFmpeg picks); PyAV: FFmpeg picks")
    print(
        f"{'plan':<9} {'decoder':<7} {'calls':>5} {'frames':>6} {'seconds':>8} "
        f"{'frames/s':>9} {'decoded':>8} {'peak MB':>8}"
    )
    for plan in args.plans.split(","):
        for decoder in ("pyav", "decord"):
            runs = [
                measure(video, plan, decoder, args.leaves, args.seed, args.decord_threads)
                for _ in range(args.repeat)
            ]
            best = min(runs, key=lambda r: r["seconds"])
            decoded = "-" if best["decoded"] is None else str(best["decoded"])
            print(
                f"{plan:<9} {decoder:<7} {best['calls']:>5} {best['frames']:>6} "
                f"{best['seconds']:>8.2f} {best['frames'] / best['seconds']:>9.1f} "
                f"{decoded:>8} {max(r['peak_rss_mb'] for r in runs):>8.0f}"
            )


if __name__ == "__main__":
    main()
