"""Grounded tool-use trajectories for supervised training: a hinted teacher, an oracle, a filter.

Two generators write the same record (:class:`TrajectoryRecord`), one JSON
file per question under ``OUT/records/``:

* **Teacher loop** (:func:`generate_teacher`). A strong model behind any
  :class:`~longvideo_r1.llm.backends.ChatBackend` plays the agent through the
  production :class:`~longvideo_r1.agent.navigator.Navigator` and
  :class:`~longvideo_r1.agent.tools.ToolBox`, over caption trees already in the
  store, so every prompt is byte for byte what inference sends. When it
  answers wrongly, :class:`HintingBackend` drops that turn, appends the next
  grounding hint (:mod:`longvideo_r1.training.hints`) to the user turn the teacher is
  answering and asks again. The navigator never sees the dropped turn, so
  its trace is already the clean conversation; the hints are kept beside it.
* **Oracle** (:func:`generate_oracle`). No model at all: from the clue
  intervals it walks the shortest sensible path (medium node(s) over the
  clue, then the leaf, video_qa when the question wants a visual detail) with
  short templated reasoning, sometimes opening a wrong medium node first and
  correcting itself. It drives the same Navigator through a scripted backend,
  so its conversations come from the same code as the teacher's.
  :func:`synthetic_item` makes questions with caption trees
  (:func:`synthetic_tree_captions`) for free, for CPU-scale training.

:func:`filter_records` keeps what is fit for training (correct, every turn
canonical, the leaf rule kept, no tool refused, no mention of a hint) and
counts what it dropped and why. :mod:`longvideo_r1.training.exports` turns kept
records into trainer formats.

Runs are resumable: a record is written atomically the moment it is known,
and a rerun skips questions that have one (failures are retried only when
asked). Each worker thread owns its own teacher backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from longvideo_r1 import __version__
from longvideo_r1.agent import grammar, prompts, protocol, replies
from longvideo_r1.agent.navigator import AgentConfig, Navigator
from longvideo_r1.agent.protocol import Action
from longvideo_r1.agent.tools import CaptionClipAnswerer, ClipAnswerer, GetCaption, ToolBox, VideoQA
from longvideo_r1.agent.trace import Trace
from longvideo_r1.captions.captioner import CallCost
from longvideo_r1.captions.service import Fetched
from longvideo_r1.captions.store import CaptionRecord, CaptionStore, VideoRecord
from longvideo_r1.config import AnswerFormSetting, ConstrainMode, first_difference
from longvideo_r1.errors import CaptionError, ConfigError, LVR1Error, validation_line
from longvideo_r1.files import safe_name, write_atomic
from longvideo_r1.llm.backends import (  # Served: the ChatBackend subclass contract
    ChatBackend,
    Served,
)
from longvideo_r1.llm.client import ChatReply, Message
from longvideo_r1.llm.gbnf import Constraint
from longvideo_r1.options import option
from longvideo_r1.progress import progress_bar
from longvideo_r1.questions.loaders import LETTERS, Question
from longvideo_r1.training.hints import (
    Grounding,
    Hint,
    HintConfig,
    HintKind,
    HintLadder,
    append_hint,
    ground,
)
from longvideo_r1.training.hints import nodes_for_interval as interval_nodes
from longvideo_r1.tree import LEVELS, Node, NodeId, Tree, format_node_id, width_for_duration

RECORD_FORMAT = 1
"""Bumped when a record field changes meaning."""

RECORDS_DIR = "records"
MANIFEST = "run.json"
"""What made a trajectory folder's records; a rerun with other settings is refused."""
_RUN_ONLY = frozenset({"workers", "retry_failed", "max_consecutive_errors"})
"""Config fields that change how a run goes, not what its records hold."""

Outcome = Literal["correct", "wrong", "gave_up", "no_answer", "error", "skipped"]
Generator = Literal["teacher", "oracle"]


class TrajectoryError(LVR1Error):
    """A trajectory could not be generated, stored or read (one line, names the item)."""


# ---------------------------------------------------------------------------------------
# caption trees without the video


@dataclass(frozen=True)
class CaptionTree:
    """One video's geometry and the caption of every node, as generation needs them.

    Generation never opens a video: the captions were made (or imported)
    before, and the tree is rebuilt from the duration and frame count the
    store recorded when they were made.
    """

    video_id: str
    tree: Tree
    captions: Mapping[NodeId, str]
    fingerprint: str = ""
    identity: str = "synthetic"
    path: str = ""

    def missing(self) -> list[NodeId]:
        """Nodes of the three levels without a caption, in walk order."""
        return [n.id for n in self.tree.walk() if n.id not in self.captions]

    def text(self, node_id: NodeId) -> str:
        try:
            return self.captions[tuple(node_id)]
        except KeyError:
            raise CaptionError(
                f"video {self.video_id}: no cached caption for node {format_node_id(node_id)} "
                f"under {self.identity}"
            ) from None

    @classmethod
    def from_store(
        cls,
        store: CaptionStore,
        fingerprint: str,
        identity: str,
        video_id: str | None = None,
        width: int | None = None,
    ) -> CaptionTree:
        """The stored captions of one video by one captioner, at the width they were made for."""
        video = store.get_video(fingerprint)
        if video is None:
            raise TrajectoryError(f"the caption store knows no video {fingerprint[:12]}")
        tree = Tree.for_video(video.duration, video.n_frames, width=width or video.width)
        records = store.list_captions(fingerprint, identity, width=tree.width)
        return cls(
            video_id=video_id or Path(video.path).stem,
            tree=tree,
            captions={r.node_id: r.text for r in records},
            fingerprint=fingerprint,
            identity=identity,
            path=video.path,
        )


class TreeSource(Protocol):
    """Finds the caption tree of a question's video (raises :class:`TrajectoryError`)."""

    def get(self, question: Question) -> CaptionTree: ...


class MappingTrees:
    """Caption trees held in memory, by video id (tests, synthetic data)."""

    def __init__(self, trees: Mapping[str, CaptionTree] | Iterable[CaptionTree]):
        items = trees.values() if isinstance(trees, Mapping) else trees
        self.trees = {t.video_id: t for t in items}

    def get(self, question: Question) -> CaptionTree:
        try:
            return self.trees[question.video_id]
        except KeyError:
            raise TrajectoryError(f"no caption tree for video {question.video_id}") from None


class StoreTrees:
    """Caption trees from a :class:`CaptionStore`, matched to questions by video file name.

    The store keys captions by content fingerprint and remembers each video's
    path; a question names its video by id (CG-Bench: ``<video_uid>.mp4``), so
    the file's stem or name finds it. ``fingerprints`` overrides the match.
    Incomplete trees are refused up front unless ``require_complete`` is off:
    a teacher that meets a missing caption mid-run wastes the run.
    """

    def __init__(
        self,
        store: CaptionStore,
        identity: str,
        fingerprints: Mapping[str, str] | None = None,
        require_complete: bool = True,
        cache_size: int = 16,
    ) -> None:
        self.store = store
        self.identity = identity
        self.fingerprints = dict(fingerprints or {})
        self.require_complete = require_complete
        self.cache_size = max(1, cache_size)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, CaptionTree] = OrderedDict()
        self._by_name: dict[str, list[VideoRecord]] | None = None

    def get(self, question: Question) -> CaptionTree:
        """The tree of the question's video; the last few trees stay in memory."""
        with self._lock:
            key = question.video_id
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            ctree = self._load(question)
            self._cache[key] = ctree
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return ctree

    def _load(self, question: Question) -> CaptionTree:
        fingerprint = self.fingerprints.get(question.video_id) or self._find(question)
        ctree = CaptionTree.from_store(self.store, fingerprint, self.identity, question.video_id)
        missing = ctree.missing()
        if not ctree.captions:
            raise TrajectoryError(
                f"video {question.video_id}: no captions under {self.identity} at width "
                f"{ctree.tree.width}; caption it first (lvr1 caption)"
            )
        if missing and self.require_complete:
            total = len(list(ctree.tree.walk()))
            raise TrajectoryError(
                f"video {question.video_id}: {len(missing)} of {total} captions missing under "
                f"{self.identity}, e.g. {format_node_id(missing[0])}; caption it first"
            )
        return ctree

    def _find(self, question: Question) -> str:
        if self._by_name is None:
            self._by_name = {}
            for video in self.store.list_videos():
                for key in {Path(video.path).stem, Path(video.path).name}:
                    self._by_name.setdefault(key, []).append(video)
        names = (question.video_id, str(question.extra.get("video_file") or ""))
        found = [v for name in names if name for v in self._by_name.get(name, [])]
        if not found:
            raise TrajectoryError(f"video {question.video_id} is not in the caption store")
        # Several copies of one name: the one with most captions, then the latest.
        return max(
            found,
            key=lambda v: (
                len(self.store.list_captions(v.fingerprint, self.identity, width=v.width)),
                v.registered_at,
            ),
        ).fingerprint


