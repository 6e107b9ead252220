"""README, "Quick start": `make demo` serves the demo data from SQLite, and each demo login opens its pages. The
suite runs on PostgreSQL, so SQL that only PostgreSQL takes (a LIMIT inside a UNION ALL made the admin's audit pages
answer 500 in the demo) went unseen. Here every page the navigation offers each demo login, and every page linked
from those, is opened on a demo database as `make demo` makes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.demo.test_app import manage

# Signs in as each demo login (README's table, password `demo`) and follows the links of its pages three deep, two
# of each kind (`/instances/7/` and `/instances/9/` are one kind), once each; prints {login: [[path, status], ...]}.
CRAWL = """
import json, re
from django.test import Client

LOGINS = json.loads(%r)
LINK = re.compile(r'href="(/[^"#]*)"')
LEAVE = ("/logout", "/admin/", "/static/", "/api/schema", "/audit/export", "/api/audit/export")
found = {}
for login in LOGINS:
    client = Client(SERVER_NAME="127.0.0.1", raise_request_exception=False)
    signed_in = client.post("/login/", {"username": login, "password": "demo"})
    seen, kinds, statuses = set(), {}, []
    queue = ["/"] if signed_in.status_code == 302 else []
    found[login] = statuses if queue else [["/login/", signed_in.status_code]]
    for depth in range(3):
        following = []
        for path in queue:
            kind = re.sub(r"[0-9]+", "N", path)
            if path in seen or path.startswith(LEAVE) or kinds.get(kind, 0) >= 2 or len(seen) >= 120:
                continue
            seen.add(path)
            kinds[kind] = kinds.get(kind, 0) + 1
            response = client.get(path, follow=True)
            statuses.append([path, response.status_code])
            if "html" in response.get("Content-Type", ""):
                following += [link.replace("&amp;", "&") for link in LINK.findall(response.content.decode())]
        queue = following
print(json.dumps(found))
"""
ROOT = Path(__file__).resolve().parents[2]


def readme_demo_logins() -> list[str]:
    """The user names of README's "Demo logins" table (`staff`, `staff2` share a row)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Demo logins") :].split("\n\n")[1]
    return [name for row in table.splitlines()[2:] for name in re.findall(r"`([a-z0-9]+)`", row.split("|")[1])]


@pytest.mark.timeout(300)
def test_every_demo_login_opens_every_page_it_is_offered_on_the_demo_s_sqlite(tmp_path: Path):
    # given: the demo's database, as `make demo` makes it (migrate, then the demo data through the real engine)
    database = tmp_path / "baton.sqlite3"
    manage(database, "migrate", "--noinput", demo_app="1")
    manage(database, "baton_demo_data", demo_app="1")

    # when: each login opens what it is offered
    logins = readme_demo_logins()
    assert {"staff", "admin"} <= set(logins)  # the table is read at all
    output = manage(database, "shell", "-c", CRAWL % json.dumps(logins), demo_app="1")
    found = json.loads(output.strip().splitlines()[-1])

    # then: every login README gives (password `demo`) got in and saw pages, and none of them was a server error
    assert set(found) == set(logins)
    assert all(len(statuses) > 3 for statuses in found.values()), found
    broken = {login: [s for s in statuses if s[1] >= 500] for login, statuses in found.items()}
    assert {login: pages for login, pages in broken.items() if pages} == {}
    assert any(path.startswith("/audit/") for path, _ in found["admin"])  # the admin reached the audit pages
