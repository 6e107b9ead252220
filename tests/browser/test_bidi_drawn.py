"""Chromium draws the ``bdi`` filter's output so that a text's direction controls stay in it: the words after it
read left to right. A bare ``<bdi>`` did not hold against a stray POP DIRECTIONAL ISOLATE (U+2069) in the text."""

from __future__ import annotations

from django.template import Context, Template
from playwright.sync_api import sync_playwright

from tests.browser.live import CHROMIUM, CHROMIUM_ARGS

PDI, RLO = "\u2069", "\u202e"
# Where the first and the last letter of "after" are drawn: reversed, the last comes first.
ORDER = """id => {
  const node = document.getElementById(id).lastChild;
  const at = node.textContent.indexOf("after");
  const range = document.createRange();
  const x = k => {
    range.setStart(node, at + k);
    range.setEnd(node, at + k + 1);
    return range.getBoundingClientRect().x;
  };
  return [x(0), x(4)];
}"""


def drawn_in_order(html: str) -> bool:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_content(f'<p id="line">{html} after</p>')
            first, last = page.evaluate(ORDER, "line")
        finally:
            browser.close()
    return first < last


def test_a_stray_pop_in_the_text_cannot_reverse_what_follows_its_bdi():
    """Given a title ending in a stray PDI and an override, when Chromium draws it through the filter, then "after"
    reads left to right; the same title in a bare <bdi> reversed it."""
    # given
    title = f"Taxi {PDI}{RLO}ABC"

    # when
    filtered = Template("{% load baton %}{{ title|bdi }}").render(Context({"title": title}))

    # then
    assert drawn_in_order(filtered)
    assert not drawn_in_order(f"<bdi>{title}</bdi>")  # why the filter balances the text
