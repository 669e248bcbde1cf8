"""Every string the navigation model reads: the prompts and the observations.

The structural strings (the first user message, the tool syntax, the
observations) are the interface the released LongVideo-R1 checkpoints
learned and are reproduced exactly; the system prompt, the last-round
instruction and the error observation are this project's prose. They live
together so that every path that talks to the model (inference, SFT exports,
RL rollouts) sends the same bytes.

Times are printed with :data:`~longvideo_r1.agent.protocol.TIME_DECIMALS`
decimals (``37.5``, ``150.0``), the form the checkpoints saw. See
``docs/protocol.md`` for every string with an example conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from longvideo_r1.agent.protocol import (
    ANSWER_FORMS,
    TIME_DECIMALS,
    AnswerForm,
    ParseError,
    option_lines,
)
from longvideo_r1.errors import ConfigError
from longvideo_r1.tree import Node


def format_seconds(seconds: float) -> str:
    """One fixed precision everywhere, so equal times always print alike."""
    return f"{seconds:.{TIME_DECIMALS}f}"


def answer_instruction(answer_form: AnswerForm = "letter") -> str:
    """How a multiple-choice answer is written; no example letter (small models copy it)."""
    if answer_form == "letter":
        return "For a multiple-choice question, answer with the letter of the option you choose."
    if answer_form == "text":
        return (
            "For a multiple-choice question, answer with the text of the option you choose, "
            "copied exactly as it is written, without its letter."
        )
    if answer_form == "either":
        return (
            "For a multiple-choice question, answer with the letter of the option you choose "
            "or with its text copied exactly."
        )
    raise ConfigError(f"answer form must be one of {', '.join(ANSWER_FORMS)}, got {answer_form!r}")


def system_prompt(width: int, answer_form: AnswerForm = "letter") -> str:
    """Teach the tree, the round format and the tools for this video's width."""
    if width < 1:
        raise ValueError(f"tree width must be at least 1, got {width}")
    w = width
    how_to_answer = answer_instruction(answer_form)
    return f"""You answer questions about a long video that you cannot watch directly. The video has been cut into a tree of segments, each described by a text caption, and you explore this tree step by step until you know enough to answer.

The tree has three levels, and every split has the same width, {w}:
1. High level: the whole video in {w} consecutive segments, numbered 1 to {w}.
2. Medium level: each high-level segment h cut into {w} parts; (h, m) is part m of segment h ({w * w} medium segments in all).
3. Low level: each medium-level segment (h, m) cut into {w} short clips; (h, m, l) is clip l of (h, m) ({w**3} low segments in all).
Every number in an id counts from 1 to {w}, in time order.

At first you get only the question and the captions of the {w} high-level segments. Finer captions come only when you ask for them, so look where the answer is most likely to be.

In every round, first reason inside <think>...</think>: what the captions so far tell you, what is still missing, and which segment most likely holds it. Then do exactly one of these two things:
- If what you know is enough, give your final answer inside <answer>...</answer>. {how_to_answer}
- Otherwise call exactly one tool, and wait for its result in the next message:
  <tool>get_caption((h, m))</tool> returns the caption of medium-level segment (h, m).
  <tool>get_caption((h, m, l))</tool> returns the caption of low-level segment (h, m, l).
  <tool>video_qa((h, m, l), "query")</tool> shows the clip of low-level segment (h, m, l) to a vision model and returns its answer to your query. Use it for details the captions miss, such as a colour, a number, written text or who does what. It works only on a low-level segment whose caption you have already fetched; ask one precise question.
The high-level captions are already in front of you: never ask for them. Write ids as tuples of integers and the query as a quoted string.

Every reply has this form:
<think>your reasoning</think>
<tool>one tool call</tool>
or
<think>your reasoning</think>
<answer>your final answer</answer>"""


