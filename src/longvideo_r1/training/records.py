"""The trajectory record both generators write, and the folder that keeps the records.

The teacher and the oracle write the same record (:class:`TrajectoryRecord`),
one JSON file per question under ``OUT/records/``, so the filter and the
exports read either without knowing which made it. A folder is claimed by
the settings that make its records (:meth:`TrajectoryFolder.claim`), so a
rerun cannot mix two settings into one training set, and locked while a run
writes to it (:meth:`TrajectoryFolder.lock`), so two runs at once cannot either.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from longvideo_r1 import __version__
from longvideo_r1.agent import protocol
from longvideo_r1.agent.trace import Trace
from longvideo_r1.config import first_difference
from longvideo_r1.errors import LVR1Error, validation_line
from longvideo_r1.files import folder_lock, safe_name, write_atomic
from longvideo_r1.training.hints import Grounding, HintKind
from longvideo_r1.tree import NodeId, Tree

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
    video_qa_calls: int = Field(default=0, description="video_qa calls a vision model answered.")
    video_qa_from_captions: int = Field(
        default=0, description="video_qa calls answered with caption notes, no vision model."
    )
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

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """One generator per folder, held from :meth:`claim` to the last record.

        Without it two runs with different settings could both pass the claim
        (neither sees the other's manifest yet, or both see none) and mix their
        records. The lock is the evaluation run folder's (:func:`folder_lock`).
        """
        return folder_lock(self.root, "lvr1 data run")

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
