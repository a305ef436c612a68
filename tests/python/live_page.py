"""Drives the controller's web page in a real headless Chromium (Debian's, through
Playwright): the page loads, lists the objects and budgets, and a request sent with the
official OpenAI SDK while it is open appears in its live log within 2 seconds.

Usage: live_page.py CONTROLLER_ADMIN_URL DATAPLANE_API_URL API_KEY BUDGET
"""

import os
import sys
import time

from openai import OpenAI
from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")


def main(admin, api, key, budget):
    client = OpenAI(base_url=api, api_key=key, max_retries=0)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(admin + "/")
        # Objects with their conditions, and the budget against its limit.
        page.wait_for_selector("#objects tr", timeout=5000)
        objects = page.inner_text("#objects")
        assert "VirtualKey" in objects and "default/demo" in objects, objects
        assert "Accepted=True" in objects, objects
        page.wait_for_selector("#budgets tr", timeout=5000)
        budgets = page.inner_text("#budgets")
        assert budget in budgets, budgets
        # Following has begun once the page asked for /logs; a request made now.
        page.wait_for_timeout(300)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hello from the page test"}]
        )
        request_id = raw.headers["x-tollgate-request-id"]
        sent = time.monotonic()
        page.wait_for_selector(f'#log tr[data-request-id="{request_id}"]', timeout=2000)
        took = time.monotonic() - sent
        row = page.inner_text(f'#log tr[data-request-id="{request_id}"]')
        assert "default/demo" in row and "200" in row, row
        assert "hello from the page test" not in page.content(), "a prompt reached the page"
        # A filter that excludes the request: the log follows again without it.
        page.fill('#filters input[name="status"]', "5xx")
        page.click('#filters button')
        page.wait_for_timeout(500)
        assert page.query_selector(f'#log tr[data-request-id="{request_id}"]') is None
        assert not errors, errors
        browser.close()
    print(f"page ok: the request showed in the live log after {took:.3f} s")


if __name__ == "__main__":
    main(*sys.argv[1:5])
