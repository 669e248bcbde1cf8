"""Constrained decoding on the embedded model: free replies against the two grammar routes.

The navigator's replies can be decoded under the protocol's grammar
(``--constrain``). llama.cpp checks the whole vocabulary against the grammar at
every constrained token, so the embedded backend has two routes
(``EmbeddedBackend.constraint_mode``):

* ``split``: the ``<think>`` is written freely up to ``</think>``, then only the
  short tool call or answer is constrained, on a prompt whose prefix the KV
  cache already holds (two calls);
* ``whole``: one call, the whole reply constrained, the think capped in
  characters.

Each route answers the same first rounds as the unconstrained model. The
conversations are real agent openings: the system prompt and the first user
message with the four high-level captions of the test video's tree as the
embedded captioner made them (the caption store is filled first, or reused
with ``--store``), one per test bench question. Every mode of one question
starts from the same warm KV cache (one unmeasured call first), so the
figures compare decoding, not prefill.

Per mode: seconds per round (median and mean), completion tokens per round,
completion tokens per second, and how many replies the protocol's parser
reads as canonical and as usable.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_constrained.py
    python benchmarks/bench_constrained.py --questions 4 --model smollm2-135m
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp loads its runtime

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODES = ("free", "split", "whole")


def openings(store: Path, questions: int) -> tuple[list[tuple[list[dict], object]], object]:
    """(messages, question) of each question's first round, and the tree."""
    from longvideo_r1.agent import prompts
    from longvideo_r1.agent.session import VideoSession
    from longvideo_r1.config import Settings
    from longvideo_r1.testing.testbench import load_testbench
    from longvideo_r1.testing.testvideo import load_test_video

    built = load_test_video()
    bench = load_testbench()[:questions]
    with VideoSession.open(built.path, Settings(store=store, levers="off")) as session:
        session.service.build(depths=(1,), workers=1, progress=False)
        highs = [
            (node, session.service.fetch(node.id).record.text) for node in session.tree.nodes(1)
        ]
        tree = session.tree
    out = []
    for q in bench:
        first = prompts.first_user_text(q.question, q.choice_lines(), tree.duration, highs)
        out.append(
            (
                [
                    {"role": "system", "content": prompts.system_prompt(tree.width, "text")},
                    {"role": "user", "content": first},
                ],
                q,
            )
        )
    return out, tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="embedded model (default: the default)")
    parser.add_argument("--questions", type=int, default=8, help="test bench questions (8)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="reply limit (1024)")
    parser.add_argument("--think-tokens", type=int, default=768, help="think cap (768)")
    parser.add_argument("--temperature", type=float, default=0.2, help="sampling (0.2)")
    parser.add_argument("--store", type=Path, help="caption store to reuse (default: temporary)")
    args = parser.parse_args()

    from longvideo_r1.agent import grammar, replies
    from longvideo_r1.llm.embedded import EmbeddedBackend

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store.sqlite"
        conversations, tree = openings(store, args.questions)
        backend = EmbeddedBackend.from_model(args.model, max_tokens=args.max_tokens)
        backend.load()
        rows: dict[str, list[tuple[float, int, bool, bool]]] = {m: [] for m in MODES}
        for messages, question in conversations:
            choices = question.choice_lines()
            highs = frozenset(node.id for node in tree.nodes(1))
            rules = grammar.ReplyRules(
                width=tree.width, fetched=highs, choices=tuple(choices), answer_form="text"
            )
            constraint = grammar.reply_constraint(rules, free_tokens=args.think_tokens)
            backend.chat(messages, max_tokens=1, temperature=args.temperature)  # warm the cache
            for mode in MODES:
                backend.constraint_mode = "split" if mode == "free" else mode
                started = time.perf_counter()
                reply = backend.chat(
                    messages,
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                    constraint=None if mode == "free" else constraint,
                )
                seconds = time.perf_counter() - started
                parsed = replies.parse_reply(reply.text, tree, choices, highs)
                rows[mode].append(
                    (seconds, reply.usage.completion_tokens, parsed.canonical, parsed.ok)
                )
                print(
                    f"{question.id} {mode:5} {seconds:6.1f} s {reply.usage.completion_tokens:4} "
                    f"tokens  canonical={parsed.canonical}  {reply.text[-70:]!r}",
                    flush=True,
                )
        backend.close()

    print(
        f"\nmodel {backend.identity}, {len(conversations)} first rounds, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        "| mode | s / round median | s / round mean | tokens / round | tokens / s | canonical | usable |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in MODES:
        data = rows[mode]
        secs = [r[0] for r in data]
        toks = [r[1] for r in data]
        print(
            f"| {mode} | {statistics.median(secs):.2f} | {statistics.mean(secs):.2f} | "
            f"{statistics.mean(toks):.0f} | {sum(toks) / sum(secs):.1f} | "
            f"{sum(r[2] for r in data)}/{len(data)} | {sum(r[3] for r in data)}/{len(data)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
