"""``lvr1 eval`` and ``lvr1 report``: one method over a benchmark, then runs compared.

The report reads only what eval writes, so the two commands change together when
the output folder does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from longvideo_r1.cli.common import (
    _agent_config,
    _agent_options,
    _captioner_option,
    _endpoint_options,
    _question_file,
    _settings,
    _tree_options,
)
from longvideo_r1.errors import ConfigError
from longvideo_r1.evaluation.cluster import import_ray
from longvideo_r1.evaluation.methods import MethodOptions, make_method, resolve_walk_calls
from longvideo_r1.evaluation.metrics import summary_line
from longvideo_r1.evaluation.prices import GpuPrices, parse_prices
from longvideo_r1.evaluation.report import COST_AXES, write_report
from longvideo_r1.evaluation.runner import EvalOptions, Evaluator
from longvideo_r1.options import add_config_flags, config_from_args
from longvideo_r1.testing.longbench import LONGBENCH_FILE, LONGBENCH_NAME, load_longbench
from longvideo_r1.testing.longvideo import load_long_testvideo
from longvideo_r1.testing.testbench import TESTBENCH_FILE, load_testbench
from longvideo_r1.testing.testvideo import load_test_video


def add_eval_parser(sub, common: argparse.ArgumentParser) -> None:
    """``lvr1 eval``: one method over a benchmark, resumable, one JSON record per question."""
    ev = sub.add_parser(
        "eval",
        parents=[common],
        help="run the agent or a baseline on a benchmark (resumable) and score it",
        description="Answer every question of a benchmark with one method, N at a time (on "
        "threads here, or on the workers of a Ray cluster with --ray), and write one result "
        "per question under OUT/<method>/results (and its trace under "
        "traces/). A rerun skips finished questions; interrupt any time and run again to "
        "go on. Failed questions are recorded with their reason and rerun only with "
        "--retry-failed. After --max-consecutive-errors error records in a row (a dead "
        "endpoint, a wrong --videos) the run stops and says why. A folder made with another "
        "configuration is refused. Exit status: 0 when every question has a result and none "
        "is an error, 1 when some are recorded as errors or the run stopped on them, 2 for "
        "bad input, 130 when interrupted.",
    )
    ev.add_argument(
        "questions",
        metavar="QUESTIONS",
        help="the benchmark's question file, or 'testbench' / 'testbench-long' for the shipped "
        "test benches (2.5 min and 30 min videos)",
    )
    ev.add_argument(
        "--benchmark",
        metavar="NAME",
        help="format of QUESTIONS: cgbench, lvbench, videomme, mlvu, longvideobench, "
        "egoschema or reference (not needed for testbench)",
    )
    ev.add_argument(
        "--videos",
        metavar="DIR",
        help="folder holding the benchmark's videos (testbench: the test video's folder, "
        "built if needed)",
    )
    ev.add_argument("--out", required=True, metavar="DIR", help="output folder of the run")
    ev.add_argument(
        "--method",
        default="agent",
        choices=["agent", "uniform-frames", "caption-all", "random-walk"],
        help="agent (default), or a baseline: uniform-frames, caption-all, random-walk",
    )
    ev.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="questions at once (default 1; with --ray, the cluster's CPUs / --ray-cpus)",
    )
    ev.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    ev.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the questions recorded with status error",
    )
    ev.add_argument("--subset", metavar="NAME", help="loader subset (Video-MME: long, ...)")
    ev.add_argument(
        "--with-subtitles",
        action="store_true",
        help="attach the benchmark's subtitle files where its loader knows them",
    )
    ev.add_argument(
        "--skip-malformed",
        action="store_true",
        help="leave out malformed items of the question file instead of stopping",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(ev, EvalOptions, "stopping early", only=("max_consecutive_errors",))
    dist = ev.add_argument_group(
        "cluster (Ray, an optional extra: pip install 'longvideo-r1[dist]'; docs/distributed.md)"
    )
    dist.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="answer the questions on Ray workers, each with its own models and videos, while "
        "this process writes the results: no value starts Ray on this machine, 'auto' joins "
        "the cluster that `ray start` made here (or $RAY_ADDRESS), HOST:PORT joins that head. "
        "Videos and subtitle files must be at the same path on every node; --out and the "
        "question file are used here only. Put --ray after QUESTIONS",
    )
    dist.add_argument(
        "--ray-cpus",
        type=float,
        default=1.0,
        metavar="N",
        help="CPUs each Ray worker reserves (default 1); an embedded model uses that many threads",
    )
    base = ev.add_argument_group("baselines")
    base.add_argument(
        "--frames", type=int, default=32, metavar="N", help="uniform-frames: frames (default 32)"
    )
    base.add_argument(
        "--frame-side",
        type=int,
        default=448,
        metavar="PX",
        help="uniform-frames: longest side of each frame sent to the VLM (default 448)",
    )
    base.add_argument(
        "--walk-calls",
        type=int,
        metavar="N",
        help="random-walk: get_caption calls per question (default: the agent's mean in "
        "the same --out)",
    )
    base.add_argument(
        "--seed", type=int, default=0, metavar="N", help="random-walk: seed (default 0)"
    )
    _captioner_option(ev)
    _agent_options(ev)
    _tree_options(ev)
    _endpoint_options(ev, "reasoning", "reasoning model")
    _endpoint_options(ev, "video_qa", "video_qa vision model")
    _endpoint_options(ev, "caption", "caption")


def add_report_parser(sub) -> None:
    """``lvr1 report``: accuracy against cost from eval folders, markdown plus a PNG."""
    rep = sub.add_parser(
        "report",
        help="tabulate and plot accuracy against cost from one or more eval folders",
        description="Read eval output folders (each with one or more method folders), print "
        "a markdown table of accuracy, failures and cost per method and run (calls by kind, "
        "GPU-equivalent seconds priced per call, seconds measured here, and what earlier "
        "interrupted or replaced attempts spent), grounding where the questions have clue "
        "intervals (clue hits, F1 of the spans read against the clue spans, depth reached), "
        "per-category accuracy and grounding, and write it with a PNG plot of accuracy "
        "against cost.",
    )
    rep.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="lvr1 eval output folder")
    rep.add_argument(
        "--out",
        metavar="PATH",
        help="markdown file to write (default OUT_DIR/report.md); the PNG goes beside it",
    )
    rep.add_argument(
        "--x",
        choices=list(COST_AXES),
        default="seconds",
        help="cost axis of the plot: mean seconds (default), tokens or GPU-equivalent seconds "
        "(gpu-seconds: the calls priced by --price) per question",
    )
    rep.add_argument(
        "--price",
        action="append",
        metavar="KIND=SECONDS",
        help="GPU seconds per call of one kind, for the GPU-equivalent figures: reasoning "
        f"(default {GpuPrices.reasoning:g}), caption (per caption made, default "
        f"{GpuPrices.caption:g}) or video_qa (per call a vision model answered, default "
        f"{GpuPrices.video_qa:g}); the defaults are the paper's A800 figures. Repeat for "
        "several kinds",
    )
    rep.add_argument(
        "--only",
        metavar="ID,ID,...",
        help="count only these question ids (comma-separated), so runs of different question "
        "files or stopped at different points are compared on the same questions; a run "
        "lacking some of them is shown as partial",
    )


def _eval_questions(args: argparse.Namespace):
    """(questions, question file, benchmark name, videos folder) for ``lvr1 eval``."""
    if args.questions == "testbench":
        if args.videos:
            videos = Path(args.videos)
        else:
            # the builder says what it does, and nothing when the video is cached
            videos = load_test_video(log=Console(stderr=True).print).path.parent
        return load_testbench(subtitles=videos), TESTBENCH_FILE, "testbench", videos
    if args.questions == LONGBENCH_NAME:
        if args.videos:
            videos = Path(args.videos)
        else:
            videos = load_long_testvideo(log=Console(stderr=True).print).path.parent
        return load_longbench(subtitles=videos), LONGBENCH_FILE, LONGBENCH_NAME, videos
    if args.benchmark and not args.videos:
        raise ConfigError("--videos DIR is needed: the folder holding the benchmark's videos")
    questions, name = _question_file(args)
    return questions, Path(args.questions), name, Path(args.videos)


def cmd_eval(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    run_options = config_from_args(EvalOptions, args, progress=not args.quiet)
    if run_options.ray is not None:
        import_ray()  # refuse before any video is built or question read
    out_dir = Path(args.out).expanduser()
    settings = _settings(args)
    method_options = resolve_walk_calls(
        MethodOptions(
            method=args.method,
            agent=_agent_config(args, settings),
            frames=args.frames,
            frame_side=args.frame_side,
            walk_calls=args.walk_calls,
            seed=args.seed,
        ),
        out_dir,
    )
    questions, source, benchmark, videos = _eval_questions(args)
    if not questions:
        raise ConfigError(f"{source} holds no questions")
    evaluator = Evaluator(
        questions,
        questions_file=source,
        benchmark=benchmark,
        videos_dir=videos,
        out_dir=out_dir,
        settings=settings,
        method=make_method(method_options, settings),
        options=run_options,
        console=console,
    )
    outcome = evaluator.run()
    print(summary_line(outcome))
    if outcome.interrupted:
        raise KeyboardInterrupt
    if outcome.stopped:  # on stderr even under --quiet: the run did not do what was asked
        print(
            f"lvr1 eval: stopped: {outcome.stopped}; every result so far is kept: fix the "
            "cause, then rerun with --retry-failed to go on",
            file=sys.stderr,
        )
        return 1
    return 1 if outcome.errors else 0


def cmd_report(args: argparse.Namespace) -> int:
    prices = parse_prices(args.price)
    only = None
    if args.only is not None:
        only = {part.strip() for part in args.only.split(",") if part.strip()}
        if not only:
            raise ConfigError("--only needs at least one question id")
    report = write_report(args.out_dirs, args.out, args.x, prices, only)
    print(report.markdown, end="")
    print(f"wrote {report.markdown_path} and {report.plot_path}", file=sys.stderr)
    return 0
