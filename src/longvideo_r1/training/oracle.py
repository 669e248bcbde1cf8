"""The oracle: trajectories walked from the clue intervals, with no model at all.

From the clue intervals it walks the shortest sensible path (medium node(s)
over the clue, then the leaf, video_qa when the question wants a visual
detail) with short templated reasoning, sometimes opening a wrong medium node
first and correcting itself. It drives the same Navigator as the teacher
through a scripted backend, so its conversations come from the same code as
the teacher's. Its video_qa states the right option
(:class:`SyntheticClipAnswerer`) unless another answerer is given.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from longvideo_r1.agent import grammar, prompts, protocol
from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.navigator import Navigator
from longvideo_r1.agent.protocol import Action
from longvideo_r1.agent.tools import ClipAnswerer
from longvideo_r1.captions.captioner import CallCost
from longvideo_r1.errors import ConfigError, LVR1Error
from longvideo_r1.llm.backends import (  # Served: the ChatBackend subclass contract
    ChatBackend,
    Served,
)
from longvideo_r1.llm.client import ChatReply, Message
from longvideo_r1.llm.gbnf import Constraint
from longvideo_r1.options import option
from longvideo_r1.questions.schema import LETTERS, Question
from longvideo_r1.training.generation import (
    GenerationReport,
    _flat,
    _Job,
    _jobs,
    _outcome,
    _run,
    _unfit,
    record_from_trace,
    skipped_record,
)
from longvideo_r1.training.hints import Grounding, HintConfig, ground
from longvideo_r1.training.hints import nodes_for_interval as interval_nodes
from longvideo_r1.training.records import (
    TrajectoryError,
    TrajectoryFolder,
    TrajectoryRecord,
    _factory_name,
    run_settings,
)
from longvideo_r1.training.trees import AnswererFactory, CaptionTree, TreeSource, make_toolbox
from longvideo_r1.tree import Node, NodeId, Tree

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


def _stable_seed(*parts: object) -> int:
    """A seed from values, the same in every process (``hash()`` of a str is not)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


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

    looks = True
    """It stands in for a vision model in the trajectories it writes."""

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
    settings = run_settings(
        "oracle",
        config,
        hint_config or HintConfig(),
        answerer=_factory_name(answerer_factory) or "synthetic_answerer",
    )
    with folder.lock():
        folder.claim(settings)
        return _run(jobs, work, folder, config.workers, config.retry_failed, on_record, None, label)
