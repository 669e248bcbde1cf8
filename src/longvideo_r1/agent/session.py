"""Wiring: settings -> video, tree, store, captioner, tools, backends, navigator.

The CLI, the demo and (later) the evaluator all need the same objects built
the same way from one :class:`~longvideo_r1.config.Settings`; this module is
the one place that builds them, so a run from the command line and a run in a
benchmark use identical tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.navigator import Navigator
from longvideo_r1.agent.tools import (
    CaptionClipAnswerer,
    GetCaption,
    ToolBox,
    VideoQA,
    VLMClipAnswerer,
)
from longvideo_r1.captions.captioner import Captioner, VLMCaptioner, VLMClipQA
from longvideo_r1.captions.embedded import EmbeddedCaptioner
from longvideo_r1.captions.reference import ImportedCaptioner
from longvideo_r1.captions.service import CaptionService
from longvideo_r1.captions.store import CaptionStore
from longvideo_r1.config import Settings, navigable
from longvideo_r1.errors import ConfigError
from longvideo_r1.llm.backends import ChatBackend
from longvideo_r1.llm.client import ChatClient
from longvideo_r1.llm.factory import backend_from_settings
from longvideo_r1.media.subtitles import Cue, load_subtitles
from longvideo_r1.media.video import Video
from longvideo_r1.tree import Tree


def make_captioner(settings: Settings) -> Captioner:
    """The captioner named by ``settings.captioner``, refusing a setting it would ignore."""
    name = settings.captioner
    if name == "embedded":
        return EmbeddedCaptioner(navigable=navigable(settings))
    if navigable(settings):
        raise ConfigError(
            f"navigable captions are made by the embedded captioner, not {name!r}: drop "
            "--navigable-captions (or LVR1_NAVIGABLE_CAPTIONS, navigable_captions in the config)"
        )
    if name == "vlm":
        return VLMCaptioner(ChatClient.from_settings(settings.caption, "caption"))
    if name.startswith("imported:"):
        return ImportedCaptioner(name)
    raise ConfigError(f"unknown captioner {name!r}: use 'embedded', 'vlm' or 'imported:NAME'")


def make_reasoning_backend(settings: Settings) -> ChatBackend:
    """The navigator's model: an OpenAI-compatible server if configured, else embedded.

    Without a base URL, ``reasoning.model`` may name an embedded model (a
    registry name, an alias or a GGUF path); unset means the default.
    """
    return backend_from_settings(settings.reasoning, "reasoning")


@dataclass
class VideoSession:
    """One opened video with its tree, cues and caption service; close when done."""

    settings: Settings
    video: Video
    tree: Tree
    store: CaptionStore
    captioner: Captioner
    service: CaptionService
    cues: list[Cue] = field(default_factory=list)

    @classmethod
    def open(
        cls, path: str | Path, settings: Settings, subtitles: str | Path | None = None
    ) -> VideoSession:
        video = Video.open(path)
        try:
            tree = Tree.for_video(
                video.info.duration,
                video.info.n_frames,
                min_width=settings.min_width,
                max_width=settings.max_width,
            )
            sub_path = Path(subtitles) if subtitles else video.subtitle_path()
            cues = load_subtitles(sub_path) if sub_path else []
            store = CaptionStore(settings.store_path())
            captioner = make_captioner(settings)
            service = CaptionService(video, tree, captioner, store, cues=cues)
        except BaseException:
            video.close()
            raise
        return cls(settings, video, tree, store, captioner, service, cues)

    def cached_captions(self) -> dict[tuple[int, ...], str]:
        records = self.store.list_captions(
            self.video.fingerprint, self.captioner.identity, width=self.tree.width
        )
        return {rec.node_id: rec.text for rec in records}

    def toolbox(self, require_fetched_leaf: bool = True) -> ToolBox:
        """Fresh tools over this video: get_caption through the cache, video_qa by role."""
        endpoint = self.settings.video_qa
        if endpoint.base_url:
            client = ChatClient.from_settings(endpoint, "video_qa")
            answerer = VLMClipAnswerer(VLMClipQA(client), self.video, self.tree, self.cues)
        else:
            answerer = CaptionClipAnswerer(self.service)
        return ToolBox(
            self.tree,
            GetCaption(self.service),
            VideoQA(answerer, self.tree),
            require_fetched_leaf=require_fetched_leaf,
        )

    def navigator(self, backend: ChatBackend, config: AgentConfig | None = None) -> Navigator:
        config = config or AgentConfig()
        return Navigator(backend, self.toolbox(config.require_fetched_leaf), self.tree, config)

    def close(self) -> None:
        self.store.close()
        self.video.close()

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tree_payload(video, tree: Tree, captions: dict) -> dict[str, Any]:
    """The JSON form of ``lvr1 tree`` and of the web page's timeline: geometry plus whatever
    captions are cached."""
    info = video.info
    return {
        "video": str(info.path),
        "fingerprint": video.fingerprint,
        "duration": info.duration,
        "n_frames": info.n_frames,
        "fps": info.fps,
        "width": tree.width,
        "nodes": [
            {
                "id": list(node.id),
                "level": node.level,
                "start": node.start,
                "end": node.end,
                "frame_start": node.frame_start,
                "frame_end": node.frame_end,
                "caption": captions.get(node.id),
            }
            for node in tree.walk()
        ],
    }
