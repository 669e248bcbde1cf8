"""The HTTP API and the page of ``lvr1 serve``: one FastAPI app over the CLI's own objects.

Routes (all JSON unless said; every ``/api`` route wants the token when the
server has one, as ``Authorization: Bearer T`` or ``?token=T``):

* ``GET /`` the page; ``/static/*`` its script and style.
* ``GET /api/info`` what the server runs with.
* ``GET /api/videos`` the videos under the data folder; ``POST /api/videos``
  ``{"path": ...}`` registers one named inside it; ``POST /api/videos/upload?name=N``
  takes the raw file as the body.
* ``GET /api/videos/{id}`` its tree with spans and cached captions;
  ``/file`` the video (range requests); ``/thumbs/{node}`` a JPEG frame.
* ``POST /api/videos/{id}/ask`` ``{"question", "choices"}`` queues a question;
  ``GET /api/runs/{run}/events`` its events as server-sent events.
* ``GET /api/traces[?video=id]`` stored traces; ``/api/traces/{id}`` one;
  ``/api/traces/{id}/events`` it as the events of a run, for replay.

Errors are the CLI's one-line errors as ``{"error": line}`` with an HTTP
status, never a stack trace.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from longvideo_r1 import __version__
from longvideo_r1.agent.config import AgentConfig
from longvideo_r1.agent.protocol import check_question
from longvideo_r1.agent.trace import TraceError
from longvideo_r1.config import Settings
from longvideo_r1.errors import (
    CaptionError,
    EndpointError,
    LVR1Error,
    StoreError,
    TreeError,
    VideoError,
    one_line,
    validation_line,
)
from longvideo_r1.llm.backends import ChatBackend
from longvideo_r1.server.events import trace_events
from longvideo_r1.server.library import VideoLibrary
from longvideo_r1.server.paths import DataDir, ServerError
from longvideo_r1.server.runs import Run, RunQueue
from longvideo_r1.server.traces import TraceShelf

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

_STATUS: tuple[tuple[type[LVR1Error], int], ...] = (
    (VideoError, 422),
    (TreeError, 400),
    (TraceError, 422),
    (EndpointError, 502),
    (CaptionError, 502),
    (StoreError, 500),
)
"""HTTP status of the CLI's errors (a ServerError carries its own; anything else is 400)."""


class Unauthorized(ServerError):
    """A request without the server's token."""

    status = 401


@dataclass
class ServeOptions:
    """What one server serves and how; ``trace_dirs[0]`` is where its own traces go."""

    data: DataDir
    settings: Settings
    agent: AgentConfig
    trace_dirs: list[Path]
    backend_factory: Callable[[], ChatBackend]
    token: str | None = None
    max_upload: int = 2 << 30
    allowed_hosts: list[str] | None = field(default_factory=lambda: list(LOOPBACK_HOSTS))


class AskBody(BaseModel):
    question: str
    choices: list[str] | None = None


class RegisterBody(BaseModel):
    path: str


def status_of(exc: LVR1Error) -> int:
    """The HTTP status of a one-line error."""
    if isinstance(exc, ServerError):
        return exc.status
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(options: ServeOptions) -> FastAPI:
    """The app: its library, trace shelf and run queue live as long as it does."""
    shelf = TraceShelf(options.trace_dirs)
    library = VideoLibrary(options.data, options.settings, options.max_upload)
    runs = RunQueue(options.backend_factory, options.agent, shelf, options.trace_dirs[0])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runs.close()
        library.close()

    app = FastAPI(title="lvr1 serve", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    if options.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=options.allowed_hosts)
    _add_error_handlers(app)
    api = APIRouter(prefix="/api", dependencies=[Depends(_token_check(options.token))])
    _video_routes(api, library, runs)
    _trace_routes(api, shelf, runs, library)

    @api.get("/info")
    def info() -> dict[str, Any]:
        settings = options.settings
        return {
            "version": __version__,
            "data": options.data.root.name,
            "captioner": settings.captioner,
            "reasoning": settings.reasoning.model or "embedded default",
            "reasoning_server": bool(settings.reasoning.base_url),
            "max_rounds": options.agent.max_rounds,
            "max_upload": options.max_upload,
        }

    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.state.library, app.state.runs, app.state.shelf = library, runs, shelf
    return app


def _token_check(token: str | None) -> Callable[[Request], None]:
    """A dependency that refuses a request without the token (in constant time)."""

    def check(request: Request) -> None:
        if token is None:
            return
        given = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            raise Unauthorized(
                "this server wants its token: Authorization: Bearer TOKEN or ?token="
            )

    return check


def _video_routes(api: APIRouter, library: VideoLibrary, runs: RunQueue) -> None:
    @api.get("/videos")
    def videos() -> dict[str, Any]:
        return {"videos": [e.to_dict() for e in library.entries()]}

    @api.post("/videos", status_code=201)
    def register(body: RegisterBody) -> dict[str, Any]:
        return library.register(body.path).to_dict()

    @api.post("/videos/upload", status_code=201)
    async def upload(request: Request, name: str) -> dict[str, Any]:
        length = request.headers.get("content-length")
        declared = int(length) if length and length.isdigit() else None
        entry = await library.upload(name, declared, request.stream())
        return entry.to_dict()

    @api.get("/videos/{video_id}")
    def tree(video_id: str) -> dict[str, Any]:
        return library.tree(video_id)

    @api.get("/videos/{video_id}/file")
    def file(video_id: str) -> FileResponse:
        return FileResponse(library.file(video_id))

    @api.get("/videos/{video_id}/thumbs/{node}")
    def thumbnail(video_id: str, node: str) -> Response:
        data = library.thumbnail(video_id, node)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    @api.post("/videos/{video_id}/ask", status_code=202)
    def ask(video_id: str, body: AskBody) -> dict[str, Any]:
        question, choices = check_question(body.question, body.choices or None)
        run = runs.submit(library.session(video_id), video_id, question, choices)
        return {"run": run.id, "events": f"/api/runs/{run.id}/events"}


def _trace_routes(api: APIRouter, shelf: TraceShelf, runs: RunQueue, library: VideoLibrary) -> None:
    @api.get("/runs/{run_id}/events")
    def run_events(run_id: str) -> StreamingResponse:
        return StreamingResponse(
            _sse(runs.get(run_id)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.get("/traces")
    def traces(video: str | None = None) -> dict[str, Any]:
        if video is not None:
            library.entry(video)  # an unknown id is a 404, not an empty list
        return {"traces": [s.to_dict() for s in shelf.list(fingerprint=video)]}

    @api.get("/traces/{trace_id}")
    def trace(trace_id: str) -> dict[str, Any]:
        return shelf.load(trace_id).model_dump(mode="json")

    @api.get("/traces/{trace_id}/events")
    def replay(trace_id: str) -> dict[str, Any]:
        return {"events": trace_events(shelf.load(trace_id), trace_id)}


def _sse(run: Run) -> Iterator[str]:
    """Server-sent events: one ``data:`` line of JSON per event, comments to keep alive."""
    for event in run.follow():
        yield ": waiting\n\n" if event is None else f"data: {json.dumps(event)}\n\n"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LVR1Error)
    async def one_line_error(request: Request, exc: LVR1Error) -> JSONResponse:
        return error_response(status_of(exc), one_line(exc, 400))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, f"invalid request: {validation_line(exc, 'request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, one_line(exc.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, one_line(exc))
        return error_response(500, f"internal error: {one_line(exc)}")
