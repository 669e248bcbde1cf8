"""The Navigator over a real HTTP connection to a scripted OpenAI-compatible server.

Every test asserts on what the server actually received, so the bytes the
model would read (system prompt, first message, observations, the last-round
and budget notices) are checked end to end through the production client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_captions import FakeContext, FakeInfo, FakeVideo
from scripted_server import Fail, Hangup, Say, ScriptedChatServer
from test_tools import CAPTIONS, ScriptedAnswerer, TextCaptioner

from longvideo_r1.agent import grammar, prompts, protocol
from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.navigator import Navigator, RunInterrupted
from longvideo_r1.agent.prompts import budget_notice
from longvideo_r1.agent.protocol import check_question
from longvideo_r1.agent.tools import GetCaption, ToolBox, VideoQA
from longvideo_r1.agent.trace import Round, Trace
from longvideo_r1.captions.captioner import CallCost, charge_failure
from longvideo_r1.captions.service import CaptionService
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.errors import CaptionError, ConfigError
from longvideo_r1.llm.server import OpenAIBackend
from longvideo_r1.media.subtitles import Cue
from longvideo_r1.tree import Tree

QUESTION = "What vehicle passes the bakery?"
CHOICES = ["a red car", "a blue bus", "a green bike", "a black van"]
FIRST_MESSAGE = """What vehicle passes the bakery?
A. a red car
B. a blue bus
C. a green bike
D. a black van

The total duration of the video is 150.0 seconds.
High-level Caption 1 from 0.0 to 37.5:A street market opens in the morning.
High-level Caption 2 from 37.5 to 75.0:A baker carries bread out of a shop.
High-level Caption 3 from 75.0 to 112.5:Traffic passes the bakery.
High-level Caption 4 from 112.5 to 150.0:The market closes at dusk."""

GET_3_2 = (
    "<think>Traffic passes the bakery in segment 3; the vehicle should be in its second "
    "part.</think>\n<tool>get_caption((3, 2))</tool>"
)
GET_3_2_4 = (
    "<think>A bus stops there; the last clip of (3, 2) should show it leaving.</think>\n"
    "<tool>get_caption((3, 2, 4))</tool>"
)
ASK_3_2_4 = (
    "<think>The caption does not say what the lettering reads; ask the clip.</think>\n"
    '<tool>video_qa((3, 2, 4), "What is written on the bus?")</tool>'
)
ANSWER_B = "<think>The vehicle is a blue bus.</think>\n<answer>(B)</answer>"
OBS_3_2 = (
    "Medium-level Caption from tool get_caption((3,2)). "
    "From 84.4 to 93.8:A blue bus stops by the bakery door."
)
OBS_3_2_4 = (
    "Low-level Caption from tool get_caption((3,2,4)). "
    "From 91.4 to 93.8:A blue bus with lettering on its side pulls away."
)
OBS_QA = "<information>The side of the bus reads 'City Line 7'.</information>"


class World:
    """One video's tools over a real store, and a way to point a navigator at a server."""

    def __init__(self, store: CaptionStore) -> None:
        self.tree = Tree.for_video(150.0, 1500, width=4)
        self.captioner = TextCaptioner()
        video = FakeVideo(info=FakeInfo(Path("/videos/bakery.mp4"), 150.0, 1500))
        self.service = CaptionService(
            video, self.tree, self.captioner, store, context_factory=FakeContext
        )
        self.answerer = ScriptedAnswerer(answers=["The side of the bus reads 'City Line 7'."] * 3)
        self.toolbox = ToolBox(
            self.tree, GetCaption(self.service), VideoQA(self.answerer, self.tree)
        )

    def navigator(self, server: ScriptedChatServer, retries: int = 0, **config) -> Navigator:
        backend = OpenAIBackend(
            server.base_url,
            model=server.model,
            timeout=10,
            max_retries=retries,
            sleep=lambda _s: None,
        )
        return Navigator(backend, self.toolbox, self.tree, AgentConfig(**config))


@pytest.fixture
def world(tmp_path: Path):
    with CaptionStore(tmp_path / "store.sqlite") as store:
        yield World(store)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# the happy path ---------------------------------------------------------------------


def test_video_qa_answered_from_captions_is_counted_apart_from_a_vision_model(world: World):
    world.answerer.looks = False  # as the CPU default's caption-notes answerer says of itself
    script = [Say(GET_3_2), Say(GET_3_2_4), Say(ASK_3_2_4, prompt_tokens=1100), Say(ANSWER_B)]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    cost = trace.cost
    assert (cost.video_qa_calls, cost.video_qa_from_captions) == (0, 1)
    assert (cost.vlm_prompt_tokens, cost.vlm_completion_tokens) == (0, 0)
    assert (cost.caption_prompt_tokens, cost.caption_completion_tokens) == (600 + 300, 120 + 12)
    assert "0 video_qa (+1 answered from captions)" in trace.summary()


