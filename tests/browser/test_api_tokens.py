"""The API tokens page in a browser: create a token (shown once), use it, revoke it; at 1280 and 375 px. And the
API's docs page, whose Swagger UI comes from this site alone."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import expect

from api.models import ApiToken
from tests.browser.live import DESKTOP, BrowserTestCase, orm, screenshots_dir

PHONE_375 = {"width": 375, "height": 812}


def overflow(page) -> int:
    """How far the page is wider than its viewport (0: nothing scrolls sideways)."""
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


class ApiTokenPageTests(BrowserTestCase):
    def test_a_person_creates_a_token_sees_it_once_and_revokes_it_screenshots(self):
        """At 1280 and 375 px: create (the secret shown once, in full), reload (gone), revoke; saved as PNGs for
        docs/screenshots by ``make screenshots``."""
        target = screenshots_dir(self.tmp_path)
        with self.chromium() as browser:
            for viewport, suffix in ((DESKTOP, ""), (PHONE_375, "-phone")):
                # given
                page = self.signed_in_page(browser, "staff", viewport)
                page.goto("/inbox/")
                if viewport is PHONE_375:
                    page.get_by_role("button", name="Toggle navigation").click()
                    page.wait_for_function("!document.querySelector('#main-nav.collapsing')")
                page.get_by_role("link", name="API tokens", exact=True).click()
                page.wait_for_url("**/api/tokens/")
                expect(page.get_by_role("heading", name="API tokens")).to_be_visible()

                # when
                page.get_by_label("Name").fill(f"Billing sync{suffix}")
                page.get_by_label("Expires").select_option("90")
                page.get_by_role("button", name="Create token").click()

                # then: the secret is on the page once, in full, and the list shows the new token
                secret = page.locator("#new-token-value").input_value()
                assert secret.startswith("baton_")
                expect(page.locator(".list-group-item", has_text=f"Billing sync{suffix}")).to_be_visible()
                assert overflow(page) == 0
                page.screenshot(path=str(target / f"api-tokens{suffix}.png"), full_page=True)
                page.reload()
                expect(page.locator("#new-token-value")).to_have_count(0)
                assert secret not in page.content()

                # when
                page.get_by_role("button", name=f"Revoke Billing sync{suffix}").click()

                # then
                expect(page.get_by_text(f"Revoked “Billing sync{suffix}”")).to_be_visible()
                expect(
                    page.locator(".list-group-item", has_text=f"Billing sync{suffix}").locator(".badge")
                ).to_have_text("revoked")
        tokens = orm(lambda: list(ApiToken.objects.values_list("name", "revoked_at")))
        assert len(tokens) == 2
        assert all(revoked is not None for _name, revoked in tokens)

    def test_the_api_docs_load_swagger_ui_from_this_site_only(self):
        with self.chromium() as browser:
            # given
            page = self.new_page(browser, DESKTOP)
            hosts = set()
            # Swagger UI draws its icons from data: URLs, which go nowhere; every other request is counted.
            page.on(
                "request",
                lambda request: (
                    hosts.add(urlsplit(request.url).netloc) if not request.url.startswith("data:") else None
                ),
            )

            # when
            page.goto("/api/docs/")

            # then: the operations are listed, and every request went to this server
            expect(page.get_by_text("/api/instances/", exact=True).first).to_be_visible()
            assert hosts == {urlsplit(self.live_server_url).netloc}, hosts
