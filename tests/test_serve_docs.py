"""What ``resnets serve`` shows besides the page works offline: ``/docs`` (Swagger UI from fastapi-swagger's
files) in Debian's chromium against a real ``resnets serve``, every request answered by the server; ``/docs`` and
``/openapi.json`` counted in ``/metrics`` under their routes; a KServe infer body that is not JSON refused with 415."""

from __future__ import annotations

import json
import re
import time

import httpx
from playwright.sync_api import Browser, Route, expect

from test_serve import metric
from test_serve_page import TIMEOUT_MS, browser, server, weights  # noqa: F401 - the fixtures

INFER = "/v2/models/resnet20/infer"


def test_docs_render_offline(server: str, browser: Browser) -> None:  # noqa: F811
    """Swagger UI renders the operations with every request blocked that does not go to the server."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    asked: list[str] = []
    outside: list[str] = []

    def guard(route: Route) -> None:
        url = route.request.url
        asked.append(url)
        if url.startswith(server + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort("internetdisconnected")

    page.on("pageerror", lambda exc: errors.append(str(exc)))
    context.route("**/*", guard)
    try:
        page.goto(server + "/docs")
        expect(page).to_have_title(re.compile("resnets"))
        for path in ("/v1/predict", "/v1/explain", "/v2/models/{name}/infer"):
            expect(page.locator(f".opblock-summary-path[data-path='{path}']").first).to_be_visible()
        expect(page.locator(".info .title")).to_contain_text("resnets")
    finally:
        context.close()
    assert not outside, f"/docs must work offline, but it asked for {outside}"
    assert not errors, f"JavaScript errors on /docs: {errors}"
    assert any(u.startswith(server + "/docs-static/") for u in asked), asked  # the package's assets, served here
    assert f"{server}/openapi.json" in asked


def test_docs_assets_and_no_cdn_redoc(server: str) -> None:  # noqa: F811
    html = httpx.get(server + "/docs", timeout=10).text
    links = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert links and all(link.startswith("/") for link in links), links  # no other host
    for link in links:
        r = httpx.get(server + link, timeout=10)
        assert r.status_code == 200 and r.content, (link, r.status_code)
    assert "SwaggerUIBundle" in httpx.get(server + "/docs-static/swagger-ui-bundle.js", timeout=10).text
    assert httpx.get(server + "/redoc", timeout=10).status_code == 404  # no ReDoc assets: no blank CDN page


def test_docs_and_openapi_counted_by_route(server: str) -> None:  # noqa: F811
    routes = ("/docs", "/openapi.json", "/docs-static")

    def counts(text: str) -> list[float]:
        return [metric(text, "resnets_requests_total", route=r, method="GET", status="200") for r in routes]

    with httpx.Client(base_url=server, timeout=10) as c:
        before = c.get("/metrics").text
        assert c.get("/docs").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/docs-static/swagger-ui.css").status_code == 200
        deadline = time.monotonic() + 10  # a request is counted once its handler returns, just after the answer
        while (after := c.get("/metrics").text) and counts(after) != [n + 1 for n in counts(before)]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert counts(after) == [n + 1 for n in counts(before)], (
        routes, counts(before), counts(after), [line for line in after.splitlines() if "requests_total{" in line])
    for route in routes:
        assert metric(after, "resnets_request_seconds_count", route=route) >= 1
    assert metric(after, "resnets_requests_total", route="unmatched") == metric(
        before, "resnets_requests_total", route="unmatched")


def test_kserve_non_json_body_is_415(server: str) -> None:  # noqa: F811
    tensor = {"name": "images", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [0] * 3072}
    good = json.dumps({"inputs": [tensor]}).encode()
    with httpx.Client(base_url=server, timeout=30) as c:
        for body, ctype in ((b"\xff\xd8\xff\xe0 a JPEG, not JSON", "application/json"),  # not UTF-8
                            (good.decode().encode("utf-16"), "application/json"),  # JSON, but not in UTF-8
                            (good, "text/plain"), (good, "image/png"), (good, "multipart/form-data; boundary=x"),
                            (good, "application/octet-stream")):  # binary without Inference-Header-Content-Length
            r = c.post(INFER, content=body, headers={"content-type": ctype})
            assert r.status_code == 415, (ctype, body[:20], r.status_code, r.text)
            reason = r.json()["error"]
            assert "JSON" in reason and "codec" not in reason and "utf-8" not in reason, reason
        # what KServe clients send is still taken: JSON with or without a charset, no Content-Type
        # (tritonclient), and JSON then binary data under the binary tensor extension
        for headers in ({"content-type": "application/json; charset=utf-8"}, {}):
            r = c.post(INFER, content=good, headers=headers)
            assert r.status_code == 200, (headers, r.text)
        head = json.dumps({"inputs": [{**{k: v for k, v in tensor.items() if k != "data"},
                                       "parameters": {"binary_data_size": 3072}}]}).encode()
        r = c.post(INFER, content=head + bytes(3072), headers={"content-type": "application/octet-stream",
                                                               "inference-header-content-length": str(len(head))})
        assert r.status_code == 200, r.text
        bad = c.post(INFER, content=b'{"inputs": [1,}', headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "line 1, column 15" in bad.json()["error"]  # broken JSON stays a 400
