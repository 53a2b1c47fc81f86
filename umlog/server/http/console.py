"""The web console's files: HTML, CSS and JavaScript modules in ``console/``,
shipped as package data (no build step, nothing fetched from elsewhere).

``GET /`` (a browser) is ``console/index.html``; ``GET /console/{name}`` the
other files. They are read once, on first use, and served from memory with a
Content-Security-Policy that allows this origin only.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["add_routes", "files", "page"]

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

_cache: dict[str, bytes] | None = None


def files() -> dict[str, bytes]:
    """Every console file by name (read from the installed package once)."""
    global _cache
    if _cache is None:
        root = resources.files(__package__).joinpath("console")
        _cache = {f.name: f.read_bytes() for f in root.iterdir()
                  if f.is_file() and any(f.name.endswith(ext) for ext in TYPES)}
    return _cache


def page(name: str):
    from aiohttp import web

    body = files().get(name)
    if body is None:
        raise web.HTTPNotFound()
    ctype = next(t for ext, t in TYPES.items() if name.endswith(ext))
    return web.Response(body=body, content_type=ctype, charset="utf-8",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff"})


def add_routes(app) -> None:
    async def static(request):
        return page(request.match_info["name"])

    app.router.add_get("/console/{name}", static)
