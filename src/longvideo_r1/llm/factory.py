"""Which backend a role's settings ask for.

Apart from :mod:`longvideo_r1.llm.backends` because it needs both
implementations, and they need the interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from longvideo_r1.llm.backends import ChatBackend
from longvideo_r1.llm.embedded import EmbeddedBackend
from longvideo_r1.llm.server import OpenAIBackend

if TYPE_CHECKING:
    from longvideo_r1.config import EndpointSettings


def backend_from_settings(
    settings: EndpointSettings, role: str = "reasoning", **options: Any
) -> ChatBackend:
    """The backend a role's settings ask for: servers when a base URL is set, else embedded.

    Without a base URL, ``model`` names the embedded model (a registry name,
    an alias such as ``smollm2-135m``, or a GGUF path); unset means the
    default Qwen2.5-Coder-0.5B assembled from PyPI.
    """
    if settings.base_url:
        return OpenAIBackend.from_settings(settings, role, **options)
    options.setdefault("max_tokens", settings.max_tokens)
    if settings.context:
        options.setdefault("n_ctx", settings.context)
    return EmbeddedBackend.from_model(settings.model, **options)
