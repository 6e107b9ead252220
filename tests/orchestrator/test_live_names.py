"""The live names the server formats (orchestrator/live_names.py) are the ones the browser uses (live.js) and the
templates listen for: a rename on one side alone would leave pages silently stale."""

from __future__ import annotations

import json
import re
from pathlib import Path

from orchestrator import live_names

ROOT = Path(__file__).resolve().parents[2]


def _mirror_in_live_js() -> dict:
    source = (ROOT / "static" / "baton" / "live.js").read_text()
    block = re.search(r"// live-names:begin[^\n]*\n\s*var LIVE_NAMES = (\{.*?\});\s*// live-names:end", source, re.S)
    assert block is not None, "live.js lost its live-names block"
    return json.loads(block.group(1))


def test_live_js_mirrors_the_server_names():
    """Given live.js's LIVE_NAMES block, when it is read as JSON, then it equals live_names.BROWSER."""
    # given / when
    mirror = _mirror_in_live_js()

    # then
    assert mirror == live_names.BROWSER


def test_every_refresh_a_template_listens_for_is_a_known_name():
    """Given every template, when its ``baton:refresh-<name>`` triggers are collected, then each names a refresh
    the server sends (a fixed name, or a prefix followed by an id)."""
    # given
    templates = list((ROOT / "templates").rglob("*.html"))
    assert templates

    # when
    names = {
        name
        for path in templates
        for name in re.findall(
            re.escape(live_names.REFRESH_PREFIX) + r"([\w{}.\- ]+?)(?= from:|\"|,)", path.read_text()
        )
    }

    # then
    assert names, "no template listens for a refresh: the pattern no longer matches"
    fixed = set(live_names.BROWSER["refresh"])
    for name in names:
        assert name in fixed or any(name.startswith(prefix) for prefix in live_names.BROWSER["refreshPrefixes"]), name


def test_formatters_give_the_names_the_consumer_and_pages_use():
    """Given ids, when the formatters run, then they give the group and refresh names of the protocol."""
    # given / when / then
    assert live_names.user_group(7) == "user.7"
    assert live_names.people_group(3) == "group.3"
    assert live_names.instance_group(42) == "instance.42"
    assert live_names.instance_refresh(42) == "instance-42"
    assert live_names.task_refresh(9) == "task-9"
