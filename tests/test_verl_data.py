"""verl dataset rows: questions and caption trees to Parquet and back, without verl."""

from __future__ import annotations

import pytest

pytest.importorskip("pyarrow")

from longvideo_r1.captions.records import CaptionRecord, VideoRecord  # noqa: E402
from longvideo_r1.captions.store import CaptionStore  # noqa: E402
from longvideo_r1.cli.main import main  # noqa: E402
from longvideo_r1.config import Settings  # noqa: E402
from longvideo_r1.errors import ConfigError  # noqa: E402
from longvideo_r1.training.records import TrajectoryError  # noqa: E402
from longvideo_r1.training.synthetic import synthetic_dataset  # noqa: E402
from longvideo_r1.training.trees import MappingTrees  # noqa: E402
from longvideo_r1.training.verl_data import (  # noqa: E402
    AGENT_NAME,
    episode_from_row,
    question_from_row,
    read_rows,
    rows_for,
    split_rows,
    store_tree,
    tree_from_row,
    verl_row,
    write_parquet,
)

ITEMS = synthetic_dataset(3, seed=5)


def _rows(inline: bool = True, answerer: str = "synthetic"):
    questions = [i.question for i in ITEMS]
    return rows_for(questions, MappingTrees([i.ctree for i in ITEMS]), answerer, inline)


def test_rows_round_trip_through_parquet_with_question_and_tree(tmp_path):
    path = write_parquet(_rows(), tmp_path / "train.parquet")
    rows = read_rows(path)
    assert [r["agent_name"] for r in rows] == [AGENT_NAME] * 3
    for row, item in zip(rows, ITEMS, strict=True):
        assert row["prompt"] == [{"role": "user", "content": item.question.question}]
        assert row["reward_model"]["ground_truth"] == item.question.answer
        assert question_from_row(row["extra_info"]) == item.question
        ctree = tree_from_row(row["extra_info"])
        assert ctree.captions == dict(item.ctree.captions)
        assert (ctree.tree.duration, ctree.tree.n_frames, ctree.tree.width) == (
            item.ctree.tree.duration,
            item.ctree.tree.n_frames,
            item.ctree.tree.width,
        )
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2]


def test_a_store_row_names_content_keys_and_any_store_with_them_serves_it(tmp_path):
    item = ITEMS[0]
    tree = item.ctree.tree
    with CaptionStore(tmp_path / "store.sqlite") as store:
        store.register_video(
            VideoRecord(
                item.ctree.fingerprint, "/elsewhere/v.mp4", tree.duration, tree.n_frames, tree.width
            )
        )
        records = [
            CaptionRecord(item.ctree.fingerprint, tree.width, k, "cap-v1", v)
            for k, v in item.ctree.captions.items()
        ]
        store.put_captions(records)
        ref = store_tree(tree_from_row({"tree": _inline(item)}))
        assert "store" not in ref and "path" not in ref  # content keys, never a path
        row = verl_row(item.question, {**ref, "identity": "cap-v1"}, "captions", 0)
        back = tree_from_row(row["extra_info"], lambda: store)
        assert back.captions == dict(item.ctree.captions)
        store.delete_captions(item.ctree.fingerprint, "cap-v1", nodes=[(1,)])
        with pytest.raises(TrajectoryError, match="captions missing"):
            tree_from_row(row["extra_info"], lambda: store)
    with pytest.raises(TrajectoryError, match="no store"):
        tree_from_row(row["extra_info"])


def _inline(item):
    return _rows()[ITEMS.index(item)]["extra_info"]["tree"]


def test_episode_answerer_follows_the_row_or_the_override(tmp_path):
    row = write_parquet(_rows(answerer="synthetic"), tmp_path / "t.parquet")
    extra = read_rows(row)[0]["extra_info"]
    settings = Settings(store=tmp_path / "s.sqlite")
    assert "synthetic" in episode_from_row(extra, settings).answerer.identity
    assert episode_from_row(extra, settings, "captions").answerer.identity != (
        episode_from_row(extra, settings).answerer.identity
    )
    with pytest.raises(ConfigError, match="video_qa endpoint needs a base URL"):
        episode_from_row(extra, settings, "vlm")
    with pytest.raises(ConfigError, match="not one of"):
        episode_from_row(extra, settings, "oracle")


def test_bad_rows_and_sets_fail_in_one_line(tmp_path):
    with pytest.raises(TrajectoryError, match="no question"):
        question_from_row({})
    with pytest.raises(TrajectoryError, match="tree reference"):
        tree_from_row({"tree": {"kind": "url"}})
    with pytest.raises(ConfigError, match="no rows"):
        write_parquet([], tmp_path / "empty.parquet")
    with pytest.raises(ConfigError, match="cannot read"):
        read_rows(tmp_path / "missing.parquet")
    with pytest.raises(ConfigError, match="not one of"):
        verl_row(ITEMS[0].question, {}, "oracle", 0)
    with pytest.raises(ConfigError, match="at least one"):
        split_rows(_rows(), 3)


def test_split_marks_the_held_out_rows():
    train, val = split_rows(_rows(), 1)
    assert [r["extra_info"]["split"] for r in train] == ["train", "train"]
    assert [r["extra_info"]["split"] for r in val] == ["val"]


def test_lvr1_data_verl_writes_train_and_val_parquet(tmp_path, capsys):
    out = tmp_path / "verl"
    assert main(["data", "verl", "synthetic:5", "--out", str(out), "--val", "2"]) == 0
    train, val = read_rows(out / "train.parquet"), read_rows(out / "val.parquet")
    assert (len(train), len(val)) == (3, 2)
    assert {r["extra_info"]["answerer"] for r in train + val} == {"synthetic"}
    assert {r["extra_info"]["tree"]["kind"] for r in train} == {"inline"}
    assert "3 train rows" in capsys.readouterr().out
    assert main(["data", "verl", "synthetic:2", "--out", str(out), "--val", "2"]) == 2
    assert "keep at least one" in capsys.readouterr().err
