"""Trajectory generation: the hinted teacher over a scripted server, the oracle, the filter.

The teacher tests go through a real HTTP server and the production client,
navigator and tools, and assert on the bytes the server received: the wrong
turn is gone from the next request, the hint sits in the user turn that
request ends with, and the stored conversation holds neither.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers_eval import RuleServer
from scripted_server import Fail, Say, ScriptedChatServer, Step

from longvideo_r1.agent import grammar, prompts, replies
from longvideo_r1.agent.guide import Guide, StoredTexts
from longvideo_r1.captions.records import CaptionRecord, VideoRecord
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.cli.main import main
from longvideo_r1.errors import ConfigError
from longvideo_r1.llm.server import OpenAIBackend
from longvideo_r1.options import field_help
from longvideo_r1.questions.loaders import load_questions
from longvideo_r1.questions.schema import Question
from longvideo_r1.training.filter import FilterConfig, check_record, filter_records
from longvideo_r1.training.hints import HINT_KINDS, HintConfig, ground, hint_text
from longvideo_r1.training.oracle import (
    OracleConfig,
    generate_oracle,
    oracle_trajectory,
    rotate_choices,
)
from longvideo_r1.training.records import TrajectoryError, TrajectoryFolder, load_records
from longvideo_r1.training.synthetic import synthetic_dataset, synthetic_tree_captions
from longvideo_r1.training.teacher import TeacherConfig, generate_teacher, teach_question
from longvideo_r1.training.trees import (
    CachedCaptions,
    CaptionTree,
    MappingTrees,
    StoreTrees,
    unavailable_trees,
)
from longvideo_r1.tree import Tree

# a hand-made world: 150 s at width 4 (high 37.5 s, medium 9.375 s, low 2.34 s) ---------------

DATA = Path(__file__).parent / "data" / "benchmarks"
TREE = Tree.for_video(150.0, 1500, width=4)
SPECIAL = {
    (1,): "A street market opens in the morning.",
    (2,): "A baker carries bread out of a shop.",
    (3,): "Traffic passes the bakery.",
    (4,): "The market closes at dusk.",
    (3, 2): "A blue bus stops by the bakery door.",
    (3, 2, 1): "A blue bus with lettering on its side pulls in.",
}
CAPTIONS = {
    n.id: SPECIAL.get(n.id, f"Quiet street, nothing changes ({n.label}).") for n in TREE.walk()
}
CTREE = CaptionTree("bakery", TREE, CAPTIONS, fingerprint="f" * 64, identity="imported:test")
CHOICES = ["a red car", "a blue bus", "a green bike", "a black van"]


def question(qid: str = "q1", video: str = "bakery", **kw: Any) -> Question:
    fields: dict[str, Any] = {
        "id": qid,
        "video_id": video,
        "question": "What vehicle passes the bakery?",
        "choices": CHOICES,
        "answer": "B",
        "clue_intervals": [(85.0, 88.0)],
        "benchmark": "cgbench",
    }
    fields.update(kw)
    return Question(**fields)


GET_3_2 = "<think>Traffic is in segment 3; look at its second part.</think>\n<tool>get_caption((3, 2))</tool>"
GET_3_2_1 = (
    "<think>The bus pulls in here; read the clip.</think>\n<tool>get_caption((3, 2, 1))</tool>"
)
WRONG_A = "<think>Probably a car.</think>\n<answer>A</answer>"
WRONG_C = "<think>A bike, I think.</think>\n<answer>C</answer>"
WRONG_D = "<think>A van.</think>\n<answer>D</answer>"
RIGHT = "<think>The caption from 84.4 to 93.8 s says a blue bus stops there.</think>\n<answer>B</answer>"
OBS_3_2 = prompts.caption_observation(TREE.node((3, 2)), CAPTIONS[(3, 2)])
OBS_3_2_1 = prompts.caption_observation(TREE.node((3, 2, 1)), CAPTIONS[(3, 2, 1)])


def backend(server: ScriptedChatServer) -> OpenAIBackend:
    return OpenAIBackend(
        server.base_url, model=server.model, timeout=10, max_retries=0, sleep=lambda _s: None
    )


def first_messages() -> list[dict[str, str]]:
    highs = [(TREE.node((h,)), CAPTIONS[(h,)]) for h in range(1, 5)]
    first = prompts.first_user_text(
        "What vehicle passes the bakery?", CHOICES, TREE.duration, highs
    )
    return [
        {"role": "system", "content": prompts.system_prompt(4, "text")},  # the teacher's default
        {"role": "user", "content": first},
    ]


def hint(kind: str) -> str:
    return hint_text(kind, TREE, ground(TREE, [(85.0, 88.0)]))  # type: ignore[arg-type]


# the teacher loop ---------------------------------------------------------------------------


def test_a_wrong_answer_is_dropped_and_the_hint_follows():
    script = [
        Say(GET_3_2, prompt_tokens=900, completion_tokens=30),
        Say(WRONG_A, prompt_tokens=1000, completion_tokens=10),
        Say(RIGHT, prompt_tokens=1100, completion_tokens=20),
    ]
    with ScriptedChatServer(script) as server:
        record = teach_question(question(), CTREE, backend(server))

    start = first_messages()
    # the re-ask does not contain the wrong turn, and its last user turn carries the hint
    assert server.messages(1) == [*start, assistant(GET_3_2), user(OBS_3_2)]
    assert server.messages(2) == [
        *start,
        assistant(GET_3_2),
        user(f"{OBS_3_2}\n\n{hint('high')}"),
    ]
    # the stored conversation is the protocol's, with neither the wrong turn nor the hint
    assert record.messages == [*start, assistant(GET_3_2), user(OBS_3_2), assistant(RIGHT)]
    assert record.outcome == "correct" and record.predicted == "B"
    assert [(h.level, h.kind, h.round, h.message_index) for h in record.hints] == [
        (1, "high", 2, 3)
    ]
    assert record.hints[0].node_ids == [(3,)]
    assert [(d.round, d.letter, d.text) for d in record.dropped] == [(2, "A", WRONG_A)]
    assert record.teacher_view()[:-1] == server.messages(2)
    assert record.cost.teacher_calls == 3
    assert record.cost.prompt_tokens == 3000 and record.cost.dropped_prompt_tokens == 1000
    assert record.cost.rounds == 2
    assert [(o.kind, o.node_id, o.text) for o in record.observations] == [
        ("get_caption", (3, 2), OBS_3_2)
    ]
    assert record.grounding.high == [(3,)] and record.grounding.medium == [(3, 2)]
    assert record.producer == "openai:scripted-model"
    assert check_record(record) is None


def test_hints_escalate_stay_in_place_and_the_fifth_wrong_answer_gives_up():
    script = [WRONG_A, GET_3_2, WRONG_C, WRONG_D, GET_3_2_1, WRONG_A, WRONG_C]
    with ScriptedChatServer(script) as server:
        record = teach_question(question(), CTREE, backend(server))

    start = first_messages()
    first = start[1]["content"]
    high, medium, low, verify = (hint(k) for k in HINT_KINDS)
    # wrong at round 1: the high hint goes on the first user message, and stays there
    assert server.messages(1) == [start[0], user(f"{first}\n\n{high}")]
    assert server.messages(2) == [
        start[0],
        user(f"{first}\n\n{high}"),
        assistant(GET_3_2),
        user(OBS_3_2),
    ]
    # wrong twice at round 2: medium, then low, both on the observation of (3, 2)
    assert server.messages(3)[-1] == user(f"{OBS_3_2}\n\n{medium}")
    assert server.messages(4)[-1] == user(f"{OBS_3_2}\n\n{medium}\n\n{low}")
    assert server.messages(4)[1] == user(f"{first}\n\n{high}")
    # wrong at round 3: the verify hint; the fifth wrong answer ends it
    assert server.messages(6)[-1] == user(f"{OBS_3_2_1}\n\n{verify}")
    assert server.remaining == 0 and len(server.requests) == 7

    assert [h.kind for h in record.hints] == list(HINT_KINDS)
    assert [(h.round, h.message_index) for h in record.hints] == [(1, 1), (2, 3), (2, 3), (3, 5)]
    assert [d.letter for d in record.dropped] == ["A", "C", "D", "A", "C"]
    assert record.outcome == "gave_up" and record.predicted == "C"
    assert check_record(record) == "gave_up"
    # no dropped turn in the stored conversation
    texts = [m["content"] for m in record.messages if m["role"] == "assistant"]
    assert texts == [GET_3_2, GET_3_2_1, WRONG_C]


def test_fewer_hints_give_up_sooner():
    with ScriptedChatServer([WRONG_A, WRONG_C, WRONG_D]) as server:
        record = teach_question(
            question(), CTREE, backend(server), hint_config=HintConfig(max_hints=1)
        )
    assert len(server.requests) == 2
    assert record.outcome == "gave_up" and [h.kind for h in record.hints] == ["high"]


def test_a_question_without_an_answer_is_skipped_without_a_call():
    with ScriptedChatServer([]) as server:
        record = teach_question(question(answer=None), CTREE, backend(server))
    assert record.outcome == "skipped" and "no known answer" in (record.reason or "")
    assert server.requests == []


def test_concurrent_teacher_runs_are_resumable(tmp_path: Path):
    def rule(body: dict[str, Any]) -> Step:
        last = body["messages"][-1]["content"]
        return Say(RIGHT if "Medium-level Caption" in last else GET_3_2)

    made: list[int] = []
    lock = threading.Lock()
    questions = [question(f"q{i}") for i in range(6)] + [question("lost", video="nowhere")]
    with RuleServer(rule) as server:

        def factory(worker: int) -> OpenAIBackend:
            with lock:
                made.append(worker)
            return backend(server)

        trees = MappingTrees([CTREE])
        config = TeacherConfig(workers=3)
        report = generate_teacher(questions, trees, factory, tmp_path, config)
        assert report.written == 7 and report.already_done == 0
        assert report.outcomes == {"correct": 6, "skipped": 1}
        assert len(made) <= 3 and sorted(made) == list(range(len(made)))
        assert len(server.requests) == 12

        again = generate_teacher(questions, trees, factory, tmp_path, config)
        assert (again.written, again.already_done) == (0, 7)
        assert len(server.requests) == 12

        retried = generate_teacher(
            questions, trees, factory, tmp_path, TeacherConfig(workers=2, retry_failed=True)
        )
        assert (retried.written, retried.already_done) == (1, 6)

    records = load_records(tmp_path)
    assert sorted(r.id for r in records) == ["lost", *(f"q{i}" for i in range(6))]
    lost = TrajectoryFolder(tmp_path).load("lost")
    assert lost is not None and lost.outcome == "skipped"
    assert "no caption tree for video nowhere" in (lost.reason or "")
    report = filter_records(records)
    assert len(report.kept) == 6 and report.dropped == {"skipped": 1}


def test_a_dead_endpoint_stops_the_run_early(tmp_path: Path):
    with RuleServer(lambda body: Fail(400, "model not found")) as server:
        report = generate_teacher(
            [question(f"q{i}") for i in range(6)],
            MappingTrees([CTREE]),
            lambda _worker: backend(server),
            tmp_path,
            TeacherConfig(workers=1, max_consecutive_errors=2),
        )
    assert report.written == 2 and report.outcomes == {"error": 2}
    assert report.stopped is not None and "model not found" in report.stopped
    assert "stopped" in report.summary()
    record = TrajectoryFolder(tmp_path).load("q0")
    assert record is not None and record.outcome == "error"


def test_duplicate_question_ids_are_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="appears twice"):
        generate_oracle([question(), question()], MappingTrees([CTREE]), tmp_path)


# caption trees from the store ---------------------------------------------------------------


def fill_store(store: CaptionStore, skip: tuple[int, ...] | None = None) -> None:
    store.register_video(VideoRecord("f" * 64, "/videos/bakery.mp4", 150.0, 1500, 4))
    store.put_captions(
        [
            CaptionRecord("f" * 64, 4, node_id, "imported:test", text)
            for node_id, text in CAPTIONS.items()
            if node_id != skip
        ]
    )


def test_store_trees_find_a_video_by_its_file_name(tmp_path: Path):
    with CaptionStore(tmp_path / "store.sqlite") as store:
        fill_store(store)
        trees = StoreTrees(store, "imported:test")
        ctree = trees.get(question())
        assert dict(ctree.captions) == CAPTIONS
        assert (ctree.tree.width, ctree.tree.duration) == (4, 150.0)
        with pytest.raises(TrajectoryError, match="not in the caption store"):
            trees.get(question(video="other"))
        with pytest.raises(TrajectoryError, match="no captions under imported:else"):
            StoreTrees(store, "imported:else").get(question())


def test_store_trees_refuse_an_incomplete_tree(tmp_path: Path):
    with CaptionStore(tmp_path / "store.sqlite") as store:
        fill_store(store, skip=(4, 4, 4))
        with pytest.raises(TrajectoryError, match=r"1 of 84 captions missing.*\(4, 4, 4\)"):
            StoreTrees(store, "imported:test").get(question())
        lenient = StoreTrees(store, "imported:test", require_complete=False).get(question())
        assert (4, 4, 4) in lenient.missing()


def test_unavailable_trees_name_each_video_once_with_its_reason(tmp_path: Path):
    with CaptionStore(tmp_path / "store.sqlite") as store:
        fill_store(store, skip=(4, 4, 4))
        questions = [question("a"), question("b"), question("c", video="other")]
        missing = unavailable_trees(questions, StoreTrees(store, "imported:test"))
        assert set(missing) == {"bakery", "other"}
        assert "1 of 84 captions missing" in missing["bakery"]
        assert "video other is not in the caption store" in missing["other"]
        lenient = StoreTrees(store, "imported:test", require_complete=False)
        assert unavailable_trees(questions, lenient) == {"other": missing["other"]}


def test_a_missing_caption_mid_run_ends_in_an_error_record():
    partial = CaptionTree("bakery", TREE, {k: v for k, v in CAPTIONS.items() if k != (3, 2)})
    with ScriptedChatServer([GET_3_2]) as server:
        record = teach_question(question(), partial, backend(server))
    assert record.outcome == "error" and "no cached caption for node (3, 2)" in (
        record.reason or ""
    )


# filtering ------------------------------------------------------------------------------


def run_script(script: list[str]):
    with ScriptedChatServer(script) as server:
        return teach_question(question(), CTREE, backend(server))


def test_the_filter_drops_what_is_unfit_and_says_why():
    good = run_script([GET_3_2, RIGHT])
    no_think = run_script(["<tool>get_caption((3, 2))</tool>", RIGHT])
    json_call = run_script(
        ['<think>x</think><tool>{"name": "get_caption", "ids": [3, 2]}</tool>', RIGHT]
    )
    unparsable = run_script(["<think>hmm</think>", RIGHT])
    leaf_rule = run_script(
        ['<think>ask</think>\n<tool>video_qa((3, 2, 1), "what bus?")</tool>', RIGHT]
    )
    told = run_script([GET_3_2, "<think>The hint says segment 3.</think>\n<answer>B</answer>"])
    repeat = run_script([GET_3_2, GET_3_2, RIGHT])
    report = filter_records([good, no_think, json_call, unparsable, leaf_rule, told, repeat])
    assert [r.id for r in report.kept] == ["q1", "q1"]  # good and repeat
    assert report.dropped == {
        "not_canonical": 2,
        "parse_error": 1,
        "leaf_rule": 1,
        "mentions_hint": 1,
    }
    assert check_record(repeat, FilterConfig(allow_repeats=False)) == "repeated_call"
    assert check_record(good, FilterConfig(max_rounds=1)) == "too_many_rounds"
    assert check_record(good, FilterConfig(max_chars=1000)) == "too_long"
    assert check_record(good, FilterConfig(max_chars=100_000)) is None
    assert "kept 2 of 7" in report.summary() and "not_canonical 2" in report.summary()


def test_the_filter_catches_a_tampered_record():
    good = run_script([GET_3_2, RIGHT])
    wrong_letter = good.model_copy(deep=True)
    wrong_letter.messages[-1]["content"] = "<think>x</think>\n<answer>C</answer>"
    assert check_record(wrong_letter) == "wrong_final_answer"
    refused = good.model_copy(deep=True)
    refused.messages[3]["content"] = prompts.error_message("nope")
    assert check_record(refused) == "refused_call"
    prompt = good.model_copy(deep=True)
    prompt.messages[0]["content"] += " "
    assert check_record(prompt) == "system_prompt_mismatch"


def test_forced_rounds_are_dropped_unless_allowed():
    with ScriptedChatServer([GET_3_2, RIGHT]) as server:
        record = teach_question(question(), CTREE, backend(server), TeacherConfig(max_rounds=2))
    assert record.messages[4]["content"] == prompts.last_round_message("text")
    assert check_record(record) == "forced_or_notice"
    assert check_record(record, FilterConfig(allow_forced=True)) is None


# the oracle ----------------------------------------------------------------------------


ITEMS = synthetic_dataset(40, seed=7)


def walk(record) -> list[tuple[int, ...]]:
    """Replay the conversation with the parser, checking every assistant turn is canonical."""
    tree = record.tree()
    fetched = {n.id for n in tree.nodes(1)}
    visited = []
    for message in record.messages:
        if message["role"] != "assistant":
            continue
        reply = replies.parse_reply(message["content"], tree, record.choices, fetched)
        assert reply.canonical, (message["content"], reply.notes, reply.error)
        assert reply.think and reply.think.strip()
        if reply.action is not None and reply.action.tool == "get_caption":
            fetched.add(reply.action.node_id)
            visited.append(reply.action.node_id)
    return visited


def overlaps(tree: Tree, node_id, interval) -> bool:
    node = tree.node(node_id)
    start, end = interval
    return node.start < max(end, start + 1e-9) and node.end > start


def test_oracle_trajectories_are_canonical_and_cover_the_clue():
    for item in ITEMS:
        record = oracle_trajectory(item.question, item.ctree)
        assert record.outcome == "correct", record.reason
        assert check_record(record) is None
        tree = item.ctree.tree
        visited = walk(record)
        intervals = ground(tree, item.question.clue_intervals).intervals
        for interval in intervals[:3]:
            assert any(len(n) == 2 and overlaps(tree, n, interval) for n in visited)
            assert any(len(n) == 3 and overlaps(tree, n, interval) for n in visited)
        written = grammar.answer_in_form(item.question.answer, item.question.choices, "text")
        assert record.messages[-1]["content"].endswith(f"<answer>{written}</answer>")
        assert record.generator == "oracle" and record.seed is not None


def test_oracle_detours_are_corrected():
    config = OracleConfig(detour_rate=1.0, video_qa="never")
    for item in ITEMS[:15]:
        record = oracle_trajectory(item.question, item.ctree, config)
        grounding = ground(item.ctree.tree, item.question.clue_intervals)
        visited = walk(record)
        assert len(visited[0]) == 2 and visited[0] not in grounding.medium
        assert visited[1] in grounding.medium
        assert check_record(record) is None
        second = record.messages[4]["content"]
        assert prompts.format_seconds(item.ctree.tree.node(visited[0]).start) in second


def test_oracle_video_qa_modes():
    always = OracleConfig(video_qa="always", detour_rate=0.0)
    never = OracleConfig(video_qa="never", detour_rate=0.0)
    for item in ITEMS[:10]:
        asked = oracle_trajectory(item.question, item.ctree, always)
        assert check_record(asked) is None
        qa = asked.visited("video_qa")
        assert len(qa) == 1 and qa[0] in asked.visited("get_caption")
        interval = ground(item.ctree.tree, item.question.clue_intervals).intervals[0]
        assert overlaps(item.ctree.tree, qa[0], interval)
        answer_text = item.question.answer_text or ""
        assert answer_text.rstrip(".") in asked.observations[-1].text
        assert oracle_trajectory(item.question, item.ctree, never).visited("video_qa") == []
    rule = OracleConfig(video_qa="rule", video_qa_rate=0.0)
    for item in ITEMS:
        asked = bool(oracle_trajectory(item.question, item.ctree, rule).visited("video_qa"))
        assert asked == (item.question.extra["question_type"] == "perception")


def test_oracle_seeds_are_reproducible_and_varied():
    a = [oracle_trajectory(i.question, i.ctree).messages for i in ITEMS[:20]]
    b = [oracle_trajectory(i.question, i.ctree).messages for i in ITEMS[:20]]
    c = [oracle_trajectory(i.question, i.ctree, OracleConfig(seed=1)).messages for i in ITEMS[:20]]
    assert a == b
    assert a != c
    thinks = {m["content"].split("</think>")[0][7:20] for ms in a for m in ms[2::2]}
    assert len(thinks) > 8  # several templates in use
    again = synthetic_dataset(5, seed=7)
    assert [i.question for i in again] == [i.question for i in ITEMS[:5]]
    assert [dict(i.ctree.captions) for i in again] == [dict(i.ctree.captions) for i in ITEMS[:5]]


def test_oracle_runs_write_variants_and_resume(tmp_path: Path):
    items = ITEMS[:4]
    trees = MappingTrees([i.ctree for i in items])
    questions = [i.question for i in items] + [question("no-clue", clue_intervals=[])]
    config = OracleConfig(variants=2, workers=2)
    report = generate_oracle(questions, trees, tmp_path, config)
    assert report.written == 10 and report.outcomes == {"correct": 8, "skipped": 2}
    ids = sorted(r.id for r in load_records(tmp_path))
    assert ids[:2] == ["no-clue~0", "no-clue~1"]
    assert "synthetic-0~0" in ids and "synthetic-0~1" in ids
    again = generate_oracle(questions, trees, tmp_path, config)
    assert (again.written, again.already_done) == (0, 10)
    first = TrajectoryFolder(tmp_path).load("synthetic-0~0")
    second = TrajectoryFolder(tmp_path).load("synthetic-0~1")
    assert first is not None and second is not None and first.seed != second.seed


def test_a_folder_refuses_records_made_with_other_settings(tmp_path: Path):
    items = ITEMS[:2]
    trees = MappingTrees([i.ctree for i in items])
    questions = [i.question for i in items]
    generate_oracle(questions, trees, tmp_path, OracleConfig())
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["generator"] == "oracle" and manifest["oracle.detour_rate"] == 0.25
    assert "oracle.workers" not in manifest and manifest["hint.max_gap"] == 5.0
    # how the run goes may change; what it writes may not
    again = generate_oracle(questions, trees, tmp_path, OracleConfig(workers=2, retry_failed=True))
    assert again.already_done == 2
    with pytest.raises(TrajectoryError, match=r"oracle\.detour_rate was 0\.25, now 0\.5"):
        generate_oracle(questions, trees, tmp_path, OracleConfig(detour_rate=0.5))
    with pytest.raises(TrajectoryError, match=r"hint\.max_gap was 5\.0, now 2\.0"):
        generate_oracle(questions, trees, tmp_path, None, HintConfig(max_gap=2.0))
    # a folder from before manifests is adopted, then held to its settings
    (tmp_path / "run.json").unlink()
    assert generate_oracle(questions, trees, tmp_path).already_done == 2
    assert (tmp_path / "run.json").exists()
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(TrajectoryError, match="is not a trajectory manifest"):
        generate_oracle(questions, trees, tmp_path)


def _oracle_holding_the_folder(out: str, started: Any, release: Any) -> None:
    """Another process's oracle run that pauses after its first record, the folder in hand."""

    def hold(_record: Any) -> None:
        started.set()
        release.wait(120)

    items = ITEMS[:2]
    trees = MappingTrees([i.ctree for i in items])
    generate_oracle([i.question for i in items], trees, out, OracleConfig(), on_record=hold)


