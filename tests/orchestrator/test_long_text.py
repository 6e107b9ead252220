"""The ``long_text`` template tag (orchestrator/templatetags/baton.py): a person's free text with its line breaks,
clamped behind a "Show all" past a few lines or a few hundred characters."""

from __future__ import annotations

from django.template import Context, Template


def render(text: str, quoted: bool = True) -> str:
    return Template("{% load baton %}{% long_text text quoted=quoted %}").render(
        Context({"text": text, "quoted": quoted})
    )


def test_a_short_comment_keeps_its_line_breaks_escaped_and_isolated_in_quotes():
    # when
    html = render("one\r\ntwo <b>\nthree")

    # then: one block whose CSS shows the breaks (CRLF read as one), nothing clamped
    assert html.strip() == '<div class="long-text">“<bdi>one\ntwo &lt;b&gt;\nthree</bdi>”</div>'


def test_a_comment_past_six_lines_or_400_characters_is_clamped_with_a_show_all_saying_how_long():
    # when
    many_lines = render("\n".join(["x"] * 2000))
    one_long_line = render("y" * 401, quoted=False)
    at_the_bounds = render("\n".join(["z" * 10] * 6)), render("w" * 400)

    # then
    assert '<details class="long-text-more">' in many_lines
    assert "Show all (2,000 lines, 3,999 characters)" in many_lines
    assert "Show all (1 line, 401 characters)" in one_long_line
    assert "“" not in one_long_line
    assert all("<details" not in html for html in at_the_bounds)
