"""The dashboard at /ui: server-rendered pages and their static files, each sent with a
Content-Security-Policy that allows nothing from outside the gateway.

The pages hold no data and need no key: their scripts read everything from the API with
the key the user enters (kept in sessionStorage, sent as a bearer header)."""

from __future__ import annotations

import socket
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parents[1]
STATIC = HERE / "static"
# Images may be previews of the user's own files (blob:) or data URLs; nothing else.
CSP = "default-src 'self'; img-src 'self' blob: data:"
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# path under /ui -> (template, title)
VIEWS = {
    "": ("status", "Status"),
    "playground": ("playground", "Playground"),
    "config": ("config", "Config"),
    "logs": ("logs", "Logs"),
    "metrics": ("metrics", "Metrics"),
}
templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes .html
ASSETS = frozenset(p.name for p in STATIC.iterdir() if p.is_file())


def render(request: Request, view: str, host: str) -> Response:
    if view not in VIEWS:
        raise HTTPException(404, f"no page /ui/{view}")
    template, title = VIEWS[view]
    context = {"view": template, "title": title, "host": host, "views": VIEWS}
    return templates.TemplateResponse(request, f"{template}.html", context, headers=HEADERS)


async def page(request: Request) -> Response:
    return render(request, request.path_params.get("view", ""), socket.gethostname())


async def asset(request: Request) -> Response:
    """A file of gateway/static, by its bare name (never a path: nothing else is served)."""
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404, f"no file /ui/static/{name}")
    return FileResponse(STATIC / name, headers=HEADERS | {"Cache-Control": "no-cache"})


async def root(request: Request) -> Response:
    """`/` is the dashboard's; and an answer to the clients that probe it before they start
    (Claude Code sends `HEAD /` first), where a 404 reads as no server."""
    return RedirectResponse("/ui", status_code=307)


routes = [
    Route("/", root, methods=["GET"]),  # HEAD too: Starlette adds it to a GET route
    Route("/ui", page, methods=["GET"]),
    Route("/ui/static/{name}", asset, methods=["GET"]),
    Route("/ui/{view}", page, methods=["GET"]),
]
