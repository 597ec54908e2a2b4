"""The status page in real headless Chromium: first-start password, login, status, unlock."""

import shutil

import pytest
from porch_harness import start_porch

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.web


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_first_start_login_status_and_unlock(tmp_path, browser):
    porch = start_porch(tmp_path, {"device": {"name": "Front door"}})
    try:
        page = browser.new_page()
        url = f"http://127.0.0.1:{porch.port}/"
        page.goto(url)
        page.wait_for_selector("#setup:not([hidden])")
        page.fill("#setup-password", "installer-secret")
        page.click("#setup-form button")
        page.wait_for_selector("#status:not([hidden])")
        page.wait_for_function("document.getElementById('call').textContent === 'idle'")
        assert page.text_content("#door") == "locked"
        page.click("#unlock")
        page.wait_for_function("document.getElementById('door').textContent === 'unlocked'")
        porch.token = None
        status, body, _ = porch.request(
            "POST", "/api/login", {"password": "installer-secret"}, token=None
        )
        assert status == 200
        porch.token = body["token"]
        porch.wait_event("unlock", cause="api")
        # a fresh browser session must log in; a wrong password shows the error
        other = browser.new_page()
        other.goto(url)
        other.wait_for_selector("#login:not([hidden])")
        other.fill("#login-password", "not the password")
        other.click("#login-form button")
        other.wait_for_function("document.getElementById('message').textContent.length > 0")
        assert "wrong password" in other.text_content("#message")
    finally:
        porch.stop()