def test_a_failed_caption_call_is_charged_what_it_decoded(world: World):
    failing = world.captioner.caption

    def caption(ctx):
        if ctx.node.id == (3, 2):
            world.captioner.calls.append(ctx.node.id)
            raise charge_failure(CaptionError("the captioner broke"), CallCost(7, 50, 5, 0.2))
        return failing(ctx)

    world.captioner.caption = caption
    with ScriptedChatServer([Say(GET_3_2)]) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.status == "error" and "the captioner broke" in (trace.reason or "")
    cost = trace.cost
    assert cost.frames_decoded == 4 * 4 + 7  # the four high captions, then the failed call
    assert (cost.caption_prompt_tokens, cost.caption_completion_tokens) == (400 + 50, 80 + 5)


def test_a_correct_trajectory_end_to_end(world: World):
    seen: list[Round] = []
    script = [
        Say(GET_3_2, prompt_tokens=900, completion_tokens=40),
        Say(GET_3_2_4, prompt_tokens=1000, completion_tokens=35),
        Say(ASK_3_2_4, prompt_tokens=1100, completion_tokens=30),
        Say(ANSWER_B, prompt_tokens=1200, completion_tokens=15),
    ]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_reply_tokens=512, temperature=0.6).run(
            QUESTION, CHOICES, on_round=seen.append
        )

    assert trace.status == "answered" and trace.reason is None
    assert (trace.answer, trace.raw_answer) == ("B", "(B)")

    system = {"role": "system", "content": prompts.system_prompt(4, "either")}
    first = user(FIRST_MESSAGE)
    assert server.messages(0) == [system, first]
    assert server.messages(1) == [system, first, assistant(GET_3_2), user(OBS_3_2)]
    assert server.messages(2)[-2:] == [assistant(GET_3_2_4), user(OBS_3_2_4)]
    assert server.messages(3) == [
        system,
        first,
        assistant(GET_3_2),
        user(OBS_3_2),
        assistant(GET_3_2_4),
        user(OBS_3_2_4),
        assistant(ASK_3_2_4),
        user(OBS_QA),
    ]
    for request in server.requests:
        assert request["model"] == "scripted-model"
        assert (request["max_tokens"], request["temperature"]) == (512, 0.6)
    assert world.answerer.asked == [((3, 2, 4), "What is written on the bus?")]

    assert [r.kind for r in trace.rounds] == ["get_caption", "get_caption", "video_qa", "answer"]
    assert seen == trace.rounds
    assert trace.rounds[0].think.startswith("Traffic passes the bakery")
    assert trace.rounds[1].observation == OBS_3_2_4 and trace.rounds[1].cache_hit is False
    assert [(e.node_id, e.level, e.how, e.round) for e in trace.evidence] == [
        ((3, 2), "medium", "get_caption", 1),
        ((3, 2, 4), "low", "get_caption", 2),
        ((3, 2, 4), "low", "video_qa", 3),
    ]
    assert (trace.evidence[0].start, trace.evidence[0].end) == (84.375, 93.75)
    assert trace.evidence[2].query == "What is written on the bus?"

    cost = trace.cost
    assert (cost.rounds, cost.reasoning_calls) == (4, 4)
    assert (cost.caption_calls, cost.captions_made, cost.captions_cached) == (6, 6, 0)
    assert (cost.video_qa_calls, cost.parse_errors, cost.rejected_calls) == (1, 0, 0)
    assert cost.frames_decoded == 6 * 4 + 16
    assert (cost.reasoning_prompt_tokens, cost.reasoning_completion_tokens) == (4200, 120)
    assert (cost.caption_prompt_tokens, cost.caption_completion_tokens) == (600, 120)
    assert (cost.vlm_prompt_tokens, cost.vlm_completion_tokens) == (300, 12)
    assert cost.model_seconds > 0 and cost.tool_seconds > 0
    assert cost.agent_overhead_seconds == pytest.approx(
        cost.end_to_end_seconds - cost.model_seconds - cost.tool_seconds, abs=1e-9
    )

    assert trace.backends == {
        "reasoning": "openai:scripted-model",
        "caption": "test:text:v1",
        "video_qa": "test:answerer",
    }
    assert (trace.video, trace.fingerprint) == ("/videos/bakery.mp4", "f" * 64)
    assert (trace.duration, trace.width) == (150.0, 4)
    assert trace.config["max_reply_tokens"] == 512
    assert [c.text for c in trace.high_captions] == [CAPTIONS[(i,)] for i in range(1, 5)]
    # the trace rebuilds the exact conversation
    assert trace.messages() == [*server.messages(3), assistant(ANSWER_B)]


