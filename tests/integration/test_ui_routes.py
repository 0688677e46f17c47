"""`/ui` (the dashboard), `/docs` (the API reference) and the OpenAPI document, through the app in-process.

The pages and their assets are served from the package without a key, under a Content-Security-Policy that allows
only this origin; the OpenAPI document lists every route the app serves apart from those pages.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from tunewright.api.ui.routes import DASHBOARD_CSP, DASHBOARD_DIR, DOCS_CSP, DOCS_DIR, site_files

pytestmark = pytest.mark.integration

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
PAGES_AND_ASSETS = {"/", "/openapi.json", "/docs", "/ui", "/ui/{file_path}", "/docs/assets/{file_path}"}
"""The routes left out of the OpenAPI document: the document itself, the reference page, the dashboard's files."""


@pytest.fixture
def backend() -> str:
    """Only the embedded backend: nothing here reads the stores."""
    return "embedded"


class Links(HTMLParser):
    """The `src` and `href` of a page's script, link and anchor elements, and its inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]
        if tag == "style" or (tag == "script" and "src" not in values) or "style" in values:
            self.inline.append(tag)


def links(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


def assert_policy(response: Any, csp: str) -> None:
    assert response.headers["content-security-policy"] == csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_dashboard_page_is_served_without_a_key(http) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-proj-not-a-key"}):
        for path in ("/ui", "/ui/", "/ui/index.html", "/ui/?status=running"):
            response = http.get(path, headers=headers)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert response.content == (DASHBOARD_DIR / "index.html").read_bytes()
            assert response.headers["cache-control"] == "no-cache"
            assert_policy(response, DASHBOARD_CSP)


def test_the_policy_allows_this_origin_only(http) -> None:
    directives = dict(part.strip().split(" ", 1) for part in DASHBOARD_CSP.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in DASHBOARD_CSP
    assert "unsafe" not in DOCS_CSP
    assert DOCS_CSP == DASHBOARD_CSP + "; img-src 'self' data:"  # Swagger UI's CSS draws its icons as data: URIs


@pytest.mark.parametrize(
    ("mount", "directory", "csp"), [("/ui", DASHBOARD_DIR, DASHBOARD_CSP), ("/docs/assets", DOCS_DIR, DOCS_CSP)]
)
def test_every_file_is_served_with_its_type_and_the_policy(http, mount, directory, csp) -> None:
    files = site_files(directory)
    assert files
    for name, path in files.items():
        response = http.get(f"{mount}/{name}")
        assert response.status_code == 200, name
        assert response.content == path.read_bytes(), name
        assert response.headers["content-type"] == MEDIA_TYPES.get(path.suffix, "text/plain; charset=utf-8"), name
        assert_policy(response, csp)
        vendored = name.startswith("vendor/")
        assert response.headers["cache-control"] == ("public, max-age=604800, immutable" if vendored else "no-cache")


def test_every_asset_the_pages_name_is_served_from_this_server(http) -> None:
    for page in ("/ui/", "/docs"):
        found = links(http.get(page).text)
        assert found.urls, page
        assert found.inline == [], f"{page} has inline script or style, which the policy refuses"
        for url in found.urls:
            if url.startswith("#"):
                continue
            assert url.startswith("/") and not url.startswith("//"), (page, url)
            assert http.get(url).status_code == 200, (page, url)


def test_the_api_reference_page_loads_swagger_ui_from_the_package(http) -> None:
    response = http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert_policy(response, DOCS_CSP)
    urls = links(response.text).urls
    assert "/docs/assets/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js" in urls
    assert "/docs/assets/vendor/swagger-ui-5.35.0/swagger-ui.css" in urls
    assert 'data-spec-url="/openapi.json"' in response.text
    assert "http" not in response.text
    assert http.get("/docs/oauth2-redirect.html").status_code == 404  # Swagger's OAuth2 page: no OAuth2 here


UNKNOWN = (
    "/ui/nope.js",
    "/ui/vendor",
    "/ui/vendor/uplot-1.6.32",
    "/ui/%2e%2e/routes.py",
    "/ui/..%2froutes.py",
    "/ui/%2e%2e/%2e%2e/app.py",
    "/docs/assets",
    "/docs/assets/",
    "/docs/assets/../dashboard/index.html",
    "/docs/nope",
)


def test_names_outside_the_package_files_are_404_in_the_envelope(http) -> None:
    for path in UNKNOWN:
        response = http.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "unknown_url", path


def test_the_api_guards_leave_the_pages_alone(http) -> None:
    # A body is never read: a JSON body holding NUL changes nothing.
    response = http.request(
        "GET", "/ui/app.js", content=b'{"a": "\\u0000"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    # NUL in the query string is refused everywhere, here too, in the API's envelope.
    refused = http.get("/ui/", params={"x": "a\x00b"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_value"
    # Other methods are the API's 405.
    wrong = http.post("/ui/app.js")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_the_openapi_document_lists_every_route_the_app_serves(app, http) -> None:
    document = http.get("/openapi.json").json()
    documented = {
        path: {m for m in item if m in {"get", "post", "put", "patch", "delete"}}
        for path, item in document["paths"].items()
    }

    served: dict[str, set[str]] = {}
    hidden: set[str] = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for handler in route.route_handlers:
            methods = {method.lower() for method in handler.http_methods} - {"options", "head"}
            if not methods:
                continue  # Litestar's own OPTIONS answer
            if handler.resolve_include_in_schema():
                served.setdefault(path, set()).update(methods)
            else:
                hidden.add(path)
    assert hidden == PAGES_AND_ASSETS
    assert documented == served
    assert {"/v1/chat/completions", "/v1/completions", "/healthz", "/metrics"} <= set(documented)


def test_every_v1_operation_names_the_bearer_key(http) -> None:
    document = http.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            expected = [{"bearer": []}] if path.startswith("/v1/") else None
            assert operation.get("security") == expected, (method, path)
