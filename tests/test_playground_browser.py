"""The playground in a real browser: headless Chromium (Debian's package) signs in as
staff, asks a question, and sees the answer stream in and the stats line filled."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from tests.test_live_server import CHROMIUM, CHROMIUM_FLAGS, Gateway, base_env, manage

pytestmark = [
    pytest.mark.live_server,
    # The page is served by its own gateway on the embedded default, whatever the profile.
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="runs once, in the embedded profile"),
]


if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("needs Chromium (apt-get install chromium; make test installs it as root)", allow_module_level=True)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    env = base_env(tmp_path_factory.mktemp("browser"))
    manage(env, "migrate", "--noinput")
    manage(env, "seed_catalog")
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        "get_user_model().objects.create_superuser('staff', 'staff@example.com', 'browser-test-pw')",
    )
    server = Gateway(env)
    yield server
    server.stop()


def test_a_staff_member_streams_an_answer_in_the_playground(gateway):
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "Chromium is not installed"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{gateway.url}/")
            # Not signed in: the admin's login page first, then back to the playground.
            page.fill("#id_username", "staff")
            page.fill("#id_password", "browser-test-pw")
            page.click("input[type=submit]")
            expect(page.locator("#status")).to_have_text("connected", timeout=10_000)
            page.select_option("#model", "sim-small")
            page.fill("#prompt", "What is a gateway?")
            page.click("#send")
            expect(page.locator("#answer")).to_contain_text("Simulated answer", timeout=10_000)
            stats = page.locator("#stats")
            expect(stats).to_contain_text("first token", timeout=10_000)
            expect(stats).to_contain_text("sim-small")
            expect(stats).to_contain_text("cache miss")
            assert page.locator("#send").is_enabled()
        finally:
            browser.close()