def test_a_second_question_starts_fresh_and_hits_the_cache(world: World):
    script = [GET_3_2, GET_3_2_4, ASK_3_2_4, ANSWER_B] * 2
    with ScriptedChatServer(script) as server:
        navigator = world.navigator(server)
        first = navigator.run(QUESTION, CHOICES)
        second = navigator.run(QUESTION, CHOICES)
    assert first.status == second.status == "answered"
    assert (second.cost.captions_made, second.cost.captions_cached) == (0, 6)
    assert second.cost.frames_decoded == 16
    assert second.rounds[1].cache_hit is True
    assert len(world.captioner.calls) == 6


def test_an_open_question_keeps_the_answer_text(world: World):
    script = ["<think>Read it.</think><answer>  a blue bus  </answer>"]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server).run("What passes the bakery?")
    assert server.messages(0)[1]["content"].startswith("What passes the bakery?\n\nThe total")
    assert (trace.status, trace.answer, trace.raw_answer) == (
        "answered",
        "a blue bus",
        "a blue bus",
    )


def test_the_first_message_can_be_sent_as_parts(world: World):
    with ScriptedChatServer(["<answer>B</answer>"]) as server:
        trace = world.navigator(server, first_message_parts=True).run(QUESTION, CHOICES)
    highs = [(world.tree.node((i,)), CAPTIONS[(i,)]) for i in range(1, 5)]
    parts = prompts.first_user_content(QUESTION, CHOICES, 150.0, highs)
    assert server.messages(0)[1] == {"role": "user", "content": parts}
    assert parts[1] == {"type": "text", "text": "The total duration of the video is 150.0 seconds."}
    assert trace.messages()[1] == server.messages(0)[1]


# bad calls ----------------------------------------------------------------------------


def test_bad_replies_go_back_to_the_model_and_it_recovers(world: World):
    script = [
        "I think the bus is in segment 3.",
        "<think>Look further.</think><tool>get_caption((5, 1))</tool>",
        '<think>Ask directly.</think><tool>video_qa((3, 2, 4), "What is written?")</tool>',
        "<think>Again the top.</think><tool>get_caption((2,))</tool>",
        "<think>Fine.</think><tool>get_caption((3, 2))</tool>",
        "<answer>B. a blue bus</answer>",
    ]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)

    assert trace.status == "answered" and trace.answer == "B"
    kinds = [r.kind for r in trace.rounds]
    assert kinds == ["parse_error"] * 4 + ["get_caption", "answer"]
    errors = [r.parse_error for r in trace.rounds[:4]]
    assert "no <tool> call and no <answer>" in errors[0]
    assert errors[1] == (
        "node (5, 1) is out of range: this video has width 4, so medium ids are (1..4, 1..4)"
    )
    assert "needs its low-level caption first" in errors[2]
    assert "asks for a high-level caption" in errors[3]
    for i, error in enumerate(errors):
        assert server.messages(i + 1)[-1] == user(prompts.error_message(error))
        assert server.messages(i + 1)[-2] == assistant(script[i])
    assert server.messages(5)[-1] == user(OBS_3_2)
    assert trace.cost.parse_errors == 4 and trace.cost.caption_calls == 5
    assert world.answerer.asked == [] and world.captioner.calls[4:] == [(3, 2)]
    assert [e.node_id for e in trace.evidence] == [(3, 2)]


def test_an_answer_that_names_no_option_is_sent_back(world: World):
    script = ["<answer>E</answer>", "<answer>B</answer>"]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.rounds[0].kind == "parse_error"
    assert server.messages(1)[-1]["content"].startswith("Your last reply could not be used:")
    assert trace.answer == "B" and len(trace.rounds) == 2


# budgets and the last round ---------------------------------------------------------


def test_a_spent_video_qa_budget_forces_an_answer(world: World):
    script = [GET_3_2_4, ASK_3_2_4, "<think>Then it is the bus.</think><answer>B</answer>"]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_video_qa=0).run(QUESTION, CHOICES)

    notice = "The video_qa budget for this question (0 calls) is spent, so that call was not run."
    assert notice == budget_notice(
        "the video_qa budget for this question (0 calls) is spent", call_not_run=True
    )
    assert server.messages(2)[-3:] == [
        assistant(ASK_3_2_4),
        user(notice),
        user(prompts.last_round_message("either")),
    ]
    assert world.answerer.asked == []
    assert trace.status == "answered" and trace.answer == "B"
    assert trace.rounds[1].notice == notice and trace.rounds[1].observation is None
    assert [r.forced for r in trace.rounds] == [False, False, True]
    assert trace.cost.video_qa_calls == 0
    assert trace.messages() == [*server.messages(2), assistant(script[2])]


