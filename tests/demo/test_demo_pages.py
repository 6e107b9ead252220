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


# Signs in as each demo login and submits every POST form its pages offer (the operator's retry, pause, cancel...),
# as the page fills it, a reason typed where one is asked; prints {login: [[page, action, status], ...]}.
SUBMIT = """
import json, re
from html.parser import HTMLParser
from django.test import Client

class Forms(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms, self.form, self.select = [], None, None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.form = {"action": a.get("action") or "", "post": (a.get("method") or "").lower() == "post", "data": {}}
        elif self.form is None or not a.get("name"):
            if tag == "option" and self.form is not None and self.select:
                self.form["data"].setdefault(self.select, a.get("value", ""))
            return
        elif tag == "select":
            self.select = a["name"]
        elif tag == "textarea":
            self.form["data"][a["name"]] = "checked by the demo pages test"
        elif tag == "input" and a.get("type") in ("checkbox", "radio"):
            if "checked" in a or a["name"] not in self.form["data"]:
                self.form["data"][a["name"]] = a.get("value", "on")
        elif tag in ("input", "button") and a.get("type") not in ("submit", "file"):
            typed = "checked by the demo pages test" if a["name"] in ("reason", "comment", "note", "name") else ""
            self.form["data"].setdefault(a["name"], a.get("value") or typed)
    def handle_endtag(self, tag):
        if tag == "form" and self.form is not None:
            self.forms.append(self.form)
            self.form = None
        elif tag == "select":
            self.select = None

found = {}
for login in json.loads(%r):
    client = Client(SERVER_NAME="127.0.0.1", raise_request_exception=False)
    client.post("/login/", {"username": login, "password": "demo"})
    pages = ["/inbox/", "/escalations/", "/incidents/", "/instances/", "/settings/", "/api/tokens/", "/audit/chains/",
             "/workflows/expense_approval/start/", "/automation/schedules/new/", "/automation/webhooks/new/"]
    for listing, link in (("/instances/", r"/instances/[0-9]+/"), ("/inbox/", r"/tasks/[0-9]+/")):
        pages += sorted(set(re.findall(f'href="({link})"', client.get(listing).content.decode())))
    found[login] = []
    for page in pages:
        response = client.get(page)
        if response.status_code != 200:
            continue
        parser = Forms()
        parser.feed(response.content.decode())
        for form in parser.forms:
            if form["post"] and "logout" not in form["action"]:
                action = form["action"] or page
                found[login].append([page, action, client.post(action, form["data"]).status_code])
print(json.dumps(found))
"""


@pytest.mark.timeout(300)
def test_every_form_a_demo_login_is_offered_submits_without_a_server_error_on_the_demo_s_sqlite(tmp_path: Path):
    """An operator's Cancel answered 503 ("database unreachable") in the demo: the engine dropped the instance's kept
    signals with PostgreSQL's ``::jsonb`` cast, which SQLite cannot read."""
    # given: the demo's database
    database = tmp_path / "baton.sqlite3"
    manage(database, "migrate", "--noinput", demo_app="1")
    manage(database, "baton_demo_data", demo_app="1")
    logins = readme_demo_logins()

    # when: each login submits what its pages offer
    output = manage(database, "shell", "-c", SUBMIT % json.dumps(logins), demo_app="1")
    found = json.loads(output.strip().splitlines()[-1])

    # then: forms were found and sent (an operator's cancel among them), and none met a server error
    assert any(action.endswith("/cancel/") for _, action, _ in found["operator"])
    broken = {login: [s for s in sent if s[2] >= 500] for login, sent in found.items()}
    assert {login: sent for login, sent in broken.items() if sent} == {}