def unavailable_trees(questions: Iterable[Question], trees: TreeSource) -> dict[str, str]:
    """Videos of the questions whose caption tree cannot be had, each with the reason.

    Run before a generation so that uncaptioned videos are named at once and
    together, instead of turning into ``skipped`` records one by one (which a
    rerun keeps unless asked to retry them).
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    for question in questions:
        if question.video_id in seen:
            continue
        seen.add(question.video_id)
        try:
            trees.get(question)
        except LVR1Error as exc:
            out[question.video_id] = str(exc)
    return out


@dataclass(frozen=True)
class _VideoInfo:
    path: Path


@dataclass(frozen=True)
class _VideoStub:
    fingerprint: str
    info: _VideoInfo


class CachedCaptions:
    """A caption source for :class:`~longvideo_r1.agent.tools.GetCaption` that only serves.

    It answers from a :class:`CaptionTree`, so the tools, the observations
    and the leaf rule are the production ones while nothing is decoded or
    captioned; a missing node raises :class:`CaptionError` (the run ends
    ``error``, never with an invented caption).
    """

    def __init__(self, ctree: CaptionTree) -> None:
        self.ctree = ctree
        self.tree = ctree.tree
        self.video = _VideoStub(ctree.fingerprint, _VideoInfo(Path(ctree.path or ctree.video_id)))

    @property
    def identity(self) -> str:
        return self.ctree.identity

    def fetch(self, node_id: NodeId) -> Fetched:
        record = CaptionRecord(
            fingerprint=self.ctree.fingerprint,
            width=self.tree.width,
            node_id=tuple(node_id),
            identity=self.ctree.identity,
            text=self.ctree.text(node_id),
        )
        return Fetched(record, made=False)


AnswererFactory = Callable[[CaptionTree, Question], ClipAnswerer]


def caption_answerer(ctree: CaptionTree, question: Question) -> ClipAnswerer:
    """video_qa from the leaf's own caption, marked as such (no vision model involved)."""
    return CaptionClipAnswerer(CachedCaptions(ctree))


class SyntheticClipAnswerer:
    """video_qa that states the right option, in a few phrasings.

    For oracle data over synthetic or cached trees where no vision model is
    at hand. It is always right, which a real vision model is not: mix in
    teacher data if the model should learn to doubt video_qa.
    """

    _FORMS = (
        "{answer}.",
        "The clip shows {answer}.",
        "From the frames: {answer}.",
        "Looking at the clip, the answer is {answer}.",
    )

    def __init__(self, answer_text: str, rng: random.Random | None = None) -> None:
        self.answer_text = answer_text.strip().rstrip(".")
        self.rng = rng or random.Random(0)

    @property
    def identity(self) -> str:
        return "synthetic:ground-truth"

    def ask(self, leaf_id: NodeId, query: str) -> tuple[str, CallCost]:
        form = self.rng.choice(self._FORMS)
        return form.format(answer=self.answer_text), CallCost(frames_decoded=0)


def synthetic_answerer(ctree: CaptionTree, question: Question) -> ClipAnswerer:
    """The oracle's default video_qa: the right option's text."""
    seed = _stable_seed("qa", question.id)
    return SyntheticClipAnswerer(question.answer_text or "", random.Random(seed))


def make_toolbox(ctree: CaptionTree, answerer: ClipAnswerer) -> ToolBox:
    """The production tools over a cached tree: same observations, same leaf rule."""
    source = CachedCaptions(ctree)
    return ToolBox(ctree.tree, GetCaption(source), VideoQA(answerer, ctree.tree))


# ---------------------------------------------------------------------------------------
# the record


class GroundingModel(BaseModel):
    """Merged clue intervals and the ids over them (see :func:`longvideo_r1.training.hints.ground`)."""

    intervals: list[tuple[float, float]] = Field(default_factory=list)
    high: list[tuple[int, ...]] = Field(default_factory=list)
    medium: list[tuple[int, ...]] = Field(default_factory=list)
    low: list[tuple[int, ...]] = Field(default_factory=list)

    @classmethod
    def of(cls, grounding: Grounding) -> GroundingModel:
        return cls(
            intervals=list(grounding.intervals),
            high=list(grounding.high),
            medium=list(grounding.medium),
            low=list(grounding.low),
        )


class HintRecord(BaseModel):
    """A hint the teacher got: where it went and what it said."""

    level: int
    kind: HintKind
    node_ids: list[tuple[int, ...]]
    text: str
    round: int = Field(description="The navigator round whose reply it preceded.")
    message_index: int = Field(
        description="Index in `messages` of the user turn the hint was appended to."
    )


class DroppedTurn(BaseModel):
    """A wrong answer of the teacher, removed from the conversation."""

    round: int
    text: str
    letter: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ObservationRecord(BaseModel):
    """A user turn that answered a tool call (or refused it)."""

    round: int
    kind: str | None
    node_id: tuple[int, ...] | None = None
    query: str | None = None
    text: str
    error: str | None = None


class TrajectoryCost(BaseModel):
    """What producing the trajectory cost, the dropped turns included."""

    rounds: int = 0
    teacher_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dropped_prompt_tokens: int = 0
    dropped_completion_tokens: int = 0
    caption_calls: int = Field(default=0, description="High-level captions included.")
    video_qa_calls: int = 0
    seconds: float = 0.0


class TrajectoryRecord(BaseModel):
    """One question's trajectory, as either generator writes it."""

    format: int = RECORD_FORMAT
    version: str = __version__
    id: str = Field(description="Record id: the question id, plus a variant suffix if any.")
    generator: Generator
    producer: str = Field(description="The teacher's identity, or `oracle`.")
    seed: int | None = None
    question_id: str
    video_id: str
    benchmark: str = "custom"
    category: str | None = None
    question: str
    choices: list[str]
    answer: str | None = Field(description="The right letter.")
    clue_intervals: list[tuple[float, float]] = Field(default_factory=list)
    grounding: GroundingModel = Field(default_factory=GroundingModel)
    fingerprint: str = ""
    caption_identity: str = ""
    duration: float = 0.0
    n_frames: int = 0
    width: int = 0
    outcome: Outcome
    reason: str | None = None
    predicted: str | None = None
    hints: list[HintRecord] = Field(default_factory=list)
    dropped: list[DroppedTurn] = Field(default_factory=list)
    messages: list[dict[str, str]] = Field(
        default_factory=list,
        description="The clean conversation: protocol strings only, no dropped turn, no hint.",
    )
    observations: list[ObservationRecord] = Field(default_factory=list)
    cost: TrajectoryCost = Field(default_factory=TrajectoryCost)
    trace: Trace | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    def tree(self) -> Tree:
        """The geometry the trajectory was made on (ids and spans only)."""
        if self.width < 1 or self.duration <= 0:
            raise TrajectoryError(f"record {self.id} has no tree (outcome {self.outcome})")
        return Tree(self.duration, max(1, self.n_frames), self.width)

    def visited(self, tool: str = "get_caption") -> list[NodeId]:
        """Nodes a tool ran on successfully, in order (repeats kept)."""
        return [
            tuple(o.node_id)
            for o in self.observations
            if o.kind == tool and o.node_id is not None and o.error is None
        ]

    def teacher_view(self) -> list[dict[str, str]]:
        """The conversation as the teacher last saw it: hints in place, dropped turns not."""
        out = [dict(m) for m in self.messages]
        for hint in self.hints:
            if hint.message_index < len(out):
                message = out[hint.message_index]
                message["content"] = f"{message['content']}\n\n{hint.text}"
        return out


def _flat(content: Any) -> str:
    """A message's content as the one string a text-only chat template sees."""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))


def _question_fields(question: Question) -> dict[str, Any]:
    return {
        "question_id": question.id,
        "video_id": question.video_id,
        "benchmark": question.benchmark,
        "category": question.category,
        "question": question.question,
        "choices": list(question.choices),
        "answer": question.answer,
        "clue_intervals": list(question.clue_intervals),
    }


def _tree_fields(ctree: CaptionTree) -> dict[str, Any]:
    return {
        "fingerprint": ctree.fingerprint,
        "caption_identity": ctree.identity,
        "duration": ctree.tree.duration,
        "n_frames": ctree.tree.n_frames,
        "width": ctree.tree.width,
    }