def test_no_answer_after_a_spent_budget_ends_without_a_guess(world: World):
    script = [GET_3_2, GET_3_2_4, "<tool>get_caption((3, 3))</tool>"]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_caption_calls=1).run(QUESTION, CHOICES)
    assert trace.status == "no_answer" and trace.answer is None
    assert trace.reason == (
        "the get_caption budget for this question (1 call) is spent, and the model did not "
        "answer in its last round"
    )
    assert world.captioner.calls[4:] == [(3, 2)]
    assert server.remaining == 0 and len(trace.rounds) == 3


def test_a_spent_token_budget_forces_the_next_round(world: World):
    script = [Say(GET_3_2, prompt_tokens=500, completion_tokens=20), Say(GET_3_2_4), ANSWER_B]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_tokens=1000).run(QUESTION, CHOICES)
    # round 1: 520 tokens, under budget; round 2: 640 in all is still under; no forcing
    assert trace.status == "answered" and not any(r.forced for r in trace.rounds)

    script = [Say(GET_3_2, prompt_tokens=900, completion_tokens=100), ANSWER_B]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_tokens=1000).run(QUESTION, CHOICES)
    notice = "The token budget for this question (1000 tokens) is spent, so that call was not run."
    assert server.messages(1)[-2:] == [user(notice), user(prompts.last_round_message("either"))]
    assert trace.status == "answered" and trace.rounds[1].forced


def test_a_spent_time_budget_stops_the_tools(world: World):
    script = [Say(GET_3_2, delay=0.3), "<tool>get_caption((3, 3))</tool>"]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_seconds=0.2).run(QUESTION, CHOICES)
    assert server.messages(1)[-2:] == [
        user("The time budget for this question (0.2 s) is spent, so that call was not run."),
        user(prompts.last_round_message("either")),
    ]
    assert trace.status == "no_answer" and "time budget" in trace.reason
    assert trace.cost.caption_calls == 4  # the opening only


def test_the_request_before_the_last_round_says_so(world: World):
    script = [GET_3_2, GET_3_2_4, "<think>Enough.</think><answer>B</answer>"]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_rounds=3).run(QUESTION, CHOICES)
    assert server.messages(1)[-1] == user(OBS_3_2)
    assert server.messages(2)[-3:] == [
        assistant(GET_3_2_4),
        user(OBS_3_2_4),
        user(prompts.last_round_message("either")),
    ]
    assert trace.status == "answered" and [r.forced for r in trace.rounds] == [False, False, True]


def test_a_model_that_never_answers_ends_with_no_answer(world: World):
    script = [GET_3_2, GET_3_2_4, "<tool>get_caption((3, 3))</tool>"]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, max_rounds=3).run(QUESTION, CHOICES)
    assert trace.status == "no_answer" and trace.answer is None
    assert trace.reason == (
        "the round limit (3 rounds) is reached, and the model did not answer in its last round"
    )
    assert trace.rounds[2].kind == "get_caption" and trace.rounds[2].observation is None
    assert (3, 3) not in world.captioner.calls
    assert server.remaining == 0


def test_a_single_round_is_the_last_round(world: World):
    with ScriptedChatServer(["<answer>B</answer>"]) as server:
        trace = world.navigator(server, max_rounds=1).run(QUESTION, CHOICES)
    assert server.messages(0)[-1] == user(prompts.last_round_message("either"))
    assert trace.status == "answered" and trace.rounds[0].forced


# failures -----------------------------------------------------------------------------


def test_an_endpoint_error_mid_run_keeps_the_trace(world: World):
    script = [GET_3_2, Fail(500, "the GPU fell over")]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.status == "error" and trace.answer is None
    assert "HTTP 500" in trace.reason and "the GPU fell over" in trace.reason
    assert [r.kind for r in trace.rounds] == ["get_caption", None]
    assert trace.rounds[1].output is None and trace.rounds[1].error == trace.reason
    assert trace.cost.reasoning_calls == 1 and trace.cost.rounds == 2
    assert trace.evidence[0].node_id == (3, 2)


def test_retries_are_the_clients_and_then_the_run_ends(world: World):
    script = [GET_3_2, Fail(503, "busy"), Fail(503, "busy"), ANSWER_B]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server, retries=1).run(QUESTION, CHOICES)
    assert trace.status == "error" and "HTTP 503" in trace.reason
    assert server.remaining == 1 and len(server.requests) == 3


