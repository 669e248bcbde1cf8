"""``lvr1 serve``: the HTTP API and the page that shows the agent's path through a video.

The server takes the flags ``lvr1 ask`` takes (captioner, agent, tree,
endpoints), so a question asked on the page runs as it would on the command
line, and keeps its traces where ``ask`` keeps them. It listens on 127.0.0.1
unless ``--host`` says otherwise, and then only with a token.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from longvideo_r1.agent.session import make_reasoning_backend
from longvideo_r1.agent.trace import default_trace_dir
from longvideo_r1.cli.common import (
    _agent_config,
    _agent_options,
    _captioner_option,
    _endpoint_options,
    _settings,
    _tree_options,
)
from longvideo_r1.errors import ConfigError
from longvideo_r1.server.app import LOOPBACK_HOSTS, ServeOptions, create_app
from longvideo_r1.server.paths import DataDir
from longvideo_r1.server.runs import RunQueue
from longvideo_r1.testing.sources import default_data_dir


def add_serve_parser(sub, common: argparse.ArgumentParser) -> None:
    """``lvr1 serve``: the API and the live page."""
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="serve an HTTP API and a page that shows the agent navigating a video, live",
        description="Serve the videos of a data folder: their caption trees, questions answered "
        "live (the rounds stream to the page as they happen), and the traces of earlier runs "
        "(those of lvr1 ask and, with --traces, of lvr1 eval), replayable. Open the printed "
        "address in a browser. Questions run one at a time, on the embedded CPU models unless "
        "endpoints are given.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    serve.add_argument(
        "--data",
        metavar="DIR",
        help="the folder whose videos are served; nothing outside it is read "
        "(default data/ of a checkout or $LVR1_DATA)",
    )
    serve.add_argument(
        "--token",
        metavar="TOKEN",
        help="every API request must carry it (Authorization: Bearer TOKEN, or ?token= in the "
        "page's address), 8 characters or more; required with a --host other than 127.0.0.1 "
        "($LVR1_TOKEN)",
    )
    serve.add_argument(
        "--traces",
        action="append",
        metavar="DIR",
        default=[],
        help="another folder of traces to list, e.g. an lvr1 eval --out folder (repeatable; "
        "the server's own go beside the caption cache, as lvr1 ask's do)",
    )
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=2048,
        metavar="MB",
        help="largest video upload in MiB (default 2048)",
    )
    _captioner_option(serve)
    _agent_options(serve)
    _tree_options(serve)
    _endpoint_options(serve, "reasoning", "reasoning model")
    _endpoint_options(serve, "video_qa", "video_qa vision model")
    _endpoint_options(serve, "caption", "caption")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host} lets other machines in: give --token TOKEN (or $LVR1_TOKEN) too"
        )
    if token is not None and len(token) < 8:
        raise ConfigError("the token is too short: use 8 characters or more")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, so a port in use is one line before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn  # the server's own dependency; the other commands start without it

    token = args.token or os.environ.get("LVR1_TOKEN") or None
    check_exposure(args.host, token)
    if not args.max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb must be more than 0, got {args.max_upload_mb}")
    settings = _settings(args)
    config = _agent_config(args, settings)
    data = DataDir.open(args.data or default_data_dir())
    own = default_trace_dir(settings.store_path())
    own.mkdir(parents=True, exist_ok=True)
    options = ServeOptions(
        data=data,
        settings=settings,
        agent=config,
        trace_dirs=[own, *args.traces],
        backend_factory=lambda: make_reasoning_backend(settings),
        token=token,
        max_upload=int(args.max_upload_mb * (1 << 20)),
        allowed_hosts=list(LOOPBACK_HOSTS) if is_loopback(args.host) else None,
    )
    sock = bind(args.host, args.port)
    app = create_app(options)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    query = f"?token={token}" if token else ""
    print(f"lvr1 serve: http://{shown}:{port}/{query}", flush=True)
    print(f"  videos from {data.root}; traces in {own}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.handle_exit = _streams_end_first(server.handle_exit, app.state.runs)
    server.run(sockets=[sock])
    return 0


def _streams_end_first(handle_exit, runs: RunQueue):
    """Ctrl-C ends the open event streams first: uvicorn waits for open connections, and a
    stream stays open until its run ends."""

    def handle(sig, frame) -> None:
        runs.let_readers_go()
        handle_exit(sig, frame)

    return handle
