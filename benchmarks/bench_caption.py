"""Caption-tree cost of the embedded CPU captioner: build time, and memory against length.

Three parts, each measured in its own subprocess with a fresh temporary store
(never the user's cache), so model loads, caches and peak memory are per run:

``build``   the full tree of the test video (~2.5 min), once per ``--workers``
            value, level by level in the order ``lvr1 caption`` uses (high,
            medium, low): wall seconds per minute of video, per level seconds
            per node, frames decoded (the video's own counter).
``memory``  the same amount of captioning work (the first high node, the first
            two medium nodes and the first eight leaves: 11 nodes, 208 frames)
            on the test video and on it looped to each ``--long`` length: peak
            resident memory side by side. A high node of a long video spans
            more audio, so the long run transcribes more speech; the table
            says how much.
``cli``     ``lvr1 tree`` on the long video (time, peak memory), and
            ``lvr1 caption --levels high`` on it when ``--high-timeout`` > 0,
            killed at the timeout (captions made so far are counted: each is
            committed when made).

    python benchmarks/bench_caption.py                       # all parts
    python benchmarks/bench_caption.py --parts build --workers 1,2
    python benchmarks/bench_caption.py --parts memory --long 1800,7200 --repeat 2
    python benchmarks/bench_caption.py --parts cli --long 7200 --high-timeout 900
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LEVEL_NAMES = ("high", "medium", "low")


# measuring ------------------------------------------------------------------------------


def proc_status_kb(field: str, pid: str = "self") -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), 0 where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def mib(kb: float) -> float:
    return kb / 1024


def machine() -> str:
    """CPU model, usable cores, memory and the load average right now."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    mem_gib = proc_meminfo_kb("MemTotal") / 1024 / 1024
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {cores} cores, {mem_gib:.1f} GiB RAM; load average {load}"


def proc_meminfo_kb(field: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(args: list[str], timeout: float | None = None) -> dict:
    """Run this script as a child; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_measured(cmd: list[str], timeout: float | None, env: dict | None = None) -> dict:
    """Run a command; wall seconds, peak RSS (from wait4) and whether it was killed at timeout."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
    )
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout is not None and time.perf_counter() - started > timeout:
            proc.kill()
            killed = True
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "rc": proc.returncode,
        "killed": killed,
        "stderr_tail": stderr.strip().splitlines()[-3:],
    }


# children -------------------------------------------------------------------------------


def _session(video: str, store: str):
    from longvideo_r1.agent.session import VideoSession
    from longvideo_r1.config import Settings

    return VideoSession.open(video, Settings(store=Path(store), levers="off"))  # plain captions


def child_build(video: str, store: str, workers: int) -> dict:
    """Caption the whole tree level by level; per-level wall and captioner seconds."""
    started = time.perf_counter()
    with _session(video, store) as s:
        opened = time.perf_counter() - started
        fp, identity, width = s.video.fingerprint, s.captioner.identity, s.tree.width
        levels = []
        for depth, name in enumerate(LEVEL_NAMES, start=1):
            before = s.video.frames_decoded
            report = s.service.build(depths=(depth,), workers=workers, progress=False)
            if report.failed:
                raise SystemExit(f"{name}: {len(report.failed)} failed: {report.failed[0]}")
            records = s.store.list_captions(fp, identity, width=width, depth=depth)
            levels.append(
                {
                    "level": name,
                    "nodes": len(records),
                    "span_s": s.tree.duration / s.tree.count(depth),
                    "wall_s": report.seconds,
                    "caption_s": sum(r.seconds for r in records),
                    "max_caption_s": max(r.seconds for r in records),
                    "frames_decoded": s.video.frames_decoded - before,
                    "frames_reported": sum(r.frames_decoded for r in records),
                    "words": sum(len(r.text.split()) for r in records) / len(records),
                }
            )
        load = s.captioner.transcriber.load_seconds
        duration = s.tree.duration
    return {
        "workers": workers,
        "duration": duration,
        "width": width,
        "open_s": opened,
        "whisper_load_s": load,
        "total_s": time.perf_counter() - started,
        "levels": levels,
        "peak_rss_mb": mib(proc_status_kb("VmHWM")),
    }


def work_nodes(tree) -> list[tuple[int, ...]]:
    """The fixed work: first 8 leaves, first 2 medium nodes, first high node (bottom up)."""
    leaves = [tree.from_flat(3, k) for k in range(8)]
    mediums = [tree.from_flat(2, k) for k in range(2)]
    return [*leaves, *mediums, (1,)]