def test_a_server_that_dies_mid_run_is_an_error(world: World):
    server = ScriptedChatServer([GET_3_2, Hangup()]).start()
    try:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    finally:
        server.stop()
    assert trace.status == "error"
    assert trace.reason.startswith("cannot reach chat endpoint http://127.0.0.1:")
    assert len(trace.rounds) == 2 and trace.rounds[0].observation == OBS_3_2
    assert Trace.model_validate_json(trace.model_dump_json()) == trace


def test_a_context_overflow_is_named(world: World):
    overflow = (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 "
        "tokens (4000 in the messages, 1000 in the completion)."
    )
    with ScriptedChatServer([GET_3_2, Fail(400, overflow)]) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.status == "error"
    assert trace.reason.startswith("context window exceeded: chat endpoint")
    assert "maximum context length is 4096" in trace.reason


def test_a_captioner_failure_ends_the_run_with_its_reason(world: World):
    world.captioner.fail = {(3, 2)}
    with ScriptedChatServer([GET_3_2, ANSWER_B]) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.status == "error" and "scripted failure for node (3, 2)" in trace.reason
    assert trace.rounds[0].error == trace.reason and server.remaining == 1


def test_a_bug_in_a_callback_is_an_error_trace_not_a_crash(world: World):
    def broken(_round: Round) -> None:
        raise RuntimeError("display broke")

    with ScriptedChatServer([ANSWER_B]) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES, on_round=broken)
    assert trace.status == "error"
    assert trace.reason == "internal error (RuntimeError): display broke"


# refusals before any model call -------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "choices", "message"),
    [
        ("   ", CHOICES, "the question is empty"),
        (QUESTION, "ABCD", "choices must be a list"),
        (QUESTION, ["only one"], "needs 2 to 26 choices"),
        (QUESTION, [], "needs 2 to 26 choices"),
        (QUESTION, ["a car", " "], "choice 2 is empty"),
        (QUESTION, ["A. a car", "a bus"], "in order"),
        (QUESTION, ["B. a car", "A. a bus"], "in order"),
        (QUESTION, [f"option {i}" for i in range(27)], "needs 2 to 26 choices"),
    ],
)
def test_bad_questions_are_refused_before_any_call(world: World, question, choices, message):
    with ScriptedChatServer([ANSWER_B]) as server:
        navigator = world.navigator(server)
        with pytest.raises(ConfigError, match=message):
            navigator.run(question, choices)
    assert server.requests == [] and world.captioner.calls == []


def test_choices_with_their_own_letters_are_accepted():
    assert check_question("Q?", ["A. x", "B) y"]) == ("Q?", ["A. x", "B) y"])
    assert check_question("Q?", ["T. rex", "a cat"])[1] == ["T. rex", "a cat"]


def test_config_is_checked_and_documents_itself():
    with pytest.raises(ConfigError, match="max_rounds"):
        AgentConfig(max_rounds=0)
    with pytest.raises(ConfigError, match="max_video_qa"):
        AgentConfig(max_video_qa=-1)
    with pytest.raises(ConfigError, match="max_seconds"):
        AgentConfig(max_seconds=0)
    helps = AgentConfig.help()
    assert set(helps) == set(AgentConfig().to_dict())
    assert all(text.strip() for text in helps.values())
    assert AgentConfig().max_rounds == 30


def test_the_navigator_and_toolbox_must_share_a_tree(world: World):
    with ScriptedChatServer([]) as server:
        backend = OpenAIBackend(server.base_url, model=server.model)
        with pytest.raises(ConfigError, match="width"):
            Navigator(backend, world.toolbox, Tree.for_video(150.0, 1500, width=5))


def test_ctrl_c_still_interrupts_and_carries_the_trace(world: World):
    def interrupt(rnd: Round) -> None:
        if rnd.index == 2:
            raise KeyboardInterrupt

    with (
        ScriptedChatServer([GET_3_2, GET_3_2_4, ANSWER_B]) as server,
        pytest.raises(KeyboardInterrupt) as info,
    ):
        world.navigator(server).run(QUESTION, CHOICES, on_round=interrupt)
    assert isinstance(info.value, RunInterrupted)
    trace = info.value.trace
    assert (trace.status, trace.reason, len(trace.rounds)) == ("error", "interrupted", 2)
    assert trace.rounds[1].kind == "get_caption" and trace.cost.rounds == 2


def test_a_model_repeating_one_unusable_reply_ends_early(world: World):
    """Greedy small models loop on the same bad reply; three in a row end the run."""
    bad = "<tool>get_caption((3, 2))</tool><answer>B</answer>"
    with ScriptedChatServer([bad] * 5) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
        assert server.remaining == 2
    assert trace.status == "no_answer"
    assert trace.reason == "the model wrote the same unusable reply 3 times"
    assert [r.kind for r in trace.rounds] == ["parse_error"] * 3


