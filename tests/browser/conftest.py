"""Browser tests: every test under tests/browser drives real Chromium against a Channels live server.

The machinery is in tests/browser/live.py (``BrowserTestCase``); this file only marks the tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)
