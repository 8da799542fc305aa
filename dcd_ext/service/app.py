"""The HTTP routes of the search service (a Starlette ASGI app):

    POST /search      {"text": "...", "k": 10, "rerank": 0}  (or "image": base64, against a text index)
    GET  /items/{id}  the gallery item: a thumbnail (image index) or its caption as JSON (text index)
    GET  /health      student fingerprint, index size, teacher, device
    GET  /            the web page

Mistakes in a request are a 4xx JSON ``{"error": ..., "field": ...}``; an internal failure is a 500
``{"error": ..., "id": ...}`` whose id the log shows beside the traceback; the service keeps serving.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .batcher import MicroBatcher
from .engine import SearchEngine
from .requests import RequestError, parse_json, parse_query

log = logging.getLogger("dcd_ext.serve")
THUMBNAIL_PIXELS = 256


def page_html() -> str:
    return resources.files(__package__).joinpath("page", "index.html").read_text(encoding="utf-8")


def internal_error(error: BaseException, what: str) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s while %s: %s", error_id, what, error, exc_info=error)
    return JSONResponse({"error": f"internal error while {what} (id {error_id}; the service log has the details)",
                         "id": error_id}, status_code=500)


def thumbnail_png(path: str) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def build_app(engine: SearchEngine, window_ms: float = 3.0, max_batch: int = 64) -> Starlette:
    batcher = MicroBatcher(engine.search_batch, window_ms, max_batch)
    page = page_html()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:  # the server has drained its connections (SIGTERM): answer what is queued, then stop
            await batcher.stop()

    async def search(request: Request):
        arrived = time.perf_counter()
        try:
            doc = parse_json(request.headers.get("content-type", ""), await request.body())
            query = parse_query(doc, engine.query_modality, len(engine), engine.teacher is not None)
        except RequestError as e:
            return JSONResponse(e.body(), status_code=e.status)
        try:
            answer, queued_ms = await batcher.submit(query)
        except Exception as e:
            return internal_error(e, "searching")
        timings = {"queue": round(queued_ms, 3), **{k: round(v, 3) for k, v in answer.timings_ms.items()},
                   "total": round((time.perf_counter() - arrived) * 1000.0, 3)}
        return JSONResponse({"query": doc.get("text", "(image)"), "query_modality": engine.query_modality,
                             "k": query.k, "rerank": query.rerank, "results": answer.hits,
                             "timings_ms": timings, "batch_size": answer.batch_size})

    async def item(request: Request):
        raw = request.path_params["item_id"]
        try:
            item_id = int(raw)
        except ValueError:
            return JSONResponse({"error": f"id: not an integer: {raw[:40]!r}", "field": "id"}, status_code=400)
        found = engine.item(item_id)
        if found is None:
            return JSONResponse({"error": f"id: the index holds no item {item_id}", "field": "id"},
                                status_code=404)
        name, source = found
        if engine.index.modality == "text":
            return JSONResponse({"id": item_id, "name": name, "caption": source})
        try:
            return Response(await run_in_threadpool(thumbnail_png, source), media_type="image/png",
                            headers={"Cache-Control": "max-age=3600"})
        except Exception as e:  # the image file went away or is unreadable: the index still answers
            return internal_error(e, f"reading item {item_id} ({source})")

    async def health(request: Request):
        return JSONResponse({**engine.health(), "batching": {"window_ms": window_ms, "max_batch": max_batch},
                             "batches_run": batcher.batches})

    async def index_page(request: Request):
        return HTMLResponse(page)

    async def http_error(request: Request, exc: HTTPException):
        field = "path" if exc.status_code == 404 else "method"
        return JSONResponse({"error": f"{field}: {exc.detail} ({request.method} {request.url.path})", "field": field},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception):
        return internal_error(exc, f"answering {request.method} {request.url.path}")

    routes = [Route("/search", search, methods=["POST"]), Route("/items/{item_id}", item, methods=["GET"]),
              Route("/health", health, methods=["GET"]), Route("/", index_page, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.engine, app.state.batcher = engine, batcher
    return app
