"""The names of the models a method's answers depend on, as run manifests record them.

The agent and the baselines that read captions name their caption and video_qa
models the same way, so both read them from here, below either of them.
"""

from __future__ import annotations

from longvideo_r1.agent.session import make_captioner
from longvideo_r1.config import Settings


def caption_identity(settings: Settings) -> str:
    return str(make_captioner(settings).identity)


def video_qa_identity(settings: Settings) -> str:
    """Named as the tools name it: a VLM, or the captioner's notes when there is none."""
    if settings.video_qa.base_url:
        return f"vlm:{settings.video_qa.model}"
    return f"captions:{caption_identity(settings)}"