@dataclass(frozen=True)
class UserTurn:
    """A user message as its text parts; ``text`` is what a text-only chat template sees.

    OpenAI-compatible servers render text parts of one message joined by a
    newline for text-only models, so ``text`` and ``content`` reach the model
    as the same prompt.
    """

    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.parts)

    @property
    def content(self) -> list[dict[str, str]]:
        return [{"type": "text", "text": part} for part in self.parts]

    def message(self, as_parts: bool = True) -> dict[str, Any]:
        """The chat message, with content parts (as the reference sent) or one string."""
        return {"role": "user", "content": self.content if as_parts else self.text}


def first_user_message(
    question: str,
    choices: Sequence[str] | None,
    duration: float,
    high_captions: Sequence[tuple[Node, str]],
) -> UserTurn:
    """The opening user turn: question, duration, then one line per high segment.

    The question part ends with a newline, as in the reference evaluation, so
    that the joined text has a blank line before the duration.
    """
    question_part = question.strip() + "\n"
    if choices:
        question_part += "\n".join(option_lines(choices)) + "\n"
    parts = [
        question_part,
        f"The total duration of the video is {format_seconds(duration)} seconds.",
    ]
    for node, caption in high_captions:
        if node.depth != 1:
            raise ValueError(f"first message takes high-level captions, got node {node.label}")
        parts.append(
            f"High-level Caption {node.id[0]} from {format_seconds(node.start)} "
            f"to {format_seconds(node.end)}:{caption.strip()}"
        )
    return UserTurn(tuple(parts))


def first_user_content(
    question: str,
    choices: Sequence[str] | None,
    duration: float,
    high_captions: Sequence[tuple[Node, str]],
) -> list[dict[str, str]]:
    """OpenAI content parts of the opening turn (how the reference sent it)."""
    return first_user_message(question, choices, duration, high_captions).content


def first_user_text(
    question: str,
    choices: Sequence[str] | None,
    duration: float,
    high_captions: Sequence[tuple[Node, str]],
) -> str:
    """The opening turn as one string, parts joined by newlines."""
    return first_user_message(question, choices, duration, high_captions).text


def caption_observation(node: Node, caption: str) -> str:
    """What a ``get_caption`` call returns; ids are written without spaces here."""
    if node.depth == 1:
        raise ValueError("high-level captions are given in the first message, not observed")
    tight = ",".join(str(i) for i in node.id)
    return (
        f"{node.level.capitalize()}-level Caption from tool get_caption(({tight})). "
        f"From {format_seconds(node.start)} to {format_seconds(node.end)}:{caption.strip()}"
    )


def qa_observation(answer: str) -> str:
    """What a ``video_qa`` call returns: the VLM's answer text only."""
    return f"<information>{answer.strip()}</information>"


def budget_notice(cause: str, call_not_run: bool) -> str:
    """What the model is told when a budget runs out; the last-round instruction follows."""
    sentence = cause[0].upper() + cause[1:]
    return sentence + (", so that call was not run." if call_not_run else ".")


def last_round_message(answer_form: AnswerForm = "letter") -> str:
    """Sent before the final round so the model answers instead of exploring."""
    how = {
        "letter": "the option's letter",
        "text": "the option's exact text",
        "either": "the option's letter or its exact text",
    }
    if answer_form not in how:
        answer_instruction(answer_form)  # raises the one-line error
    return (
        "This is your last round: no more tools can be called. Think it over in "
        "<think>...</think> and then give your best final answer in <answer>...</answer>; "
        f"for a multiple-choice question, answer with {how[answer_form]}."
    )


def error_message(error: ParseError | str) -> str:
    """Tell the model what was wrong with its last reply and what a valid one looks like."""
    problem = error.message if isinstance(error, ParseError) else error
    return (
        f"Your last reply could not be used: {problem.rstrip('.')}.\n"
        "Reply again: your reasoning inside <think>...</think>, followed by exactly one of\n"
        "<tool>get_caption((h, m))</tool>\n"
        "<tool>get_caption((h, m, l))</tool>\n"
        '<tool>video_qa((h, m, l), "your question")</tool>\n'
        "<answer>your final answer</answer>"
    )
