"""The one answer every baseline asks for, and how its reply is read.

A baseline differs from the agent in what it shows the model, never in how the
answer is asked for or read: the same answer forms, the same grammar (through
the agent's backends), the same strict parser. Keeping that in one module makes
the rule visible and lets a prompt change bump :data:`PROMPT_VERSION` in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from longvideo_r1.agent import protocol, replies
from longvideo_r1.agent.navigator import resolve_answer_form
from longvideo_r1.captions.captioner import text_part
from longvideo_r1.questions.schema import Question


def answer_instruction(answer_form: protocol.AnswerForm = "letter") -> str:
    """Reason, then answer in the form asked for.

    No example letter: small models copy it (with ``<answer>B</answer>`` as the
    example, the embedded 0.5B model answered B to every question of the test bench).
    """
    what = {
        "letter": "only the letter of the option you choose",
        "text": "the text of the option you choose, copied exactly, without its letter",
        "either": "the letter of the option you choose or its text copied exactly",
    }[answer_form]
    return (
        f"Reason briefly inside <think>...</think>, then write {what} inside <answer>...</answer>."
    )


ANSWER_INSTRUCTION = answer_instruction("letter")
TEXT_SYSTEM_PROMPT = (
    "You answer multiple-choice questions about a video that you cannot watch. Instead you "
    "get text about the video: {what}. Use only that text. {instruction}"
)
IMAGE_PART_STUB = "(image omitted from the trace)"
PROMPT_VERSION = "v3"
"""In every baseline's parameters: a changed prompt makes results a new configuration."""


@dataclass(frozen=True)
class ParsedAnswer:
    """The letter a reply names, or why it names none."""

    letter: str | None
    text: str | None
    problem: str | None = None
    notes: tuple[str, ...] = ()


def parse_answer(text: str, choices: Sequence[str]) -> ParsedAnswer:
    """The agent's strict parser: an ``<answer>`` naming one option, or the reason it is not."""
    reply = replies.parse_reply(text, None, choices)
    if reply.answer is not None and reply.answer.letter is not None:
        return ParsedAnswer(reply.answer.letter, reply.answer.text, None, reply.notes)
    if reply.action is not None:
        return ParsedAnswer(None, None, "the reply calls a tool; this method has none")
    problem = reply.error.message if reply.error is not None else "the reply names no option"
    return ParsedAnswer(None, None, problem)


def question_block(question: Question, answer_form: protocol.AnswerForm = "letter") -> str:
    """The question and lettered options, last in every prompt (prefix caches reuse the rest)."""
    lines = [f"Question: {question.question.strip()}", *question.choice_lines()]
    return "\n".join([*lines, answer_instruction(answer_form)])


def text_prompt(
    what: str, context: str, question: Question, answer_form: protocol.AnswerForm = "letter"
) -> list[dict[str, Any]]:
    """System prompt naming what the text is, then the text, then the question."""
    system = TEXT_SYSTEM_PROMPT.format(what=what, instruction=answer_instruction(answer_form))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"{context}\n\n{question_block(question, answer_form)}"},
    ]


@dataclass(frozen=True)
class AnswerStep:
    """How every baseline asks for its one answer: the agent's settings, the agent's rules."""

    constrain: str = "auto"
    answer_form: str = "auto"

    def form(self, backend: Any) -> protocol.AnswerForm:
        return resolve_answer_form(self.answer_form, backend)

    def params(self) -> dict[str, Any]:
        return {"constrain": self.constrain, "answer_form": self.answer_form}


def stub_images(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt for the trace file: text kept verbatim, each image replaced by a stub."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                text_part(IMAGE_PART_STUB) if part.get("type") == "image_url" else part
                for part in content
            ]
        out.append({**message, "content": content})
    return out