def test_a_folder_has_one_generator_at_a_time(tmp_path: Path, capsys):
    items = ITEMS[:2]
    trees = MappingTrees([i.ctree for i in items])
    questions = [i.question for i in items]
    spawn = multiprocessing.get_context("spawn")
    started, release = spawn.Event(), spawn.Event()
    other = spawn.Process(target=_oracle_holding_the_folder, args=(str(tmp_path), started, release))
    other.start()
    try:
        assert started.wait(120), "the other run never wrote its first record"
        # the same settings pass the manifest check; only the lock stops two writers
        with pytest.raises(ConfigError) as info:
            generate_oracle(questions, trees, tmp_path, OracleConfig())
        assert str(info.value) == (
            f"another lvr1 data run is writing to {tmp_path}; wait for it or use another --out"
        )
        with pytest.raises(ConfigError, match="another lvr1 data run is writing"):
            generate_oracle(questions, trees, tmp_path, OracleConfig(detour_rate=0.5))
        assert main(["data", "oracle", "synthetic:2", "--out", str(tmp_path), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lvr1 data oracle: error: another lvr1 data run") and "\n" not in err
    finally:
        release.set()
        other.join(120)
    assert other.exitcode == 0
    # the lock went with the process: a rerun resumes the folder
    assert generate_oracle(questions, trees, tmp_path, OracleConfig()).already_done == 2


def test_a_teacher_run_takes_the_folder_lock_before_any_backend(tmp_path: Path):
    def no_backend(worker: int) -> OpenAIBackend:
        raise AssertionError("a refused run must not make a backend")

    held, refused = TrajectoryFolder(tmp_path).lock(), "another lvr1 data run is writing"
    with held, pytest.raises(ConfigError, match=refused):
        generate_teacher([question()], MappingTrees([CTREE]), no_backend, tmp_path)
    assert not (tmp_path / "run.json").exists()


def test_a_teacher_folder_refuses_another_teacher(tmp_path: Path):
    def rule(body: dict[str, Any]) -> Step:
        last = body["messages"][-1]["content"]
        return Say(RIGHT if "Medium-level Caption" in last else GET_3_2)

    with RuleServer(rule) as server:

        def named(model: str):
            return lambda worker: OpenAIBackend(server.base_url, model=model, max_retries=0)

        trees = MappingTrees([CTREE])
        generate_teacher([question()], trees, named("teacher-a"), tmp_path, TeacherConfig())
        with pytest.raises(TrajectoryError, match="teacher was .*teacher-a.*, now .*teacher-b"):
            generate_teacher([question()], trees, named("teacher-b"), tmp_path)


def test_rotated_choices_move_the_right_letter():
    q = question(choices=CHOICES, answer="B")
    turned = rotate_choices(q, 1)
    assert turned.choices == ["a blue bus", "a green bike", "a black van", "a red car"]
    assert turned.answer == "A" and turned.choices[0] == q.choices[1]
    assert rotate_choices(q, 3).answer == "C" and rotate_choices(q, 4) == q
    for options in (
        ["a cat", "a dog", "both A and B", "neither"],
        ["red", "blue", "all of the above", "green"],
        ["red", "blue", "option A again", "green"],
    ):
        kept = question(choices=options, answer="C")
        assert rotate_choices(kept, 1) == kept


def test_oracle_variants_with_rotated_choices_cover_every_letter(tmp_path: Path):
    items = ITEMS[:3]
    config = OracleConfig(variants=4, rotate_choices=True)
    report = generate_oracle(
        [i.question for i in items], MappingTrees([i.ctree for i in items]), tmp_path, config
    )
    assert report.outcomes == {"correct": 12}
    records = load_records(tmp_path)
    for item in items:
        mine = [r for r in records if r.question_id == item.question.id]
        assert sorted(r.answer for r in mine) == ["A", "B", "C", "D"]
        assert all(r.predicted == r.answer for r in mine)
        assert all(sorted(r.choices) == sorted(item.question.choices) for r in mine)
        right = item.question.choices[ord(item.question.answer) - ord("A")]
        assert all(r.choices[ord(r.answer) - ord("A")] == right for r in mine)
        for r in mine:
            written = grammar.answer_in_form(r.answer, r.choices, "text")
            assert r.messages[-1]["content"].endswith(f"<answer>{written}</answer>")


def test_oracle_runs_show_a_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture):
    items = ITEMS[:3]
    trees = MappingTrees([i.ctree for i in items])
    questions = [i.question for i in items] + [question("no-clue", clue_intervals=[])]
    generate_oracle(questions, trees, tmp_path, OracleConfig(workers=2), progress=True)
    err = capsys.readouterr().err
    assert "oracle" in err and "4/4" in err and "correct 3, skipped 1" in err


def test_oracle_over_hand_written_captions():
    record = oracle_trajectory(question(), CTREE, OracleConfig(detour_rate=0.0, video_qa="never"))
    assert walk(record) == [(3, 2), (3, 2, 1)]  # the leaf overlapping 85-88 s most
    assert "A blue bus stops by the bakery door" in record.messages[4]["content"]


def test_oracle_on_cgbench_format_questions(tmp_path: Path):
    import random

    questions = load_questions(DATA / "cgbench.json", "cgbench")
    trees = {}
    for q in questions:
        tree = Tree.for_video(q.duration or 0.0, 1000)
        facts = [
            (interval, f"the answer is shown: {q.answer_text}") for interval in q.clue_intervals
        ]
        captions = synthetic_tree_captions(tree, facts, random.Random(q.id))
        trees.setdefault(q.video_id, CaptionTree(q.video_id, tree, captions))
    report = generate_oracle(questions, MappingTrees(trees), tmp_path)
    assert report.outcomes == {"correct": len(questions)}
    kept = filter_records(load_records(tmp_path))
    assert len(kept.kept) == len(questions)
    counting = next(r for r in kept.kept if r.question_id == "1202")
    assert counting.grounding.intervals == [(1650.0, 1702.0), (1744.5, 1760.0)]
    assert counting.visited("video_qa")  # "How many" asks for a visual detail


# synthetic captions --------------------------------------------------------------------


def test_synthetic_captions_place_each_fact_down_its_branch():
    import random

    tree = Tree.for_video(1800.0, 3600, width=5)
    facts = [((400.0, 420.0), "a man in a suit drops a red umbrella")]
    captions = synthetic_tree_captions(tree, facts, random.Random(3))
    assert set(captions) == {n.id for n in tree.walk()}
    ground_ = ground(tree, [(400.0, 420.0)])
    for node_id in (*ground_.high, *ground_.medium, *ground_.low):
        assert "a man in a suit drops a red umbrella" in captions[node_id]
    elsewhere = [n.id for n in tree.nodes(3) if n.id not in ground_.low]
    assert not any("red umbrella" in captions[i] for i in elsewhere)
    assert captions[ground_.medium[0]].count("red umbrella") == 1


def test_configs_carry_help_for_the_command_line():
    for cls in (TeacherConfig, OracleConfig, FilterConfig):
        assert all(field_help(cls).values()), cls
    with pytest.raises(ConfigError):
        OracleConfig(detour_rate=2.0)
    with pytest.raises(ConfigError):
        TeacherConfig(workers=0)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_the_guide_ranks_a_cached_caption_tree_by_its_captions():
    """Teacher runs and bench_navigator serve captions from a CaptionTree: the guide reads them."""
    tree = Tree.for_video(150.0, 1500, width=4)
    captions = {n.id: f"Street scene {n.label}." for d in (1, 2, 3) for n in tree.nodes(d)}
    captions[(2, 3)] = "A blue bus stops by the bakery."
    del captions[(4, 4)]
    source = CachedCaptions(CaptionTree("v", tree, captions))
    assert source.cached((2, 3)).text == "A blue bus stops by the bakery."
    assert source.cached((4, 4)) is None  # missing: nothing to rank it by, no error
    guide = Guide(tree, StoredTexts(source), "Which bus stops by the bakery?", k=1)
    assert guide.offered({(1,), (2,), (3,), (4,)}) == ((2, 3),)
