"""The batches page in a real browser: headless Chromium (Debian's package) signs in as staff
and opens /batches/; an app submits a batch of twenty through the official openai SDK; the
page adds its row and fills its bar to 100% as the gateway runs it, without reloading, with
the API's counts."""

from __future__ import annotations

import io
import json
import os

import openai
import pytest
from django.conf import settings
from django.contrib.admin.utils import quote

from llmops.batches.pages import usd
from tests.test_live_server import CHROMIUM, CHROMIUM_FLAGS, Gateway, base_env, manage

pytestmark = [
    pytest.mark.live_server,
    # The page is served by its own gateway on the embedded default, whatever the profile.
    pytest.mark.skipif(bool(settings.REDIS_URL), reason="runs once, in the embedded profile"),
]

ITEMS = 20

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("needs Chromium (apt-get install chromium; make test installs it as root)", allow_module_level=True)

# One shell, not a command each: every manage.py process takes seconds to start.
SEED = """
from django.contrib.auth import get_user_model
from llmops.auth import api_key_create
from llmops.seed import catalog_seed

catalog_seed()
get_user_model().objects.create_superuser("staff", "staff@example.com", "browser-test-pw")
print(api_key_create(name="nightly-eval")[1])
"""

# Every percentage the row's bar shows, in order, recorded by the page itself: proof that
# the row moved through the run, not just that it ended right.
WATCH_BAR = """() => {
  window.percents = [];
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.target.getAttribute("role") === "progressbar") {
        window.percents.push(Number(record.target.getAttribute("aria-valuenow")));
      }
    }
  }).observe(document.getElementById("rows"), {subtree: true, attributes: true, attributeFilter: ["aria-valuenow"]});
}"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    env = base_env(tmp_path_factory.mktemp("batches-browser"))
    # Batches run in daphne's own process, as on `make run` (the suite turns that off for
    # itself, and the server inherits the suite's environment).
    env["LLMOPS_BATCH_EXECUTOR"] = "in_process"
    env["LLMOPS_BATCH_START_WITH_SERVER"] = "true"
    env["LLMOPS_BATCH_POLL_S"] = "0.1"
    manage(env, "migrate", "--noinput")
    key = manage(env, "shell", "-c", SEED).strip().splitlines()[-1]
    server = Gateway(env)
    yield server, key
    server.stop()


def requests_file() -> tuple[str, io.BytesIO]:
    # Each a different question (no answer cache), each slower than the last: the batch
    # takes a few seconds and finishes an item at a time.
    lines = [
        {
            "custom_id": f"question-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "sim-small",
                "messages": [{"role": "user", "content": f"Question number {i}?"}],
                "max_tokens": 8,
                "simulate": {"latency_ms": 300 + 150 * i},
            },
        }
        for i in range(ITEMS)
    ]
    return "questions.jsonl", io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


def test_a_staff_member_watches_a_batch_run_to_the_end_without_reloading(gateway):
    from playwright.sync_api import expect, sync_playwright

    server, key = gateway
    assert CHROMIUM, "Chromium is not installed"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/batches/")
            # Not signed in: the admin's login page first, then back to the batches.
            page.fill("#id_username", "staff")
            page.fill("#id_password", "browser-test-pw")
            page.click("input[type=submit]")
            expect(page.locator("#status")).to_have_text("live", timeout=10_000)
            expect(page.locator("#empty")).to_be_visible()
            page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
            page.evaluate(WATCH_BAR)

            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            uploaded = client.files.create(file=requests_file(), purpose="batch")
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )

            row = page.locator(f'#rows tr[data-batch="{batch.id}"]')
            expect(row).to_be_visible(timeout=10_000)
            expect(page.locator("#empty")).to_be_hidden()
            expect(row.locator(".badge")).to_have_text("completed", timeout=30_000)
            ended = client.batches.retrieve(batch.id)
            assert ended.status == "completed", ended.errors
            counts = ended.request_counts
            assert (counts.total, counts.completed, counts.failed) == (ITEMS, ITEMS, 0)
            expect(row.locator(".completed")).to_have_text(str(counts.completed))
            expect(row.locator(".failed")).to_have_text(str(counts.failed))
            expect(row.locator(".total")).to_have_text(str(counts.total))
            expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
            expect(row.locator(".percent")).to_have_text("100%")
            expect(row.locator(".key")).to_have_text("nightly-eval")
            expect(row.locator(".model")).to_have_text("sim-small")
            expect(row.locator(".eta")).to_have_text("—")
            figures = ended.model_extra["llmops"]
            expect(row.locator(".spent")).to_have_text(f"${usd(figures['cost_usd'])}")
            expect(row.locator(".estimate")).to_have_text(f"of ~${usd(figures['estimated_cost_usd'])} estimated")

            assert page.evaluate("window.sameDocument") is True
            percents = page.evaluate("window.percents")
            assert percents[-1] == 100 and percents == sorted(percents), percents
            assert any(0 < percent < 100 for percent in percents), percents

            # The row the page drew itself links to the batch's admin page, its id quoted as
            # the admin quotes keys ("_" is "_5F": "_23" alone would be read as "#").
            link = row.locator(".id a")
            expect(link).to_have_attribute("href", f"/admin/llmops/batch/{quote(batch.id)}/change/")
            link.click()
            expect(page.get_by_role("heading", name=batch.id)).to_be_visible()
        finally:
            browser.close()
