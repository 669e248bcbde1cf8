"""Exports round-trip, and carry exactly the strings the protocol renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from longvideo_r1.agent import grammar, prompts, protocol
from longvideo_r1.questions.schema import Question
from longvideo_r1.training.exports import (
    ExportConfig,
    ExportError,
    dataset_info,
    export_records,
    export_trajectories,
    load_export,
    to_llamafactory,
)
from longvideo_r1.training.oracle import OracleConfig, generate_oracle, oracle_trajectory
from longvideo_r1.training.records import TrajectoryRecord
from longvideo_r1.training.synthetic import synthetic_dataset
from longvideo_r1.training.trees import CaptionTree, MappingTrees
from longvideo_r1.tree import Tree

TREE = Tree.for_video(150.0, 1500, width=4)
CAPTIONS = {n.id: f"Caption of {n.label}: a quiet street." for n in TREE.walk()}
CAPTIONS[(3, 2)] = "A blue bus stops by the bakery door."
CAPTIONS[(3, 2, 1)] = "A blue bus with 'City Line 7' on its side pulls in."
CTREE = CaptionTree("bakery", TREE, CAPTIONS)
QUESTION = Question(
    id="bus",
    video_id="bakery",
    question="What is written on the bus?",
    choices=["City Line 3", "City Line 7", "Airport", "Depot"],
    answer="B",
    clue_intervals=[(85.0, 86.0)],
)
ORACLE = OracleConfig(detour_rate=0.0, video_qa="always")


@pytest.fixture(scope="module")
def record() -> TrajectoryRecord:
    return oracle_trajectory(QUESTION, CTREE, ORACLE)


@pytest.fixture(scope="module")
def records(record: TrajectoryRecord) -> list[TrajectoryRecord]:
    items = synthetic_dataset(6, seed=11)
    return [record] + [oracle_trajectory(i.question, i.ctree, OracleConfig(seed=3)) for i in items]


def qa_answer(record: TrajectoryRecord) -> str:
    """What the (synthetic) vision model said, read back from the observation."""
    found = re.fullmatch(r"<information>(.*)</information>", record.observations[-1].text)
    assert found is not None
    return found.group(1)


def expected_conversation(record: TrajectoryRecord) -> list[dict[str, str]]:
    """The same conversation built from the protocol functions directly."""
    highs = [(TREE.node((h,)), CAPTIONS[(h,)]) for h in range(1, 5)]
    return [
        {"role": "system", "content": prompts.system_prompt(4, "text")},  # the oracle's default
        {
            "role": "user",
            "content": prompts.first_user_text(QUESTION.question, QUESTION.choices, 150.0, highs),
        },
        {"role": "assistant", "content": record.messages[2]["content"]},
        {
            "role": "user",
            "content": prompts.caption_observation(TREE.node((3, 2)), CAPTIONS[(3, 2)]),
        },
        {"role": "assistant", "content": record.messages[4]["content"]},
        {
            "role": "user",
            "content": prompts.caption_observation(TREE.node((3, 2, 1)), CAPTIONS[(3, 2, 1)]),
        },
        {"role": "assistant", "content": record.messages[6]["content"]},
        {"role": "user", "content": prompts.qa_observation(qa_answer(record))},
        {"role": "assistant", "content": record.messages[8]["content"]},
    ]


def test_the_record_holds_the_protocol_strings(record: TrajectoryRecord):
    assert record.messages == expected_conversation(record)
    assert record.messages[6]["content"].endswith(
        protocol.render_tool_call(
            protocol.Action("video_qa", (3, 2, 1), record.trace.rounds[2].query)  # type: ignore[union-attr]
        )
    )
    written = grammar.answer_in_form("B", QUESTION.choices, "text")
    assert written == QUESTION.choices[1]  # the option's own text, not its letter
    assert record.messages[-1]["content"].endswith(protocol.render_answer(written))


def test_trl_round_trip(tmp_path: Path, records: list[TrajectoryRecord]):
    path = tmp_path / "trl.jsonl"
    report = export_records(records, path, "trl")
    assert (report.records, report.rows) == (len(records), len(records))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(records)
    assert set(json.loads(lines[0])) == {"messages"}
    back = load_export(path)
    assert back == [r.messages for r in records]
    assert back[0] == expected_conversation(records[0])


def test_llamafactory_has_one_row_per_round(tmp_path: Path, records: list[TrajectoryRecord]):
    path = tmp_path / "lf.jsonl"
    report = export_records(records, path, "llamafactory", include_ids=True)
    rounds = [sum(m["role"] == "assistant" for m in r.messages) for r in records]
    assert report.rows == sum(rounds) and report.records == len(records)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    first = rows[: rounds[0]]
    messages = records[0].messages
    for k, row in enumerate(first):
        assert set(row) == {"instruction", "input", "output", "system", "history", "id"}
        assert row["id"] == f"bus#{k + 1}"
        assert row["system"] == prompts.system_prompt(4, "text")
        assert row["instruction"] == messages[1 + 2 * k]["content"]
        assert row["output"] == messages[2 + 2 * k]["content"]
        assert row["input"] == ""
        assert len(row["history"]) == k
    assert first[-1]["history"][0] == [messages[1]["content"], messages[2]["content"]]
    back = load_export(path)
    assert len(back) == report.rows
    assert back[rounds[0] - 1] == messages  # the last round's row is the whole conversation
    assert back[0] == messages[:3]


def test_sharegpt_round_trip(tmp_path: Path, records: list[TrajectoryRecord]):
    path = tmp_path / "sharegpt.json"
    export_records(records, path, "sharegpt")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, list) and len(data) == len(records)
    turns = data[0]["conversations"]
    assert [t["from"] for t in turns[:4]] == ["system", "human", "gpt", "human"]
    assert turns[1]["value"] == expected_conversation(records[0])[1]["content"]
    assert load_export(path) == [r.messages for r in records]


def test_an_empty_sharegpt_export_is_valid_json(tmp_path: Path):
    path = tmp_path / "empty.json"
    export_records([], path, "sharegpt")
    assert json.loads(path.read_text()) == []
    assert load_export(path) == []


def test_consecutive_user_turns_are_joined_for_pair_formats(
    tmp_path: Path, record: TrajectoryRecord
):
    forced = record.model_copy(deep=True)
    forced.messages.insert(-1, {"role": "user", "content": prompts.last_round_message()})
    rows = to_llamafactory(forced)
    assert rows[-1]["instruction"] == (
        f"{record.messages[-2]['content']}\n{prompts.last_round_message()}"
    )
    report = export_records([forced], tmp_path / "lf.jsonl", "llamafactory")
    assert report.joined_user_turns == 1
    export_records([forced], tmp_path / "trl.jsonl", "trl")
    assert load_export(tmp_path / "trl.jsonl") == [forced.messages]


def test_export_from_a_folder_filters_first(tmp_path: Path):
    items = synthetic_dataset(3, seed=5)
    questions = [i.question for i in items] + [
        Question(
            id="no-clue",
            video_id=items[0].question.video_id,
            question="Q?",
            choices=["a", "b"],
            answer="A",
        )
    ]
    generate_oracle(questions, MappingTrees([i.ctree for i in items]), tmp_path / "traj")
    report = export_trajectories(
        tmp_path / "traj", tmp_path / "out.jsonl", ExportConfig(format="trl")
    )
    assert report.records == 3 and report.rows == 3
    assert report.filtered is not None and report.filtered.dropped == {"skipped": 1}
    assert "3 trl rows from 3 trajectories" in report.summary()
    everything = export_trajectories(
        tmp_path / "traj", tmp_path / "all.jsonl", ExportConfig(filter=False)
    )
    assert everything.filtered is None
    with pytest.raises(ExportError, match="no-clue"):
        export_trajectories(
            tmp_path / "traj", tmp_path / "lf.jsonl", ExportConfig("llamafactory", filter=False)
        )
    assert not (tmp_path / "lf.jsonl").exists()


def test_dataset_info_entries():
    lf = dataset_info("lvr1", "lf.jsonl", "llamafactory")["lvr1"]
    assert lf["columns"]["history"] == "history" and lf["file_name"] == "lf.jsonl"
    share = dataset_info("lvr1", "s.json", "sharegpt")["lvr1"]
    assert share["formatting"] == "sharegpt" and share["tags"]["assistant_tag"] == "gpt"


def test_llamafactory_exports_are_entered_in_dataset_info(tmp_path: Path):
    items = synthetic_dataset(3, seed=3)
    trees = MappingTrees([i.ctree for i in items])
    generate_oracle([i.question for i in items], trees, tmp_path / "traj")
    registry = tmp_path / "dataset_info.json"
    registry.write_text(json.dumps({"alpaca_en": {"file_name": "alpaca_en.json"}}))
    lf = export_trajectories(tmp_path / "traj", tmp_path / "lf.jsonl", ExportConfig("llamafactory"))
    share = export_trajectories(tmp_path / "traj", tmp_path / "s.json", ExportConfig("sharegpt"))
    assert lf.registered == share.registered == registry
    assert "entered as 'lf' in" in lf.summary()
    entries = json.loads(registry.read_text())
    assert sorted(entries) == ["alpaca_en", "lf", "s"]  # other datasets are kept
    assert entries["lf"] == dataset_info("lf", "lf.jsonl", "llamafactory")["lf"]
    assert entries["s"]["formatting"] == "sharegpt"
    trl = export_trajectories(tmp_path / "traj", tmp_path / "t.jsonl", ExportConfig("trl"))
    assert trl.registered is None and "t" not in json.loads(registry.read_text())
    registry.write_text("[]")
    with pytest.raises(ExportError, match="is not a JSON object of datasets"):
        export_trajectories(tmp_path / "traj", tmp_path / "lf.jsonl", ExportConfig("llamafactory"))


def test_unreadable_exports_are_one_line_errors(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(ExportError, match="cannot tell the export format"):
        load_export(bad)
    bad.write_text("not json\n")
    with pytest.raises(ExportError, match="not JSON"):
        load_export(bad)
    bad.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(ExportError, match="row 1 is not trl"):
        load_export(bad)
    with pytest.raises(Exception, match="unknown export format"):
        ExportConfig(format="alpaca")  # type: ignore[arg-type]