def test_a_model_repeating_one_call_is_told_and_must_answer(world: World):
    """The same call returns the same caption; the fourth in a row is not run."""
    script = [GET_3_2] * 4 + [ANSWER_B]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    notice = "You already made get_caption((3, 2)) 3 times in a row, so that call was not run."
    assert server.messages(4)[-3:] == [
        assistant(GET_3_2),
        user(notice),
        user(prompts.last_round_message("either")),
    ]
    assert [r.observation for r in trace.rounds[:3]] == [OBS_3_2] * 3
    assert trace.rounds[3].observation is None and trace.rounds[3].notice == notice
    assert trace.status == "answered" and trace.answer == "B" and trace.rounds[4].forced
    assert trace.cost.caption_calls == 4 + 3  # the four high captions, then three of (3, 2)


def test_a_call_repeated_with_a_break_or_off_is_run(world: World):
    script = [GET_3_2, GET_3_2, GET_3_2_4, GET_3_2, GET_3_2, ANSWER_B]
    with ScriptedChatServer(script) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.status == "answered" and not any(r.notice for r in trace.rounds)
    with ScriptedChatServer([GET_3_2] * 5 + [ANSWER_B]) as server:
        trace = world.navigator(server, max_repeated_calls=None).run(QUESTION, CHOICES)
    assert trace.status == "answered" and not any(r.notice for r in trace.rounds)
    with pytest.raises(ConfigError, match="max_repeated_calls must be at least 1"):
        AgentConfig(max_repeated_calls=0)


def test_different_bad_replies_are_not_a_loop(world: World):
    script = ["no tags", "still no tags", "<tool>get_caption((3, 2))</tool><answer>B</answer>"]
    with ScriptedChatServer([*script, ANSWER_B]) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.status == "answered" and len(trace.rounds) == 4


# constrained replies ----------------------------------------------------------------------

HIGHS = {(1,), (2,), (3,), (4,)}


def expected_grammar(fetched: set, **rules) -> str:
    """The grammar the builder makes for a round with these ids read and these budgets."""
    options = {"width": 4, "choices": tuple(CHOICES), "answer_form": "either", **rules}
    constraint = grammar.reply_constraint(
        grammar.ReplyRules(fetched=frozenset(HIGHS | fetched), **options),
        free_tokens=AgentConfig().max_think_tokens,
    )
    return constraint.grammar


def test_each_round_sends_the_grammar_of_what_it_may_still_do(world: World):
    script = [
        GET_3_2,
        GET_3_2_4,
        ASK_3_2_4,
        "<think>It says City Line 7.</think>\n<answer>a blue bus</answer>",
    ]
    with ScriptedChatServer(script, grammar_field="structured_outputs") as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)

    assert (trace.status, trace.answer, trace.raw_answer) == ("answered", "B", "a blue bus")
    assert [r.constrained for r in trace.rounds] == [True] * 4
    assert trace.config["constrained"] and trace.config["answer_form"] == "either"
    assert trace.config["parser_version"] == protocol.PARSER_VERSION
    assert len(server.probes) == 1  # vLLM's field is tried first, and this server takes it
    assert server.grammars == [
        expected_grammar(set()),
        expected_grammar({(3, 2)}),  # (3, 2) is no longer offered
        expected_grammar({(3, 2), (3, 2, 4)}),  # now video_qa on (3, 2, 4) is
        expected_grammar({(3, 2), (3, 2, 4)}),
    ]
    assert 'qa-call ::= "video_qa((3, 2, 4), \\""' in server.grammars[2]
    assert "qa-call" not in server.grammars[0] and "qa-call" not in server.grammars[1]
    assert server.messages(0)[0]["content"] == prompts.system_prompt(4, "either")


def test_spent_budgets_and_the_last_round_narrow_the_grammar(world: World):
    script = [GET_3_2, GET_3_2_4, "<think>A bus.</think>\n<answer>B</answer>"]
    with ScriptedChatServer(script, grammar_field="grammar") as server:
        trace = world.navigator(server, max_rounds=3, max_video_qa=0).run(QUESTION, CHOICES)
    assert trace.status == "answered" and trace.answer == "B"
    assert server.grammars == [
        expected_grammar(set(), video_qa=False),
        expected_grammar({(3, 2)}, video_qa=False),
        expected_grammar({(3, 2), (3, 2, 4)}, video_qa=False, tools=False),  # last round
    ]
    assert "tool ::=" not in server.grammars[2]


