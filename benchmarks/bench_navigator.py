"""How well an embedded navigator follows the protocol and navigates, on held-out trees.

Each model plays the agent, through the production Navigator and tools, on
synthetic questions whose caption trees and clue intervals were never trained
on (a seed apart from the training data). video_qa answers from the asked
leaf's own caption (``--video-qa caption``, the default), so a right answer
needs the right part of the video; ``--video-qa oracle`` states the right
option wherever it is asked, as in the training data, and then "right" says
little. Printed per model:

- parsed: share of model replies the protocol parser accepted;
- answered: share of runs that ended with an answer (not no_answer / error);
- right: share of runs answered with the right letter (chance is 25%);
- clue: share of runs whose get_caption visits (medium or low) touched a clue
  interval; clue-low: the same for a low-level (leaf) visit;
- rounds: mean model turns per question; s/q: mean seconds per question.

``--min-depth N`` and ``--guide K`` set the levers for small navigators
(docs/protocol.md); a guided run is printed as retrieval-guided, never as the
model's own navigation.

    python benchmarks/bench_navigator.py --models smollm2-135m runs/sft-nano/navigator.gguf \
        --questions 24 --seed 7000 --json runs/bench-navigator.json

Models are embedded model names (smollm2-135m, qwen2.5-coder-0.5b) or GGUF paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.navigator import Navigator
from longvideo_r1.errors import ConfigError
from longvideo_r1.llm.embedded import EmbeddedBackend
from longvideo_r1.training.hints import ground
from longvideo_r1.training.oracle import synthetic_answerer
from longvideo_r1.training.synthetic import synthetic_dataset
from longvideo_r1.training.trees import caption_answerer, make_toolbox

ANSWERERS = {"caption": caption_answerer, "oracle": synthetic_answerer}


def visited_clue(trace, grounding, depths: tuple[int, ...]) -> bool:
    """Whether some get_caption visit at one of ``depths`` is a node over a clue interval."""
    over = {node_id for depth in depths for node_id in grounding.ids(depth)}
    return any(ev.how == "get_caption" and tuple(ev.node_id) in over for ev in trace.evidence)


def run_model(model: str, items, config: AgentConfig, answerer=caption_answerer) -> dict:
    backend = EmbeddedBackend.from_model(model, temperature=0.0, seed=0)
    backend.load()
    rows = []
    try:
        for item in items:
            q, ctree = item.question, item.ctree
            navigator = Navigator(
                backend, make_toolbox(ctree, answerer(ctree, q)), ctree.tree, config
            )
            started = time.perf_counter()
            trace = navigator.run(q.question, q.choices)
            seconds = time.perf_counter() - started
            grounding = ground(ctree.tree, q.clue_intervals)
            replies = [r for r in trace.rounds if r.output is not None]
            rows.append(
                {
                    "id": q.id,
                    "status": trace.status,
                    "reason": trace.reason,
                    "answer": trace.answer,
                    "right": trace.answer == q.answer,
                    "rounds": len(trace.rounds),
                    "replies": len(replies),
                    "parsed": sum(r.kind not in (None, "parse_error") for r in replies),
                    "clue": visited_clue(trace, grounding, (2, 3)),
                    "clue_low": visited_clue(trace, grounding, (3,)),
                    "seconds": round(seconds, 2),
                }
            )
            print(
                f"  {model} {q.id}: {trace.status} {trace.answer} ({len(trace.rounds)} rounds, "
                f"{seconds:.1f} s)",
                file=sys.stderr,
            )
    finally:
        backend.close()
    n = len(rows)
    replies = sum(r["replies"] for r in rows)
    return {
        "model": model,
        "questions": n,
        "parsed": sum(r["parsed"] for r in rows) / replies if replies else 0.0,
        "answered": sum(r["status"] == "answered" for r in rows) / n,
        "right": sum(r["right"] for r in rows) / n,
        "clue": sum(r["clue"] for r in rows) / n,
        "clue_low": sum(r["clue_low"] for r in rows) / n,
        "rounds": statistics.mean(r["rounds"] for r in rows),
        "seconds": statistics.mean(r["seconds"] for r in rows),
        "load_seconds": backend.load_seconds,
        "items": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="embedded names or GGUF paths")
    parser.add_argument("--questions", type=int, default=24, help="held-out questions")
    parser.add_argument(
        "--seed", type=int, default=7000, help="held-out seed (training uses the recipe's seed)"
    )
    parser.add_argument("--max-rounds", type=int, default=15, help="turns per question")
    parser.add_argument("--max-reply-tokens", type=int, default=384, help="tokens per reply")
    parser.add_argument(
        "--video-qa",
        choices=sorted(ANSWERERS),
        default="caption",
        help="caption: the leaf's caption answers; oracle: the right option, wherever asked",
    )
    parser.add_argument(
        "--max-think-tokens",
        type=int,
        default=AgentConfig.max_think_tokens,
        help="think tokens of a constrained reply (a GRPO recipe's max_think_tokens)",
    )
    parser.add_argument("--min-depth", type=int, default=0, help="AgentConfig.min_depth (0: off)")
    parser.add_argument(
        "--guide", type=int, default=0, help="AgentConfig.guide: retrieval-guided (0: off)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure and item here")
    args = parser.parse_args()

    try:
        config = AgentConfig(
            max_rounds=args.max_rounds,
            max_reply_tokens=args.max_reply_tokens,
            max_think_tokens=min(args.max_think_tokens, args.max_reply_tokens),
            min_depth=args.min_depth,
            guide=args.guide,
        )
    except ConfigError as exc:
        parser.error(str(exc))  # a bad value is one line, like the CLI's
    items = synthetic_dataset(args.questions, seed=args.seed)
    results = []
    for model in args.models:
        result = run_model(model, items, config, ANSWERERS[args.video_qa])
        results.append({"video_qa": args.video_qa, "variant": config.variant, **result})
    print(f"variant: {config.variant}")
    print(
        f"{'model':<40} {'parsed':>7} {'answered':>9} {'right':>6} {'clue':>6} "
        f"{'clue-low':>9} {'rounds':>7} {'s/q':>6}"
    )
    for r in results:
        print(
            f"{r['model'][-40:]:<40} {r['parsed']:>7.0%} {r['answered']:>9.0%} {r['right']:>6.0%} "
            f"{r['clue']:>6.0%} {r['clue_low']:>9.0%} {r['rounds']:>7.1f} {r['seconds']:>6.1f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