def record_from_trace(
    record_id: str,
    generator: Generator,
    producer: str,
    question: Question,
    ctree: CaptionTree,
    grounding: Grounding,
    trace: Trace,
    outcome: Outcome,
    reason: str | None = None,
    seed: int | None = None,
    hints: Sequence[HintRecord] = (),
    dropped: Sequence[DroppedTurn] = (),
    seconds: float = 0.0,
) -> TrajectoryRecord:
    """Both generators' records come from a navigator trace, so they share one format."""
    observations = [
        ObservationRecord(
            round=r.index,
            kind=r.kind,
            node_id=r.node_id,
            query=r.query,
            text=r.observation,
            error=r.error,
        )
        for r in trace.rounds
        if r.observation is not None
    ]
    c = trace.cost
    cost = TrajectoryCost(
        rounds=c.rounds,
        teacher_calls=c.reasoning_calls + len(dropped),
        prompt_tokens=c.reasoning_prompt_tokens + sum(d.prompt_tokens for d in dropped),
        completion_tokens=c.reasoning_completion_tokens + sum(d.completion_tokens for d in dropped),
        dropped_prompt_tokens=sum(d.prompt_tokens for d in dropped),
        dropped_completion_tokens=sum(d.completion_tokens for d in dropped),
        caption_calls=c.caption_calls,
        video_qa_calls=c.video_qa_calls,
        seconds=seconds or c.end_to_end_seconds,
    )
    return TrajectoryRecord(
        id=record_id,
        generator=generator,
        producer=producer,
        seed=seed,
        **_question_fields(question),
        grounding=GroundingModel.of(grounding),
        **_tree_fields(ctree),
        outcome=outcome,
        reason=reason,
        predicted=trace.answer,
        hints=list(hints),
        dropped=list(dropped),
        messages=[{"role": m["role"], "content": _flat(m["content"])} for m in trace.messages()],
        observations=observations,
        cost=cost,
        trace=trace,
    )


def skipped_record(
    record_id: str, generator: Generator, producer: str, question: Question, reason: str
) -> TrajectoryRecord:
    """A question that could not be attempted, kept so the reason is reported and not retried."""
    return TrajectoryRecord(
        id=record_id,
        generator=generator,
        producer=producer,
        **_question_fields(question),
        outcome="skipped",
        reason=reason,
    )


def _outcome(trace: Trace, right: str | None, gave_up: bool) -> tuple[Outcome, str | None]:
    if trace.status == "error":
        return "error", trace.reason
    if trace.status == "no_answer":
        return "no_answer", trace.reason
    if trace.answer == right:
        return "correct", None
    if gave_up:
        return "gave_up", "wrong after every hint"
    return "wrong", f"answered {trace.answer!r}, expected {right!r}"


def _unfit(question: Question) -> str | None:
    """Why a question cannot yield a graded trajectory, or ``None``."""
    if question.answer is None:
        return "the question has no known answer"
    if len(question.choices) < 2:
        return "the question has fewer than two choices"
    return None


# ---------------------------------------------------------------------------------------
# storage


class TrajectoryFolder:
    """``ROOT/records/<id>.json``, one record per question, each written atomically."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise TrajectoryError(f"trajectory folder {self.root} is a file")
        self.records_dir = self.root / RECORDS_DIR

    def path(self, record_id: str) -> Path:
        return self.records_dir / f"{safe_name(record_id)}.json"

    def claim(self, settings: Mapping[str, Any]) -> None:
        """Record what makes this folder's trajectories; refuse a rerun that would mix others in.

        A rerun keeps every finished record, so records of two oracle settings
        or two teachers would otherwise end up side by side, unnoticed, in one
        training set. A folder from before manifests existed is adopted.
        """
        path = self.root / MANIFEST
        new = json.loads(json.dumps(dict(settings)))  # the form it takes on disk
        if path.exists():
            try:
                old = json.loads(path.read_bytes())
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                raise TrajectoryError(f"{path} is not a trajectory manifest: {exc}") from None
            diff = first_difference(old, new)
            if diff is not None:
                raise TrajectoryError(
                    f"{self.root} holds trajectories made with other settings ({diff}): "
                    "use another --out, or remove that folder to start over"
                )
            return
        try:
            write_atomic(path, json.dumps(new, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise TrajectoryError(f"cannot write {path}: {exc.strerror or exc}") from None

    def save(self, record: TrajectoryRecord) -> Path:
        path = self.path(record.id)
        try:
            write_atomic(path, record.model_dump_json(indent=1))
        except OSError as exc:
            raise TrajectoryError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    def load(self, record_id: str) -> TrajectoryRecord | None:
        """The stored record, or ``None`` when there is none (or it is unreadable: redo it)."""
        path = self.path(record_id)
        try:
            return TrajectoryRecord.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    def __iter__(self) -> Iterator[TrajectoryRecord]:
        """Every record, in file-name order; an unreadable file is an error naming it."""
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            yield read_record(path)


def run_settings(generator: Generator, *configs: Any, **named: Any) -> dict[str, Any]:
    """The flat settings that decide a generator's records, for :meth:`TrajectoryFolder.claim`."""
    settings: dict[str, Any] = {
        "generator": generator,
        "format": RECORD_FORMAT,
        "parser_version": protocol.PARSER_VERSION,
    }
    for config in configs:
        prefix = type(config).__name__.removesuffix("Config").lower()
        for key, value in asdict(config).items():
            if key not in _RUN_ONLY:
                settings[f"{prefix}.{key}"] = value
    settings.update(named)
    return settings


def _factory_name(factory: Any) -> str | None:
    if factory is None:
        return None
    return getattr(factory, "__name__", type(factory).__name__)


def read_record(path: str | os.PathLike[str]) -> TrajectoryRecord:
    path = Path(path)
    try:
        return TrajectoryRecord.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise TrajectoryError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        raise TrajectoryError(
            f"{path} is not a trajectory record: {validation_line(exc)}"
        ) from None


def load_records(source: str | os.PathLike[str]) -> list[TrajectoryRecord]:
    """Records of a trajectory folder (its root or its ``records/``) or of one file."""
    path = Path(source).expanduser()
    if path.is_file():
        return [read_record(path)]
    if (path / RECORDS_DIR).is_dir():
        return list(TrajectoryFolder(path))
    if path.is_dir():
        return [read_record(p) for p in sorted(path.glob("*.json"))]
    raise TrajectoryError(f"no trajectories at {path}")


# ---------------------------------------------------------------------------------------
# the runner shared by both generators


@dataclass
class GenerationReport:
    """What a generation run did; ``outcomes`` counts the records written by this run."""

    total: int = 0
    written: int = 0
    already_done: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str | None = None
    """Why the run stopped early on its own (too many errors in a row), if it did."""

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "none"
        tail = " (interrupted: rerun to finish)" if self.interrupted else ""
        if self.stopped:
            tail = f" (stopped: {self.stopped}; rerun with retry_failed)"
        return (
            f"{self.written} of {self.total} trajectories written ({parts}), "
            f"{self.already_done} already done, {self.seconds:.1f} s{tail}"
        )


_RETRIED: frozenset[str] = frozenset({"error", "skipped"})


@dataclass(frozen=True)
class _Job:
    record_id: str
    question: Question
    variant: int = 0


Work = Callable[[_Job, int], TrajectoryRecord]


def _run(
    jobs: Sequence[_Job],
    work: Work,
    folder: TrajectoryFolder,
    workers: int,
    retry_failed: bool,
    on_record: Callable[[TrajectoryRecord], None] | None,
    max_consecutive_errors: int | None = None,
    progress: str | None = None,
) -> GenerationReport:
    """Run the jobs not done yet on ``workers`` threads, saving each record as it comes.

    A run of errors in a row means a dead endpoint, not hard questions:
    past ``max_consecutive_errors`` the remaining jobs are not started, so
    a rerun with ``retry_failed`` has little to redo. ``progress`` names a
    progress bar on stderr (none when ``None``).
    """
    started = time.perf_counter()
    report = GenerationReport(total=len(jobs))
    todo = []
    for job in jobs:
        old = folder.load(job.record_id)
        if old is not None and not (retry_failed and old.outcome in _RETRIED):
            report.already_done += 1
        else:
            todo.append(job)
    lock = threading.Lock()
    slots = threading.local()
    counter = iter(range(1 << 30))
    stop = threading.Event()
    errors_in_a_row = 0

    def one(job: _Job) -> None:
        nonlocal errors_in_a_row
        if stop.is_set():
            return
        if not hasattr(slots, "index"):
            with lock:
                slots.index = next(counter)
        record = work(job, slots.index)
        folder.save(record)
        with lock:
            report.written += 1
            report.outcomes[record.outcome] += 1
            errors_in_a_row = errors_in_a_row + 1 if record.outcome == "error" else 0
            if max_consecutive_errors is not None and errors_in_a_row >= max_consecutive_errors:
                report.stopped = f"{errors_in_a_row} errors in a row, the last: {record.reason}"
                stop.set()
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
            bar.update(advance=1, outcomes=outcomes)
        if on_record is not None:
            on_record(record)

    with progress_bar(
        progress is not None and bool(todo),
        title="[bold]{task.description}[/]",
        status="{task.fields[outcomes]}",
        description=progress or "",
        total=report.total,
        done=report.already_done,
        outcomes="",
    ) as bar:
        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lvr1-traj")
        try:
            futures = [pool.submit(one, job) for job in todo]
            for future in as_completed(futures):
                future.result()
        except KeyboardInterrupt:
            stop.set()
            report.interrupted = True
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            report.seconds = time.perf_counter() - started
    return report


