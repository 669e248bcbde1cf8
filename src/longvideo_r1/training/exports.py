"""Trajectories as training files: TRL conversational, LLaMA-Factory alpaca with history, ShareGPT.

Every export carries the conversation of :class:`~longvideo_r1.training.records.TrajectoryRecord`
unchanged: the system prompt, the first user message and the observations
are the strings :mod:`longvideo_r1.agent.prompts` renders, byte for byte, so a
model trained on them reads at inference exactly what it was trained on.
Tool observations are user turns, as the protocol sends them.

* ``trl`` (JSONL): ``{"messages": [system, user, assistant, user, ...]}``, one
  line per trajectory. Train with loss on the assistant turns only
  (TRL's ``assistant_only_loss``); the observations are context.
* ``llamafactory`` (JSONL): alpaca with history, one line per assistant
  round: ``instruction`` is the user turn the round answers, ``output`` the
  round's reply, ``history`` the earlier ``[user, assistant]`` pairs and
  ``system`` the system prompt. LLaMA-Factory puts the loss on ``output``
  only, so every step is trained once with its history masked, as the
  reference trained.
* ``sharegpt`` (JSON): a list of ``{"conversations": [{"from": "system" |
  "human" | "gpt", "value": ...}]}``.

The two pair-based formats need user and assistant turns to alternate. A
round that was told to answer now (or that a budget stopped) has two user
turns in a row; the filter drops such trajectories by default, and if they
are exported anyway the two turns are joined with a newline (counted in the
report). :func:`load_export` reads any of the three back into conversations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from longvideo_r1.errors import ConfigError, LVR1Error
from longvideo_r1.files import atomic_writer
from longvideo_r1.options import option
from longvideo_r1.training.filter import FilterConfig, FilterReport, filter_records
from longvideo_r1.training.records import TrajectoryRecord, load_records

ExportFormat = Literal["trl", "llamafactory", "sharegpt"]
FORMATS: tuple[ExportFormat, ...] = ("trl", "llamafactory", "sharegpt")
SUFFIXES: dict[str, str] = {"trl": ".jsonl", "llamafactory": ".jsonl", "sharegpt": ".json"}

Message = dict[str, str]
_SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
_ROLES_SHAREGPT = {v: k for k, v in _SHAREGPT_ROLES.items()}


class ExportError(LVR1Error):
    """An export could not be written or read back (one line, names the file and row)."""


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how."""

    format: ExportFormat = option(
        "trl",
        "trl (JSONL messages), llamafactory (alpaca with history, a row per round) or sharegpt.",
    )
    filter: bool = option(True, "Export only the trajectories the filter keeps (see FilterConfig).")
    include_ids: bool = option(
        False,
        "Add the record id (and round) to each row; some trainers refuse unknown columns.",
    )
    dataset_info: bool = option(
        True,
        "llamafactory and sharegpt: also enter the export in dataset_info.json beside it "
        "(LLaMA-Factory's dataset registry), named after the file without its extension.",
    )

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}: use {', '.join(FORMATS)}")


# conversations ---------------------------------------------------------------------------


def _turns(record: TrajectoryRecord) -> tuple[str, list[tuple[str, str]], int]:
    """System prompt, then ``(user, assistant)`` pairs; joined user turns counted."""
    messages = record.messages
    if len(messages) < 3 or messages[0]["role"] != "system":
        raise ExportError(f"record {record.id}: the conversation does not start with a system turn")
    pairs: list[tuple[str, str]] = []
    pending: list[str] = []
    joined = 0
    for message in messages[1:]:
        if message["role"] == "user":
            pending.append(message["content"])
        elif message["role"] == "assistant":
            if not pending:
                raise ExportError(f"record {record.id}: two assistant turns in a row")
            joined += len(pending) - 1
            pairs.append(("\n".join(pending), message["content"]))
            pending = []
        else:
            raise ExportError(f"record {record.id}: unexpected role {message['role']!r}")
    if pending or not pairs:
        raise ExportError(
            f"record {record.id}: the conversation does not end with an assistant turn"
        )
    return messages[0]["content"], pairs, joined


