"""The site's templates, read as text: what Django's template language would show a person instead of reading."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def test_every_one_line_comment_closes_on_its_line():
    # given every template of the site
    pages = sorted(TEMPLATES.rglob("*.html"))
    assert len(pages) > 50  # the scan finds them at all

    # when each line that opens a {# comment is read
    unclosed = [
        f"{page.relative_to(TEMPLATES)}:{number}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), start=1)
        if "{#" in line and "#}" not in line[line.index("{#") :]
    ]

    # then it closes on the same line: Django's {# #} is one line only, and one that runs on is printed on the page
    # as text (the dashboard's table showed its note to the reader); longer notes use {% comment %}
    assert unclosed == []
