"""The serve page in a real browser: Debian's chromium, driven by Playwright, against a real ``resnets serve``.

Screenshots go to ``artifacts/`` at the repository root (serve-page.png, serve-page-gradcam.png,
serve-page-phone.png, serve-page-error.png). Never skipped: without chromium the tests fail and say how to
install it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from resnets import create_model
from resnets.data import extract_sample
from resnets.weights import save_weights

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init resnet20 with CIFAR-10 names, saved with its metadata."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    path = tmp_path_factory.mktemp("serve-page") / "r20.safetensors"
    save_weights(model, path, classes=CIFAR_CLASSES,
                 normalization={"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]})
    return path


@pytest.fixture(scope="module")
def images() -> list[Path]:
    """Two sample test JPEGs of different classes."""
    root = extract_sample() / "test"
    return [sorted((root / cls).iterdir())[0] for cls in ("ship", "cat")]


@pytest.fixture(scope="module")
def server(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``resnets serve`` in a subprocess on a free loopback port (``--port 0``, read from its start-up line);
    yields its base URL once ``/readyz`` answers 200."""
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "resnets", "serve", "--weights", str(weights), "--host", "127.0.0.1",
           "--port", "0", "--threads", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        url = None
        while True:
            text = log_path.read_text(errors="replace")
            if proc.poll() is not None:
                pytest.fail(f"resnets serve exited with {proc.returncode}:\n{text[-3000:]}")
            if url is None and (m := re.search(r" on (http://127\.0\.0\.1:\d+) ", text)):
                url = m.group(1)
            if url is not None:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"resnets serve was not ready in 90 s:\n{text[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium (not Playwright's download), headless; a clear failure when it is missing."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed, and the serve page test needs a real browser: "
                    "make test installs it (its browser target, scripts/need_chromium.sh), or apt-get install -y chromium")
    expect.set_options(timeout=TIMEOUT_MS)  # the 5 s default is tight on two busy cores
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
            expect.set_options(timeout=5_000)


def new_page(context: BrowserContext) -> Page:
    """A page with the test timeout whose file dialogs Playwright intercepts from the start (a listener added
    only just before the key press that opens one can lose the race, and the dialog never reaches the test)."""
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.on("filechooser", lambda _chooser: None)
    return pg


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh desktop-size page; fails the test on any uncaught page error."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = new_page(context)
    errors: list[str] = []
    urls: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("request", lambda request: urls.append(request.url))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    outside = [u for u in urls if not u.startswith(("http://127.0.0.1:", "blob:", "data:"))]
    assert not outside, f"the page must work offline, but it asked for {outside}"


def shot(pg: Page, name: str) -> Path:
    """Save a full-page screenshot into artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    pg.screenshot(path=str(path), full_page=True)
    return path


def api_top5(url: str, image: Path) -> list[dict[str, Any]]:
    """The API's own top-5 for ``image`` as ``[{"label", "probability"}]``."""
    with open(image, "rb") as fh:
        r = httpx.post(f"{url}/v1/predict", params={"topk": 5}, files={"file": (image.name, fh, "image/jpeg")},
                       timeout=30)
    r.raise_for_status()
    rows = r.json()["predictions"][0]["top"]
    return [{"label": row["label"], "probability": float(row["probability"])} for row in rows]


def page_top5(pg: Page) -> list[dict[str, Any]]:
    """The page's top-5 rows: data attributes and visible text."""
    items = pg.locator("#top5 li")
    expect(items).to_have_count(5)
    rows: list[dict[str, Any]] = items.evaluate_all(
        "els => els.map(e => ({label: e.dataset.label, probability: Number(e.dataset.probability),"
        " text: e.innerText.replace(/\\s+/g, ' ').trim()}))")
    return rows


def upload(pg: Page, image: Path) -> list[dict[str, Any]]:
    """Choose ``image`` with the file input and return the top-5 once it shows."""
    pg.set_input_files("#file", str(image))
    expect(pg.locator("#top5 li")).to_have_count(5)
    expect(pg.locator("#top5")).to_have_attribute("aria-busy", "false")
    return page_top5(pg)