def to_trl(record: TrajectoryRecord, include_id: bool = False) -> dict[str, Any]:
    """One TRL conversational row: the messages as they were sent, every turn kept."""
    row: dict[str, Any] = {
        "messages": [{"role": m["role"], "content": m["content"]} for m in record.messages]
    }
    if include_id:
        row["id"] = record.id
    return row


def to_llamafactory(record: TrajectoryRecord, include_id: bool = False) -> list[dict[str, Any]]:
    """One alpaca row per assistant round, the earlier rounds as history."""
    system, pairs, _joined = _turns(record)
    rows = []
    for k, (user, assistant) in enumerate(pairs):
        row: dict[str, Any] = {
            "instruction": user,
            "input": "",
            "output": assistant,
            "system": system,
            "history": [[u, a] for u, a in pairs[:k]],
        }
        if include_id:
            row["id"] = f"{record.id}#{k + 1}"
        rows.append(row)
    return rows


def to_sharegpt(record: TrajectoryRecord, include_id: bool = False) -> dict[str, Any]:
    """One ShareGPT conversation: system, then alternating human and gpt turns."""
    system, pairs, _joined = _turns(record)
    turns = [{"from": "system", "value": system}]
    for user, assistant in pairs:
        turns += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
    row: dict[str, Any] = {"conversations": turns}
    if include_id:
        row["id"] = record.id
    return row


# writing -------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What an export wrote, and what the filter left out."""

    path: Path
    format: str
    records: int = 0
    rows: int = 0
    joined_user_turns: int = 0
    filtered: FilterReport | None = None
    registered: Path | None = None
    """The ``dataset_info.json`` the export was entered in, if any."""

    def summary(self) -> str:
        line = f"{self.rows} {self.format} rows from {self.records} trajectories -> {self.path}"
        if self.joined_user_turns:
            line += f" ({self.joined_user_turns} consecutive user turns joined)"
        if self.registered is not None:
            line += f", entered as {self.path.stem!r} in {self.registered}"
        if self.filtered is not None:
            line += f"; {self.filtered.summary()}"
        return line


def export_records(
    records: Iterable[TrajectoryRecord],
    path: str | os.PathLike[str],
    format: ExportFormat = "trl",
    include_ids: bool = False,
) -> ExportReport:
    """Write the records in one format, atomically (the file appears whole or not at all)."""
    ExportConfig(format=format)
    out = Path(path).expanduser()
    report = ExportReport(path=out, format=format)
    try:
        with atomic_writer(out) as handle:
            if format == "sharegpt":
                handle.write("[")
            for record in records:
                rows = _rows(record, format, include_ids)
                if format != "trl":
                    report.joined_user_turns += _turns(record)[2]
                for row in rows:
                    text = json.dumps(row, ensure_ascii=False)
                    if format == "sharegpt":
                        handle.write(("\n" if report.rows == 0 else ",\n") + text)
                    else:
                        handle.write(text + "\n")
                    report.rows += 1
                report.records += 1
            if format == "sharegpt":
                handle.write("\n]\n")
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return report


def _rows(record: TrajectoryRecord, format: str, include_ids: bool) -> list[dict[str, Any]]:
    if format == "trl":
        return [to_trl(record, include_ids)]
    if format == "llamafactory":
        return to_llamafactory(record, include_ids)
    return [to_sharegpt(record, include_ids)]


def export_trajectories(
    source: str | os.PathLike[str] | Iterable[TrajectoryRecord],
    path: str | os.PathLike[str],
    config: ExportConfig | None = None,
    filter_config: FilterConfig | None = None,
) -> ExportReport:
    """Filter a trajectory folder (or records) and write what is kept in one format."""
    config = config or ExportConfig()
    if isinstance(source, (str, os.PathLike)):
        records: list[TrajectoryRecord] = load_records(source)
    else:
        records = list(source)
    filtered = filter_records(records, filter_config) if config.filter else None
    chosen = filtered.kept if filtered is not None else records
    report = export_records(chosen, path, config.format, config.include_ids)
    report.filtered = filtered
    if config.dataset_info and config.format != "trl" and report.rows:
        report.registered = register_dataset(report.path, config.format)
    return report