def _stable_seed(*parts: object) -> int:
    """A seed from values, the same in every process (``hash()`` of a str is not)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


# ---------------------------------------------------------------------------------------
# the teacher loop


@dataclass(frozen=True)
class TeacherConfig:
    """How the teacher plays the agent."""

    workers: int = option(4, "Questions in flight at once; each worker has its own backend.")
    max_rounds: int = option(30, "Navigator rounds per question, as at inference.")
    temperature: float | None = option(
        None, "Sampling temperature of the teacher (None: the backend's default)."
    )
    max_reply_tokens: int | None = option(
        4096, "Completion tokens per teacher reply (None: the backend's default)."
    )
    retry_failed: bool = option(
        False, "Rerun questions whose record is an error or was skipped (others are kept)."
    )
    max_consecutive_errors: int | None = option(
        8,
        "Stop starting questions after this many error records in a row, which means the "
        "endpoint is down (None: never stop).",
    )
    constrain: ConstrainMode = option(
        "auto",
        "Constrain the teacher's replies to the protocol's grammar: on, off, or auto (on when "
        "the server takes a grammar), as for lvr1 ask.",
    )
    answer_form: AnswerFormSetting = option(
        "text",
        "What the teacher's <answer> holds: letter, text (the option's exact text, what "
        "navigators run on the embedded model are asked for), either, or auto (either).",
    )

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be at least 1, got {self.max_rounds}")

    def agent_config(self) -> AgentConfig:
        """The navigator's settings: inference's, with the leaf rule on."""
        return AgentConfig(
            max_rounds=self.max_rounds,
            temperature=self.temperature,
            max_reply_tokens=self.max_reply_tokens,
            require_fetched_leaf=True,
            first_message_parts=False,
            constrain=self.constrain,
            answer_form=self.answer_form,
        )


class HintingBackend(ChatBackend):
    """Wraps the teacher: a wrong answer is dropped and retried with the next hint.

    The navigator calls this like any backend and gets only replies it
    keeps, so its history, and so the trace, never contains a dropped turn.
    Hints live here, keyed by the index of the user turn they were appended
    to; every later call re-applies them, so the teacher keeps seeing what it
    was told. After the ladder is spent the wrong answer is let through and
    :attr:`gave_up` is set.
    """

    def __init__(self, teacher: ChatBackend, question: Question, ladder: HintLadder) -> None:
        super().__init__(teacher.identity)
        self.teacher = teacher
        self.default_answer_form = teacher.default_answer_form
        self.question = question
        self.ladder = ladder
        self.hints: list[HintRecord] = []
        self.dropped: list[DroppedTurn] = []
        self.gave_up = False

    def _serve(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        constraint: Constraint | None = None,
    ) -> Served:
        round_index = 1 + sum(1 for m in messages if m.get("role") == "assistant")
        while True:
            reply = self.teacher.chat(
                self.view(messages), max_tokens, temperature, stop, constraint
            )
            letter = self._wrong_letter(reply.text)
            if letter is None:
                return Served(reply, self.teacher.identity)
            self.dropped.append(
                DroppedTurn(
                    round=round_index,
                    text=reply.text,
                    letter=letter or None,
                    prompt_tokens=reply.usage.prompt_tokens,
                    completion_tokens=reply.usage.completion_tokens,
                )
            )
            hint = self.ladder.next()
            if hint is None:
                self.gave_up = True
                return Served(reply, self.teacher.identity)
            self.hints.append(_hint_record(hint, round_index, len(messages) - 1))

    def supports_constraints(self) -> bool:
        return self.teacher.supports_constraints()

    def view(self, messages: Sequence[Message]) -> list[Message]:
        """The navigator's messages with each hint appended to its user turn."""
        out = [dict(m) for m in messages]
        for hint in self.hints:
            if hint.message_index < len(out):
                message = out[hint.message_index]
                message["content"] = append_hint(message["content"], _as_hint(hint))
        return out

    def _wrong_letter(self, text: str) -> str | None:
        """The letter of a wrong answer ("" if unreadable but wrong); ``None`` otherwise."""
        choices = self.question.choices
        reply = replies.parse_reply(text, self.ladder.tree, choices)
        answer = reply.answer
        if answer is None:
            return None
        letter = protocol.normalize_answer(answer.text, choices) or answer.letter
        return None if letter == self.question.answer else (letter or "")

    def close(self) -> None:
        """The teacher belongs to the worker, which closes it."""


def _hint_record(hint: Hint, round_index: int, message_index: int) -> HintRecord:
    return HintRecord(
        level=hint.level,
        kind=hint.kind,
        node_ids=list(hint.node_ids),
        text=hint.text,
        round=round_index,
        message_index=message_index,
    )


def _as_hint(record: HintRecord) -> Hint:
    return Hint(record.level, record.kind, tuple(record.node_ids), record.text)


def teach_question(
    question: Question,
    ctree: CaptionTree,
    teacher: ChatBackend,
    config: TeacherConfig | None = None,
    hint_config: HintConfig | None = None,
    answerer: ClipAnswerer | None = None,
    record_id: str | None = None,
) -> TrajectoryRecord:
    """One question played by the teacher, hinted after each wrong answer."""
    config = config or TeacherConfig()
    record_id = record_id or question.id
    problem = _unfit(question)
    if problem is not None:
        return skipped_record(record_id, "teacher", teacher.identity, question, problem)
    ladder = HintLadder.for_question(ctree.tree, question.clue_intervals, hint_config)
    hinting = HintingBackend(teacher, question, ladder)
    toolbox = make_toolbox(ctree, answerer or caption_answerer(ctree, question))
    navigator = Navigator(hinting, toolbox, ctree.tree, config.agent_config())
    started = time.perf_counter()
    trace = navigator.run(question.question, question.choices)
    outcome, reason = _outcome(trace, question.answer, hinting.gave_up)
    return record_from_trace(
        record_id,
        "teacher",
        teacher.identity,
        question,
        ctree,
        ladder.grounding,
        trace,
        outcome,
        reason,
        hints=hinting.hints,
        dropped=hinting.dropped,
        seconds=time.perf_counter() - started,
    )


def generate_teacher(
    questions: Iterable[Question],
    trees: TreeSource,
    backend_factory: Callable[[int], ChatBackend],
    out_dir: str | os.PathLike[str],
    config: TeacherConfig | None = None,
    hint_config: HintConfig | None = None,
    answerer_factory: AnswererFactory | None = None,
    on_record: Callable[[TrajectoryRecord], None] | None = None,
    progress: bool = False,
) -> GenerationReport:
    """Run the teacher over questions, one record per question under ``out_dir``.

    ``backend_factory(i)`` makes worker ``i``'s backend (one per worker, so a
    llama.cpp or sticky server cache follows one conversation at a time).
    video_qa answers from the leaf captions unless ``answerer_factory`` gives
    a vision model. Questions whose tree cannot be found are recorded as
    ``skipped`` with the reason (:func:`unavailable_trees` finds them
    beforehand). ``progress`` shows a bar on stderr.
    """
    config = config or TeacherConfig()
    folder = TrajectoryFolder(out_dir)
    backends: dict[int, ChatBackend] = {}
    lock = threading.Lock()

    def backend_for(worker: int) -> ChatBackend:
        with lock:
            if worker not in backends:
                backends[worker] = backend_factory(worker)
            return backends[worker]

    def work(job: _Job, worker: int) -> TrajectoryRecord:
        teacher = backend_for(worker)
        try:
            ctree = trees.get(job.question)
        except LVR1Error as exc:
            return skipped_record(
                job.record_id, "teacher", teacher.identity, job.question, str(exc)
            )
        answerer = (answerer_factory or caption_answerer)(ctree, job.question)
        return teach_question(
            job.question, ctree, teacher, config, hint_config, answerer, job.record_id
        )

    jobs = _jobs(questions, 1)
    try:
        folder.claim(
            run_settings(
                "teacher",
                config,
                hint_config or HintConfig(),
                teacher=backend_for(0).identity,
                answerer=_factory_name(answerer_factory) or "caption_answerer",
            )
        )
        return _run(
            jobs,
            work,
            folder,
            config.workers,
            config.retry_failed,
            on_record,
            config.max_consecutive_errors,
            "teacher" if progress else None,
        )
    finally:
        for backend in backends.values():
            backend.close()


def _jobs(questions: Iterable[Question], variants: int) -> list[_Job]:
    """One job per question and variant, grouped by video; ids must be unique (they name files)."""
    jobs: list[_Job] = []
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise ConfigError(f"question id {question.id!r} appears twice; ids name the records")
        seen.add(question.id)
        for k in range(variants):
            record_id = question.id if variants == 1 else f"{question.id}~{k}"
            jobs.append(_Job(record_id, question, k))
    # One video's questions together, so its caption tree is loaded once.
    return sorted(jobs, key=lambda job: job.question.video_id)


# ---------------------------------------------------------------------------------------
# the oracle


VideoQAMode = Literal["never", "rule", "random", "always"]

