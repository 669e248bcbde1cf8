"""The agent's settings: rounds, budgets, sampling, the reply form and the levers.

One frozen dataclass whose field help is the CLI's help text (``lvr1 ask``,
``lvr1 eval``) and whose dict goes into every trace and run manifest, so a
run says how it was made. The navigator (``navigator.py``) plays by it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, get_args

from longvideo_r1.agent import protocol
from longvideo_r1.agent.guide import agent_variant
from longvideo_r1.config import AnswerFormSetting, ConstrainMode
from longvideo_r1.errors import ConfigError
from longvideo_r1.options import field_help, option

CONSTRAIN_MODES: tuple[str, ...] = get_args(ConstrainMode)
SMALL_NAVIGATOR_LEVERS: dict[str, Any] = {"min_depth": 2, "guide": 2, "answer_on_match": 0.5}
"""The agent's levers that ``levers`` turns on (with navigable captions): the measured setting
under which the embedded 0.5B navigator reads below the high-level captions. AgentConfig's
own defaults stay off, so library users and served models keep the plain agent."""
SMALL_NAVIGATOR_ROUNDS = 10
"""The rounds the preset allows (unless ``--max-rounds`` is given): what it was measured with.
Made to read, a small navigator otherwise keeps reading up to the plain agent's 30 rounds on a
short video whose answer the first captions already hold."""


@dataclass(frozen=True)
class AgentConfig:
    """How long a navigator may explore, and how it talks to the reasoning model."""

    max_rounds: int = option(
        30, "Model turns at most; before the last one the model is told to answer now."
    )
    max_video_qa: int | None = option(
        None,
        "video_qa calls allowed (None: no limit). A call beyond it is not run and the "
        "model must answer in the next round.",
    )
    max_caption_calls: int | None = option(
        None,
        "get_caption calls the model may make, the opening's high-level captions not "
        "counted (None: no limit). A call beyond it is not run and the model must answer "
        "in the next round.",
    )
    max_tokens: int | None = option(
        None,
        "Reasoning-model tokens, prompt plus completion as the server reports them, summed "
        "over rounds (None: no limit). Once reached, the model must answer in the next round.",
    )
    max_seconds: float | None = option(
        None,
        "Wall-clock seconds from the start of the run (None: no limit). Once reached, no "
        "tool runs and the model must answer in the next round.",
    )
    require_fetched_leaf: bool = option(
        True, "Refuse video_qa on a leaf whose caption the model has not fetched first."
    )
    temperature: float | None = option(
        None, "Sampling temperature of the reasoning model (None: the backend's default)."
    )
    max_reply_tokens: int | None = option(
        1024, "Completion tokens per model reply (None: the backend's default)."
    )
    max_repeated_errors: int | None = option(
        3,
        "End the run as no_answer when the model writes the same unusable reply this many "
        "times in a row (None: never). A deterministic model that repeats itself after an "
        "error message will not recover; the remaining rounds would only cost time.",
    )
    max_repeated_calls: int | None = option(
        3,
        "Refuse a tool call that the model has already made this many times in a row, each "
        "time with a result (None: never); the model is told why and must answer in the next "
        "round. The same call returns the same result, so a model looping on it is stuck.",
    )
    constrain: ConstrainMode = option(
        "auto",
        "Decode every reply under a grammar that admits only replies the protocol reads as "
        "canonical (a think, then one tool call with ids that exist and were not fetched yet, "
        "or an answer in the answer form): 'on', 'off', or 'auto', which is on for the embedded "
        "model and, for a server, on when a one-time probe shows it takes a grammar (vLLM, "
        "SGLang, llama.cpp's server), with one notice when it does not.",
    )
    answer_form: AnswerFormSetting = option(
        "auto",
        "What <answer> holds for a multiple-choice question, as the prompt asks and the grammar "
        "admits: 'letter' (what the released checkpoints learned), 'text' (the option's exact "
        "text; small models pick the right text far more often than the right letter), "
        "'either', or 'auto': text for the embedded model, either for a server.",
    )
    max_think_tokens: int = option(
        768,
        "Tokens the <think> of a constrained reply may take (at most max_reply_tokens); "
        "</think> is written for the model when they run out, and the tool call or answer "
        "after it always gets the tokens it needs to finish.",
    )
    first_message_parts: bool = option(
        False,
        "Send the first user message as OpenAI text parts, as the reference did, instead of "
        "one string. Text-only servers join the parts with a newline, so the model reads the "
        "same prompt; some chat templates accept only strings.",
    )
    min_depth: int = option(
        0,
        "Admit an answer only after a caption at this depth or deeper was read: 2 a medium "
        "(h, m), 3 a low (h, m, l) one; 0 off. The grammar leaves the answer out and the "
        "parser refuses an early one; a round with no tool call left, the last one "
        "included, always admits it, and the trace records whether the depth was reached.",
    )
    guide: int = option(
        0,
        "Retrieval-guided navigation: get_caption is offered only the K unread children of "
        "the segments read so far that BM25 ranks highest for the question, over their "
        "stored captions or else the words spoken in them (0: off, unguided). A guided run "
        "is named retrieval-guided-bm25-kK in manifests and reports.",
    )
    answer_on_match: float = option(
        0.0,
        "Halting guide: once a get_caption observation holds at least this share of the "
        "question's words (English stop words dropped), the model is told so and must answer "
        "in its next round (0: off). A small navigator that was made to read keeps reading "
        "past the caption that holds the fact; this stops it there. Runs with it are named "
        "...-answer-on-match-S in manifests and reports.",
    )

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be at least 1, got {self.max_rounds}")
        if self.max_repeated_errors is not None and self.max_repeated_errors < 2:
            raise ConfigError(
                f"max_repeated_errors must be at least 2, got {self.max_repeated_errors}"
            )
        if self.max_repeated_calls is not None and self.max_repeated_calls < 1:
            raise ConfigError(
                f"max_repeated_calls must be at least 1, got {self.max_repeated_calls}"
            )
        for name in ("max_video_qa", "max_caption_calls"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value}")
        for name in ("max_tokens", "max_seconds", "max_reply_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"temperature must be 0 or more, got {self.temperature}")
        if self.constrain not in CONSTRAIN_MODES:
            raise ConfigError(
                f"constrain must be one of {', '.join(CONSTRAIN_MODES)}, got {self.constrain!r}"
            )
        if self.answer_form not in ("auto", *protocol.ANSWER_FORMS):
            raise ConfigError(
                f"answer_form must be auto or one of {', '.join(protocol.ANSWER_FORMS)}, "
                f"got {self.answer_form!r}"
            )
        if self.max_think_tokens < 1:
            raise ConfigError(f"max_think_tokens must be positive, got {self.max_think_tokens}")
        if not 0 <= self.min_depth <= 3:
            raise ConfigError(
                f"min_depth must be 0 (off) to 3 (a low caption), got {self.min_depth}"
            )
        if self.guide < 0:
            raise ConfigError(f"guide must be 0 (off) or more, got {self.guide}")
        if not 0.0 <= self.answer_on_match <= 1.0:
            raise ConfigError(
                f"answer_on_match must be a share from 0 (off) to 1, got {self.answer_on_match}"
            )

    @property
    def variant(self) -> str:
        """How manifests and reports name a run of this config (guided runs say so)."""
        return agent_variant(self.guide, self.min_depth, self.answer_on_match)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each field's documentation, for command-line help and docs."""
        return field_help(cls)