def register_dataset(path: Path, format: ExportFormat) -> Path:
    """Enter an export in the ``dataset_info.json`` of its folder, keeping other entries.

    LLaMA-Factory finds datasets only through that file (``dataset_dir``), so
    an export without its entry is one manual step away from training.
    """
    registry = path.parent / "dataset_info.json"
    entries: dict[str, Any] = {}
    if registry.exists():
        try:
            entries = json.loads(registry.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read {registry}: {exc}") from None
        if not isinstance(entries, dict):
            raise ExportError(f"{registry} is not a JSON object of datasets")
    entries.update(dataset_info(path.stem, path.name, format))
    try:
        with atomic_writer(registry) as handle:
            handle.write(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ExportError(f"cannot write {registry}: {exc.strerror or exc}") from None
    return registry


def dataset_info(name: str, file_name: str, format: ExportFormat) -> dict[str, Any]:
    """The entry for LLaMA-Factory's ``dataset_info.json`` that reads an export as written."""
    if format == "llamafactory":
        columns = {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        }
        return {name: {"file_name": file_name, "columns": columns}}
    if format == "sharegpt":
        return {
            name: {
                "file_name": file_name,
                "formatting": "sharegpt",
                "columns": {"messages": "conversations"},
                "tags": {
                    "role_tag": "from",
                    "content_tag": "value",
                    "user_tag": "human",
                    "assistant_tag": "gpt",
                    "system_tag": "system",
                },
            }
        }
    raise ConfigError("dataset_info is for the llamafactory and sharegpt formats")


# reading back ----------------------------------------------------------------------------


def load_export(
    path: str | os.PathLike[str], format: ExportFormat | None = None
) -> list[list[Message]]:
    """The conversations of an export, as ``{"role", "content"}`` lists.

    TRL and ShareGPT give one conversation per trajectory; LLaMA-Factory one
    per round (system, history, the round's user turn and reply), which is
    exactly what the trainer sees for that row. The format is guessed from
    the content when not given.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot read {file}: {exc.strerror or exc}") from None
    rows = _parse_rows(file, text)
    if not rows:
        return []
    fmt = format or _guess(file, rows[0])
    reader = {"trl": _from_trl, "llamafactory": _from_llamafactory, "sharegpt": _from_sharegpt}
    out = []
    for number, row in enumerate(rows, 1):
        try:
            out.append(reader[fmt](row))
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{file}: row {number} is not {fmt}: {exc}") from None
    return out


def _parse_rows(file: Path, text: str) -> list[dict[str, Any]]:
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            value = json.loads(text)
            if not isinstance(value, list):
                raise ValueError("not a list")
            return value
        return [json.loads(line) for line in _lines(text)]
    except ValueError as exc:
        raise ExportError(f"{file} is not JSON or JSONL: {exc}") from None


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip():
            yield line


def _guess(file: Path, row: dict[str, Any]) -> ExportFormat:
    if "messages" in row:
        return "trl"
    if "instruction" in row and "output" in row:
        return "llamafactory"
    if "conversations" in row:
        return "sharegpt"
    raise ExportError(f"{file}: cannot tell the export format from keys {sorted(row)[:5]}")


def _from_trl(row: dict[str, Any]) -> list[Message]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]


def _from_llamafactory(row: dict[str, Any]) -> list[Message]:
    out = [{"role": "system", "content": str(row["system"])}] if row.get("system") else []
    for user, assistant in row.get("history") or []:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    prompt = str(row["instruction"])
    if row.get("input"):
        prompt = f"{prompt}\n{row['input']}"
    out += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": str(row["output"])},
    ]
    return out


def _from_sharegpt(row: dict[str, Any]) -> list[Message]:
    return [
        {"role": _ROLES_SHAREGPT[str(t["from"])], "content": str(t["value"])}
        for t in row["conversations"]
    ]
