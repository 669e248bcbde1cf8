"""Shared pieces of the server tests: a data folder, a live app on a free port, requests.

The app runs in a real uvicorn on 127.0.0.1 (port chosen by the OS) in a
thread, and is spoken to over HTTP with the standard library, as a browser
or ``curl`` would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from helpers_eval import settings_for

from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.session import make_reasoning_backend
from longvideo_r1.server.app import ServeOptions, create_app
from longvideo_r1.server.paths import DataDir


def make_data_dir(folder: Path, video: Path) -> Path:
    """A data folder with the test video and its subtitles, a text file, a hidden file,
    and a link to a video outside the folder."""
    folder.mkdir(parents=True)
    for path in (video, video.with_suffix(".srt")):
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not a video\n")
    (folder / "fake.mp4").write_text("not a video either\n")
    (folder / ".hidden.mp4").write_bytes(b"")
    outside = folder.parent / "outside"
    outside.mkdir()
    shutil.copy(video.with_suffix(".srt"), outside / "secret.srt")
    (folder / "linked-out.mp4").symlink_to(video)
    (folder / "secret.srt").symlink_to(outside / "secret.srt")
    return folder


def options_for(
    data: Path, store: Path, traces: list[Path], reasoning: str | None = None, **extra: Any
) -> ServeOptions:
    """Options as ``lvr1 serve`` builds them: imported captions, a scripted reasoning server."""
    settings = settings_for(store, reasoning=reasoning)
    return ServeOptions(
        data=DataDir.open(data),
        settings=settings,
        agent=extra.pop("agent", AgentConfig(max_rounds=4)),
        trace_dirs=traces,
        backend_factory=lambda: make_reasoning_backend(settings),
        **extra,
    )


@contextmanager
def live(options: ServeOptions) -> Iterator[str]:
    """The app served on a free port; yields its base URL, stops it afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(create_app(options), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | Iterable[bytes] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON or bytes, headers) of one request; an HTTP error is returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, payload, got = exc.code, exc.read(), dict(exc.headers)
    if got.get("content-type", "").startswith("application/json"):
        return status, json.loads(payload), got
    return status, payload, got


def events(url: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every event of a server-sent stream, read until the server ends it."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    found = []
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response:
            text = line.decode().rstrip("\n")
            if text.startswith("data: "):
                found.append(json.loads(text[6:]))
    return found