@pytest.mark.parametrize(
    ("field", "dialect"),
    [
        ("structured_outputs", "vllm"),
        ("guided_grammar", "vllm-guided"),
        ("ebnf", "sglang"),
        ("grammar", "llama.cpp"),
    ],
)
def test_the_probe_finds_the_field_each_server_takes(field: str, dialect: str):
    with ScriptedChatServer(
        ["<think>x</think>\n<answer>B</answer>"], grammar_field=field
    ) as server:
        backend = OpenAIBackend(server.base_url, model=server.model, max_retries=0)
        assert backend.grammar_dialect() == dialect
        assert backend.grammar_dialect() == dialect  # probed once
        probes = len(server.probes)
        constraint = grammar.reply_constraint(grammar.ReplyRules(width=4, tools=False))
        backend.chat(HELLO_MESSAGES, constraint=constraint)
    assert probes == ["structured_outputs", "guided_grammar", "ebnf", "grammar"].index(field) + 1
    assert server.grammars == [constraint.grammar]


HELLO_MESSAGES = [{"role": "user", "content": "hello"}]


def test_a_server_without_grammars_runs_unconstrained_or_is_refused(world: World, caplog):
    with ScriptedChatServer([ANSWER_B]) as server:
        trace = world.navigator(server).run(QUESTION, CHOICES)
    assert trace.status == "answered" and trace.rounds[0].constrained is False
    assert len(server.probes) == 4 and server.grammars == [None]
    assert "takes no grammar; its replies are not constrained" in caplog.text

    with ScriptedChatServer([ANSWER_B]) as server:
        trace = world.navigator(server, constrain="on").run(QUESTION, CHOICES)
    assert trace.status == "error" and server.requests == []
    assert "--constrain on, but openai:scripted-model takes no grammar" in (trace.reason or "")


def test_constrain_off_sends_no_probe_and_no_grammar(world: World):
    with ScriptedChatServer([ANSWER_B], grammar_field="structured_outputs") as server:
        trace = world.navigator(server, constrain="off", answer_form="letter").run(
            QUESTION, CHOICES
        )
    assert trace.status == "answered" and not trace.rounds[0].constrained
    assert server.probes == [] and server.grammars == [None]
    assert server.messages(0)[0]["content"] == prompts.system_prompt(4, "letter")
    with pytest.raises(ConfigError, match="constrain must be one of auto, on, off"):
        AgentConfig(constrain="always")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="answer_form must be auto or one of"):
        AgentConfig(answer_form="number")  # type: ignore[arg-type]


# the levers for small navigators: --min-depth and --guide ---------------------------------

EARLY = "<think>Traffic passes the bakery: a bus.</think>\n<answer>a blue bus</answer>"


def test_min_depth_refuses_an_early_answer_of_an_unconstrained_model(world: World):
    script = [EARLY, GET_3_2, EARLY]
    with ScriptedChatServer(script) as server:  # a server that takes no grammar
        trace = world.navigator(server, min_depth=2).run(QUESTION, CHOICES)

    assert (trace.status, trace.answer) == ("answered", "B")
    assert [r.kind for r in trace.rounds] == ["parse_error", "get_caption", "answer"]
    refusal = trace.rounds[0].parse_error or ""
    assert refusal.startswith("no answer is accepted before you have read a medium-level")
    assert server.messages(1)[-1] == user(prompts.error_message(refusal))
    assert trace.min_depth_met is True
    assert (trace.config["min_depth"], trace.config["guide"]) == (2, 0)


def test_min_depth_leaves_the_answer_out_of_the_grammar_until_a_caption_that_deep(world: World):
    script = [GET_3_2, EARLY]
    with ScriptedChatServer(script, grammar_field="grammar") as server:
        trace = world.navigator(server, min_depth=2).run(QUESTION, CHOICES)
    assert trace.status == "answered" and trace.min_depth_met is True
    assert server.grammars == [
        expected_grammar(set(), min_depth=2),
        expected_grammar({(3, 2)}, min_depth=2),
    ]
    assert "answer ::=" not in server.grammars[0] and "answer ::=" in server.grammars[1]


def test_the_last_round_admits_the_answer_below_min_depth_and_the_trace_says_so(world: World):
    script = [GET_3_2, EARLY]
    with ScriptedChatServer(script, grammar_field="grammar") as server:
        trace = world.navigator(server, min_depth=3, max_rounds=2).run(QUESTION, CHOICES)
    assert trace.status == "answered" and trace.rounds[1].forced
    assert trace.min_depth_met is False  # answered from a medium caption: recorded
    assert "answer ::=" not in server.grammars[0]
    assert "answer ::=" in server.grammars[1] and "tool ::=" not in server.grammars[1]


