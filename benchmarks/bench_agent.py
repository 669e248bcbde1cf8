"""End-to-end question answering on the test video with the embedded CPU defaults.

The reasoning model is the embedded default (Qwen2.5-Coder-0.5B GGUF through
llama.cpp), captions come from the embedded CPU captioner, video_qa falls back
to leaf captions (no vision model). The caption store is a fresh temporary
file, so the first question starts cold and its captions are made on demand
(included in its time); later questions reuse whatever earlier ones made and
make the rest. Everything runs in this one process, as ``lvr1 ask`` would.

Per question: end-to-end seconds, rounds, caption calls made / cached,
video_qa calls, reasoning tokens, model / tool / agent seconds, the agent's
own overhead per round and as a share of model time, and whether the answer
matches the manifest. Then peak resident memory, and the issue's targets.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_agent.py
    python benchmarks/bench_agent.py --questions 3 --traces /tmp/traces
    python benchmarks/bench_agent.py --prebuilt     # caption the whole tree first
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp loads its runtime

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

GIB = 1024**3
TARGETS = {
    "first": 180.0,  # first question, captions included, seconds
    "further": 60.0,  # any further question, seconds
    "memory": 4 * GIB,  # peak resident memory, bytes
    "overhead": 0.02,  # agent overhead as a share of model time
}


def proc_status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    mem = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    return f"{model}, {cores} cores, {mem / 1024**2:.1f} GiB RAM; load average {load()}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def ask_all(args: argparse.Namespace, store: Path, traces: Path) -> None:
    from longvideo_r1.agent.config import AgentConfig
    from longvideo_r1.agent.session import VideoSession, make_reasoning_backend
    from longvideo_r1.config import Settings
    from longvideo_r1.testing.testvideo import load_test_video

    built = load_test_video(None)
    questions = built.manifest["questions"]
    if args.only:
        wanted = set(args.only.split(","))
        questions = [q for q in questions if q["id"] in wanted]
    questions = questions[: args.questions]
    settings = Settings(store=store, levers="off")  # the plain agent over plain captions
    config = AgentConfig(max_rounds=args.max_rounds)
    rss_start = proc_status_kb("VmRSS") / 1024

    started = time.perf_counter()
    session = VideoSession.open(built.path, settings)
    open_s = time.perf_counter() - started
    backend = make_reasoning_backend(settings)
    t0 = time.perf_counter()
    backend.load()
    load_s = time.perf_counter() - t0
    print(f"video {built.path.name} ({session.tree.duration:.1f} s, width {session.tree.width})")
    print(f"reasoning {backend.identity}, n_ctx {backend.n_ctx}, threads {backend.n_threads}")
    print(f"captioner {session.captioner.identity}")
    print(
        f"session open {open_s:.2f} s, model load {load_s:.2f} s, RSS {rss_start:.0f} MB at start"
    )
    build_s = None
    if args.prebuilt:
        report = session.service.build(depths=(1, 2, 3), workers=2, progress=False)
        build_s = report.seconds
        print(f"prebuilt the tree: {report.summary()}")

    rows = []
    try:
        navigator = session.navigator(backend, config)
        for n, item in enumerate(questions, start=1):
            choices = [f"{chr(65 + i)}. {c}" for i, c in enumerate(item["choices"])]
            calls_before = len(backend.history())
            t0 = time.perf_counter()
            trace = navigator.run(item["question"], choices)
            wall = time.perf_counter() - t0
            trace.save(traces / f"{n:02d}-{item['id']}.json")
            calls = backend.history()[calls_before:]
            evaluated = sum(c.prompt_evaluated or 0 for c in calls)
            cost = trace.cost
            rows.append(
                {
                    "id": item["id"],
                    "wall": wall,
                    "status": trace.status,
                    "answer": trace.answer,
                    "expected": item["answer"],
                    "right": trace.answer == item["answer"],
                    "reason": trace.reason,
                    "cost": cost,
                    "evaluated": evaluated,
                    "rss": proc_status_kb("VmRSS") / 1024,
                    "load": load(),
                }
            )
            print(
                f"  {item['id']}: {wall:.1f} s, {cost.rounds} rounds, {trace.status} "
                f"{trace.answer!r} (expected {item['answer']}), load average {load()}",
                flush=True,
            )
    finally:
        backend.close()
        session.close()
    peak = proc_status_kb("VmHWM") * 1024
    print_table(rows, load_s, build_s, peak, traces)


def print_table(rows: list[dict], load_s: float, build_s: float | None, peak: int, traces) -> None:
    print(
        f"\n{'q':<6} {'e2e s':>6} {'rounds':>6} {'capt':>4} {'made':>4} {'cached':>6} "
        f"{'vqa':>3} {'perr':>4} {'prompt':>6} {'prefill':>7} {'gen':>5} {'model s':>7} "
        f"{'tool s':>6} {'agent s':>7} {'ms/round':>8} {'agent%':>6} {'answer':>6} {'ok':>3}"
    )
    for r in rows:
        c = r["cost"]
        per_round = 1000 * c.agent_overhead_seconds / max(1, c.rounds)
        share = 100 * c.agent_overhead_seconds / c.model_seconds if c.model_seconds else 0.0
        answer = f"{r['answer'] or '-'}/{r['expected']}"
        print(
            f"{r['id']:<6} {r['wall']:>6.1f} {c.rounds:>6} {c.caption_calls:>4} "
            f"{c.captions_made:>4} {c.captions_cached:>6} {c.video_qa_calls:>3} "
            f"{c.parse_errors:>4} {c.reasoning_prompt_tokens:>6} {r['evaluated']:>7} "
            f"{c.reasoning_completion_tokens:>5} {c.model_seconds:>7.1f} {c.tool_seconds:>6.1f} "
            f"{c.agent_overhead_seconds:>7.3f} {per_round:>8.1f} {share:>6.2f} {answer:>6} "
            f"{'yes' if r['right'] else 'no':>3}"
        )
    if not rows:
        return
    for r in rows:
        if r["status"] != "answered":
            print(f"  {r['id']} {r['status']}: {r['reason']}")
    model = sum(r["cost"].model_seconds for r in rows)
    agent = sum(r["cost"].agent_overhead_seconds for r in rows)
    rounds = sum(r["cost"].rounds for r in rows)
    right = sum(r["right"] for r in rows)
    first, further = rows[0]["wall"], [r["wall"] for r in rows[1:]]
    print(
        f"\n{right}/{len(rows)} right; {rounds} rounds; model {model:.1f} s, agent overhead "
        f"{agent:.3f} s ({1000 * agent / max(1, rounds):.1f} ms per round, "
        f"{100 * agent / model if model else 0:.2f}% of model time)"
    )
    print(f"model load {load_s:.1f} s (before the first question, not in its time)")
    if build_s is not None:
        print(f"tree prebuilt in {build_s:.1f} s (not in any question's time)")
    print(f"peak RSS {peak / 1024**2:.0f} MB; traces in {traces}")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print("\ntargets:")
    print(
        f"  first question incl. captions < {TARGETS['first']:.0f} s: {first:.1f} s "
        f"({first + load_s:.1f} s with the model load) -> {verdict(first < TARGETS['first'])}"
    )
    if further:
        worst, mean = max(further), sum(further) / len(further)
        print(
            f"  a further question < {TARGETS['further']:.0f} s: mean {mean:.1f} s, worst "
            f"{worst:.1f} s, {sum(w < TARGETS['further'] for w in further)}/{len(further)} "
            f"under -> {verdict(worst < TARGETS['further'])}"
        )
    print(f"  peak memory < 4 GiB: {peak / GIB:.2f} GiB -> {verdict(peak < TARGETS['memory'])}")
    share = agent / model if model else 0.0
    print(
        f"  agent overhead < 2% of model time: {100 * share:.2f}% -> "
        f"{verdict(share < TARGETS['overhead'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8, help="how many manifest questions")
    parser.add_argument("--only", help="comma-separated question ids, e.g. tv-01,tv-03")
    parser.add_argument("--max-rounds", type=int, default=30, help="rounds per question")
    parser.add_argument(
        "--prebuilt", action="store_true", help="caption the whole tree before the questions"
    )
    parser.add_argument("--traces", type=Path, help="keep the traces here (default: discarded)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(
        f"python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    with tempfile.TemporaryDirectory(prefix="lvr1-bench-") as tmp:
        traces = args.traces or Path(tmp) / "traces"
        traces.mkdir(parents=True, exist_ok=True)
        ask_all(args, Path(tmp) / "store.sqlite", traces)
    print(f"machine at the end: {machine()}")


if __name__ == "__main__":
    main()
