"""scripts/plot_grpo.py: the step log read back, the curves, the before/after table, the PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_grpo.py"


@pytest.fixture(scope="module")
def plot_grpo():
    spec = importlib.util.spec_from_file_location("plot_grpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(step: int, reward: float, **extra: float) -> dict:
    return {
        "step": step,
        "loss": 0.01,
        "reward": reward,
        "reward_std": 0.5,
        "rewards/accuracy/mean": reward / 2,
        "rewards/video_qa/mean": 0.0,
        "nav/format": 0.2,
        "nav/answered": 0.75,
        "nav/rounds": 4.0,
        **extra,
    }


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_a_resumed_step_keeps_its_last_row_and_steps_come_in_order(plot_grpo, tmp_path):
    log = tmp_path / "steps.jsonl"
    _write(log, [_row(2, 0.5), _row(1, 0.1), _row(2, 0.9)])
    rows = plot_grpo.read_steps(log)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["reward"] == 0.9


def test_series_reads_trl_terms_falls_back_to_nav_and_drops_terms_that_never_paid(plot_grpo):
    curves = plot_grpo.series([_row(1, 1.0), _row(2, 2.0)])
    assert curves["step"] == [1.0, 2.0]
    assert curves["reward"] == [1.0, 2.0]
    assert curves["accuracy"] == [0.5, 1.0]  # TRL's rewards/<term>/mean
    assert curves["format"] == [0.2, 0.2]  # only under nav/
    assert "video_qa" not in curves and "grounding_f1" not in curves
    assert curves["answered"] == [0.75, 0.75] and curves["rounds"] == [4.0, 4.0]


def test_the_total_falls_back_to_the_rollouts_own_mean(plot_grpo):
    row = _row(1, 0.0)
    del row["reward"]
    row["nav/mean_reward"] = 0.4
    assert plot_grpo.series([row])["reward"] == [0.4]


def test_the_trailing_mean_never_looks_ahead(plot_grpo):
    assert plot_grpo.moving_mean([0.0, 2.0, 4.0, 6.0], 2) == [0.0, 1.0, 3.0, 5.0]


def test_the_table_shows_each_figure_before_and_after(plot_grpo):
    before = {
        "questions": 8,
        "mean_reward": 0.25,
        "accuracy": 0.125,
        "grounding_f1": 0.0,
        "rounds": 5.0,
        "answered": 1.0,
    }
    after = {**before, "mean_reward": 0.5, "accuracy": 0.375, "rounds": 3.5}
    text = plot_grpo.table(before, after)
    assert "| held-out (8 questions) | before | after |" in text
    assert "| mean reward | 0.250 | 0.500 |" in text
    assert "| accuracy | 12% | 38% |" in text
    assert "| rounds per question | 5.00 | 3.50 |" in text


def test_main_writes_the_png_and_prints_the_table(plot_grpo, tmp_path, capsys):
    _write(tmp_path / "steps.jsonl", [_row(s, 0.1 * s) for s in range(1, 7)])
    summary = {
        "questions": 2,
        "mean_reward": 0.1,
        "accuracy": 0.5,
        "grounding_f1": 0.2,
        "rounds": 3.0,
        "answered": 1.0,
    }
    for name in ("eval-before.json", "eval-after.json"):
        (tmp_path / name).write_text(json.dumps(summary), encoding="utf-8")
    out = tmp_path / "img" / "curve.png"
    assert plot_grpo.main([str(tmp_path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "6 steps" in printed and "| accuracy | 50% | 50% |" in printed


def test_a_folder_without_a_step_log_fails_in_one_line(plot_grpo, tmp_path, capsys):
    assert plot_grpo.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _played(step: int, answer: str, right: str, kinds: list[str], f1: float = 0.0) -> dict:
    return {
        "step": step,
        "question": "synthetic-1",
        "answer": answer,
        "right": right,
        "rewards": {"accuracy": float(answer == right), "grounding_f1": f1},
        "rounds": [{"kind": k, "output": "..."} for k in kinds],
    }


def test_the_behaviour_table_counts_what_each_steps_rollouts_did(plot_grpo):
    rows = [
        _played(1, "A", "A", ["get_caption", "answer"]),
        _played(1, "B", "A", ["get_caption", "video_qa", "answer"], f1=0.5),
        _played(2, "A", "A", ["get_caption", "video_qa", "answer"]),
        _played(2, "A", "A", ["video_qa", "answer"]),
    ]
    lines = plot_grpo.behaviour(rows).splitlines()
    assert lines[2] == "| 1 | 1/2 | 1/2 | 0/1 | 1/2 | 2.50 |"
    assert lines[3] == "| 2 | 2/2 | 2/2 | 2/2 | 0/2 | 2.50 |"