def _spoken(world: World) -> None:
    """Speech that names the question's words in (3, 2) and, less of them, in (2, 1)."""
    world.service.cues = (
        Cue(85.0, 88.0, "A bus passes the bakery."),  # (3, 2): its leaves 1 and 2
        Cue(40.0, 42.0, "Fresh bread at the bakery."),  # (2, 1)
    )


def test_the_guide_offers_its_k_best_ids_and_refuses_others_unconstrained(world: World):
    _spoken(world)
    other = "<think>The last clip.</think>\n<tool>get_caption((3, 2, 4))</tool>"
    take = "<think>Where the bus passes.</think>\n<tool>get_caption((3, 2, 2))</tool>"
    with ScriptedChatServer([GET_3_2, other, take, ANSWER_B]) as server:
        trace = world.navigator(server, guide=2).run(QUESTION, CHOICES)

    assert (trace.status, trace.answer) == ("answered", "B")
    assert [r.kind for r in trace.rounds] == ["get_caption", "parse_error", "get_caption", "answer"]
    assert [r.offered for r in trace.rounds[:3]] == [
        [(3, 2), (2, 1)],
        [(3, 2, 1), (3, 2, 2)],  # down from what was read, where the words are
        [(3, 2, 1), (3, 2, 2)],
    ]
    assert trace.rounds[1].parse_error == (
        "get_caption((3, 2, 4)) is not offered in this round; ask for one of (3, 2, 1), (3, 2, 2)"
    )
    assert world.captioner.calls[-2:] == [(3, 2), (3, 2, 2)]  # ranking made no caption
    assert trace.config["guide"] == 2


def test_the_guide_narrows_the_grammar_to_its_offer(world: World):
    _spoken(world)
    with ScriptedChatServer([GET_3_2, ANSWER_B], grammar_field="grammar") as server:
        trace = world.navigator(server, guide=2).run(QUESTION, CHOICES)
    assert trace.status == "answered"
    assert server.grammars == [
        expected_grammar(set(), offered=((3, 2), (2, 1))),
        expected_grammar({(3, 2)}, offered=((3, 2, 1), (3, 2, 2))),
    ]
    first = grammar.reply_grammars(
        grammar.ReplyRules(width=4, fetched=frozenset(HIGHS), offered=((3, 2), (2, 1)))
    )[0]
    assert first.admits("<think>x</think>\n<tool>get_caption((2, 1))</tool>")
    assert not first.admits("<think>x</think>\n<tool>get_caption((1, 1))</tool>")


def test_lever_settings_are_checked():
    assert AgentConfig(min_depth=3, guide=2).variant == "retrieval-guided-bm25-k2-min-depth-3"
    with pytest.raises(ConfigError, match="min_depth must be 0 \\(off\\) to 3"):
        AgentConfig(min_depth=4)
    with pytest.raises(ConfigError, match="guide must be 0 \\(off\\) or more"):
        AgentConfig(guide=-1)


def test_answer_on_match_stops_reading_at_the_caption_that_holds_the_question(world: World):
    # (3, 2) reads "A blue bus stops by the bakery door.": one of the question's three
    # stems (vehicl, pass, bakeri), so a third is enough and a half is not.
    with ScriptedChatServer([GET_3_2, ANSWER_B], grammar_field="grammar") as server:
        trace = world.navigator(server, answer_on_match=0.3).run(QUESTION, CHOICES)
    assert (trace.status, trace.answer) == ("answered", "B")
    first, last = trace.rounds
    assert first.asked_share == pytest.approx(1 / 3)
    assert first.notice == "The caption you just read holds the question's words."
    assert last.forced and "tool ::=" not in server.grammars[1]
    assert server.messages(1)[-2:] == [
        user(first.notice),
        user(prompts.last_round_message("either")),
    ]
    assert trace.config["answer_on_match"] == 0.3

    with ScriptedChatServer([GET_3_2, GET_3_2_4, ANSWER_B], grammar_field="grammar") as server:
        trace = world.navigator(server, answer_on_match=0.5).run(QUESTION, CHOICES)
    assert [r.kind for r in trace.rounds] == ["get_caption", "get_caption", "answer"]
    assert trace.rounds[0].notice is None and not trace.rounds[1].forced


def test_answer_on_match_is_checked_and_named():
    config = AgentConfig(guide=2, min_depth=2, answer_on_match=0.5)
    assert config.variant == "retrieval-guided-bm25-k2-min-depth-2-answer-on-match-0.5"
    assert AgentConfig(answer_on_match=0.5).variant == "agent-answer-on-match-0.5"
    with pytest.raises(ConfigError, match="answer_on_match must be a share from 0 \\(off\\) to 1"):
        AgentConfig(answer_on_match=1.5)
