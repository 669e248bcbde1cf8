"""The protocol strings are byte-exact and the reply parser reads what models really write."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longvideo_r1.agent.grammar import ReplyRules, answer_in_form, reply_constraint, reply_grammars
from longvideo_r1.agent.prompts import (
    caption_observation,
    error_message,
    first_user_content,
    first_user_message,
    first_user_text,
    format_seconds,
    last_round_message,
    qa_observation,
    system_prompt,
)
from longvideo_r1.agent.protocol import (
    TIME_DECIMALS,
    Action,
    Answer,
    ParseError,
    Reply,
    check_question,
    format_call,
    join_reasoning,
    normalize_answer,
    option_lines,
    render_answer,
    render_reply,
    render_tool_call,
)
from longvideo_r1.agent.replies import parse_reply
from longvideo_r1.agent.toolcalls import RoundLimits, check_action
from longvideo_r1.errors import ConfigError
from longvideo_r1.tree import Tree, format_node_id

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"

TREE = Tree(duration=150.0, n_frames=4500, width=4)
CHOICES = ["a red car", "a blue bus", "a green bike", "a black van"]
QUESTION = "What vehicle passes the bakery?"
HIGH = [
    "A street market opens in the morning.",
    "A baker carries bread out of a shop.",
    "Traffic passes the bakery.",
    "The market closes at dusk.",
]


def high_captions(tree: Tree = TREE) -> list:
    return [(node, HIGH[i % len(HIGH)]) for i, node in enumerate(tree.nodes(1))]


# ---------------------------------------------------------------------------------
# exact strings


def test_times_have_one_fixed_precision():
    assert TIME_DECIMALS == 1
    assert format_seconds(150) == "150.0"
    assert format_seconds(9.375) == "9.4"
    assert format_seconds(0.0) == "0.0"
    assert format_seconds(3599.96) == "3600.0"


def test_first_user_message_exact_parts():
    turn = first_user_message(QUESTION, CHOICES, 150.0, high_captions())
    assert turn.parts == (
        "What vehicle passes the bakery?\nA. a red car\nB. a blue bus\nC. a green bike\n"
        "D. a black van\n",
        "The total duration of the video is 150.0 seconds.",
        "High-level Caption 1 from 0.0 to 37.5:A street market opens in the morning.",
        "High-level Caption 2 from 37.5 to 75.0:A baker carries bread out of a shop.",
        "High-level Caption 3 from 75.0 to 112.5:Traffic passes the bakery.",
        "High-level Caption 4 from 112.5 to 150.0:The market closes at dusk.",
    )


def test_first_user_text_and_content_agree():
    args = (QUESTION, CHOICES, 150.0, high_captions())
    text = first_user_text(*args)
    assert text == (
        "What vehicle passes the bakery?\nA. a red car\nB. a blue bus\nC. a green bike\n"
        "D. a black van\n\n"
        "The total duration of the video is 150.0 seconds.\n"
        "High-level Caption 1 from 0.0 to 37.5:A street market opens in the morning.\n"
        "High-level Caption 2 from 37.5 to 75.0:A baker carries bread out of a shop.\n"
        "High-level Caption 3 from 75.0 to 112.5:Traffic passes the bakery.\n"
        "High-level Caption 4 from 112.5 to 150.0:The market closes at dusk."
    )
    content = first_user_content(*args)
    assert all(part["type"] == "text" for part in content)
    assert "\n".join(part["text"] for part in content) == text
    message = first_user_message(*args).message()
    assert message == {"role": "user", "content": content}
    assert first_user_message(*args).message(as_parts=False)["content"] == text


def test_question_without_choices_and_prelettered_options():
    turn = first_user_message("Who wins?\n(A) x\n(B) y", None, 150.0, high_captions())
    assert turn.parts[0] == "Who wins?\n(A) x\n(B) y\n"
    assert option_lines(["A. red", "B. blue"]) == ["A. red", "B. blue"]
    assert option_lines(["red", "B. blue"]) == ["A. red", "B. B. blue"]


def test_first_message_rejects_non_high_nodes():
    with pytest.raises(ValueError):
        first_user_message("q", None, 150.0, [(TREE.node((1, 1)), "x")])


def test_observations_exact():
    assert caption_observation(TREE.node((1, 2)), "A van parks.") == (
        "Medium-level Caption from tool get_caption((1,2)). From 9.4 to 18.8:A van parks."
    )
    assert caption_observation(TREE.node((3, 2, 4)), "A blue bus stops.") == (
        "Low-level Caption from tool get_caption((3,2,4)). From 91.4 to 93.8:A blue bus stops."
    )
    assert qa_observation("The bus is blue.") == "<information>The bus is blue.</information>"
    with pytest.raises(ValueError):
        caption_observation(TREE.node((1,)), "x")


def test_tool_call_rendering_exact():
    assert render_tool_call(Action("get_caption", (1, 2))) == "<tool>get_caption((1, 2))</tool>"
    assert render_tool_call(Action("get_caption", (1, 2, 3))) == (
        "<tool>get_caption((1, 2, 3))</tool>"
    )
    assert render_tool_call(Action("video_qa", (3, 2, 4), "What colour is the bus?")) == (
        '<tool>video_qa((3, 2, 4), "What colour is the bus?")</tool>'
    )
    assert format_call(Action("video_qa", (1, 1, 1), 'say "hi"\n')) == (
        'video_qa((1, 1, 1), "say \\"hi\\"\\n")'
    )
    assert format_call(Action("video_qa", (1, 1, 1), "a </tool> b")) == (
        'video_qa((1, 1, 1), "a \\x3c/tool> b")'
    )
    assert render_answer(Answer("B. a blue bus", "B")) == "<answer>B</answer>"
    assert render_reply("Look closer.", Action("get_caption", (3, 2))) == (
        "<think>Look closer.</think>\n<tool>get_caption((3, 2))</tool>"
    )
    with pytest.raises(ValueError):
        render_tool_call(Action("video_qa", (1, 2), "q"))
    with pytest.raises(ValueError):
        render_tool_call(Action("get_caption", (1,)))


def test_system_prompt_teaches_the_protocol():
    prompt = system_prompt(4)
    for needle in (
        "4 consecutive segments, numbered 1 to 4",
        "16 medium segments",
        "64 low segments",
        "only the question and the captions of the 4 high-level segments",
        "<think>...</think>",
        "<answer>...</answer>",
        "answer with the letter of the option you choose",
        "<tool>get_caption((h, m))</tool>",
        "<tool>get_caption((h, m, l))</tool>",
        '<tool>video_qa((h, m, l), "query")</tool>',
        "whose caption you have already fetched",
        "exactly one tool",
    ):
        assert needle in prompt
    assert "7 consecutive segments" in system_prompt(7)
    assert "343 low segments" in system_prompt(7)
    # No example letter: small models copy it (the 0.5B model answered B to everything).
    assert not re.search(r"<answer>[A-Z]</answer>", prompt)


def test_prompts_ask_for_the_answer_form():
    text = system_prompt(4, "text")
    assert "copied exactly as it is written, without its letter" in text
    assert "letter of the option or" not in text
    assert "letter of the option you choose or with its text" in system_prompt(4, "either")
    assert last_round_message("text").endswith("answer with the option's exact text.")
    assert last_round_message().endswith("answer with the option's letter.")
    with pytest.raises(ConfigError, match="answer form must be one of letter, text, either"):
        system_prompt(4, "number")  # type: ignore[arg-type]


def test_last_round_and_error_messages():
    last = last_round_message()
    assert "last round" in last and "<answer>" in last
    message = error_message(ParseError("unknown tool `search`; the only tools are x."))
    assert message.startswith("Your last reply could not be used: unknown tool `search`")
    assert "tools are x.\n" in message
    for form in ("<tool>get_caption((h, m))</tool>", '<tool>video_qa((h, m, l), "your question")'):
        assert form in message


def test_join_reasoning_restores_think():
    assert join_reasoning("why", "<tool>x</tool>") == "<think>why</think><tool>x</tool>"
    assert join_reasoning(None, "<answer>A</answer>") == "<answer>A</answer>"
    assert join_reasoning("dup", "<think>a</think>b") == "<think>a</think>b"


def test_docs_show_the_exact_strings():
    doc = DOCS.read_text(encoding="utf-8")
    assert first_user_text(QUESTION, CHOICES, 150.0, high_captions()) in doc
    assert caption_observation(TREE.node((3, 2)), "A blue bus stops by the bakery door.") in doc
    assert render_tool_call(Action("video_qa", (3, 2, 4), "What is written on the bus?")) in doc


# ---------------------------------------------------------------------------------
# what small models write

GC = Action("get_caption", (2, 3))
GC3 = Action("get_caption", (2, 3, 1))


def QA(q: str) -> Action:
    return Action("video_qa", (3, 2, 4), q)


MALFORMED: list[tuple[str, object]] = [
    # canonical and near-canonical
    ("<think>The bus is in 2.</think>\n<tool>get_caption((2, 3))</tool>", GC),
    ("<tool>get_caption((2, 3))</tool>", GC),
    ("<think>Segment 2 shows traffic.\n<tool>get_caption((2,3))</tool>", GC),
    ("Traffic is in segment 2.</think>\n\n<tool>get_caption((2, 3))</tool>", GC),
    ("<think>x</think><tool>get_caption((2,3,1))</tool>", GC3),
    ("<think>x</think><tool>get_caption(2, 3)</tool>", GC),
    ("<think>x</think><tool> get_caption( ( 2 , 3 , ) ) </tool>", GC),
    ("<think>x</think><tool>get_caption([2, 3])</tool>", GC),
    ("<think>x</think>\n<tool>get_caption((2, 3))", GC),  # stop sequence ate </tool>
    ("<think>x</think>\n<tool>get_caption((2, 3))</tool>\nWaiting for the caption.", GC),
    ("<THINK>x</THINK><Tool>get_caption((2, 3))</Tool>", GC),
    ("<think>x</think>\n```\n<tool>get_caption((2, 3))</tool>\n```", GC),
    # queries
    ("<tool>video_qa((3,2,4), 'what\\'s on the bus?')</tool>", QA("what's on the bus?")),
    ('<tool>video_qa((3, 2, 4), "the \\"EXIT\\" sign")</tool>', QA('the "EXIT" sign')),
    ('<tool>video_qa((3,2,4), "what does "EXIT" mean?")</tool>', QA('what does "EXIT" mean?')),
    ("<tool>video_qa((3,2,4), “what is written?”)</tool>", QA("what is written?")),
    ('<tool>video_qa(segment_id=(3,2,4), query="who drives?")</tool>', QA("who drives?")),
    ('<tool>video_qa("who drives?", (3, 2, 4))</tool>', QA("who drives?")),
    ('<tool>video_qa((3,2,4), "line one\nline two")</tool>', QA("line one\nline two")),
    # JSON and friends
    ('<tool_call>{"name": "get_caption", "arguments": {"ids": [2, 3]}}</tool_call>', GC),
    ('<tool_call>\n{"name": "get_caption", "arguments": {"id": [2, 3]}}\n</tool_call>', GC),
    ('<tool_call>{"name": "get_caption", "args": {"node": "2,3"}}</tool_call>', GC),
    ('<tool_call>{"name": "get_caption", "args": [2, 3]}</tool_call>', GC),
    (
        '<tool_call>\n{"name": "video_qa", "parameters": {"segment": [3, 2, 4], '
        '"query": "who drives?"}}\n</tool_call>',
        QA("who drives?"),
    ),
    (
        '<tool_call>{"function": {"name": "get_caption", "arguments": "{\\"id\\": [2, 3]}"}}'
        "</tool_call>",
        GC,
    ),
    ("<tool_call>get_caption((2, 3))</tool_call>", GC),
    (
        'I will look closer.\n```json\n{"name": "get_caption", "arguments": {"node": [2, 3]}}\n```',
        GC,
    ),
    (
        '```json\n{"name": "get_caption", "arguments": '
        '{"high_segment_id": 2, "medium_segment_id": 3}}\n```',
        GC,
    ),
    ('{"name": "get_caption", "arguments": {"segment_id": [2, 3]}}', GC),
    ("<think>need detail</think>\nget_caption((2,3))", GC),
    ("<think>need detail</think>\n**Action:** `get_caption((2, 3))`", GC),
    ("<tool>Calling get_caption((2, 3))</tool>", GC),
    # answers
    ("<think>It is the bus.</think>\n<answer>B</answer>", Answer("B", "B")),
    ("<answer>(B)</answer>", Answer("(B)", "B")),
    ("<answer>B. a blue bus</answer>", Answer("B. a blue bus", "B")),
    ("<answer>Answer: C</answer>", Answer("Answer: C", "C")),
    ("<answer>The answer is (B).</answer>", Answer("The answer is (B).", "B")),
    ("<answer>a blue bus</answer>", Answer("a blue bus", "B")),
    ("<answer>**D**</answer>", Answer("**D**", "D")),
    ("<answer>\\boxed{A}</answer>", Answer("\\boxed{A}", "A")),
    ("<think>x</think>\n<answer>D", Answer("D", "D")),
    ("<think>x</think>\nD</answer>", Answer("D", "D")),
    ("<answer>B</answer> I am confident. <answer>B</answer>", Answer("B", "B")),
    # rejections
    ("<think>x</think><tool>get_caption((2, 3))</tool>\n<answer>B</answer>", "both a tool call"),
    ("<tool>get_caption((2,3))</tool>\n<tool>get_caption((2,4))</tool>", "2 tool calls"),
    ("<tool>get_caption((2,3)); get_caption((2,4))</tool>", "two tool calls"),
    ("<tool>search_video('bus')</tool>", "unknown tool `search_video`"),
    ('<tool_call>{"name": "search", "arguments": {"q": "bus"}}</tool_call>', "unknown tool"),
    ('<tool_call>{"name": "get_caption", "arguments": {"ids": [2, 3]</tool_call>', "JSON"),
    ("<tool>get_caption((2, three))</tool>", "cannot read the arguments of get_caption"),
    ("<tool>get_caption((2, 3)</tool>", "cannot read the arguments"),
    ("<tool>video_qa((3, 2, 4))</tool>", "video_qa needs a segment id and a query"),
    ('<tool>video_qa((3, 2, 4), "   ")</tool>', "query is empty"),
    ('<tool>video_qa((3, 2), "who?")</tool>', "is a medium-level segment"),
    ("<tool>get_caption((2,))</tool>", "which you already have"),
    ("<tool>get_caption((5, 1))</tool>", "out of range: this video has width 4"),
    ("<tool>get_caption((2, 3), (2, 4))</tool>", "one segment per round"),
    ("<tool>get_caption((2, 3), 'bus')</tool>", "get_caption takes only a segment id"),
    ("<tool></tool>", "empty"),
    ("<think>x</think><answer></answer>", "<answer> is empty"),
    ("<think>x</think><answer>E</answer>", "E is not one of the options A-D"),
    ("<think>x</think><answer>B or C</answer>", "does not name one option"),
    ("<answer>B</answer><answer>C</answer>", "different answers"),
    ("I think the answer is probably the bus.", "no <tool> call and no <answer>"),
    ("Let me call get_caption((2, 3)) to check.", "not inside <tool>...</tool>"),
    ("<think>I should call <tool>get_caption((2,3))</tool></think>", "inside <think>"),
    ("<think>The bus appears in segment 2 so I will look at", "never closed"),
    ("   \n ", "the reply is empty"),
]


@pytest.mark.parametrize(
    ("text", "expected"), MALFORMED, ids=[str(i) for i in range(len(MALFORMED))]
)
def test_malformed_outputs(text, expected):
    reply = parse_reply(text, tree=TREE, choices=CHOICES)
    if isinstance(expected, str):
        assert reply.error is not None, reply
        assert expected in reply.error.message
        assert "\n" not in reply.error.message
    else:
        assert reply.result == expected, reply


def test_table_is_large_enough():
    assert len(MALFORMED) >= 25


def test_canonical_replies_have_no_notes_and_deviations_do():
    clean = parse_reply("<think>x</think>\n<tool>get_caption((2, 3))</tool>", tree=TREE)
    assert clean.canonical and clean.think == "x"
    loose = parse_reply(
        '<tool_call>{"name": "get_caption", "arguments": {"ids": [2, 3]}}</tool_call>'
    )
    assert loose.ok and not loose.canonical
    assert "no <think> block" in loose.notes
    assert "tool call in <tool_call>" in loose.notes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '<think>x</think>\n<tool>{"name": "get_caption", "arguments": {"ids": [1, 2]}}</tool>',
            Action("get_caption", (1, 2)),
        ),
        (
            '<think>x</think>\n<tool>\n{"name": "video_qa", "arguments": '
            '{"segment": [3, 2, 4], "query": "who drives?"}}\n</tool>',
            Action("video_qa", (3, 2, 4), "who drives?"),
        ),
        (
            '<think>x</think>\n<tool>```json\n{"name": "get_caption", "arguments": [1, 2]}\n```'
            "</tool>",
            Action("get_caption", (1, 2)),
        ),
        (
            '<think>x</think>\n<tool>{"function": {"name": "get_caption", '
            '"arguments": "{\\"id\\": [1, 2]}"}}</tool>',
            Action("get_caption", (1, 2)),
        ),
    ],
)
def test_json_inside_tool_tags_is_parsed_and_noted(text, expected):
    reply = parse_reply(text, tree=TREE)
    assert reply.action == expected, reply
    assert reply.notes == ("tool call as JSON in <tool>",)
    assert not reply.canonical


def test_canonical_tool_calls_have_no_notes():
    for text in (
        "<think>x</think>\n<tool>get_caption((1, 2))</tool>",
        "<think>x</think>\n<tool>get_caption((1, 2, 3))</tool>",
        '<think>x</think>\n<tool>video_qa((3, 2, 4), "who drives?")</tool>',
        render_reply("x", Action("video_qa", (3, 2, 4), 'a "quoted" {word} [1, 2]')),
    ):
        reply = parse_reply(text, tree=TREE)
        assert reply.ok and reply.notes == () and reply.canonical, (text, reply)
    bare = parse_reply("<tool>get_caption((1, 2))</tool>", tree=TREE)
    assert bare.action == Action("get_caption", (1, 2))
    assert bare.notes == ("no <think> block",)


def test_json_notes_are_not_doubled_outside_tool_tags():
    tool_call = parse_reply(
        '<think>x</think><tool_call>{"name": "get_caption", "args": [1, 2]}</tool_call>'
    )
    assert tool_call.notes == ("tool call in <tool_call>",)
    bare = parse_reply('<think>x</think>\n{"name": "get_caption", "args": [1, 2]}')
    assert bare.notes == ("tool call as bare JSON",)
    python = parse_reply("<think>x</think><tool>[get_caption((1, 2))]</tool>")
    assert python.action == Action("get_caption", (1, 2))
    assert "tool call as JSON in <tool>" not in python.notes


def test_think_text_is_kept():
    reply = parse_reply("<think>\nSegment 2.\n</think>\n<answer>B</answer>", choices=CHOICES)
    assert reply.think == "Segment 2."
    assert parse_reply("<answer>B</answer>").think is None
    assert parse_reply("Segment 2.</think><answer>B</answer>").think == "Segment 2."


def test_answers_without_choices_keep_the_text():
    reply = parse_reply("<think>x</think><answer> The red car </answer>")
    assert reply.answer == Answer("The red car", None)


def test_ids_without_a_tree_are_only_checked_for_shape():
    assert parse_reply("<tool>get_caption((9, 9))</tool>").action == Action("get_caption", (9, 9))
    assert "count from 1" in parse_reply("<tool>get_caption((0, 2))</tool>").error.message
    assert "4 parts" in parse_reply("<tool>get_caption((1, 2, 3, 4))</tool>").error.message


def test_video_qa_needs_the_fetched_caption_when_history_is_given():
    text = '<tool>video_qa((3, 2, 4), "who drives?")</tool>'
    refused = parse_reply(text, tree=TREE, fetched={(3, 2), (3, 2, 3)})
    assert "call get_caption((3, 2, 4)) before" in refused.error.message
    allowed = parse_reply(text, tree=TREE, fetched=[(3, 2, 4)])
    assert allowed.action == QA("who drives?")


def test_parser_never_raises_on_non_strings():
    assert isinstance(parse_reply(None).error, ParseError)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------
# properties


@st.composite
def actions(draw):
    width = draw(st.integers(3, 8))
    tree = Tree(duration=draw(st.floats(30.0, 40000.0)), n_frames=1000, width=width)
    tool = draw(st.sampled_from(["get_caption", "video_qa"]))
    depth = 3 if tool == "video_qa" else draw(st.sampled_from([2, 3]))
    node_id = tuple(draw(st.integers(1, width)) for _ in range(depth))
    query = None
    if tool == "video_qa":  # any text with at least one visible character
        visible = draw(st.characters(blacklist_categories=("Z", "C")))
        query = draw(st.text(max_size=30)) + visible + draw(st.text(max_size=30))
    return tree, Action(tool, node_id, query)


THINKS = st.none() | st.text(alphabet=st.characters(blacklist_characters="<>"), max_size=80)


@settings(max_examples=400)
@given(case=actions(), think=THINKS)
def test_render_parse_round_trip(case, think):
    tree, action = case
    text = render_reply(think, action)
    reply = parse_reply(text, tree=tree)
    assert reply.action == action, (text, reply)
    if think is not None:
        assert reply.canonical
        assert reply.think == think.strip()


FRAGMENTS = st.sampled_from(
    [
        "<think>", "</think>", "<tool>", "</tool>", "<answer>", "</answer>", "<tool_call>",
        "</tool_call>", "get_caption(", "video_qa(", "((", "))", "(1, 2)", "(1,2,3)", ",", '"',
        "'", "\\", "{", "}", '{"name": "get_caption", "arguments": ', '"ids": [1, 2]', "[", "]",
        "```json\n", "```", "\n", " ", "A", "(B)", "Answer:", "\\boxed{", "9" * 30, "(" * 120,
        "“", "”", "\x00", "é", "get_caption((1, 2))", '"query"',
    ]
)  # fmt: skip


@settings(max_examples=500)
@given(
    text=st.text() | st.lists(FRAGMENTS | st.text(max_size=5), max_size=40).map("".join),
    with_tree=st.booleans(),
    with_choices=st.booleans(),
)
def test_parser_never_crashes(text, with_tree, with_choices):
    reply = parse_reply(
        text, tree=TREE if with_tree else None, choices=CHOICES if with_choices else None
    )
    assert isinstance(reply, Reply)
    assert isinstance(reply.result, (Action, Answer, ParseError))
    if reply.error is not None:
        assert reply.error.message and "\n" not in reply.error.message
        assert "could not be read" not in reply.error.message  # no internal exception hit
    if reply.action is not None:
        assert reply.action.tool in ("get_caption", "video_qa")
        assert 2 <= len(reply.action.node_id) <= 3


ANSWER_FORMS = [
    "{L}", "({L})", "{L}.", "{L})", "[{L}]", "{L}. {T}", "{L}) {T}", "({L}) {T}", "{L}: {T}",
    "Answer: {L}", "Answer: ({L})", "The answer is ({L}).", "The answer is {L}.",
    "Final answer: {L}. {T}", "**{L}**", "**Answer:** {L}", "\\boxed{{{L}}}", "`{L}`",
    "The correct option is {L}", "So the answer is option {L}.", "{T}", "{T}.",
]  # fmt: skip


@given(
    choices=st.lists(
        # A one-letter option text ("b") is ambiguous with a letter answer; real options are words.
        st.text(alphabet="abcdefghij ", min_size=3, max_size=20).filter(
            lambda s: len(s.strip()) > 1
        ),
        min_size=2,
        max_size=8,
        unique_by=lambda s: " ".join(s.split()),
    ),
    data=st.data(),
)
def test_normalize_answer_recovers_the_letter(choices, data):
    index = data.draw(st.integers(0, len(choices) - 1))
    letter = chr(ord("A") + index)
    form = data.draw(st.sampled_from(ANSWER_FORMS))
    noise = data.draw(st.sampled_from(["", " ", "\n", "  \n\t"]))
    text = noise + form.format(L=letter, T=choices[index]) + noise[::-1]
    assert normalize_answer(text, choices) == letter
    reply = parse_reply(f"<think>x</think><answer>{text}</answer>", choices=choices)
    assert reply.answer is not None and reply.answer.letter == letter


def test_normalize_answer_edges():
    assert normalize_answer("E", CHOICES) is None
    assert normalize_answer("b", CHOICES) == "B"
    assert normalize_answer("B is correct", CHOICES) == "B"
    assert normalize_answer("I pick (C) because the bike is green", CHOICES) == "C"
    assert normalize_answer("  keep me  ", None) == "keep me"
    assert normalize_answer("A. a red car", ["A. a red car", "B. a blue bus"]) == "A"
    assert normalize_answer("a blue bus", ["A. a red car", "B. a blue bus"]) == "B"


# the reply grammar ------------------------------------------------------------------------


def _respects(rules: ReplyRules, text: str, levers: bool = True) -> bool:
    """Whether the parser reads ``text`` as canonical and the reply keeps the round's rules
    (``levers``: min_depth and the guide's offer too, worked out here apart from the grammar)."""
    tree = Tree(duration=100.0, n_frames=1000, width=rules.width)
    fetched = rules.fetched if rules.require_fetched_leaf else None
    reply = parse_reply(text, tree, rules.choices, fetched)
    if not reply.canonical:
        return False
    if reply.answer is not None:
        deep = rules.min_depth <= 1 or any(len(f) >= rules.min_depth for f in rules.fetched)
        if levers and not deep and _calls_left(rules):
            return False
        if not rules.choices:
            return True
        letters = [chr(65 + i) for i in range(len(rules.choices))]
        if reply.answer.letter not in letters:
            return False
        return rules.answer_form != "letter" or reply.answer.text in letters
    action = reply.action
    assert action is not None
    if not rules.tools:
        return False
    if action.tool == "get_caption":
        offered = not levers or rules.offered is None or action.node_id in rules.offered
        return rules.get_caption and action.node_id not in rules.fetched and offered
    return (
        rules.video_qa
        and action.node_id not in rules.refused
        and (not rules.require_fetched_leaf or action.node_id in rules.fetched)
    )


def _calls_left(rules: ReplyRules) -> bool:
    """Whether any tool call keeps the round's rules (then min_depth may hold an answer back)."""
    if not rules.tools:
        return False
    ids = [i for i in _all_ids(rules.width) if len(i) > 1]
    captions = [i for i in ids if i not in rules.fetched]
    if rules.offered is not None:
        captions = [i for i in captions if i in rules.offered]
    leaves = [
        i
        for i in ids
        if len(i) == 3
        and i not in rules.refused
        and (not rules.require_fetched_leaf or i in rules.fetched)
    ]
    return bool((rules.get_caption and captions) or (rules.video_qa and leaves))


def _all_ids(width: int) -> list[tuple[int, ...]]:
    """Every id of the tree, high to low."""
    tree = Tree(duration=100.0, n_frames=1000, width=width)
    return [node.id for depth in (1, 2, 3) for node in tree.nodes(depth)]


_OPTION_TEXT = st.one_of(
    st.sampled_from(["B", "a red car", "A. a red car", "seven", "7", "(C)", "x < y", "both"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
).filter(lambda t: t.strip())


@st.composite
def reply_rules(draw) -> ReplyRules:
    width = draw(st.integers(1, 5))
    ids = [
        (h, m, *rest)
        for h in range(1, width + 1)
        for m in range(1, width + 1)
        for rest in ((), *((k,) for k in range(1, width + 1)))
    ]
    fetched = draw(st.sets(st.sampled_from(ids), max_size=len(ids)))
    leaves = [i for i in ids if len(i) == 3]
    choices = draw(st.one_of(st.none(), st.lists(_OPTION_TEXT, min_size=2, max_size=5)))
    unread = [i for i in ids if i not in fetched]
    offered = draw(
        st.one_of(
            st.none(),
            st.lists(st.sampled_from(unread), unique=True, max_size=3) if unread else st.just([]),
        )
    )
    return ReplyRules(
        width=width,
        fetched=frozenset({*((h,) for h in range(1, width + 1)), *fetched}),
        choices=tuple(choices) if choices else None,
        answer_form=draw(st.sampled_from(["letter", "text", "either"])),
        tools=draw(st.booleans()),
        get_caption=draw(st.booleans()),
        video_qa=draw(st.booleans()),
        require_fetched_leaf=draw(st.booleans()),
        refused=frozenset(draw(st.sets(st.sampled_from(leaves), max_size=4))),
        min_depth=draw(st.integers(0, 3)),
        offered=None if offered is None else tuple(offered),
    )


@settings(max_examples=150)
@given(rules=reply_rules(), rng=st.randoms(use_true_random=False))
def test_every_reply_the_grammar_admits_is_canonical_and_keeps_the_rules(rules, rng):
    try:
        check_question("q", list(rules.choices) if rules.choices else None)
    except ConfigError:
        return  # lettered-by-hand option lists the agent refuses before any model call
    whole, tail = reply_grammars(rules)
    for _ in range(12):
        text = whole.sample(rng, max_repeat=8)
        assert _respects(rules, text), text
        after = "<think>free text, with <b> tags too</think>" + tail.sample(rng, max_repeat=8)
        assert _respects(rules, after), after


@settings(max_examples=60)
@given(rules=reply_rules())
def test_the_grammar_admits_exactly_the_allowed_calls_and_answers(rules):
    try:
        check_question("q", list(rules.choices) if rules.choices else None)
    except ConfigError:
        return
    whole, _tail = reply_grammars(rules)
    calls = [Action("get_caption", i) for i in _all_ids(rules.width)]
    calls += [Action("video_qa", i, "what colour is it?") for i in _all_ids(rules.width)]
    calls += [Action("get_caption", (rules.width + 1, 1)), Action("get_caption", (0, 1))]
    for action in calls:
        try:
            text = render_reply("why", action)
        except ValueError:
            text = f"<think>why</think>\n<tool>{action.tool}({action.node_id})</tool>"
        # admitted exactly when the reply is canonical and keeps the rules
        assert whole.admits(text) == _respects(rules, text), text
    letters = [chr(65 + i) for i in range(len(rules.choices or ()))]
    bodies = ["E", "(A)", "A.", "the answer is A", "", " A", *letters, *(rules.choices or ())]
    bodies += option_lines(rules.choices) if rules.choices else ["free text", "7"]
    for body in bodies:
        text = f"<think>why</think>\n<answer>{body}</answer>"
        if whole.admits(text):
            assert _respects(rules, text), text
    # every option stays answerable, whatever its text, once min_depth lets the model answer
    deep = rules.min_depth <= 1 or any(len(f) >= rules.min_depth for f in rules.fetched)
    for letter in letters:
        written = answer_in_form(letter, rules.choices, rules.answer_form)
        admitted = whole.admits(f"<think>x</think>\n<answer>{written}</answer>")
        assert admitted == (deep or not _calls_left(rules))


@settings(max_examples=60)
@given(rules=reply_rules())
def test_the_parser_refuses_what_the_levers_leave_out_of_the_grammar(rules):
    """Decoded without the grammar, a reply that min_depth or the guide rules out is refused
    by the parser given the round's limits, and one the grammar admits is read as before."""
    try:
        check_question("q", list(rules.choices) if rules.choices else None)
    except ConfigError:
        return
    whole, _tail = reply_grammars(rules)
    tree = Tree(duration=100.0, n_frames=1000, width=rules.width)
    fetched = rules.fetched if rules.require_fetched_leaf else None
    ids = [i for i in _all_ids(rules.width) if len(i) > 1]
    texts = [render_reply("why", Action("get_caption", i)) for i in ids]
    letters = [chr(65 + i) for i in range(len(rules.choices or ()))]
    for body in [*(answer_in_form(x, rules.choices, rules.answer_form) for x in letters), "7"]:
        texts.append(f"<think>why</think>\n<answer>{body}</answer>")
    for text in texts:
        if not _respects(rules, text, levers=False):
            continue  # refused (or not canonical) whatever the levers say
        limited = parse_reply(text, tree, rules.choices, fetched, rules.limits())
        assert (limited.error is None) == whole.admits(text), text
        if limited.error is None:
            assert limited == parse_reply(text, tree, rules.choices, fetched), text


def test_near_misses_are_not_admitted():
    rules = ReplyRules(
        width=4,
        fetched=frozenset({(1,), (2,), (3,), (4,), (3, 2), (3, 2, 4)}),
        choices=("A. a red car", "B. a blue bus", "C. seven", "D. B"),
        answer_form="text",
        refused=frozenset(),
    )
    whole, _tail = reply_grammars(rules)
    good = [
        "<think>x</think>\n<tool>get_caption((3, 1))</tool>",
        "<think>x</think>\n<tool>get_caption((3, 2, 1))</tool>",
        '<think>x</think>\n<tool>video_qa((3, 2, 4), "what is written on the bus?")</tool>',
        "<think>x</think>\n<answer>a blue bus</answer>",
        "<think>x</think>\n<answer>D. B</answer>",  # the text "B" would read as option B
    ]
    bad = [
        "<think>x</think>\n<tool>get_caption((3, 2))</tool>",  # already fetched
        "<think>x</think>\n<tool>get_caption((2,))</tool>",  # high level
        "<think>x</think>\n<tool>get_caption((5, 1))</tool>",  # out of range
        "<think>x</think>\n<tool>get_caption((3,1))</tool>",  # not canonical spacing
        '<think>x</think>\n<tool>video_qa((3, 2, 1), "what?")</tool>',  # leaf not fetched
        '<think>x</think>\n<tool>video_qa((3, 2, 4), "")</tool>',  # empty query
        "<think>x</think>\n<answer>B</answer>",  # a letter, but text was asked for
        "<think>x</think>\n<answer>E</answer>",
        "<think>x</think>\n<answer>a blue bus</answer> and more",
        "<think>x</think>\n<tool>get_caption((3, 1))</tool>\n<answer>a blue bus</answer>",
        "<tool>get_caption((3, 1))</tool>",  # no think
        "<think>a <tool>get_caption((3, 1))</tool></think>\n<answer>seven</answer>",
        "Sure! <think>x</think>\n<answer>seven</answer>",
    ]
    for text in good:
        assert whole.admits(text), text
    for text in bad:
        assert not whole.admits(text), text
    last = reply_grammars(ReplyRules(width=4, choices=rules.choices, tools=False))[0]
    assert not last.admits(good[0]) and last.admits("<think>x</think>\n<answer>B</answer>")


def test_the_constraint_is_gbnf_for_every_engine():
    rules = ReplyRules(width=2, fetched=frozenset({(1,), (2,)}), choices=("red", "blue"))
    constraint = reply_constraint(rules, free_tokens=300)
    assert constraint.grammar.startswith('root ::= "<think>" think "</think>\\n" action\n')
    assert constraint.tail.startswith('root ::= "\\n" action\n')
    assert (constraint.head, constraint.stop, constraint.free_tokens) == (
        "<think>",
        "</think>",
        300,
    )
    assert 'answer ::= "<answer>" ("A" | "B") "</answer>"' in constraint.grammar
    assert "_" not in "".join(line.split(" ::= ")[0] for line in constraint.grammar.splitlines())


def test_answers_in_each_form():
    choices = ["A. a red car", "B. seven", "C. B", "D. seven"]
    assert answer_in_form("A", choices, "letter") == "A"
    assert answer_in_form("A", choices, "text") == "a red car"
    assert answer_in_form("C", choices, "text") == "C. B"  # "B" alone would name option B
    assert answer_in_form("B", choices, "text") == "B. seven"  # two options read "seven"
    with pytest.raises(ValueError):
        answer_in_form("E", choices, "text")


def test_the_parser_and_the_tools_check_calls_with_one_rule_set():
    fetched = {(1,), (2,), (3,), (4,), (3, 2), (3, 2, 4)}
    calls = [
        Action("get_caption", (3, 1)),
        Action("get_caption", (2,)),
        Action("get_caption", (5, 1)),
        Action("video_qa", (3, 2, 4), "what is written?"),
        Action("video_qa", (3, 2, 1), "what is written?"),
        Action("video_qa", (3, 2), "what?"),
        Action("video_qa", (3, 2, 4), "   "),
    ]
    for action in calls:
        try:
            text = render_tool_call(action)
        except ValueError:  # shapes the renderer refuses: write them as a model would
            ids = format_node_id(action.node_id)
            args = ids if action.query is None else f"{ids}, {action.query!r}"
            text = f"<tool>{action.tool}({args})</tool>"
        reply = parse_reply(text, TREE, fetched=fetched)
        problem = check_action(action, TREE, fetched)
        assert (reply.error.message if reply.error else None) == problem, text
    assert check_action(Action("video_qa", (1, 1, 1), None), TREE).startswith(
        "the video_qa query is empty"
    )
    assert "unknown tool" in check_action(Action("look", (1, 2)), TREE)  # type: ignore[arg-type]
    assert "not a segment id" in check_action(Action("get_caption", ("a", 2)), TREE)  # type: ignore[arg-type]


# the levers for small navigators: min_depth and the guide's offer ---------------------------

HIGHS_4 = frozenset({(1,), (2,), (3,), (4,)})
GET = "<think>x</think>\n<tool>get_caption({})</tool>"
ANSWER = "<think>x</think>\n<answer>a blue bus</answer>"


def test_min_depth_holds_the_answer_back_until_a_caption_that_deep_is_read():
    base = {"width": 4, "choices": tuple(CHOICES), "answer_form": "text"}
    cases = [  # (min_depth, read beyond the high captions, answer admitted)
        (0, set(), True),
        (1, set(), True),  # the high captions are read from the start
        (2, set(), False),
        (2, {(3, 2)}, True),
        (2, {(3, 2, 4)}, True),  # deeper counts
        (3, {(3, 2)}, False),
        (3, {(3, 2), (3, 2, 4)}, True),
    ]
    for min_depth, read, admitted in cases:
        rules = ReplyRules(fetched=HIGHS_4 | read, min_depth=min_depth, **base)
        whole, tail = reply_grammars(rules)
        assert whole.admits(ANSWER) == admitted == rules.answer_open, (min_depth, read)
        assert tail.admits("\n<answer>a blue bus</answer>") == admitted
        assert whole.admits(GET.format("(1, 1)"))  # reading stays admitted
        reply = parse_reply(ANSWER, TREE, CHOICES, rules.fetched, rules.limits())
        assert (reply.answer is not None) == admitted
    early = ReplyRules(fetched=HIGHS_4, min_depth=2, **base)
    reply = parse_reply(ANSWER, TREE, CHOICES, limits=early.limits())
    assert reply.error == ParseError(
        "no answer is accepted before you have read a medium-level or low-level caption; "
        "call get_caption((h, m)) first, and answer after reading it"
    )
    assert "answer" not in reply_constraint(early).grammar.split("action ::= ")[1].split("\n")[0]


def test_a_round_with_no_tool_call_left_always_admits_the_answer():
    base = {"width": 4, "choices": tuple(CHOICES), "answer_form": "text", "min_depth": 3}
    for rules in [
        ReplyRules(fetched=HIGHS_4, tools=False, **base),  # the last round
        ReplyRules(fetched=HIGHS_4, get_caption=False, **base),  # budget spent, no leaf read
        ReplyRules(fetched=HIGHS_4 | {(1, 1)}, offered=(), video_qa=False, **base),
    ]:
        whole, _tail = reply_grammars(rules)
        assert rules.answer_open and whole.admits(ANSWER)
        assert parse_reply(ANSWER, TREE, CHOICES, limits=rules.limits()).answer is not None


def test_the_guide_offers_get_caption_only_on_its_ids():
    rules = ReplyRules(
        width=4,
        fetched=HIGHS_4 | {(3, 2)},
        choices=tuple(CHOICES),
        answer_form="text",
        offered=((3, 2, 4), (1, 3)),
    )
    whole, _tail = reply_grammars(rules)
    assert whole.admits(GET.format("(3, 2, 4)")) and whole.admits(GET.format("(1, 3)"))
    for other in ("(1, 1)", "(3, 2, 1)", "(3, 2)", "(4, 4, 4)"):
        assert not whole.admits(GET.format(other)), other
    assert whole.admits(ANSWER)  # min_depth is off: the guide alone does not hold it back
    limits = rules.limits()
    assert limits == RoundLimits(min_depth=0, answer_open=True, offered=((3, 2, 4), (1, 3)))
    refused = parse_reply(GET.format("(1, 1)"), TREE, CHOICES, limits=limits)
    message = "get_caption((1, 1)) is not offered in this round; ask for one of (3, 2, 4), (1, 3)"
    assert refused.error == ParseError(message)
    assert check_action(Action("get_caption", (1, 1)), TREE, offered=limits.offered) == message
    taken = parse_reply(GET.format("(1, 3)"), TREE, CHOICES, limits=limits)
    assert taken.action == Action("get_caption", (1, 3))
    # video_qa is not the guide's business; range errors still come first
    qa = '<think>x</think>\n<tool>video_qa((1, 1, 1), "what?")</tool>'
    assert parse_reply(qa, TREE, CHOICES, limits=limits).action is not None
    out_of_range = parse_reply(GET.format("(5, 1)"), TREE, CHOICES, limits=limits)
    assert "out of range" in out_of_range.error.message
    nothing = RoundLimits(offered=())
    assert (
        "no segment is left to read"
        in parse_reply(GET.format("(1, 3)"), TREE, CHOICES, limits=nothing).error.message
    )


def test_an_early_answer_names_the_guides_best_id():
    limits = RoundLimits(min_depth=3, answer_open=False, offered=((2, 4, 1), (2, 3)))
    reply = parse_reply(ANSWER, TREE, CHOICES, limits=limits)
    assert reply.error == ParseError(
        "no answer is accepted before you have read a low-level caption; call "
        "get_caption((2, 4, 1)) first, and answer after reading it"
    )