_VISUAL = re.compile(
    r"\b(colou?rs?|wear(s|ing)?|dress(ed)?|written|writ(e|es)|text|sign|logo|label|number|"
    r"how many|count|shape|hold(s|ing)?|look(s)? like|appearance|brand|jersey|shirt|hat)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class OracleConfig:
    """How the oracle walks from the clue to the answer."""

    seed: int = option(0, "Seed of every random choice; a record's own seed mixes in its id.")
    variants: int = option(
        1, "Trajectories per question, each with its own random choices (ids get ~k)."
    )
    detour_rate: float = option(
        0.25, "Chance of opening a wrong medium node first, then noticing and correcting."
    )
    video_qa: VideoQAMode = option(
        "rule",
        "When to ask video_qa on the clue's leaf: never, rule (questions about a visual "
        "detail, plus video_qa_rate of the others), random (video_qa_rate), always.",
    )
    video_qa_rate: float = option(0.15, "Chance of video_qa where the mode leaves it to chance.")
    max_intervals: int = option(3, "Merged clue intervals visited at most, first ones first.")
    mediums_per_interval: int = option(
        2, "Medium nodes opened per interval at most (those overlapping it most)."
    )
    lows_per_interval: int = option(
        1, "Low nodes opened per interval at most (those overlapping it most)."
    )
    rotate_choices: bool = option(
        False,
        "Variant k shows the options rotated by k places, so the right letter moves across "
        "variants and a model trained on them cannot lean on a favourite letter. Questions "
        "whose options refer to each other ('both A and B', 'all of the above') keep their order.",
    )
    answer_form: protocol.AnswerForm = option(
        "text",
        "What the final <answer> holds: letter, text (the option's exact text, what navigators "
        "run on the embedded model are asked for) or either (written as text).",
    )
    workers: int = option(1, "Threads; the oracle is cheap, so one is usually enough.")
    retry_failed: bool = option(False, "Rerun records that are errors or were skipped.")

    def __post_init__(self) -> None:
        for name in ("detour_rate", "video_qa_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if self.video_qa not in ("never", "rule", "random", "always"):
            raise ConfigError(f"video_qa must be never, rule, random or always: {self.video_qa}")
        for name in ("variants", "max_intervals", "mediums_per_interval", "lows_per_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")


_REFERS_TO_OPTIONS = re.compile(
    r"\b(above|below|previous|preceding)\b|\boptions?\s+[A-Z]\b|\b[A-Z]\s*(?:and|or|&|,)\s*[A-Z]\b"
)


def rotate_choices(question: Question, k: int) -> Question:
    """The question with its options rotated ``k`` places left and the answer letter moved.

    Left as it is when its options point at each other by letter or place,
    which a new order would make false.
    """
    n = len(question.choices)
    if n < 2 or k % n == 0 or question.answer is None:
        return question
    if any(_REFERS_TO_OPTIONS.search(choice) for choice in question.choices):
        return question
    k %= n
    right = (LETTERS.index(question.answer) - k) % n
    return replace(
        question, choices=question.choices[k:] + question.choices[:k], answer=LETTERS[right]
    )


StepKind = Literal["medium", "detour", "low", "video_qa", "answer"]


@dataclass(frozen=True)
class OracleStep:
    kind: StepKind
    node: Node | None = None
    query: str | None = None


def needs_visual_detail(question: Question) -> bool:
    """Whether a question asks for something captions often miss (colour, text, counts)."""
    qtype = str(question.extra.get("question_type") or "").lower()
    return qtype == "perception" or _VISUAL.search(question.question) is not None


def plan_oracle(
    question: Question,
    tree: Tree,
    grounding: Grounding,
    config: OracleConfig,
    rng: random.Random,
) -> list[OracleStep]:
    """The path: [a wrong medium], mediums and lows over each interval, [video_qa], answer.

    video_qa and the answer both refer to the leaf that overlaps the first
    interval most (already read, so the leaf rule holds).
    """
    steps: list[OracleStep] = []
    visited: set[NodeId] = set()
    best_low: Node | None = None
    for number, (start, end) in enumerate(grounding.intervals[: config.max_intervals]):
        mediums = _most_overlap(tree, start, end, 2, config.mediums_per_interval)
        lows = _most_overlap(tree, start, end, 3, config.lows_per_interval)
        if number == 0:
            detour = _detour(tree, grounding, rng) if rng.random() < config.detour_rate else None
            if detour is not None:
                steps.append(OracleStep("detour", detour))
                visited.add(detour.id)
            best_low = lows[0] if lows else None
        for node in mediums + lows:
            if node.id not in visited:
                steps.append(OracleStep("medium" if node.depth == 2 else "low", node))
                visited.add(node.id)
    if best_low is not None and _wants_video_qa(question, config, rng):
        steps.append(OracleStep("video_qa", best_low, _query(question, rng)))
    steps.append(OracleStep("answer", best_low))
    return steps


def _most_overlap(tree: Tree, start: float, end: float, depth: int, limit: int) -> list[Node]:
    """The ``limit`` nodes overlapping ``[start, end)`` most, back in time order."""
    nodes = interval_nodes(tree, start, end, depth)
    ranked = sorted(nodes, key=lambda n: -(min(n.end, end) - max(n.start, start)))
    return sorted(ranked[:limit], key=lambda n: n.start)


def _detour(tree: Tree, grounding: Grounding, rng: random.Random) -> Node | None:
    """A plausible wrong medium: a sibling or neighbour of the first right one."""
    right = set(grounding.medium)
    if not grounding.medium:
        return None
    first = tree.flat_index(grounding.medium[0])
    near = [first - 2, first - 1, first + 1, first + 2]
    siblings = [c.id for c in tree.children(grounding.medium[0][:1])]
    pool = {tree.from_flat(2, k) for k in near if 0 <= k < tree.count(2)} | set(siblings)
    choices = sorted(pool - right, key=lambda i: tree.flat_index(i))
    return tree.node(rng.choice(choices)) if choices else None


def _wants_video_qa(question: Question, config: OracleConfig, rng: random.Random) -> bool:
    chance = rng.random() < config.video_qa_rate
    if config.video_qa == "always":
        return True
    if config.video_qa == "never":
        return False
    if config.video_qa == "random":
        return chance
    return needs_visual_detail(question) or chance


_QUERY_FORMS = (
    "{q}",
    "Look closely at this clip: {q}",
    "{q} Describe exactly what is visible.",
    "In this clip, {ql}",
)


def _query(question: Question, rng: random.Random) -> str:
    q = " ".join(question.question.split())
    ql = q[:1].lower() + q[1:]
    return rng.choice(_QUERY_FORMS).format(q=q, ql=ql)


# reasoning templates ----------------------------------------------------------------------
# Fields: q (question), label/t0/t1 (the node to open), h/ht0/ht1/hsnip (its high segment),
# prev/pt0/pt1/psnip (the node just read), info (video_qa answer), letter/atext (the option).

_FIRST = (
    'The question asks: "{q}". High-level segment {h} ({ht0} to {ht1} s) mentions '
    '"{hsnip}", which fits best. I will read its part {label}, from {t0} to {t1} s.',
    'Only the overview so far. Segment {h}, from {ht0} to {ht1} s, says "{hsnip}"; that '
    "is where the answer should be. Next: the medium segment {label} ({t0} to {t1} s).",
    'Of the high-level captions, the one from {ht0} to {ht1} s ("{hsnip}") is the most '
    "relevant to the question. To narrow it down I open {label}, which covers {t0} to {t1} s.",
    "I need the moment the question is about. The caption of segment {h} ({ht0}-{ht1} s) "
    'says "{hsnip}", so the part {label} ({t0}-{t1} s) is a good place to look.',
)
_CORRECT = (
    'The caption of {prev} ({pt0} to {pt1} s) describes "{psnip}", which does not match '
    "what the question asks. The event must be elsewhere: {label}, from {t0} to {t1} s, "
    "is the better candidate.",
    '{prev} from {pt0} to {pt1} s is about "{psnip}" - not what I am looking for. I was in '
    "the wrong place; the segment {label} ({t0}-{t1} s) fits the question better.",
    'Nothing in {prev} ({pt0}-{pt1} s) answers the question: it says "{psnip}". Going back '
    "to the overview, {label} from {t0} to {t1} s is more likely.",
)
_CONTINUE = (
    '{prev} ({pt0} to {pt1} s) says "{psnip}", and the scene seems to go on past {pt1} s. '
    "I will read the next part, {label} ({t0} to {t1} s), as well.",
    'The caption of {prev} ends at {pt1} s with "{psnip}"; the rest of it should be in '
    "{label}, from {t0} to {t1} s.",
)
_ZOOM = (
    'Medium segment {prev} ({pt0} to {pt1} s) says "{psnip}". To pin down the detail I '
    "open the clip {label}, from {t0} to {t1} s.",
    '{prev} covers {pt0}-{pt1} s and mentions "{psnip}". The clip {label} ({t0}-{t1} s) '
    "should show it up close.",
    'This is the right area: {prev}, from {pt0} to {pt1} s, says "{psnip}". The low-level '
    "clip {label} from {t0} to {t1} s will give the specifics.",
)
_NEXT_PART = (
    'The clip {prev} ({pt0} to {pt1} s) shows "{psnip}". The question also depends on what '
    "happens around {t0} s, so I will read {label} ({t0} to {t1} s).",
    'Good: {prev} says "{psnip}" at {pt0}-{pt1} s. One more part matters: {label}, '
    "from {t0} to {t1} s.",
)
_ASK = (
    'The clip {prev} ({pt0} to {pt1} s) says "{psnip}", but a caption can miss the exact '
    "detail. I will ask the vision model about this clip directly.",
    'The caption from {pt0} to {pt1} s ("{psnip}") is close, yet I want to be sure of the '
    "detail, so I check the clip {prev} itself.",
)
_ANSWER = (
    'The caption of {prev} from {pt0} to {pt1} s says "{psnip}". That matches option '
    '{letter}, "{atext}".',
    'From {pt0} to {pt1} s ({prev}): "{psnip}". So the answer is {letter} ({atext}).',
    'The relevant moment is at {pt0}-{pt1} s, where the caption reads "{psnip}". Option '
    "{letter}, {atext}, is the one that fits.",
)
_ANSWER_QA = (
    'The vision model says "{info}" about the clip {prev} ({pt0} to {pt1} s), in line with '
    'its caption ("{psnip}"). The answer is option {letter}, "{atext}".',
    'Checked the clip {prev} ({pt0}-{pt1} s): "{info}". That settles it: {letter} ({atext}).',
)


def _snippet(text: str, question: Question, limit: int = 160) -> str:
    """The caption sentence that shares most words with the question and its right option.

    Angle brackets are dropped so a quoted caption can never open a tag in
    the reasoning.
    """
    clean = _plain(text)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", clean) if s.strip()] or [clean]
    wanted = set(_words(f"{question.question} {question.answer_text or ''}"))
    best = max(sentences, key=lambda s: (len(wanted & set(_words(s))), -sentences.index(s)))
    if len(best) > limit:
        best = best[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return best.rstrip(".")


def _plain(text: str) -> str:
    """One line without angle brackets or double quotes, safe to quote inside <think>."""
    return " ".join(text.replace("<", " ").replace(">", " ").replace('"', "'").split())


_STOP = frozenset(
    re.findall(r"\w+", "a an the of in on at to and or is are was what which who does do did")
)


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and len(w) > 2]


class _OraclePlayer:
    """Writes the oracle's replies round by round, reading the observations it got."""

    def __init__(
        self,
        question: Question,
        ctree: CaptionTree,
        steps: list[OracleStep],
        rng: random.Random,
        form: protocol.AnswerForm = "letter",
    ) -> None:
        self.question = question
        self.ctree = ctree
        self.tree = ctree.tree
        self.steps = steps
        self.rng = rng
        self.form = form
        self.position = 0
        self.last: OracleStep | None = None
        self.info: str | None = None

    def reply(self, messages: Sequence[Message]) -> str:
        """The next planned reply; raises if the tools refused the previous one (a bug)."""
        if self.position >= len(self.steps):
            raise TrajectoryError(f"{self.question.id}: the oracle's plan is exhausted")
        observation = _flat(messages[-1]["content"]) if self.last is not None else ""
        if observation.startswith("Your last reply could not be used"):
            raise TrajectoryError(f"{self.question.id}: the oracle made a refused call")
        if self.last is not None and self.last.kind == "video_qa":
            found = re.search(r"<information>(.*)</information>", observation, re.DOTALL)
            self.info = found.group(1).strip() if found else observation
        step = self.steps[self.position]
        text = self._render(step)
        self.position += 1
        self.last = step
        return text

    def _render(self, step: OracleStep) -> str:
        think = self._think(step)
        if step.kind == "answer":
            letter = self.question.answer or ""
            body = grammar.answer_in_form(letter, self.question.choices or [], self.form)
            return protocol.render_reply(think, body)
        assert step.node is not None
        if step.kind == "video_qa":
            action = Action("video_qa", step.node.id, step.query)
        else:
            action = Action("get_caption", step.node.id)
        return protocol.render_reply(think, action)

    def _think(self, step: OracleStep) -> str:
        fields = self._fields(step)
        last = self.last
        if step.kind in ("medium", "detour") and (last is None or last.kind == "detour"):
            forms = _FIRST if last is None else _CORRECT
        elif step.kind == "medium":
            forms = _CONTINUE if last and last.kind == "medium" else _NEXT_PART
        elif step.kind == "low":
            forms = _ZOOM if last and last.node and last.node.depth == 2 else _NEXT_PART
        elif step.kind == "video_qa":
            forms = _ASK
        else:
            forms = _ANSWER_QA if self.info is not None else _ANSWER
        return self.rng.choice(forms).format(**fields)

    def _fields(self, step: OracleStep) -> dict[str, str]:
        fmt = prompts.format_seconds
        out: dict[str, str] = {
            "q": _plain(self.question.question),
            "letter": self.question.answer or "",
            "atext": _plain(self.question.answer_text or ""),
            "info": _snippet(self.info or "", self.question),
        }
        if step.node is not None:
            high = self.tree.node(step.node.id[:1])
            out |= {
                "label": step.node.label,
                "t0": fmt(step.node.start),
                "t1": fmt(step.node.end),
                "h": str(high.id[0]),
                "ht0": fmt(high.start),
                "ht1": fmt(high.end),
                "hsnip": _snippet(self.ctree.text(high.id), self.question),
            }
        shown = step.node if step.kind in ("video_qa", "answer") else self._last_caption_node()
        if shown is not None:
            out |= {
                "prev": shown.label,
                "pt0": fmt(shown.start),
                "pt1": fmt(shown.end),
                "psnip": _snippet(self.ctree.text(shown.id), self.question),
            }
        return out

    def _last_caption_node(self) -> Node | None:
        """The node whose caption the reasoning quotes: the last one read."""
        for step in reversed(self.steps[: self.position]):
            if step.kind in ("medium", "detour", "low") and step.node is not None:
                return step.node
        return None


class OracleBackend(ChatBackend):
    """A "model" that replays the oracle's plan, so the navigator builds the conversation."""

    def __init__(self, player: _OraclePlayer) -> None:
        super().__init__("oracle")
        self.player = player

    def _serve(
        self,
        messages: list[Message],
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | None,
        constraint: Constraint | None = None,
    ) -> Served:
        return Served(ChatReply(self.player.reply(messages), model="oracle"), "oracle")


def oracle_trajectory(
    question: Question,
    ctree: CaptionTree,
    config: OracleConfig | None = None,
    variant: int = 0,
    answerer: ClipAnswerer | None = None,
    hint_config: HintConfig | None = None,
    record_id: str | None = None,
) -> TrajectoryRecord:
    """One oracle trajectory; the same question, config and variant give the same record."""
    config = config or OracleConfig()
    record_id = record_id or question.id
    problem = _unfit(question) or (None if question.clue_intervals else "no clue intervals")
    if problem is not None:
        return skipped_record(record_id, "oracle", "oracle", question, problem)
    seed = _stable_seed(config.seed, question.id, variant)
    rng = random.Random(seed)
    max_gap = (hint_config or HintConfig()).max_gap
    grounding = ground(ctree.tree, question.clue_intervals, max_gap)
    steps = plan_oracle(question, ctree.tree, grounding, config, rng)
    answerer = answerer or SyntheticClipAnswerer(
        question.answer_text or "", random.Random(seed + 1)
    )
    agent = AgentConfig(
        max_rounds=len(steps) + 1,
        max_reply_tokens=None,
        constrain="off",  # the oracle writes canonical replies itself
        answer_form=config.answer_form,
    )
    navigator = Navigator(
        OracleBackend(_OraclePlayer(question, ctree, steps, rng, config.answer_form)),
        make_toolbox(ctree, answerer),
        ctree.tree,
        agent,
    )
    trace = navigator.run(question.question, question.choices)
    outcome, reason = _outcome(trace, question.answer, gave_up=False)
    return record_from_trace(
        record_id, "oracle", "oracle", question, ctree, grounding, trace, outcome, reason, seed
    )


def generate_oracle(
    questions: Iterable[Question],
    trees: TreeSource,
    out_dir: str | os.PathLike[str],
    config: OracleConfig | None = None,
    hint_config: HintConfig | None = None,
    answerer_factory: AnswererFactory | None = None,
    on_record: Callable[[TrajectoryRecord], None] | None = None,
    progress: bool = False,
) -> GenerationReport:
    """Oracle trajectories for every question (and variant), one record each under ``out_dir``.

    video_qa answers state the right option (:class:`SyntheticClipAnswerer`)
    unless ``answerer_factory`` provides another answerer, e.g.
    :func:`caption_answerer` or a vision model. ``progress`` shows a bar on stderr.
    """
    config = config or OracleConfig()
    folder = TrajectoryFolder(out_dir)
    folder.claim(
        run_settings(
            "oracle",
            config,
            hint_config or HintConfig(),
            answerer=_factory_name(answerer_factory) or "synthetic_answerer",
        )
    )

    def work(job: _Job, worker: int) -> TrajectoryRecord:
        try:
            ctree = trees.get(job.question)
        except LVR1Error as exc:
            return skipped_record(job.record_id, "oracle", "oracle", job.question, str(exc))
        question = job.question
        if config.rotate_choices:
            question = rotate_choices(question, job.variant)
        answerer = answerer_factory(ctree, question) if answerer_factory else None
        return oracle_trajectory(
            question, ctree, config, job.variant, answerer, hint_config, job.record_id
        )

    jobs = _jobs(questions, config.variants)
    label = "oracle" if progress else None
    return _run(jobs, work, folder, config.workers, config.retry_failed, on_record, None, label)


# ---------------------------------------------------------------------------------------
# synthetic trees and questions


_PEOPLE = (
    "a woman in a grey coat",
    "a man with a backpack",
    "a boy in a red cap",
    "an elderly man",
    "a cyclist",
    "a young woman with long hair",
    "a chef in a white apron",
    "a man in a suit",
    "a girl in a yellow raincoat",
    "a delivery driver",
    "a teenager with headphones",
    "a woman carrying groceries",
)
_DOINGS = (
    "walks along the pavement",
    "opens a cupboard",
    "talks on the phone",
    "waits at a crossing",
    "looks out of a window",
    "sits down on a bench",
    "crosses the room",
    "pours a glass of water",
    "waves at someone off screen",
    "ties a shoelace",
    "checks a wristwatch",
    "reads a newspaper",
    "turns on a lamp",
    "rides past slowly",
)
_PLACES = (
    "a busy street",
    "a small kitchen",
    "an open-air market",
    "a quiet park",
    "a train platform",
    "an office with large windows",
    "a living room",
    "a harbour at dusk",
    "a school corridor",
    "a supermarket aisle",
)
_SHOTS = (
    "The camera holds a wide shot of {place}.",
    "The scene is set in {place}.",
    "A handheld camera moves through {place}.",
    "Soft daylight falls over {place}.",
)
_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
_OBJECTS = ("umbrella", "mug", "box", "bag", "book", "bottle", "scarf", "helmet")
_THINGS = ("boxes", "chairs", "bags", "plates", "books", "flowers")
_NUMBERS = ("one", "two", "three", "four", "five", "six")
_ACTIONS = (
    "picks up a phone",
    "closes the door",
    "sits down",
    "starts running",
    "opens an umbrella",
    "takes off a jacket",
    "turns off the light",
    "puts on sunglasses",
)


Fact = tuple[tuple[float, float], str]


def synthetic_tree_captions(
    tree: Tree, facts: Sequence[Fact], rng: random.Random
) -> dict[NodeId, str]:
    """Plausible captions for every node of a tree, with each fact where its interval lies.

    Leaves get a scene line and one or two time-stamped filler events plus
    every fact that overlaps them; a medium caption retells one event of each
    of its leaves, a high caption one event of each of its mediums, and both
    keep every fact, so coarse captions summarise fine ones as a real
    captioner's would and the clue can be followed down the tree.
    """
    places = [rng.choice(_PLACES) for _ in range(tree.width)]
    fact_leaves = [
        ({n.id for n in interval_nodes(tree, start, end, 3)}, start, fact)
        for (start, end), fact in facts
    ]
    leaf_events: dict[NodeId, list[tuple[float, str, bool]]] = {}
    captions: dict[NodeId, str] = {}
    for leaf in tree.nodes(3):
        events = [
            (
                rng.uniform(leaf.start, leaf.end),
                f"{rng.choice(_PEOPLE)} {rng.choice(_DOINGS)}",
                False,
            )
            for _ in range(rng.randint(1, 2))
        ]
        events += [(max(t, leaf.start), f, True) for ids, t, f in fact_leaves if leaf.id in ids]
        events.sort()
        leaf_events[leaf.id] = events
        shot = rng.choice(_SHOTS).format(place=places[leaf.id[0] - 1])
        captions[leaf.id] = " ".join([shot, *(_event(t, s) for t, s, _f in events)])
    for depth in (2, 1):
        for node in tree.nodes(depth):
            events = _summary_events(tree, node, leaf_events, rng)
            lead = f"This part takes place in {places[node.id[0] - 1]}."
            captions[node.id] = " ".join([lead, *(_event(t, s) for t, s, _f in events)])
    return captions


def _event(t: float, sentence: str) -> str:
    return f"At {t:.1f}s, {sentence}."


def _summary_events(
    tree: Tree,
    node: Node,
    leaf_events: Mapping[NodeId, list[tuple[float, str, bool]]],
    rng: random.Random,
) -> list[tuple[float, str, bool]]:
    """One filler event per child, plus each fact below the node once, in time order."""
    chosen: list[tuple[float, str, bool]] = []
    facts: set[str] = set()
    for child in tree.children(node.id):
        below = [e for leaf in _leaves(tree, child) for e in leaf_events[leaf.id]]
        filler = [e for e in below if not e[2]]
        if filler:
            chosen.append(rng.choice(filler))
        for event in below:
            if event[2] and event[1] not in facts:
                facts.add(event[1])
                chosen.append(event)
    return sorted(chosen)


def _leaves(tree: Tree, node: Node) -> list[Node]:
    if node.depth == len(LEVELS):
        return [node]
    return [leaf for child in tree.children(node.id) for leaf in _leaves(tree, child)]


@dataclass(frozen=True)
class SyntheticItem:
    """A question with its video's caption tree, made up from templates."""

    question: Question
    ctree: CaptionTree


def synthetic_item(
    rng: random.Random,
    index: int = 0,
    duration: float | None = None,
    min_width: int = 4,
    max_width: int = 8,
) -> SyntheticItem:
    """One synthetic multiple-choice question over a synthetic caption tree.

    The right option is a fact placed at a random clue interval; the wrong
    options appear elsewhere in the video too, said of other people, so a
    navigator cannot answer from the option words alone and a detour into a
    wrong segment reads plausibly.
    """
    duration = duration if duration is not None else round(rng.uniform(600.0, 7200.0), 1)
    width = width_for_duration(duration, min_width, max_width)
    tree = Tree.for_video(duration, max(1, int(duration * 2)), width=width)
    kind = rng.choice(("colour", "object", "count", "sequence"))
    person = rng.choice(_PEOPLE)
    text, options, fact_lines, qtype = _template(kind, person, rng)
    right = rng.randrange(len(options))
    ordered = options[1:]
    ordered.insert(right, options[0])
    intervals = _clue_intervals(duration, len(fact_lines), rng)
    facts: list[Fact] = list(zip(intervals, fact_lines, strict=True))
    facts += _distractor_facts(kind, options[1:], person, duration, intervals, rng)
    question = Question(
        id=f"synthetic-{index}",
        video_id=f"synthetic-video-{index}",
        question=text,
        choices=ordered,
        answer=LETTERS[right],
        category=kind,
        clue_intervals=intervals,
        duration=duration,
        benchmark="synthetic",
        extra={"question_type": qtype},
    )
    captions = synthetic_tree_captions(tree, facts, rng)
    ctree = CaptionTree(question.video_id, tree, captions, f"synthetic-{index}", "synthetic")
    return SyntheticItem(question, ctree)


def _template(kind: str, person: str, rng: random.Random) -> tuple[str, list[str], list[str], str]:
    """Question text, options (right one first), fact sentences, question type."""
    who = person.removeprefix("a ").removeprefix("an ")
    if kind == "colour":
        thing = rng.choice(_OBJECTS)
        colours = rng.sample(_COLOURS, 4)
        return (
            f"What colour is the {thing} that the {who} picks up?",
            colours,
            [f"{person} picks up a {colours[0]} {thing}"],
            "perception",
        )
    if kind == "object":
        things = rng.sample(_OBJECTS, 4)
        return (
            f"What does the {who} put on the table?",
            [f"a {t}" for t in things],
            [f"{person} puts a {things[0]} on the table"],
            "perception",
        )
    if kind == "count":
        thing = rng.choice(_THINGS)
        numbers = rng.sample(_NUMBERS, 4)
        return (
            f"How many {thing} does the {who} carry?",
            numbers,
            [f"{person} carries {numbers[0]} {thing}"],
            "perception",
        )
    first, *others = rng.sample(_ACTIONS, 5)
    return (
        f"What does the {who} do right after they {first.split(' ', 1)[0].removesuffix('s')} "
        f"{first.split(' ', 1)[1]}?",
        others,
        [f"{person} {first}", f"{person} {others[0]}"],
        "reasoning",
    )


def _clue_intervals(duration: float, n: int, rng: random.Random) -> list[tuple[float, float]]:
    """``n`` consecutive intervals a few seconds to half a minute long, a short gap apart."""
    spans = [round(rng.uniform(3.0, 30.0), 1) for _ in range(n)]
    gaps = [round(rng.uniform(0.5, 12.0), 1) for _ in range(n - 1)]
    room = duration - sum(spans) - sum(gaps)
    t = round(rng.uniform(0.0, max(0.0, room - 1.0)), 1)
    out = []
    for i, span in enumerate(spans):
        out.append((t, round(min(duration, t + span), 1)))
        t = out[-1][1] + (gaps[i] if i < len(gaps) else 0.0)
    return out


def _distractor_facts(
    kind: str,
    wrong: Sequence[str],
    person: str,
    duration: float,
    clues: Sequence[tuple[float, float]],
    rng: random.Random,
) -> list[Fact]:
    """The wrong options, said of other people at times away from the clue."""
    out: list[Fact] = []
    others = [p for p in _PEOPLE if p != person]
    for wrong_option in wrong:
        for _ in range(20):
            start = round(rng.uniform(0.0, max(0.0, duration - 10.0)), 1)
            if all(start + 10.0 < s - 30.0 or start > e + 30.0 for s, e in clues):
                break
        else:
            continue
        who = rng.choice(others)
        sentence = {
            "colour": f"{who} holds something {wrong_option}",
            "object": f"{who} looks at {wrong_option}",
            "count": f"{wrong_option} people stand near {who}",
            "sequence": f"{who} {wrong_option}",
        }[kind]
        out.append(((start, start + rng.uniform(2.0, 8.0)), sentence))
    return out


SYNTHETIC_PREFIX = "synthetic:"


def synthetic_count(spec: str) -> int | None:
    """N of a ``synthetic:N`` data spec; ``None`` when the spec names something else (a file).

    The training recipe and ``lvr1 data`` both accept ``synthetic:N`` where a
    question file or trajectories are expected, so data can be made from a
    fresh clone with nothing downloaded.
    """
    if not spec.startswith(SYNTHETIC_PREFIX):
        return None
    count = spec[len(SYNTHETIC_PREFIX) :]
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"{spec!r}: use synthetic:N with N >= 1")
    return int(count)


def synthetic_dataset(n: int, seed: int = 0, **options: Any) -> list[SyntheticItem]:
    """``n`` synthetic items; the same seed gives the same items."""
    rng = random.Random(seed)
    return [synthetic_item(random.Random(rng.getrandbits(64)), i, **options) for i in range(n)]


# ---------------------------------------------------------------------------------------
# filtering


@dataclass(frozen=True)
class FilterConfig:
    """What a trajectory must satisfy to be trained on."""

    allow_forced: bool = option(
        False,
        "Keep trajectories that needed the last-round or a budget notice (two user turns in "
        "a row, which per-round exports must join).",
    )
    allow_repeats: bool = option(
        True, "Keep trajectories that call the same tool on the same node twice."
    )
    max_rounds: int | None = option(None, "Drop trajectories longer than this (None: any).")
    max_chars: int | None = option(
        None,
        "Drop conversations longer than this many characters, a tokenizer-free stand-in for "
        "the trainer's sequence cutoff (about 4 characters a token; None: any).",
    )
    reject_hint_mentions: bool = option(
        True, "Drop trajectories whose reasoning mentions a hint (it should read as its own)."
    )
    strict_format: bool = option(
        True,
        "Require every reply to be <think>...</think> followed by the tool call or answer "
        "exactly as the protocol renders it (ids as (h, m), the answer as a bare letter).",
    )


_HINT_WORDS = re.compile(r"\bhint(s|ed)?\b|\bI was told\b|\bI've been told\b", re.IGNORECASE)
_ERROR_PREFIX = prompts.error_message("x").split(":", 1)[0]


def check_record(record: TrajectoryRecord, config: FilterConfig | None = None) -> str | None:
    """Why a record is unfit for training, or ``None`` when it is fit.

    The conversation is re-read with the protocol's own parser: every
    assistant turn must be canonical, tool calls must be followed by their
    real observation (not an error), video_qa only on a leaf whose caption was
    read before, and the last turn must be the right letter.
    """
    config = config or FilterConfig()
    if record.outcome != "correct":
        return record.outcome
    messages = record.messages
    if len(messages) < 3 or [m["role"] for m in messages[:2]] != ["system", "user"]:
        return "malformed_conversation"
    tree = record.tree()
    system_prompts = {prompts.system_prompt(tree.width, form) for form in protocol.ANSWER_FORMS}
    if messages[0]["content"] not in system_prompts:
        return "system_prompt_mismatch"
    return _check_turns(record, tree, config)


def _check_turns(record: TrajectoryRecord, tree: Tree, config: FilterConfig) -> str | None:
    messages = record.messages
    fetched: set[NodeId] = {n.id for n in tree.nodes(1)}
    calls: set[tuple[str, NodeId]] = set()
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns or assistant_turns[-1] != len(messages) - 1:
        return "last_turn_not_answer"
    if config.max_rounds is not None and len(assistant_turns) > config.max_rounds:
        return "too_many_rounds"
    if config.max_chars is not None and sum(len(m["content"]) for m in messages) > config.max_chars:
        return "too_long"
    for previous, message in zip(messages, messages[1:], strict=False):
        if previous["role"] == message["role"] == "user" and not config.allow_forced:
            return "forced_or_notice"
    for index in assistant_turns:
        text = messages[index]["content"]
        reply = replies.parse_reply(text, tree, record.choices, fetched)
        problem = _turn_problem(reply, text, tree, record, fetched, config)
        if problem is not None:
            return problem
        action = reply.action
        if action is None:
            return None if index == len(messages) - 1 else "answer_before_end"
        if index == len(messages) - 1:
            return "last_turn_not_answer"
        if (action.tool, action.node_id) in calls and not config.allow_repeats:
            return "repeated_call"
        calls.add((action.tool, action.node_id))
        observation = messages[index + 1]["content"]
        if not _observed(action, observation, tree):
            return "refused_call"
        if action.tool == "get_caption":
            fetched.add(action.node_id)
    return "last_turn_not_answer"


def _turn_problem(
    reply: protocol.Reply,
    text: str,
    tree: Tree,
    record: TrajectoryRecord,
    fetched: set[NodeId],
    config: FilterConfig,
) -> str | None:
    if reply.error is not None:
        loose = replies.parse_reply(text, tree, record.choices)
        if loose.action is not None and loose.action.tool == "video_qa":
            return "leaf_rule"
        return "parse_error"
    if not reply.canonical or (config.strict_format and not _exact(text, reply, record.choices)):
        return "not_canonical"
    if not reply.think or not reply.think.strip():
        return "no_reasoning"
    if config.reject_hint_mentions and _HINT_WORDS.search(reply.think):
        return "mentions_hint"
    if reply.answer is not None:
        letter = protocol.normalize_answer(reply.answer.text, record.choices)
        if letter != record.answer:
            return "wrong_final_answer"
    return None


_REPLY = re.compile(r"^<think>(.*)</think>\s*(.*?)$", re.DOTALL)


def _exact(text: str, reply: protocol.Reply, choices: Sequence[str] | None = None) -> bool:
    """Whether the reply is written exactly as :func:`protocol.render_reply` would write it.

    The parser accepts many spellings (JSON calls, ``(B)``, ids without
    spaces); a student trained on them would learn all of them. Whitespace
    around the blocks is the only freedom left, and an answer may be the
    option's letter or its text as :func:`grammar.answer_in_form` writes it.
    """
    match = _REPLY.match(text.strip())
    if match is None or reply.think is None or "<think>" in match.group(1):
        return False
    answer = reply.answer
    if answer is not None and answer.letter is not None and choices:
        return match.group(2) in {
            protocol.render_answer(grammar.answer_in_form(answer.letter, choices, form))
            for form in ("letter", "text")
        }
    result = answer.text if answer is not None else reply.action
    if result is None:
        return False
    return match.group(2) == protocol.render_reply(None, result)


def _observed(action: Action, observation: str, tree: Tree) -> bool:
    """Whether the user turn after a call is that call's real result."""
    if observation.startswith(_ERROR_PREFIX):
        return False
    if action.tool == "video_qa":
        return observation.startswith("<information>")
    node = tree.node(action.node_id)
    head = prompts.caption_observation(node, "x")[:-1]
    return observation.startswith(head)


@dataclass
class FilterReport:
    """What the filter kept, and how many it dropped for each reason (with a few ids)."""

    kept: list[TrajectoryRecord] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.kept) + sum(self.dropped.values())

    def summary(self) -> str:
        head = f"kept {len(self.kept)} of {self.total} trajectories"
        if not self.dropped:
            return head
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.dropped.most_common())
        return f"{head}; dropped: {reasons}"


def filter_records(
    records: Iterable[TrajectoryRecord], config: FilterConfig | None = None
) -> FilterReport:
    """Split records into those fit for training and counts of the rest by reason."""
    report = FilterReport()
    for record in records:
        reason = check_record(record, config)
        if reason is None:
            report.kept.append(record)
            continue
        report.dropped[reason] += 1
        ids = report.examples.setdefault(reason, [])
        if len(ids) < 5:
            ids.append(record.id)
    return report
