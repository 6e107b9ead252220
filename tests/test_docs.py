"""The documentation stands alone and names what exists: every repository path README and docs/ name is a file
or folder of this checkout, and nothing points outside the repository (a sibling checkout's notes)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]
TOP = sorted(path.name for path in ROOT.iterdir() if path.is_dir() and not path.name.startswith("."))
# `dir/name.ext`, or `dir/` for a folder, starting at one of the checkout's top-level folders
PATH = re.compile(rf"`((?:{'|'.join(map(re.escape, TOP))})/[A-Za-z0-9_./*-]*)`")
# In a table row `a/b.py`, `c.py`: names without a folder are beside the last one that had one.
BESIDE = re.compile(r"`([A-Za-z0-9_]+\.(?:py|js|md))`")


def named_paths(text: str) -> list[str]:
    """The repository paths one document names in backticks, each as it would be opened from the root."""
    found = []
    for line in text.splitlines():
        cells = line.split("|")[1:2] if line.startswith("| `") else [line]
        for cell in cells:
            folder = ""
            for match in re.finditer(rf"{PATH.pattern}|{BESIDE.pattern}", cell):
                full, short = match.groups()
                if full:
                    folder = full if full.endswith("/") else full.rsplit("/", 1)[0] + "/"
                    found.append(full)
                elif folder and line.startswith("| `"):
                    found.append(folder + short)
    return found


def test_every_path_the_docs_name_exists():
    # given
    missing = {}
    for doc in DOCS:
        paths = named_paths((ROOT / doc).read_text())
        assert paths or doc != "README.md"  # the scan finds README's paths at all

        # when: each is looked up from the root (a glob for `docs/screenshots/*-phone.png`)
        gone = [path for path in paths if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists())]
        if gone:
            missing[doc] = gone

    # then
    assert not missing, f"named but not in the repository: {missing}"


def test_a_short_name_in_a_table_row_is_read_beside_the_folder_before_it():
    # given: README's way of naming several files of one folder
    row = "| `orchestrator/services/results.py`, `orchestrator/inputs.py`, `forms.py` | what |"

    # then: forms.py is orchestrator/forms.py, not orchestrator/services/forms.py
    assert named_paths(row) == [
        "orchestrator/services/results.py",
        "orchestrator/inputs.py",
        "orchestrator/forms.py",
    ]


def test_nothing_in_the_repository_points_outside_it():
    # given: every tracked text file (vendored minified code and this test, which names the patterns, aside)
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"\.\./shared|\bshared/|DESIGN\.md|PEERS\.md|STYLE\.md")

    # when
    found = [
        name
        for name in files
        if not name.startswith("static/vendor/")
        and name != "tests/test_docs.py"
        and not name.endswith((".png", ".ico", ".woff2", ".gz"))
        and outside.search((ROOT / name).read_text(errors="replace"))
    ]

    # then
    assert found == []


def test_every_migration_the_docs_name_exists():
    # given: migrations named in full (`0011_audit_timeline`), as the docs now name one whose number was stale
    named = set()
    for doc in DOCS:
        named |= set(re.findall(r"`(\d{4}_[a-z0-9_]+)`", (ROOT / doc).read_text()))
    files = {path.stem for path in ROOT.glob("*/migrations/[0-9][0-9][0-9][0-9]_*.py")}
    assert "0011_audit_timeline" in named  # the scan finds them at all

    # then
    assert named - files == set()


def api_table_operations(text: str) -> set[tuple[str, str]]:
    """The (method, path) pairs README's API table names in its first column: "`POST /api/instances/{id}/retry/`,
    `pause/`" is retry's and pause's (a short name is beside the last full path), "`/api/workflows/{name}/`" takes
    the method before it, and a query string ("`?scope=queue`") is the same operation."""
    found = set()
    for line in text.splitlines():
        if not re.match(r"\| `(GET|POST|PUT|PATCH|DELETE) /api/", line):
            continue
        method, path = "", ""
        for item in re.findall(r"`([^`]+)`", line.split("|")[1]):
            if item.startswith("?"):
                continue
            if " " in item:
                method, item = item.split(" ", 1)
            path = item if item.startswith("/") else path.rsplit("/", 2)[0] + "/" + item
            found.add((method, path.split("?")[0]))
    return found


def test_a_short_name_in_the_api_table_is_read_beside_the_path_before_it():
    row = "| `POST /api/instances/{id}/retry/`, `pause/` | x |\n| `GET /api/tasks/?scope=mine` / `?scope=queue` | y |"

    assert api_table_operations(row) == {
        ("POST", "/api/instances/{id}/retry/"),
        ("POST", "/api/instances/{id}/pause/"),
        ("GET", "/api/tasks/"),
    }


def test_readme_s_api_table_names_every_operation_of_the_schema_and_no_other():
    # given: the operations the OpenAPI schema (/api/schema/, /api/docs/) publishes
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    published = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert ("POST", "/api/instances/") in published  # the schema is read at all

    # when
    documented = api_table_operations((ROOT / "README.md").read_text())

    # then: an endpoint left out of the table is one a reader never learns of; one in it but not served misleads
    assert published - documented == set(), "in the API but not in README's table"
    assert documented - published == set(), "in README's table but not in the API"


# ("baton-admin is the installed copy's manage.py" is prose, not a command.)
COMMAND = re.compile(r"(?:manage\.py|baton-admin) (?!is )([a-z_]+)([^`#&\n]*)")


def test_every_command_the_docs_name_exists_with_the_options_they_give_it():
    # given: each `manage.py <command> --option ...` (or baton-admin's) of the docs, up to the end of its code span
    from django.core.management import get_commands, load_command_class

    named: dict[str, set[str]] = {}
    for doc in [*DOCS, "bench/README.md"]:
        for command, rest in COMMAND.findall((ROOT / doc).read_text()):
            named.setdefault(command, set()).update(re.findall(r"(--[a-z][a-z-]*)", rest))
    assert {"baton_verify_audit", "baton_start", "migrate"} <= set(named)  # the scan finds them at all

    # when: each is looked up as Django would run it, with its options and its subcommands' options
    commands = get_commands()
    unknown, wrong_options = [], {}
    for command, options in sorted(named.items()):
        if command not in commands:
            unknown.append(command)
            continue
        parser = load_command_class(commands[command], command).create_parser("manage.py", command)
        known = set(parser._option_string_actions)
        for action in parser._subparsers._group_actions if parser._subparsers else []:
            for sub in getattr(action, "choices", {}).values():
                known |= set(sub._option_string_actions)
        if options - known:
            wrong_options[command] = sorted(options - known)

    # then
    assert unknown == [], "named in the docs but no such command"
    assert wrong_options == {}, "options the docs give that the command does not take"


def test_every_baton_variable_the_docs_mention_is_in_the_settings_table():
    # given: README's settings table (tests/orchestrator/test_settings.py holds it to what the code reads)
    readme = (ROOT / "README.md").read_text()
    rows = [line.split("|")[1] for line in readme.splitlines() if line.startswith("| `BATON_")]
    table = set(re.findall(r"`(BATON_[A-Z0-9_]+)`", "\n".join(rows)))
    assert len(table) > 20  # the table is read at all

    # when: every variable any document names, in prose or in an example
    mentioned = {
        doc: set(re.findall(r"\bBATON_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / doc).read_text())) - table
        for doc in [*DOCS, "bench/README.md"]
    }

    # then: a name not in the table is a setting that does not exist (or one a reader cannot look up)
    assert {doc: names for doc, names in mentioned.items() if names} == {}


# `docs/architecture.md, "Signals", "Scheduled starts" and "Webhooks"`, `README, "Production"`, `bench/README.md "API
# starts"`: a document, then one or more quoted section names.
SECTION_REF = re.compile(r"(docs/[a-z-]+\.md|bench/README\.md|README(?:\.md)?)((?:,? (?:and )?\"[^\"\n]{2,80}\")+)")


def sections_of(doc: str) -> set[str]:
    """The section names of one document: its headings and its bold run-in heads (`**Rolling the secret.**`)."""
    text = (ROOT / doc).read_text()
    headings = re.findall(r"^#+\s+(.+)$", text, re.M)
    bold = re.findall(r"\*\*([^*]+)\*\*", text)
    return {name.strip().rstrip(".:") for name in [*headings, *bold]}


def test_every_section_the_repository_points_to_exists():
    # given: every reference to a section of a document, in the documents, the code, the templates and the tests
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    references = []
    for name in files:
        if name.startswith("static/vendor/") or name.endswith((".png", ".ico", ".woff2", ".gz")):
            continue
        for match in SECTION_REF.finditer((ROOT / name).read_text(errors="replace")):
            doc = "README.md" if match[1] == "README" else match[1]
            references += [(name, doc, section) for section in re.findall(r"\"([^\"]+)\"", match[2])]
    assert len(references) > 20  # the scan finds them at all

    # when: each is looked up among its document's headings (a heading that starts with it counts)
    known = {doc: sections_of(doc) for doc in {doc for _, doc, _ in references}}
    missing = [
        (name, doc, section)
        for name, doc, section in references
        if not any(heading.startswith(section) for heading in known[doc])
    ]

    # then
    assert missing == [], "points to a section its document does not have"


def test_every_relative_link_and_image_of_the_docs_resolves():
    # given: every [text](target) and ![alt](image) of README, docs/ and bench/README.md that is not a web address
    links = []
    for doc in [*DOCS, "bench/README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / doc).read_text()):
            if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
                links.append((doc, target.split("#")[0]))
    assert any(target.endswith(".png") for _, target in links)  # README's screenshots are among them

    # when: each is opened from its document's folder, as GitHub does
    broken = [(doc, target) for doc, target in links if not ((ROOT / doc).parent / target).exists()]

    # then
    assert broken == []


def test_every_page_path_the_docs_name_is_a_route():
    """The API's paths have their own check (tests/api/test_documented_routes.py); this one reads the pages',
    `/escalations/`, `/instances/<id>/`, `/health/ready`, with a placeholder standing for an id or a name."""
    from django.urls import Resolver404, resolve

    # given
    named = set()
    for doc in DOCS:
        for path in re.findall(r"`(/[a-z][A-Za-z0-9_{}<>:./-]*)(?:\?[^`]*)?`", (ROOT / doc).read_text()):
            if not path.startswith(("/api", "/ws/", "/pypi/")):  # the API's check; the websocket; PyPI's JSON API
                named.add((doc, path))
    assert ("README.md", "/dashboard/") in named  # the scan finds them at all

    # when: each resolves with its placeholders filled in
    unknown = []
    for doc, path in sorted(named):
        concrete = re.sub(r"<int:[a-z_]+>|<id>|\{id\}", "1", re.sub(r"<str:[a-z_]+>|\{name\}", "x", path))
        try:
            resolve(concrete)
        except Resolver404:
            unknown.append((doc, path))

    # then
    assert unknown == []
