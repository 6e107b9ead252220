"""Friendly 404, 403 and 500 pages in every mode: with DEBUG off (production) and on (the embedded demo), a
person never sees Django's debug page with the URL list, the settings or a traceback."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from orchestrator import stats

pytestmark = pytest.mark.django_db

DEBUG_PAGE_MARKS = ("URLconf", "urlpatterns", "Traceback", "DEBUG = True", "technical_500")


def signed_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.mark.parametrize("debug", [False, True], ids=["production", "demo-debug"])
@pytest.mark.parametrize("path", ["/no/such/page/", "/instances/999999/", "/tasks/999999/"])
def test_a_missing_page_is_the_friendly_404(users, debug, path):
    # when
    with override_settings(DEBUG=debug):
        response = signed_in(users.staff).get(path)

    # then
    content = response.content.decode()
    assert response.status_code == 404
    assert "This page does not exist" in content
    assert 'href="/inbox/"' in content  # a way on, in the usual navigation
    assert not [mark for mark in DEBUG_PAGE_MARKS if mark in content]


@pytest.mark.parametrize("debug", [False, True], ids=["production", "demo-debug"])
def test_a_missing_page_is_friendly_for_anonymous_visitors_too(debug):
    with override_settings(DEBUG=debug):
        response = Client().get("/nothing-here/")
    assert response.status_code == 404
    assert "This page does not exist" in response.content.decode()


@pytest.mark.parametrize("debug", [False, True], ids=["production", "demo-debug"])
def test_an_error_is_the_friendly_500(users, debug, monkeypatch):
    # given: the catalog's read fails
    def broken(*args: object, **kwargs: object) -> list:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(stats, "catalog", broken)

    # when
    with override_settings(DEBUG=debug):
        response = signed_in(users.staff).get("/workflows/")

    # then
    content = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in content
    assert "database on fire" not in content
    assert not [mark for mark in DEBUG_PAGE_MARKS if mark in content]


def test_a_forbidden_page_is_the_friendly_403(users):
    # when: staff without the start permission opens a start form
    response = signed_in(users.staff).get("/workflows/expense_approval/start/")

    # then
    assert response.status_code == 403
    assert "You may not open this page" in response.content.decode()


@pytest.mark.parametrize("debug", [False, True], ids=["production", "demo-debug"])
def test_a_stale_form_after_signing_out_elsewhere_is_the_friendly_csrf_page(users, debug):
    # given: a task page's form was loaded while signed in, then the person signed out in another tab (the
    # session and its CSRF token are gone) and signed in again, so the old page's token no longer matches
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(users.staff)
    page = client.get("/inbox/")
    stale = page.context["csrf_token"] if page.context else "stale-token-" + "x" * 20
    client.logout()
    client.force_login(users.staff)

    # when: the old form is posted
    with override_settings(DEBUG=debug):
        response = client.post("/tasks/1/claim/", {"csrfmiddlewaretoken": str(stale) + "x"})

    # then: Baton's own page, in words, with a way on, and no Django default page text
    content = response.content.decode()
    assert response.status_code == 403
    assert 'data-error-page="403"' in content
    assert "This form has expired" in content
    assert "Reload the page" in content
    assert "CSRF verification failed" not in content
    assert not [mark for mark in DEBUG_PAGE_MARKS if mark in content]


@pytest.mark.parametrize("debug", [False, True], ids=["production", "demo-debug"])
@pytest.mark.parametrize("path", ["/tasks/1/claim/", "/instances/1/retry/", "/audit/chains/verify/", "/logout/"])
def test_an_action_address_opened_as_a_page_is_the_friendly_405(users, debug, path):
    # given: a click on Claim after the session ended went through the sign-in, whose ?next= then opened the
    # button's address as a page (a GET); Django's require_POST answers that with an empty body
    client = signed_in(users.admin)

    # when
    with override_settings(DEBUG=debug):
        response = client.get(path)

    # then: still 405 with its Allow header, but a page saying what happened and the way back, not a blank one
    content = response.content.decode()
    assert response.status_code == 405
    assert "POST" in response["Allow"]
    assert 'data-error-page="405"' in content
    assert "press the button again" in content
    assert 'href="/inbox/"' in content
    assert not [mark for mark in DEBUG_PAGE_MARKS if mark in content]


def test_the_api_keeps_its_own_405(users):
    # given: an API client with a browser session
    client = signed_in(users.admin)

    # when: it uses a method an endpoint does not take
    response = client.delete("/api/workflows/", HTTP_ACCEPT="application/json")

    # then: problem+json as before, not the page
    assert (response.status_code, response["Content-Type"]) == (405, "application/problem+json")


def test_a_query_too_long_keeps_the_signed_in_person_signed_in_on_its_page(users):
    # given: a signed-in person whose filters made the address too long (the page is answered before the session
    # is read)
    client = signed_in(users.staff)

    # when
    response = client.get("/inbox/", {"q": "lunch " * 800})

    # then: the 414 page, drawn for them: their name and the inbox link, not the sign-in link of a stranger
    content = response.content.decode()
    assert response.status_code == 414
    assert 'data-error-page="414"' in content
    assert "Open the inbox" in content
    assert 'href="/login/"' not in content
    assert "staff" in content


def test_a_query_too_long_from_a_stranger_offers_the_sign_in():
    # when
    response = Client().get("/inbox/", {"q": "lunch " * 800})

    # then
    assert response.status_code == 414
    assert 'href="/login/"' in response.content.decode()
