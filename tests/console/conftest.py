"""The console's tests: the demo's group permissions on the ``users`` cast (operators operate, managers view)."""

from __future__ import annotations

import pytest

from demo.data import grant_group_permissions


@pytest.fixture
def users(users):
    """The shared cast, with each group holding the demo's permissions (``demo.data.GROUPS``)."""
    grant_group_permissions()
    return users
