"""The console's tests: the demo's group permissions on the ``users`` cast (operators operate, managers view)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from demo.data import GROUPS


@pytest.fixture
def users(users):
    """The shared cast, with each group holding the demo's permissions (``demo.data.GROUPS``)."""
    for group in (users.approvers, users.managers, users.operators):
        codenames = GROUPS[group.name]
        group.permissions.set(Permission.objects.filter(content_type__app_label="orchestrator", codename__in=codenames))
    return users
