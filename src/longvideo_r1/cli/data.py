"""``lvr1 data``: training trajectories made, filtered and exported.

Built only when the command line starts with ``data`` (as ``lvr1 train`` is).
Every option of the generators, the filter and the exports comes from their
config dataclasses: the help text is the field's own, written once beside the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from longvideo_r1.agent.session import make_captioner
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.cli.common import (
    _captioner_option,
    _common_parser,
    _endpoint_options,
    _question_file,
    _settings,
)
from longvideo_r1.config import Settings
from longvideo_r1.errors import ConfigError
from longvideo_r1.llm.server import OpenAIBackend
from longvideo_r1.media.video import file_fingerprint
from longvideo_r1.options import add_config_flags, config_from_args
from longvideo_r1.testing.longbench import LONGBENCH_NAME, load_longbench
from longvideo_r1.testing.testbench import load_testbench
from longvideo_r1.training.exports import ExportConfig, export_trajectories
from longvideo_r1.training.filter import FilterConfig, filter_records
from longvideo_r1.training.hints import HintConfig
from longvideo_r1.training.oracle import OracleConfig, generate_oracle
from longvideo_r1.training.records import TrajectoryError, load_records
from longvideo_r1.training.synthetic import synthetic_count, synthetic_dataset
from longvideo_r1.training.teacher import TeacherConfig, generate_teacher
from longvideo_r1.training.trees import MappingTrees, StoreTrees, unavailable_trees
from longvideo_r1.training.verl_data import ANSWERERS, rows_for, split_rows, write_parquet


def add_data_parser(sub) -> None:
    """``lvr1 data`` in the main parser: its steps are parsed by :func:`build_data_parser`."""
    data = sub.add_parser(
        "data",
        add_help=False,
        help="make training data: lvr1 data oracle | teacher | filter | export | verl "
        "(see docs/training-data.md)",
    )
    data.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


_TRAJECTORY_FOLDER = (
    "trajectory folder: one JSON record per question under DIR/records/; a rerun skips the "
    "questions that have one"
)


def _trajectory_inputs_options(
    parser: argparse.ArgumentParser, synthetic_seed: str, out_help: str = _TRAJECTORY_FOLDER
) -> None:
    """QUESTIONS, --out and where the questions' caption trees come from."""
    parser.add_argument(
        "questions",
        metavar="QUESTIONS",
        help="a benchmark's question file with clue intervals (CG-Bench), 'testbench' or "
        "'testbench-long' (the shipped test benches) or synthetic:N (N made-up questions, each with its own caption "
        f"tree: no video, no captioning; {synthetic_seed})",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help=out_help)
    group = parser.add_argument_group("questions and caption trees")
    group.add_argument(
        "--benchmark",
        metavar="NAME",
        help="format of QUESTIONS: cgbench, lvbench, videomme, mlvu, longvideobench, egoschema "
        "or reference (not needed for testbench, testbench-long or synthetic:N); clue intervals, which the "
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
    """``lvr1 data oracle | teacher | filter | export | verl``."""
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

    verl = sub.add_parser(
        "verl",
        parents=[common],
        help="write questions and their caption trees as verl's RL dataset (Parquet)",
        description="One Parquet row per question for verl's RL trainer (configs/verl/, "
        "docs/training.md): the question with its clue intervals, its caption tree (inline "
        "for synthetic trees, by the store's content keys otherwise) and how video_qa is "
        "answered. Nothing is generated; every tree is looked up first.",
    )
    _trajectory_inputs_options(
        verl, "made from --seed", "folder for train.parquet and val.parquet (written atomically)"
    )
    verl.add_argument(
        "--val", type=int, default=0, metavar="N", help="hold out the last N rows as val.parquet"
    )
    verl.add_argument("--seed", type=int, default=0, help="seed of synthetic:N questions")
    verl.add_argument(
        "--answerer",
        choices=ANSWERERS,
        help="how video_qa is answered in the rollouts: vlm (the video_qa endpoint on the "
        "video file), captions (the leaf's caption) or synthetic (the right option); default "
        "synthetic for synthetic:N, else vlm",
    )
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
    elif args.questions == LONGBENCH_NAME:
        questions = list(load_longbench())
    else:
        questions = list(_question_file(args)[0])
    questions = questions[: args.limit]
    if not questions:
        raise ConfigError(f"{args.questions} holds no questions")
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
    config = config_from_args(OracleConfig, args)
    hints = config_from_args(HintConfig, args)
    settings = _settings(args)
    with ExitStack() as stack:
        questions, trees = _trajectory_inputs(args, settings, config.seed, stack)
        report = generate_oracle(questions, trees, args.out, config, hints, progress=not args.quiet)
    return _generation_result(report, args.out)


def cmd_data_teacher(args: argparse.Namespace) -> int:
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


def cmd_data_verl(args: argparse.Namespace) -> int:
    settings = _settings(args)
    synthetic = synthetic_count(args.questions) is not None
    answerer = args.answerer or ("synthetic" if synthetic else "vlm")
    with ExitStack() as stack:
        questions, trees = _trajectory_inputs(args, settings, args.seed, stack)
        rows = rows_for(questions, trees, answerer, inline=synthetic)
    train, val = split_rows(rows, args.val)
    out = Path(args.out).expanduser()
    write_parquet(train, out / "train.parquet")
    if val:
        write_parquet(val, out / "val.parquet")
    print(f"{len(train)} train rows, {len(val)} val rows in {out} (video_qa: {answerer})")
    return 0


DATA_COMMANDS = {
    "oracle": cmd_data_oracle,
    "teacher": cmd_data_teacher,
    "trajectories": cmd_data_teacher,  # the and the paper's name for the teacher step
    "filter": cmd_data_filter,
    "export": cmd_data_export,
    "verl": cmd_data_verl,
}
