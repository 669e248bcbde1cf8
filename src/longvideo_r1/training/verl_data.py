"""Questions and their caption trees as rows of a verl dataset (Parquet).

verl's RL trainer reads its prompts from Parquet through ``RLHFDataset``: a
``prompt`` column of chat messages, a ``data_source``, a ``reward_model``
column and a free ``extra_info`` mapping, which the dataset hands to the
agent loop as keyword arguments. Our navigator builds its own prompt from
the caption tree, so a row carries what the navigator needs instead: the
question (with its clue intervals, for the reward), a reference to the
video's caption tree, and how video_qa is answered. ``prompt`` holds the
question alone: verl only uses it to drop overlong rows and to log.

A tree is referenced in one of two ways:

* ``store``: the caption store's content keys (fingerprint and captioner
  identity), never a path, so a row made on one machine finds the same
  captions in the store of another (the store is the agent loop's
  settings');
* ``inline``: the tree's geometry and every caption, for synthetic trees,
  which exist nowhere else (tens of kilobytes a row).

Nothing here imports verl: rows are made by ``lvr1 data verl`` on any
machine, and :func:`episode_from_row` is what the verl agent loop
(:mod:`longvideo_r1.training.verl_agent`) calls to turn a row back into a
tree, a question and a video_qa answerer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from longvideo_r1.agent.tools import ClipAnswerer, VLMClipAnswerer
from longvideo_r1.captions.captioner import VLMClipQA
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.config import Settings
from longvideo_r1.errors import ConfigError
from longvideo_r1.files import atomic_path
from longvideo_r1.llm.client import ChatClient
from longvideo_r1.media.subtitles import load_subtitles
from longvideo_r1.media.video import Video
from longvideo_r1.questions.schema import Question
from longvideo_r1.training.oracle import synthetic_answerer
from longvideo_r1.training.records import TrajectoryError
from longvideo_r1.training.trees import CaptionTree, TreeSource, caption_answerer
from longvideo_r1.tree import Tree, format_node_id, parse_node_id

AGENT_NAME = "lvr1_navigator"
"""The agent loop every row asks for (verl reads the row's ``agent_name``)."""

DATA_SOURCE = "longvideo_r1"
ABILITY = "long-video navigation"

Answerer = Literal["vlm", "captions", "synthetic"]
ANSWERERS: tuple[str, ...] = get_args(Answerer)
"""How video_qa is answered in a row's episodes: a vision model on the clip (the
settings' video_qa endpoint, e.g. a VLM served by vLLM), the leaf's own caption, or
the synthetic tree's right option (what the oracle uses)."""


# rows -----------------------------------------------------------------------------------------


def inline_tree(ctree: CaptionTree) -> dict[str, Any]:
    """A tree reference that holds the tree itself: geometry and every caption."""
    return {
        "kind": "inline",
        "video_id": ctree.video_id,
        "duration": ctree.tree.duration,
        "frames": ctree.tree.n_frames,
        "width": ctree.tree.width,
        "fingerprint": ctree.fingerprint,
        "identity": ctree.identity,
        "captions": [[format_node_id(k), v] for k, v in sorted(ctree.captions.items())],
    }


def store_tree(ctree: CaptionTree) -> dict[str, Any]:
    """A tree reference by the store's content keys: any store holding them serves the row."""
    return {
        "kind": "store",
        "video_id": ctree.video_id,
        "fingerprint": ctree.fingerprint,
        "identity": ctree.identity,
        "width": ctree.tree.width,
    }


def verl_row(
    question: Question,
    tree_ref: Mapping[str, Any],
    answerer: Answerer,
    index: int,
    split: str = "train",
) -> dict[str, Any]:
    """One Parquet row: what ``RLHFDataset`` reads, with the episode under ``extra_info``."""
    if answerer not in ANSWERERS:
        raise ConfigError(f"video_qa answerer {answerer!r} is not one of {', '.join(ANSWERERS)}")
    return {
        "data_source": DATA_SOURCE,
        "agent_name": AGENT_NAME,
        "prompt": [{"role": "user", "content": question.question}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": question.answer or ""},
        "extra_info": {
            "index": index,
            "split": split,
            "question": _json_ready(question.to_dict()),
            "tree": dict(tree_ref),
            "answerer": answerer,
        },
    }


def _json_ready(data: dict[str, Any]) -> dict[str, Any]:
    """Parquet keeps a struct's keys and types per column: empty maps and None-only
    fields would be dropped or typed as null, so ``extra`` travels as sorted pairs."""
    out = dict(data)
    out["extra"] = [[str(k), str(v)] for k, v in sorted(data.get("extra", {}).items())]
    return out


def rows_for(
    questions: Sequence[Question],
    trees: TreeSource,
    answerer: Answerer,
    inline: bool,
    split: str = "train",
    start: int = 0,
) -> list[dict[str, Any]]:
    """The rows of ``questions``; every tree is looked up now, so a missing one fails here."""
    out = []
    for i, question in enumerate(questions):
        ctree = trees.get(question)
        ref = inline_tree(ctree) if inline else store_tree(ctree)
        out.append(verl_row(question, ref, answerer, start + i, split))
    return out


def write_parquet(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` as one Parquet file, atomically; an empty set is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ConfigError(f"{path}: no rows to write")
    path = Path(path).expanduser()
    table = pa.Table.from_pylist([dict(r) for r in rows])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a Parquet file written by :func:`write_parquet` (as verl would see them)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(Path(path).expanduser()).to_pylist()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


# rows back into episodes ------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """What one row becomes on the rollout side: the tree, the question, video_qa's answerer.

    ``close`` releases what the answerer opened (a video file); call it when
    the episode's rollouts are done.
    """

    ctree: CaptionTree
    question: Question
    answerer: ClipAnswerer
    close: Callable[[], None]


def question_from_row(extra_info: Mapping[str, Any]) -> Question:
    """The row's question, clue intervals and all; a malformed one fails in one line."""
    data = _plain(extra_info.get("question"))
    if not isinstance(data, dict):
        raise TrajectoryError("the row has no question under extra_info.question")
    data["extra"] = {str(k): v for k, v in data.get("extra") or []}
    data["clue_intervals"] = [tuple(c) for c in data.get("clue_intervals") or []]
    try:
        return Question(**data)
    except (TypeError, ValueError) as exc:
        raise TrajectoryError(f"the row's question cannot be read: {exc}") from None


def tree_from_row(
    extra_info: Mapping[str, Any], store: Callable[[], CaptionStore] | None = None
) -> CaptionTree:
    """The row's caption tree: rebuilt from the row, or read from ``store()`` by content keys."""
    ref = _plain(extra_info.get("tree"))
    if not isinstance(ref, dict) or ref.get("kind") not in ("inline", "store"):
        raise TrajectoryError("the row has no tree reference (extra_info.tree.kind inline|store)")
    if ref["kind"] == "inline":
        tree = Tree.for_video(float(ref["duration"]), int(ref["frames"]), width=int(ref["width"]))
        captions = {parse_node_id(k): v for k, v in ref["captions"]}
        return CaptionTree(
            str(ref["video_id"]), tree, captions, str(ref["fingerprint"]), str(ref["identity"])
        )
    if store is None:
        raise TrajectoryError("the row names a caption store tree, and no store is configured")
    ctree = CaptionTree.from_store(
        store(), str(ref["fingerprint"]), str(ref["identity"]), str(ref["video_id"]),
        width=int(ref["width"]),
    )  # fmt: skip
    missing = ctree.missing()
    if missing:
        raise TrajectoryError(
            f"video {ctree.video_id}: {len(missing)} captions missing under {ctree.identity}, "
            f"e.g. {format_node_id(missing[0])}; caption it first"
        )
    return ctree


def episode_from_row(
    extra_info: Mapping[str, Any],
    settings: Settings,
    answerer: str = "row",
    videos_dir: str | None = None,
    store: Callable[[], CaptionStore] | None = None,
) -> Episode:
    """Tree, question and video_qa answerer of one row.

    ``answerer`` overrides the row's (``row`` keeps it). ``vlm`` opens the
    video (the store's path for it, or ``videos_dir`` / the question's file)
    and asks the settings' video_qa endpoint, as ``lvr1 ask`` does.
    """
    question = question_from_row(extra_info)
    ctree = tree_from_row(extra_info, store)
    how = str(extra_info.get("answerer") or "captions") if answerer == "row" else answerer
    if how == "synthetic":
        return Episode(ctree, question, synthetic_answerer(ctree, question), _nothing)
    if how == "captions":
        return Episode(ctree, question, caption_answerer(ctree, question), _nothing)
    if how != "vlm":
        raise ConfigError(f"video_qa answerer {how!r} is not one of row, {', '.join(ANSWERERS)}")
    settings.video_qa.require("video_qa")
    path = question.video_path(videos_dir) if videos_dir else Path(ctree.path)
    if not str(path) or not path.is_file():
        raise TrajectoryError(f"video {question.video_id}: no video file at {str(path)!r}")
    video = Video.open(path)
    try:
        cues = load_subtitles(question.subtitles) if question.subtitles else []
        client = ChatClient.from_settings(settings.video_qa, "video_qa")
        vlm = VLMClipAnswerer(VLMClipQA(client), video, ctree.tree, cues)
    except BaseException:
        video.close()
        raise
    return Episode(ctree, question, vlm, video.close)


def _nothing() -> None:
    """An episode whose answerer holds nothing open."""


def _plain(value: Any) -> Any:
    """verl hands rows over as numpy arrays and OmegaConf nodes in places; lists and dicts."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def split_rows(
    items: Iterable[dict[str, Any]], val: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The last ``val`` rows held out for validation (marked ``split: val``), the rest train."""
    rows = list(items)
    if val < 0 or val >= len(rows):
        raise ConfigError(f"--val {val}: keep at least one of {len(rows)} rows for training")
    train, held = rows[: len(rows) - val], rows[len(rows) - val :]
    for row in held:
        row["extra_info"]["split"] = "val"
    return train, held
