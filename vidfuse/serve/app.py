"""The FastAPI application of ``vidfuse serve``: a JSON search API and the static page at ``/``.

Every error is a JSON body ``{"detail": ...}`` with a 4xx status (FastAPI's validation errors
list the fields); an unexpected exception is logged here and answered with a 500 JSON body
that carries no traceback.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from typing import Optional, Sequence

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from vidfuse import __version__
from vidfuse.serve.engine import Engine
from vidfuse.serve.media import Thumbnails

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_K = 1000
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class Attention(BaseModel):
    video: dict[str, list[float]] = Field(description="video feature -> fusion weight per head")
    text: dict[str, list[float]] = Field(description="text feature -> fusion weight per head")
    frames: dict[str, list[float]] = Field(default_factory=dict,
                                           description="frame-pooled feature -> weight per sampled frame")


class TwoStage(BaseModel):
    gist_score: float = Field(description="stage 1: cos(text, video gist), what the index ranks by")
    full_score: float = Field(description="stage 2: lambda s_temp + (1 - lambda) s_rel, the final score")
    frame_feature: str
    frame_attention: list[float] = Field(description="relevance-level weight of each sampled frame")


class Result(BaseModel):
    rank: int
    video_id: str
    score: float
    video_available: bool
    media_url: Optional[str] = None
    thumbnails_url: Optional[str] = None
    thumbnail_tiles: int = Field(0, description="frames side by side in the thumbnail strip")
    attention: Optional[Attention] = Field(None, description="LAFF / LAFF-ml heads")
    two_stage: Optional[TwoStage] = Field(None, description="DLLFA")


class SearchResponse(BaseModel):
    run: str
    query: str
    k: int
    took_ms: float = Field(description="encode + index search + re-rank + explanations, server side "
                                       "(not counting the wait for an earlier query of the same run)")
    results: list[Result]


class RunInfo(BaseModel):
    name: str
    run: str
    head: str
    index: str
    split: Optional[str]
    factory: Optional[str]
    count: int
    dim: int
    device: str
    features: str
    video_dirs: list[str]
    two_stage: bool
    attention: bool
    loaded_at: float


class Health(BaseModel):
    status: str
    version: str
    runs: list[str]


class VideoDetails(BaseModel):
    video_id: str
    run: str
    available: bool = Field(description="false: the video file is not reachable (features from elsewhere)")
    reason: Optional[str] = None
    media_url: Optional[str] = None
    thumbnails_url: Optional[str] = None
    strip_frames: list[int] = Field(description="source frame of each thumbnail tile")
    features: dict[str, dict]


def create_app(engines: Sequence[Engine], thumbnails: Thumbnails) -> FastAPI:
    """The app over loaded engines (one per ``--run/--index`` pair; names unique)."""
    by_name = {e.name: e for e in engines}
    app = FastAPI(title="vidfuse", version=__version__,
                  description="Text-to-video search over a vidfuse run's FAISS index.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    def engine(run: Optional[str], split: Optional[str] = None) -> Engine:
        chosen = [e for e in engines if (run is None or e.name == run) and (split is None or e.split == split)]
        if not chosen:
            have = ", ".join(f"{e.name} (split {e.split})" for e in engines)
            raise HTTPException(404, f"no loaded index for run={run!r} split={split!r}; loaded: {have}")
        return chosen[0]

    def indexed(run: Optional[str], video_id: str) -> Engine:
        for e in ([engine(run)] if run else engines):
            if e.has_video(video_id):
                return e
        raise HTTPException(404, f"unknown video id {video_id!r}")

    def served_file(run: Optional[str], video_id: str) -> tuple[Engine, str]:
        """The engine holding ``video_id`` and the real path of its file; 404 when either is missing."""
        e = indexed(run, video_id)
        real, why = e.video_file(video_id)
        if real is None:
            raise HTTPException(404, why)
        return e, real

    @app.get("/api/health", response_model=Health, tags=["service"])
    def health() -> Health:
        return Health(status="ok", version=__version__, runs=list(by_name))

    @app.get("/api/runs", response_model=list[RunInfo], tags=["service"], summary="loaded runs and indexes")
    def runs() -> list[dict]:
        return [e.describe() for e in engines]

    @app.post("/api/reload", response_model=list[RunInfo], tags=["service"],
              summary="load every run and index folder again (after an atomic index swap)")
    def reload() -> list[dict]:
        from vidfuse.errors import VidfuseError

        for e in engines:
            try:
                e.reload()
            except VidfuseError as exc:
                raise HTTPException(409, f"reload of {e.name} failed, still serving the previous index: {exc}")
        return [e.describe() for e in engines]

    @app.get("/api/search", response_model=SearchResponse, tags=["search"], summary="top-k videos for a text")
    def search(
        q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="the text query"),
        k: int = Query(10, ge=1, le=MAX_K, description="number of results"),
        run: Optional[str] = Query(None, description="run name (GET /api/runs); default: the first"),
        split: Optional[str] = Query(None, description="the split the index was built over"),
    ) -> dict:
        if not q.strip():
            raise HTTPException(422, "the query is blank")
        return engine(run, split).search(q.strip(), k)

    @app.get("/api/videos/{video_id:path}", response_model=VideoDetails, tags=["videos"],
             summary="a video's manifest metadata and thumbnail strip")
    def video(video_id: str = Path(..., max_length=MAX_QUERY_CHARS), run: Optional[str] = None) -> dict:
        e = indexed(run, video_id)
        real, why = e.video_file(video_id)
        details = {**e.video_meta(video_id), "available": real is not None, "reason": why,
                   "strip_frames": e.strip_frames(video_id)}
        return {**details, **(e.urls(video_id) if real is not None else {})}

    @app.get("/api/thumbnails/{video_id:path}", tags=["videos"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "unknown or unavailable"}},
             summary="JPEG strip of the frames the features sampled")
    def thumbnail_strip(video_id: str = Path(..., max_length=MAX_QUERY_CHARS), run: Optional[str] = None) -> Response:
        from pipeline.decode import VideoDecodeError

        e, real = served_file(run, video_id)
        try:
            data = thumbnails.strip(real, e.strip_frames(video_id))
        except VideoDecodeError as exc:
            raise HTTPException(404, f"video not available: {exc.reason}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/media/{video_id:path}", tags=["videos"], response_class=FileResponse,
             responses={200: {"content": {"video/mp4": {}}}, 206: {"description": "a byte range"},
                        404: {"description": "unknown or unavailable"}},
             summary="the video file, with HTTP range requests")
    def media(video_id: str = Path(..., max_length=MAX_QUERY_CHARS), run: Optional[str] = None) -> FileResponse:
        _, real = served_file(run, video_id)
        return FileResponse(real, media_type=mimetypes.guess_type(real)[0] or "application/octet-stream")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
