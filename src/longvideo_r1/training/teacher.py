"""The teacher loop: a strong model plays the agent and is hinted after each wrong answer.

A strong model behind any :class:`~longvideo_r1.llm.backends.ChatBackend`
plays the agent through the production
:class:`~longvideo_r1.agent.navigator.Navigator` and
:class:`~longvideo_r1.agent.tools.ToolBox`, over caption trees already in the
store, so every prompt is byte for byte what inference sends. When it
answers wrongly, :class:`HintingBackend` drops that turn, appends the next
grounding hint (:mod:`longvideo_r1.training.hints`) to the user turn the teacher is
answering and asks again. The navigator never sees the dropped turn, so
its trace is already the clean conversation; the hints are kept beside it.
Each worker thread owns its own teacher backend.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from longvideo_r1.agent import protocol, replies
from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.navigator import Navigator
from longvideo_r1.agent.tools import ClipAnswerer
from longvideo_r1.config import AnswerFormSetting, ConstrainMode
from longvideo_r1.errors import ConfigError, LVR1Error
from longvideo_r1.llm.backends import (  # Served: the ChatBackend subclass contract
    ChatBackend,
    Served,
)
from longvideo_r1.llm.client import Message
from longvideo_r1.llm.gbnf import Constraint
from longvideo_r1.options import option
from longvideo_r1.questions.schema import Question
from longvideo_r1.training.generation import (
    GenerationReport,
    _Job,
    _jobs,
    _outcome,
    _run,
    _unfit,
    record_from_trace,
    skipped_record,
)
from longvideo_r1.training.hints import Hint, HintConfig, HintLadder, append_hint
from longvideo_r1.training.records import (
    DroppedTurn,
    HintRecord,
    TrajectoryFolder,
    TrajectoryRecord,
    _factory_name,
    run_settings,
)
from longvideo_r1.training.trees import (
    AnswererFactory,
    CaptionTree,
    TreeSource,
    caption_answerer,
    make_toolbox,
)


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
        with folder.lock():
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