def assert_same_top5(shown: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Labels equal, probabilities within 1e-4, and the visible text "label 12.3%" agrees."""
    assert [r["label"] for r in shown] == [e["label"] for e in expected]
    for row, want in zip(shown, expected, strict=True):
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-4)
        m = re.fullmatch(r"(.+) (\d+(?:\.\d)?)%", row["text"])
        assert m, row["text"]
        assert m.group(1) == want["label"]
        assert float(m.group(2)) == pytest.approx(want["probability"] * 100, abs=0.051)


def test_predict_matches_api_and_gradcam_toggles(server: str, page: Page, images: list[Path]) -> None:
    page.goto(server + "/")
    expect(page).to_have_title(re.compile("resnets"))
    expect(page.get_by_label("Choose an image")).to_be_attached()
    shown = upload(page, images[0])
    assert_same_top5(shown, api_top5(server, images[0]))
    expect(page.locator("#preview")).to_be_visible()
    assert page.eval_on_selector("#preview", "img => img.naturalWidth") > 0
    shot(page, "serve-page.png")

    toggle = page.locator("#gradcam-toggle")
    expect(toggle).to_be_enabled()
    toggle.focus()
    with page.expect_response("**/v1/explain") as answer:
        page.keyboard.press("Space")  # keyboard operable
    assert answer.value.status == 200 and answer.value.headers["content-type"].startswith("image/png")
    label = answer.value.headers["x-class-label"]
    assert label in CIFAR_CLASSES
    gradcam = page.locator("#gradcam")
    expect(gradcam).to_be_visible()
    page.wait_for_function("() => document.getElementById('gradcam').naturalWidth > 0")
    expect(page.locator("#preview")).to_be_hidden()
    expect(page.locator("#caption")).to_contain_text(label)
    expect(toggle).to_be_checked()
    shot(page, "serve-page-gradcam.png")

    page.keyboard.press("Space")
    expect(toggle).not_to_be_checked()
    expect(gradcam).to_be_hidden()
    expect(page.locator("#preview")).to_be_visible()

    # A second image replaces the prediction; with the toggle on its Grad-CAM is fetched anew.
    toggle.check()
    expect(gradcam).to_be_visible()
    shown = upload(page, images[1])
    assert_same_top5(shown, api_top5(server, images[1]))
    expect(gradcam).to_be_visible()
    page.wait_for_function("() => document.getElementById('gradcam').naturalWidth > 0")
    expect(page.locator("#error")).to_be_hidden()


def test_model_card(server: str, page: Page) -> None:
    card = httpx.get(server + "/v1/model", timeout=10).json()
    page.goto(server + "/")
    box = page.locator("#model-card")
    expect(box).to_have_attribute("aria-busy", "false")
    expect(box).to_contain_text(card["name"])
    expect(box).to_contain_text(f"{card['parameters']:,}")
    expect(box).to_contain_text(f"{card['num_classes']} classes")
    sha = card["weights_sha256"]
    expect(box.locator(f"code[title='{sha}']")).to_contain_text(sha[:12])
    expect(box).not_to_contain_text(sha)  # shortened; the full hash is in the title
    classes = box.locator("ol.classes li")
    expect(classes).to_have_count(card["num_classes"])
    expect(classes.first).to_be_hidden()  # collapsed until asked for
    box.locator("summary").click()
    expect(classes.first).to_have_text(card["classes"][0])


def test_bad_files_show_readable_errors(server: str, page: Page, images: list[Path], tmp_path: Path) -> None:
    page.goto(server + "/")
    error = page.locator("#error")
    expect(error).to_have_attribute("role", "alert")
    for name, data in (("notes.jpg", b"this is a text file, not a JPEG\n"),
                       ("cut.jpg", images[0].read_bytes()[:200])):
        bad = tmp_path / name
        bad.write_bytes(data)
        r = httpx.post(server + "/v1/predict", params={"topk": 5},
                       files={"file": (name, data, "image/jpeg")}, timeout=30)
        assert 400 <= r.status_code < 500, r.text
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail
        page.set_input_files("#file", str(bad))
        expect(error).to_be_visible()
        expect(error).to_have_text(detail)
        expect(page.locator("#top5 li")).to_have_count(0)
        expect(page.locator("#gradcam-toggle")).to_be_disabled()
    shot(page, "serve-page-error.png")

    # A chosen file that is not an image at all is refused in the page, before any request.
    text = tmp_path / "readme.txt"
    text.write_text("hello\n")
    page.set_input_files("#file", str(text))
    expect(error).to_contain_text("not an image")

    # A good image, dropped on the drop zone, clears the error.
    page.locator("#dropzone").evaluate(
        """(zone, bytes) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
            }
        }""", list(images[0].read_bytes()))
    assert_same_top5(page_top5(page), api_top5(server, images[0]))
    expect(error).to_be_hidden()
    expect(page.locator("#caption")).to_have_text("dropped.jpg")

    # The server going away: a network error, said plainly.
    page.route("**/v1/predict*", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file", str(images[1]))
    expect(error).to_contain_text("Could not reach the server")


def test_api_key_prompt_on_401(server: str, page: Page, images: list[Path]) -> None:
    """A 401 shows the key input; the key is kept in sessionStorage and sent as a Bearer token."""
    key = "s3cret-key"
    seen: list[str | None] = []

    def guard(route: Route) -> None:
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth != f"Bearer {key}":
            route.fulfill(status=401, content_type="application/json",
                          body=json.dumps({"detail": "missing or wrong API key"}))
        else:
            route.continue_()

    page.route("**/v1/**", guard)
    page.goto(server + "/")
    key_input = page.locator("#api-key")
    expect(key_input).to_be_visible()
    expect(key_input).to_be_focused()
    expect(page.locator("#model-card")).to_contain_text("needs an API key")
    page.set_input_files("#file", str(images[0]))  # refused too, and retried once the key is given
    expect(page.locator("#top5-empty")).to_have_text("Waiting for the API key.")
    key_input.fill("wrong")
    key_input.press("Enter")
    expect(page.locator("#auth-help")).to_contain_text("not accepted")
    expect(key_input).to_be_focused()
    key_input.fill(key)
    key_input.press("Enter")
    expect(page.locator("#model-card")).to_contain_text("resnet20")
    assert_same_top5(page_top5(page), api_top5(server, images[0]))
    expect(page.locator("#preview")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('resnets.apiKey')") == key
    assert seen[-1] == f"Bearer {key}"
    expect(page.locator("#auth")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()


def test_phone_width_and_keyboard(server: str, browser: Browser, images: list[Path]) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2,
                                  is_mobile=True, has_touch=True)
    try:
        pg = new_page(context)
        pg.goto(server + "/")
        expect(pg.locator("#model-card")).to_have_attribute("aria-busy", "false")

        # Keyboard: the first Tab reaches the file chooser, and Enter opens its dialog.
        pg.keyboard.press("Tab")
        assert pg.evaluate("() => document.activeElement.id") == "file"
        outline = pg.eval_on_selector("#dropzone", "el => getComputedStyle(el).outlineStyle")
        assert outline != "none"  # the focus shows on the drop zone
        with pg.expect_file_chooser() as chooser:
            pg.keyboard.press("Enter")
        chooser.value.set_files(str(images[0]))
        expect(pg.locator("#top5 li")).to_have_count(5)
        pg.locator("#model-card summary").click()
        pg.locator("#gradcam-toggle").check()
        pg.wait_for_function("() => document.getElementById('gradcam').naturalWidth > 0")

        width = pg.evaluate("() => document.scrollingElement.scrollWidth")
        assert width <= 375, f"horizontal overflow at 375 px: scrollWidth {width}"
        shot(pg, "serve-page-phone.png")
    finally:
        context.close()
