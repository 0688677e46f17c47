"""The dashboard at `/ui` and the API reference at `/docs`: files shipped in the package, served without a key.

Both are static pages that call the `/v1` API from the browser with the key the user typed, in an `Authorization`
header, as any client does; nothing here reads a key or a session. Every page and asset comes from
`api/ui/static/` (no CDN): the dashboard from `static/dashboard/`, the API reference's Swagger UI from
`static/docs/` (`/docs/assets/…`). The vendored libraries, their versions, licences and digests are listed in
`api/ui/vendor.toml`.

Every response under `/ui` and `/docs` carries a Content-Security-Policy that allows only this origin: no inline
script or style, no other host. The API reference's CSS draws its icons from `data:` images, so `/docs` also
allows those for images.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from litestar import Request, get
from litestar.datastructures import ResponseHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import FromPath
from litestar.response import File

from tunewright.api.errors import NotFoundError

if TYPE_CHECKING:
    from litestar import Router
    from litestar.handlers import HTTPRouteHandler

STATIC = Path(__file__).resolve().parent / "static"
DASHBOARD_DIR = STATIC / "dashboard"
DOCS_DIR = STATIC / "docs"

DASHBOARD_PATH = "/ui"
DOCS_PATH = "/docs"
DOCS_ASSETS_PATH = "/docs/assets"
OPENAPI_JSON_PATH = "/openapi.json"
SWAGGER_UI = f"{DOCS_ASSETS_PATH}/vendor/swagger-ui-5.35.0"

_SELF_ONLY = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
DASHBOARD_CSP = _SELF_ONLY
DOCS_CSP = _SELF_ONLY + "; img-src 'self' data:"

# Vendored files live under a folder named with their version, so a browser may keep them; ours are revalidated.
_VENDOR_CACHE = "public, max-age=604800, immutable"
_OWN_CACHE = "no-cache"
_MEDIA_TYPES = {  # Litestar adds `; charset=utf-8` to text types
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def security_headers(csp: str) -> list[ResponseHeader]:
    """The headers of every page and asset: the policy `csp`, no MIME sniffing, no referrer sent elsewhere."""
    return [
        ResponseHeader(name="Content-Security-Policy", value=csp),
        ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
        ResponseHeader(name="Referrer-Policy", value="no-referrer"),
    ]


def site_files(directory: Path) -> dict[str, Path]:
    """Every file under `directory` by its relative POSIX name: what a site serves, and nothing else."""
    return {path.relative_to(directory).as_posix(): path for path in sorted(directory.rglob("*")) if path.is_file()}


def _site(mount: str, directory: Path, csp: str, *, name: str, index: str | None) -> list[HTTPRouteHandler]:
    """`GET mount/<name>` for the files of `directory` listed when the app is built (`index` at `mount` itself).

    A name not in that list (`..`, a folder, a file added later) is the API's 404 in OpenAI's envelope.
    """
    files = site_files(directory)
    headers = {header.name: header.value for header in security_headers(csp)}

    def answer(request: Request[Any, Any, Any], relative: str) -> File:
        found = files.get(relative)
        if found is None:
            raise NotFoundError(f"Invalid URL (GET {request.url.path})", code="unknown_url")
        cache = _VENDOR_CACHE if relative.startswith("vendor/") else _OWN_CACHE
        return File(
            found,
            content_disposition_type="inline",
            media_type=_MEDIA_TYPES.get(found.suffix, "text/plain"),
            headers={**headers, "Cache-Control": cache},
        )

    @get(f"{mount}/{{file_path:path}}", name=name, include_in_schema=False, sync_to_thread=False)
    def serve(request: Request[Any, Any, Any], file_path: FromPath[PurePosixPath]) -> File:
        return answer(request, str(file_path).lstrip("/") or index or "")

    if index is None:
        return [serve]

    @get(mount, name=f"{name}-index", include_in_schema=False, sync_to_thread=False)
    def serve_index(request: Request[Any, Any, Any]) -> File:
        return answer(request, index)

    return [serve, serve_index]


def ui_routes() -> list[HTTPRouteHandler]:
    """The dashboard (its `index.html` at `/ui` and `/ui/`) and the API reference's assets (`/docs/assets/…`)."""
    return [
        *_site(DASHBOARD_PATH, DASHBOARD_DIR, DASHBOARD_CSP, name="ui", index="index.html"),
        *_site(DOCS_ASSETS_PATH, DOCS_DIR, DOCS_CSP, name="docs-assets", index=None),
    ]


class LocalSwaggerRenderPlugin(SwaggerRenderPlugin):
    """Swagger UI at `/docs`, its script and styles from the package, started by a script file, not inline.

    Litestar's own page loads them from a CDN and starts Swagger UI with an inline script holding the whole
    schema; this one points `js_url`/`css_url` at `/docs/assets/` and lets `docs.js` fetch `/openapi.json`, so the
    page runs under a policy that allows only this origin.
    """

    def __init__(self) -> None:
        """Swagger UI at `/docs`, from the vendored copy."""
        super().__init__(
            path=DOCS_PATH,
            js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER_UI}/swagger-ui.css",
            favicon=f'<link rel="icon" href="{DASHBOARD_PATH}/favicon.svg" type="image/svg+xml">',
            style=f'<link rel="stylesheet" href="{DOCS_ASSETS_PATH}/docs.css">',
        )

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The page: the vendored Swagger UI, `docs.js` to start it on the schema's URL."""
        title = f"{openapi_schema['info']['title']} API reference"
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
{self.favicon}
<link rel="stylesheet" href="{self.css_url}">
{self.style}
<script src="{self.js_url}" defer></script>
<script src="{DOCS_ASSETS_PATH}/docs.js" defer></script>
</head>
<body>
<header class="tw-docs-bar"><a href="{DASHBOARD_PATH}/">Tunewright dashboard</a> · {title}</header>
<div id="swagger-ui" data-spec-url="{OPENAPI_JSON_PATH}"></div>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        """Add nothing: Litestar's OAuth2 redirect page serves no purpose here (keys are Bearer secrets)."""
        return