def child_work(video: str, store: str) -> dict:
    """The fixed captioning work; resident memory before, during and after."""
    import gc

    started = time.perf_counter()
    with _session(video, store) as s:
        rss_open = mib(proc_status_kb("VmRSS"))
        hwm_open = mib(proc_status_kb("VmHWM"))
        open_s = time.perf_counter() - started
        nodes = work_nodes(s.tree)
        before = s.video.frames_decoded
        rss_after = []
        t0 = time.perf_counter()
        for node_id in nodes:
            s.service.get(node_id)
            gc.collect()
            rss_after.append(mib(proc_status_kb("VmRSS")))
        work_s = time.perf_counter() - t0
        audio_s = s.tree.node((1,)).duration
        out = {
            "duration": s.tree.duration,
            "width": s.tree.width,
            "n_frames": s.video.info.n_frames,
            "open_s": open_s,
            "work_s": work_s,
            "nodes": len(nodes),
            "frames_decoded": s.video.frames_decoded - before,
            "audio_s": audio_s,
            "rss_open_mb": rss_open,
            "hwm_open_mb": hwm_open,
            "rss_first_node_mb": rss_after[0],
            "rss_end_mb": rss_after[-1],
        }
    out["peak_rss_mb"] = mib(proc_status_kb("VmHWM"))
    return out


# parts ----------------------------------------------------------------------------------


def part_build(video: str, workers_list: list[int]) -> None:
    print(f"\n== build: full tree of {Path(video).name}, fresh store per run ==")
    results = []
    for workers in workers_list:
        with tempfile.TemporaryDirectory(prefix="lvr1-bench-") as tmp:
            store = str(Path(tmp) / "store.sqlite")
            r = run_child(["--child", "build", "--video", video, "--store", store,
                           "--workers", str(workers)])  # fmt: skip
        results.append(r)
        print(f"  workers {workers}: {r['total_s']:.1f} s, load average {machine_load()}")
    duration_min = results[0]["duration"] / 60
    print(
        f"video {results[0]['duration']:.1f} s, width {results[0]['width']}; "
        f"whisper load {results[0]['whisper_load_s'] or 0:.1f} s (in the first high node)"
    )
    print(
        f"{'workers':>7} {'level':<7} {'nodes':>5} {'span s':>7} {'wall s':>7} "
        f"{'wall s/node':>11} {'caption s/node':>14} {'max s':>6} {'frames':>7} {'words':>6}"
    )
    for r in results:
        for lv in r["levels"]:
            print(
                f"{r['workers']:>7} {lv['level']:<7} {lv['nodes']:>5} {lv['span_s']:>7.1f} "
                f"{lv['wall_s']:>7.1f} {lv['wall_s'] / lv['nodes']:>11.2f} "
                f"{lv['caption_s'] / lv['nodes']:>14.2f} {lv['max_caption_s']:>6.1f} "
                f"{lv['frames_decoded']:>7} {lv['words']:>6.0f}"
            )
    print(
        f"\n{'workers':>7} {'nodes':>5} {'total s':>8} {'s per video min':>15} "
        f"{'frames decoded':>14} {'captioners report':>17} {'peak MB':>8}"
    )
    for r in results:
        nodes = sum(lv["nodes"] for lv in r["levels"])
        decoded = sum(lv["frames_decoded"] for lv in r["levels"])
        reported = sum(lv["frames_reported"] for lv in r["levels"])
        print(
            f"{r['workers']:>7} {nodes:>5} {r['total_s']:>8.1f} "
            f"{r['total_s'] / duration_min:>15.1f} {decoded:>14} {reported:>17} "
            f"{r['peak_rss_mb']:>8.0f}"
        )


def machine_load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def part_memory(short: str, longs: list[str], repeat: int) -> None:
    print("\n== memory: the same 11 nodes (1 high, 2 medium, 8 low) on videos of growing length ==")
    rows = []
    for _ in range(repeat):
        for video in (short, *longs):
            with tempfile.TemporaryDirectory(prefix="lvr1-bench-") as tmp:
                store = str(Path(tmp) / "store.sqlite")
                rows.append(run_child(["--child", "work", "--video", video, "--store", store]))
            print(
                f"  {Path(video).name}: {rows[-1]['work_s']:.1f} s, load average {machine_load()}"
            )
    print(
        f"{'video':<9} {'width':>5} {'frames in file':>14} {'open s':>6} {'work s':>7} "
        f"{'decoded':>7} {'audio s':>7} {'RSS open':>8} {'RSS 1st':>7} {'RSS end':>7} "
        f"{'peak MB':>7}"
    )
    for r in sorted(rows, key=lambda r: r["duration"]):
        print(
            f"{r['duration'] / 60:>6.1f}min {r['width']:>5} {r['n_frames']:>14} "
            f"{r['open_s']:>6.1f} {r['work_s']:>7.1f} {r['frames_decoded']:>7} "
            f"{r['audio_s']:>7.0f} {r['rss_open_mb']:>8.0f} {r['rss_first_node_mb']:>7.0f} "
            f"{r['rss_end_mb']:>7.0f} {r['peak_rss_mb']:>7.0f}"
        )


