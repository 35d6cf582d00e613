"""`clipsieve serve`'s HTTP routes (FastAPI, run by uvicorn) over a SearchService.

clip-retrieval's back, so its ClipClient and front work unmodified:
    GET  /indices-list     the served subset indices
    POST /knn-service      a query's results (a JSON list; what the filters removed goes in
                           the X-Clipsieve-Removed header, as the list has no room for it)
    POST /metadata         url and caption of result ids
    GET  /config.json      the front's settings (this server as its backend)
clipsieve's own, for the page at / (orchestration/serve/static/):
    GET  /api/info         the indices, their policies, the filterable scores
    POST /api/search       a page of filtered results with scores, memberships and figures
    POST /api/count        index rows above a similarity threshold
    POST /api/vector       an index row's image embedding
    POST /api/explain      why a sample is in or out of each policy
    POST /api/policies     save the query and filters as a new policy file
    POST /api/export/{kind}  the results as img2dataset's parquet (url, caption) or DataComp uids
    GET  /api/image/{indice}/{id}  a result's image from the crawl

Handlers read the body on the event loop and run the search in a worker thread (faiss and
torch release the GIL), so requests overlap. Body parsing follows the back: JSON whatever
the Content-Type (its front sends text/plain). Bad requests get 400 with {"message": ...}.
The write route (/api/policies) is not open to other origins: it takes application/json
only (a cross-origin page cannot send that without a preflight, which gets no CORS answer)
and refuses a foreign Origin header.
"""

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestration.serve.service import SearchService

STATIC = Path(__file__).parent / "static"
CROSS_ORIGIN_ROUTES = ("/indices-list", "/knn-service", "/metadata", "/config.json")
IMAGE_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png", b"RIFF": "image/webp", b"GIF8": "image/gif"}


class RequestLimits:
    """ASGI middleware: repeated slashes collapsed (the back's front asks for //knn-service
    when its backend URL ends in a slash) and bodies over `max_body_bytes` refused (413)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        while "//" in path:
            path = path.replace("//", "/")
        scope = {**scope, "path": path, "raw_path": path.encode()}
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and int(length) > self.max_body_bytes:
            await Response(status_code=413, content=json.dumps({"message": "request body too large"}),
                           media_type="application/json")(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise ValueError("request body too large")
            return message

        await self.app(scope, limited, send)


class CrossOriginReads:
    """CORS as the back answers it (any origin), on its read routes only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.open = CORSMiddleware(app, allow_origins=["*"], allow_methods=["GET", "POST"], allow_headers=["*"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in CROSS_ORIGIN_ROUTES:
            await self.open(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def create_app(service: SearchService) -> ASGIApp:
    app = FastAPI(title="clipsieve search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ValueError)
    async def bad_request(_: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"message": str(error)}, status_code=400)

    @app.get("/indices-list")
    def indices_list() -> list[str]:
        return service.indices_list()

    @app.post("/knn-service")
    async def knn_service(request: Request) -> JSONResponse:
        results, page = await run_in_threadpool(service.knn, await _body(request))
        return JSONResponse(results, headers={
            "X-Clipsieve-Removed": json.dumps(page.removed), "X-Clipsieve-Searched": str(page.searched),
            "Access-Control-Expose-Headers": "X-Clipsieve-Removed, X-Clipsieve-Searched"})

    @app.post("/metadata")
    async def metadata(request: Request) -> list[dict]:
        return await run_in_threadpool(service.metadata, await _body(request))

    @app.get("/config.json")
    def config(request: Request) -> dict:
        indices = service.indices_list()
        return {"defaultBackend": str(request.base_url), "defaultIndex": indices[0] if indices else "",
                "urlColumn": "url"}

    @app.get("/api/info")
    def api_info() -> dict:
        return service.info()

    @app.post("/api/search")
    async def api_search(request: Request) -> dict:
        return await run_in_threadpool(service.search, await _body(request))

    @app.post("/api/count")
    async def api_count(request: Request) -> dict:
        return await run_in_threadpool(service.count, await _body(request))

    @app.post("/api/vector")
    async def api_vector(request: Request) -> dict:
        return await run_in_threadpool(service.vector, await _body(request))

    @app.post("/api/explain")
    async def api_explain(request: Request) -> dict:
        key = (await _body(request)).get("key")
        if not isinstance(key, str) or not key:
            raise ValueError("give the sample's key")
        return json.loads(json.dumps(await run_in_threadpool(service.explain, key), default=str))

    @app.post("/api/policies")
    async def api_save_policy(request: Request) -> dict:
        _same_origin(request)
        return await run_in_threadpool(service.save_policy, await _body(request))

    @app.post("/api/export/{kind}")
    async def api_export(kind: str, request: Request) -> Response:
        data, name = await run_in_threadpool(service.export, await _body(request), kind)
        return Response(data, media_type="application/octet-stream",
                         headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/image/{indice}/{row}")
    def api_image(indice: str, row: int) -> Response:
        data = service.image(indice, row)
        if data is None:
            return Response(status_code=404)
        kind = next((t for magic, t in IMAGE_TYPES.items() if data.startswith(magic)), "application/octet-stream")
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    limit = service.settings.max_upload_bytes * 4 // 3 + (1 << 20)  # a base64 image and the rest of the body
    return RequestLimits(CrossOriginReads(app), limit)


def _same_origin(request: Request) -> None:
    """Refuse a write that another site's page sends: JSON only, and no foreign Origin."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValueError("send application/json")
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != str(request.base_url).rstrip("/"):
        raise ValueError(f"refused: a request from another origin ({origin})")