def part_cli(long: str, high_timeout: float, workers: int) -> None:
    print(f"\n== cli on {Path(long).name} (fresh store) ==")
    lvr1 = str(Path(sys.executable).with_name("lvr1"))
    with tempfile.TemporaryDirectory(prefix="lvr1-bench-") as tmp:
        store = str(Path(tmp) / "store.sqlite")
        env = {**os.environ, "LVR1_STORE": store}
        runs = [("lvr1 tree", run_measured([lvr1, "tree", long, "--store", store], None, env))]
        if high_timeout > 0:
            cmd = [lvr1, "caption", long, "--levels", "high", "--workers", str(workers)]
            cmd += ["--quiet", "--store", store]
            runs.append(
                (f"lvr1 caption --levels high --workers {workers}",
                 run_measured(cmd, high_timeout, env))
            )  # fmt: skip
        made = stored_captions(store, long)
    print(f"{'command':<40} {'seconds':>8} {'peak MB':>8} {'rc':>4}  note")
    for name, r in runs:
        note = f"killed at {high_timeout:.0f} s" if r["killed"] else ""
        if name.startswith("lvr1 caption"):
            note += f"{'; ' if note else ''}{len(made)} of 8 high captions stored"
            if made:
                note += f", {sum(made) / len(made):.0f} s each (max {max(made):.0f} s)"
        print(f"{name:<40} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f} {r['rc']:>4}  {note}")
        if r["rc"] not in (0, -9) and r["stderr_tail"]:
            print("    stderr: " + " | ".join(r["stderr_tail"]))
    print(f"load average after: {machine_load()}")


def stored_captions(store: str, video: str) -> list[float]:
    """Captioner seconds of every caption stored for the video (each committed when made)."""
    from longvideo_r1.captions.store import CaptionStore
    from longvideo_r1.media.video import file_fingerprint

    if not Path(store).exists():
        return []
    with CaptionStore(Path(store)) as db:
        fp = file_fingerprint(Path(video))
        return [r.seconds for identity in db.stats(fp).captions_by_identity
                for r in db.list_captions(fp, identity)]  # fmt: skip


# main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Each part runs in subprocesses with a temporary caption store.",
    )
    parser.add_argument("--parts", default="build,memory,cli", help="build,memory,cli")
    parser.add_argument("--video", help="short video (default: the project's test video)")
    parser.add_argument(
        "--long",
        default="7200",
        help="seconds of the looped video(s), comma-separated; cli uses the longest",
    )
    parser.add_argument("--repeat", type=int, default=1, help="memory: runs per video")
    parser.add_argument("--workers", default="1,2", help="build: worker counts to compare")
    parser.add_argument(
        "--high-timeout",
        type=float,
        default=0,
        metavar="S",
        help="cli: also run 'lvr1 caption --levels high' on the long video, killed after S s",
    )
    parser.add_argument("--cli-workers", type=int, default=2, help="cli: --workers of lvr1")
    parser.add_argument("--child", choices=("build", "work"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "build":
        print(json.dumps(child_build(args.video, args.store, int(args.workers))))
        return
    if args.child == "work":
        print(json.dumps(child_work(args.video, args.store)))
        return

    from longvideo_r1.testing.testvideo import build_long_video, build_test_video

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"build", "memory", "cli"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    short = args.video or str(build_test_video(None))
    print(f"machine: {machine()}")
    print(
        f"python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    if "build" in parts:
        part_build(short, [int(w) for w in args.workers.split(",")])
    if parts & {"memory", "cli"}:
        seconds = sorted(float(x) for x in args.long.split(","))
        longs = [str(build_long_video(Path(short), x)) for x in seconds]
        if "memory" in parts:
            part_memory(short, longs, args.repeat)
        if "cli" in parts:
            part_cli(longs[-1], args.high_timeout, args.cli_workers)
    print(f"\nmachine at the end: {machine()}")


if __name__ == "__main__":
    main()
