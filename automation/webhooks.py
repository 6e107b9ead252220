"""Signed webhooks: subscriptions, the outbox fed by the engine's audit events, durable deliveries with back-off.

The path of an event (docs/architecture.md, "Webhooks"):

1. ``outbox_rows`` (a receiver of ``orchestrator.events.unit_finishing``) adds a ``WebhookOutbox`` row for each
   audit event subscribers may hear of, written in the engine's own statement: it exists exactly when the event does;
2. the sweep (``webhooks_sweep``) turns outbox rows into one ``WebhookDelivery`` per matching active subscription
   (unique per subscription and audit event) and sends a Celery message per due delivery;
3. ``delivery_send`` (the Celery task) claims the delivery with a lease, POSTs it signed, outside any transaction,
   and records the status: delivered, or another attempt after an exponential back-off, or failed for good after
   ``MAX_ATTEMPTS``. A subscription whose deliveries keep failing is paused and its owner told.

The signature header: ``Baton-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``, with a
second ``v1`` (the previous secret's) while a rolled secret's grace lasts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import idna
from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from automation.models import (
    WEBHOOK_EVENTS,
    DeliveryState,
    WebhookDelivery,
    WebhookOutbox,
    WebhookSubscription,
)
from orchestrator import audit
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.bidi import isolate
from orchestrator.models import AuditEvent
from orchestrator.services.results import clean_text

logger = logging.getLogger(__name__)

CHAIN = "automation"
SENDER = Actor.system("webhooks")
MAX_ATTEMPTS = 8
# Back-off after failed attempt n: BACKOFF_BASE * 2 ** (n - 1) seconds, up to 10 % more (spreading a recovering
# receiver's load), capped at BACKOFF_MAX: 10 s, 20 s, 40 s ... about 21 minutes over the eight attempts.
BACKOFF_BASE = 10.0
BACKOFF_MAX = 3600.0
# The Celery task that makes one attempt (automation/tasks.py), published by name: the services never import the
# module of Celery entry points that calls them (one way: tasks -> services).
DELIVERY_SEND_TASK = "automation.tasks.delivery_send"
# Paused when this many attempts in a row failed and the first of them is at least PAUSE_AFTER old (a burst
# against a receiver restarting for a minute does not pause it).
PAUSE_AFTER_FAILURES = 10
PAUSE_AFTER = timedelta(minutes=30)
# A sent message not picked up by a worker after this long is sent again by the sweep.
REDISPATCH_AFTER = timedelta(seconds=30)
RESPONSE_KEPT = 300
SIGNATURE_HEADER = "Baton-Signature"
TOLERANCE = 300  # seconds a receiver should accept between the signed timestamp and its clock


class WebhookInvalid(Exception):
    """A subscription cannot be saved as given; ``errors`` names the fields."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class WebhookChanged(WebhookInvalid):
    """Another admin changed the subscription after this form was shown; ``stamp`` is its edit stamp now."""

    def __init__(self, errors: dict[str, list[str]], stamp: str) -> None:
        super().__init__(errors)
        self.stamp = stamp


# --- signing ----------------------------------------------------------------------------------------------


def sign(secret: str | list[str], timestamp: int, body: bytes) -> str:
    """The ``Baton-Signature`` header value for ``body`` sent at ``timestamp`` (unix seconds): one ``v1`` per secret
    of ``secret`` (one, or a list: the current secret, then the previous one during a roll's grace), in that order.
    A receiver accepts the header when any ``v1`` matches its secret (:func:`verify`), as Stripe's receivers do."""
    keys = [secret] if isinstance(secret, str) else secret
    signed = str(timestamp).encode() + b"." + body
    digests = [hmac.new(key.encode(), signed, hashlib.sha256).hexdigest() for key in keys]
    return ",".join([f"t={timestamp}", *(f"v1={digest}" for digest in digests)])


def verify(
    secret: str, header: str | None, body: bytes, *, now: float | None = None, tolerance: int = TOLERANCE
) -> bool:
    """What a receiver does: True when one of the ``v1`` signatures of ``header`` signs ``body`` with ``secret``
    within ``tolerance`` seconds; False for anything else, a missing (None) or malformed header included (never
    raises on what a sender wrote). There are two ``v1`` while a rolled secret's grace lasts (the new secret's, then
    the old one's): either verifies, so a receiver may switch secrets at any time within the grace."""
    if not isinstance(header, str):
        return False
    try:
        pairs = [item.split("=", 1) for item in header.split(",")]
        timestamp = int(dict(pairs)["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    # Compared as bytes: compare_digest raises on a str with a non-ASCII character (a forged header's).
    given = [value.encode("utf-8", "surrogatepass") for key, value in pairs if key == "v1"]
    return any(hmac.compare_digest(expected.encode(), digest) for digest in given)


# --- addresses ----------------------------------------------------------------------------------------------


# IPv6 ranges whose last 32 bits are an IPv4 address that a kernel or a gateway reaches: IPv4-compatible (::/96),
# IPv4-translated (::ffff:0:0:0/96, SIIT) and NAT64's well-known prefix (64:ff9b::/96, RFC 6052). A NAT64 gateway
# forwards 64:ff9b::a00:1 to 10.0.0.1 on its own network, so the IPv4 address is what must be public.
_IPV4_CARRIERS = tuple(ipaddress.IPv6Network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96"))
# Never public whatever Python's tables say (they gained these in later patch releases): NAT64's local-use prefix
# (RFC 8215, translated to any IPv4 address, private ones included) and the 6to4 relay anycast.
_NEVER_PUBLIC = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv4Network("192.88.99.0/24"))


def _forbidden(address: str) -> bool:
    """True when ``address`` is not a public unicast address, or is an IPv6 one carrying an IPv4 address that is
    not (IPv4-mapped, -compatible, -translated, NAT64, 6to4, Teredo's client)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in network for network in _NEVER_PUBLIC if network.version == ip.version):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            carried = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
            if carried is None and any(ip in network for network in _IPV4_CARRIERS):
                carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if carried is not None and _forbidden(str(carried)):
                return True
    return not ip.is_global or ip.is_multicast


# Name look-ups run here so that one can be given up on: getaddrinfo cannot be interrupted, and a resolver that does
# not answer keeps it for its own timeouts times its attempts (30 s and more). A look-up given up on still holds its
# thread until the resolver lets go (one per silent host, below), and waiting ones are dropped when their caller gives
# up. 32 at most: with 4, four subscribers whose hosts' name servers were silent held every thread and every other
# subscriber's attempt failed as "not looked up"; the pool starts threads only as look-ups need them, so the bound
# costs nothing while name servers answer.
LOOKUP_THREADS = 32
_LOOKUPS = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="baton-webhook-dns")
# One look-up per (host, port) at a time, shared by every attempt that needs it, with how many wait on it: each
# attempt to a host whose name server is silent took a thread of its own, so a few of them filled the pool and every
# other subscriber's look-up queued behind them, reported as unresolvable. Now a silent host holds one thread.
_IN_FLIGHT: dict[tuple[str, int], tuple[Future[Any], int]] = {}
_IN_FLIGHT_LOCK = threading.RLock()  # re-entrant: cancel() runs the done callback, which takes it too


def _forget(key: tuple[str, int], lookup: Future[Any]) -> None:
    with _IN_FLIGHT_LOCK:
        if key in _IN_FLIGHT and _IN_FLIGHT[key][0] is lookup:
            del _IN_FLIGHT[key]


def _join(key: tuple[str, int]) -> Future[Any]:
    """The look-up of ``key`` in flight, or a new one; the caller is counted as waiting on it (see :func:`_leave`)."""
    with _IN_FLIGHT_LOCK:
        lookup, waiting = _IN_FLIGHT.get(key, (None, 0))
        if lookup is None:
            lookup = _LOOKUPS.submit(socket.getaddrinfo, key[0], key[1], type=socket.SOCK_STREAM)
            _IN_FLIGHT[key] = (lookup, 0)
            lookup.add_done_callback(partial(_forget, key))
        if key in _IN_FLIGHT:  # not when it finished at once (its callback already ran)
            _IN_FLIGHT[key] = (lookup, waiting + 1)
        return lookup


def _leave(key: tuple[str, int], lookup: Future[Any]) -> bool:
    """A caller gives up on ``lookup``: the last one to do so drops it if it has not started. Returns True if it
    never started (every thread was held by other look-ups)."""
    with _IN_FLIGHT_LOCK:
        entry = _IN_FLIGHT.get(key)
        if entry is not None and entry[0] is lookup:
            if entry[1] > 1:
                _IN_FLIGHT[key] = (lookup, entry[1] - 1)
                return not lookup.running() and not lookup.done()
            return lookup.cancel()
        return lookup.cancelled()


def _addresses(host: str, port: int, seconds: float) -> list[str]:
    try:
        ipaddress.ip_address(host)
        numeric = True
    except ValueError:
        numeric = False
    key = (host, port)
    try:
        if numeric:  # an address needs no name server: never queued behind look-ups waiting for one
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
            return list(dict.fromkeys(str(info[4][0]) for info in found))
        lookup = _join(key)
        found = lookup.result(timeout=seconds)
    except (FutureTimeout, CancelledError):
        if _leave(key, lookup):
            raise ValueError(
                f"{isolate(host)} was not looked up within {seconds:.2g} s: every name look-up is waiting for a name "
                "server that does not answer."
            ) from None
        raise ValueError(f"{isolate(host)} could not be resolved within {seconds:.2g} s.") from None
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"{isolate(host)} cannot be resolved.") from None
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def resolve(url: str, seconds: float | None = None) -> tuple[str, int, list[str]]:
    """The host, port and addresses ``url`` reaches; ValueError saying why it may not be used: its shape
    (:func:`address_shape`), unresolvable within ``seconds`` (default ``BATON_WEBHOOK_TIMEOUT``), or (unless
    BATON_WEBHOOK_ALLOW_PRIVATE) reaching a private, loopback, link-local, reserved or multicast address."""
    host, port = address_shape(url)
    addresses = _addresses(host, port, settings.BATON_WEBHOOK_TIMEOUT if seconds is None else seconds)
    if not settings.BATON_WEBHOOK_ALLOW_PRIVATE:
        private = [a for a in addresses if _forbidden(a)]
        if private:
            raise ValueError(
                f"{isolate(urlsplit(url).hostname or host)} resolves to {', '.join(private)}, a private, loopback or "
                "reserved address; webhooks go to public addresses only (BATON_WEBHOOK_ALLOW_PRIVATE allows others)."
            )
    return host, port, addresses


def address_shape(url: str) -> tuple[str, int]:
    """The host (in ASCII) and port ``url`` names, read without looking the name up; ValueError saying why it is no
    address Baton may send to: not http(s), with spaces or control characters (or letters beyond ASCII in its path),
    with credentials, a port out of range. The form checks this beside its other fields, before any look-up."""
    # http.client refuses these in a request line at every attempt: subscribed, such an address was sent nothing.
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise ValueError("Put no spaces or control characters in the address (write a space as %20).")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Give an http:// or https:// address.")
    if not (parts.path + parts.query).isascii():
        raise ValueError("Percent-encode the letters beyond ASCII in the path and query (é is %C3%A9).")
    if parts.username or parts.password:
        raise ValueError("Put no user name or password in the address; the signature authenticates Baton.")
    host = _ascii_host(parts.hostname)
    try:
        given = parts.port
    except ValueError:
        given = 0
    if given == 0:  # out of range, or 0: no port (read as "none given", it sent the events to 443 or 80)
        raise ValueError("The port is not a number between 1 and 65535.")
    return host, given or (443 if parts.scheme == "https" else 80)


def _ascii_host(hostname: str) -> str:
    """``hostname`` as the name servers, the Host header and TLS know it: an international name as its A-label by
    IDNA 2008 with UTS 46 (as browsers and registries read it: faß.de is xn--fa-hia.de). Left to Python, socket and
    http.client encode with IDNA 2003, which maps ß to ss, and the signed events went to fass.de, another domain.
    ValueError when it is no valid international name."""
    if hostname.isascii():
        return hostname
    try:
        return idna.encode(hostname, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{isolate(hostname)} is not a valid domain name: {str(exc)[:200]}.") from None


# --- subscriptions ---------------------------------------------------------------------------------------------


# A person waits at the subscribe page for its name look-up: at most this long, so that a name server that does not
# answer is said on the page, well before gunicorn's BATON_WEB_TIMEOUT (60 s by default) ends the request with a 502
# (BATON_WEBHOOK_TIMEOUT, the attempts' bound, may be as long as 60 s).
SUBSCRIBE_LOOKUP_SECONDS = 10.0


def _checked(name: str, url: str, events: list[str], *, known_url: str | None = None) -> tuple[str, str, list[str]]:
    """The fields of a subscription as stored: the name and address stripped, the events sorted without repeats.
    The address is checked as every attempt checks it (:func:`resolve`: scheme, host, port, public addresses),
    within :data:`SUBSCRIBE_LOOKUP_SECONDS`, unless it is ``known_url`` (a change that keeps the address: the
    subscription is not refused for a name server down at the moment; each attempt checks it anyway). Raises
    WebhookInvalid naming the fields. The one check of creating and of changing a subscription."""
    errors: dict[str, list[str]] = {}
    name = (name or "").strip()
    if not name or len(name) > 100 or "\x00" in name:
        errors["name"] = ["Give a name of at most 100 characters."]
    url = (url or "").strip()
    if len(url) > 500 or "\x00" in url:
        errors["url"] = ["An address has at most 500 characters."]
    elif url != known_url:
        try:
            resolve(url, min(settings.BATON_WEBHOOK_TIMEOUT, SUBSCRIBE_LOOKUP_SECONDS))
        except ValueError as exc:
            errors["url"] = [str(exc)]
    unknown = sorted({str(e)[:40] for e in events if e not in WEBHOOK_EVENTS})
    if not events or unknown:
        listed = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        errors["events"] = ["Choose one or more events."] if not events else [f"Unknown events: {listed}."]
    if errors:
        raise WebhookInvalid(errors)
    return name, url, sorted(set(events))


class WebhookSentTwice(Exception):
    """The new-webhook form that made ``subscription`` was sent again; nothing new was made."""

    def __init__(self, subscription: WebhookSubscription) -> None:
        super().__init__(f"subscription {subscription.pk} was made by this form already")
        self.subscription = subscription


def webhook_subscribe(
    *,
    owner: Any,
    name: str,
    url: str,
    events: list[str],
    request_meta: dict[str, Any] | None = None,
    form_token: str = "",
) -> WebhookSubscription:
    """Subscribe ``url`` to ``events`` (names of ``WEBHOOK_EVENTS``) for ``owner`` (who is told if it pauses).
    Returns the subscription with its new secret; raises WebhookInvalid naming the fields.

    ``form_token`` is the one-time token of the form that asks (up to 64 characters; "" when there is none): a
    second request with the token of a subscription already made raises WebhookSentTwice with it, and makes
    nothing. Two sends of one form (a double click on Subscribe, a browser resending after a slow answer) made two
    subscriptions, each with a secret of its own: the receiver got every event twice, one of the two signed with a
    secret it had never been given. The table's unique token decides between two sends at the same instant."""
    form_token = form_token[:64]
    if form_token:
        made = WebhookSubscription.objects.filter(form_token=form_token).first()
        if made is not None:
            raise WebhookSentTwice(made)
    name, url, events = _checked(name, url, events)
    try:
        with transaction.atomic():
            subscription = WebhookSubscription.objects.create(
                owner=owner, name=name, url=url, events=events, secret=secrets.token_hex(32), form_token=form_token
            )
            _audit(Actor.of(owner), "webhook.subscribed", subscription, request_meta=request_meta)
    except IntegrityError:
        made = WebhookSubscription.objects.filter(form_token=form_token).first() if form_token else None
        if made is None:
            raise
        raise WebhookSentTwice(made) from None
    return subscription


def webhook_change(
    subscription_id: int,
    *,
    actor: Actor,
    name: str,
    url: str,
    events: list[str],
    resume: bool = False,
    request_meta: dict[str, Any] | None = None,
    seen: str = "",
) -> tuple[WebhookSubscription, list[str]]:
    """Change a subscription's name, address and events (checked as :func:`webhook_subscribe` checks them), and
    resume it if ``resume`` and it is paused. Returns it with the names of the fields that changed (in the order
    name, url, events; "resumed" last when it was), audited as ``webhook.changed`` with each field's old and new
    value (never the secret). Raises WebhookInvalid naming the fields (nothing changed), and
    WebhookSubscription.DoesNotExist.

    A new address is where every attempt from now on goes: the deliveries waiting for a retry are due at once, to
    it (the admin fixed a typo; they keep the attempts they have left), and the failures in a row counted against
    the old address start again from none. Attempts already made keep, in their log, the address they went to. A
    change of events applies to the events that happen from now on: deliveries queued already are sent.

    ``seen`` is the subscription's :meth:`WebhookSubscription.edit_stamp` as the form was shown ("": not checked):
    when another admin changed its name, address or events since, nothing changes and WebhookChanged says which
    now differ from what was typed. Saved as it stood, the form put back the events it showed from before their
    change (an event they added stopped being sent) without a word."""
    current = WebhookSubscription.objects.filter(pk=subscription_id).values_list("url", flat=True).get()
    # The name look-up runs before the row is locked: a name server may take seconds.
    name, url, events = _checked(name, url, events, known_url=current)
    now = timezone.now()
    with transaction.atomic():
        subscription = WebhookSubscription.objects.select_for_update().get(pk=subscription_id)
        stamp = subscription.edit_stamp()
        differ = [
            word
            for field, word, value in (("name", "name", name), ("url", "address", url), ("events", "events", events))
            if getattr(subscription, field) != value
        ]
        # Stored already as typed (the same form sent twice, a double click on Save): nothing of anyone's is lost.
        if seen and seen != stamp and differ:
            as_saved = f" As saved now, it differs from what you typed in: {', '.join(differ)}."
            raise WebhookChanged(
                {
                    "changed": [
                        f"Someone changed this webhook while you were editing it; nothing was saved.{as_saved} Your "
                        "changes are below: look at the webhook's page, then save again to replace their change "
                        "with yours."
                    ]
                },
                stamp,
            )
        if url == current != subscription.url:
            # Another admin changed the address between the read and the lock: keeping the one typed would put back
            # an address no one checked now, and undo their change.
            raise WebhookInvalid({"url": ["Someone changed the address meanwhile; look at it again."]})
        changes = {
            field: {"from": getattr(subscription, field), "to": value}
            for field, value in (("name", name), ("url", url), ("events", events))
            if getattr(subscription, field) != value
        }
        changed = list(changes)
        if changes:
            subscription.name, subscription.url, subscription.events = name, url, events
            fields = ["name", "url", "events"]
            if "url" in changes:
                subscription.consecutive_failures = 0
                subscription.failing_since = None
                fields += ["consecutive_failures", "failing_since"]
                _due_now(subscription, now)
            subscription.save(update_fields=fields)
            _audit(actor, "webhook.changed", subscription, request_meta=request_meta, extra={"changed": changes})
        if resume and not subscription.active:
            _set_active(subscription, True, actor, now, request_meta)
            changed.append("resumed")
    return subscription, changed


# A rolled secret's old one signs beside the new for one of these (seconds; 0: it stops at once, for a leaked one).
ROLL_GRACE_CHOICES = {0: "At once (the old secret leaked)", 3600: "In 1 hour", 86400: "In 24 hours"}


class WebhookRolledAlready(Exception):
    """The secret the roll form was shown was rolled since; ``subscription`` is as it is now, nothing rolled."""

    def __init__(self, subscription: WebhookSubscription) -> None:
        super().__init__(f"the secret of subscription {subscription.pk} was rolled already")
        self.subscription = subscription


def webhook_roll_secret(
    subscription_id: int,
    *,
    actor: Actor,
    grace_seconds: int,
    request_meta: dict[str, Any] | None = None,
    seen: str = "",
) -> WebhookSubscription:
    """Give a subscription a new secret. With ``grace_seconds`` (one of :data:`ROLL_GRACE_CHOICES`' keys) above 0,
    the secret it had signs every delivery beside the new one until then, so its receiver can switch without
    refusing a delivery (at most 24 h, as Stripe allows); with 0 it stops at once. A second roll within a grace
    keeps only the secret it replaces as the previous one. Audited as ``webhook.secret_rolled`` with the grace's end,
    never a secret. Returns the subscription; raises WebhookInvalid for another grace.

    ``seen`` is the :meth:`WebhookSubscription.secret_stamp` the roll form was shown ("": not checked): when that
    secret was rolled since, nothing is rolled and WebhookRolledAlready is raised. The form sent twice rolled twice,
    and the second roll ended at once the secret the first had kept signing for the receiver."""
    if grace_seconds not in ROLL_GRACE_CHOICES:
        raise WebhookInvalid({"grace": ["Choose when the old secret stops signing."]})
    now = timezone.now()
    with transaction.atomic():
        subscription = WebhookSubscription.objects.select_for_update().get(pk=subscription_id)
        if seen and seen != subscription.secret_stamp():
            raise WebhookRolledAlready(subscription)
        if grace_seconds:
            subscription.previous_secret = subscription.secret
            subscription.previous_secret_expires_at = now + timedelta(seconds=grace_seconds)
        else:
            subscription.previous_secret, subscription.previous_secret_expires_at = "", None
        subscription.secret = secrets.token_hex(32)
        subscription.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at"])
        until = subscription.previous_secret_expires_at
        _audit(
            actor,
            "webhook.secret_rolled",
            subscription,
            reason=f"the old secret signs until {until.isoformat()}" if until else "the old secret stopped at once",
            request_meta=request_meta,
            extra={"previous_valid_until": until.isoformat() if until else None},
        )
    return subscription


def webhook_toggle(
    subscription_id: int, *, active: bool, actor: Actor, request_meta: dict[str, Any] | None = None
) -> WebhookSubscription:
    """Pause or resume a subscription; resuming sends the deliveries that waited, from now."""
    now = timezone.now()
    with transaction.atomic():
        subscription = WebhookSubscription.objects.select_for_update().get(pk=subscription_id)
        if subscription.active != active:
            _set_active(subscription, active, actor, now, request_meta)
    return subscription


def _set_active(
    subscription: WebhookSubscription,
    active: bool,
    actor: Actor,
    now: datetime,
    request_meta: dict[str, Any] | None,
) -> None:
    """Pause or resume ``subscription`` (locked by the caller), audited; failures in a row start again from none."""
    subscription.active = active
    subscription.paused_at = None if active else now
    subscription.paused_reason = "" if active else f"paused by {actor.label}"
    subscription.consecutive_failures = 0
    subscription.failing_since = None
    subscription.save(update_fields=["active", "paused_at", "paused_reason", "consecutive_failures", "failing_since"])
    if active:
        _due_now(subscription, now)
    _audit(actor, "webhook.resumed" if active else "webhook.paused", subscription, request_meta=request_meta)


def _due_now(subscription: WebhookSubscription, now: datetime) -> None:
    """The deliveries of ``subscription`` waiting for an attempt are due at ``now`` (the sweep sends them next)."""
    subscription.deliveries.filter(state__in=[DeliveryState.PENDING, DeliveryState.RETRYING]).update(
        next_attempt_at=now, dispatched_at=None
    )


def _audit(
    actor: Actor,
    action: str,
    subscription: WebhookSubscription,
    *,
    reason: str = "",
    request_meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    # Never the secret: the audit trail is read and exported by more people than may sign as Baton.
    audit.append_standalone(
        CHAIN,
        actor=actor,
        action=AuditAction(action),
        subject_type="webhook",
        subject_id=subscription.pk,
        reason=reason,
        payload={"name": subscription.name, "url": subscription.url, "events": subscription.events, **(extra or {})},
        request_meta=request_meta,
    )


# --- the outbox: engine events worth telling ------------------------------------------------------------------


def event_name(event: AuditEvent) -> str:
    """The webhook event an audit event stands for, or "" when subscribers never hear of it."""
    action = event.action
    if action in (
        "instance.started",
        "instance.completed",
        "instance.failed",
        "instance.compensated",
        "instance.cancelled",
    ):
        return action
    if action == "task.opened":
        return "instance.escalated" if event.payload.get("kind") == "escalation" else "task.created"
    if action == "task.escalated":
        return "instance.escalated"
    if action == "task.completed":
        return "task.decided"
    return ""


def outbox_rows(sender: Any, unit: Any, **_kwargs: Any) -> None:
    """Receiver of ``unit_finishing``: an outbox row per event subscribers may hear of, written with the events."""
    instance = unit.instance
    for event in unit.events:
        name = event_name(event)
        if not name:
            continue
        data: dict[str, Any] = {
            "instance": {
                "id": instance.pk,
                "workflow": instance.workflow_name,
                "version": instance.workflow_version,
                "title": instance.title,
                "business_key": instance.business_key,
                "state": instance.state,
            }
        }
        if name in ("instance.completed", "instance.compensated", "instance.cancelled"):
            data["instance"]["outcome"] = instance.outcome
        if name == "instance.cancelled":
            data["reason"] = event.reason[:500]  # the operator's reason, as an escalation's is sent
        if name == "instance.failed":
            data["instance"]["error"] = event.reason[:500]
        if event.subject_type == "task":
            data["task"] = {"id": event.subject_id, "state": event.to_state}
            if name == "task.decided":
                data["task"]["decision"] = event.payload.get("decision", "")
                data["task"]["by"] = event.actor_label
            elif "title" in event.payload:
                data["task"]["title"] = event.payload["title"]
            if name == "instance.escalated":
                data["reason"] = event.reason[:500]
        unit.inserts.append(
            WebhookOutbox(event=name, chain=event.chain, seq=event.seq, occurred_at=event.occurred_at, body=data)
        )


# --- the sweep ------------------------------------------------------------------------------------------------


def webhooks_sweep(now: datetime, report: Any = None) -> dict[str, int]:
    """Turn outbox rows into deliveries, take back deliveries whose sender died, and send the due ones.
    Returns ``{"queued": n, "sent": m, "recovered": k}``."""
    from orchestrator.services.sweep import isolated

    counts = {"queued": 0, "sent": 0, "recovered": 0}
    counts["queued"] = isolated(report, "webhook outbox", "sweep", None, None, partial(_fan_out, now))
    counts["recovered"] = isolated(report, "webhook lease", "sweep", None, None, partial(_recover, now))
    counts["sent"] = isolated(report, "webhook dispatch", "sweep", None, None, partial(_dispatch_due, now))
    return counts


def utc_z(when: datetime) -> str:
    """``when`` (aware) as ISO 8601 in UTC written with ``Z``, as the API writes every time (README, "The API"), so a
    receiver reads an event's time as it reads the API's: ``isoformat()`` gave ``+00:00``, or the site's zone for a
    time read back in it."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fan_out(now: datetime) -> int:
    batch = settings.BATON_SWEEP_BATCH
    with transaction.atomic():
        pending = list(WebhookOutbox.objects.select_for_update(skip_locked=True).order_by("id")[:batch])
        if not pending:
            return 0
        subscriptions = list(WebhookSubscription.objects.filter(active=True))
        deliveries = []
        for row in pending:
            envelope = {
                "id": f"{row.chain}:{row.seq}",
                "type": row.event,
                "occurred_at": utc_z(row.occurred_at),
                "data": row.body,
            }
            body = json.dumps(envelope, sort_keys=True, separators=(",", ":"))
            for subscription in subscriptions:
                if row.event in subscription.events:
                    deliveries.append(
                        WebhookDelivery(
                            subscription=subscription,
                            event=row.event,
                            event_key=envelope["id"],
                            body=body,
                            next_attempt_at=now,
                        )
                    )
        WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
        WebhookOutbox.objects.filter(pk__in=[row.pk for row in pending]).delete()
        return len(deliveries)


def _recover(now: datetime) -> int:
    """A delivery whose sender died mid-attempt (its lease ran out) is tried again now (receivers dedupe on the
    ``Baton-Delivery`` header: it may have arrived)."""
    return WebhookDelivery.objects.filter(state=DeliveryState.SENDING, lease_expires_at__lt=now).update(
        state=DeliveryState.RETRYING, next_attempt_at=now, dispatched_at=None, lease_expires_at=None
    )


def _in_flight(now: datetime) -> Q:
    """Deliveries with an attempt under way (claimed, its lease running) or a message a worker has yet to take."""
    return Q(state=DeliveryState.SENDING, lease_expires_at__gt=now) | Q(
        state__in=[DeliveryState.PENDING, DeliveryState.RETRYING], dispatched_at__gte=now - REDISPATCH_AFTER
    )


def _dispatch_due(now: datetime) -> int:
    """Send a Celery message per due delivery, except that a failing subscription (its last attempt failed) gets one
    at a time: its oldest due delivery, when none of its attempts is in flight. Attempts run on the engine's own
    workers and queue, and a receiver that swallows connections holds a worker process for the whole
    ``BATON_WEBHOOK_TIMEOUT``: sent all at once, 75 deliveries to such a receiver kept every workflow's steps
    waiting 371 s behind them on two processes. A healthy subscription is sent everything due at once."""
    batch = settings.BATON_SWEEP_BATCH
    waiting = Q(state__in=[DeliveryState.PENDING, DeliveryState.RETRYING], next_attempt_at__lte=now) & (
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=now - REDISPATCH_AFTER)
    )
    with transaction.atomic():
        due = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(waiting, subscription__active=True)
            .order_by("next_attempt_at", "pk")
        )
        ids = list(due.filter(subscription__consecutive_failures=0).values_list("pk", flat=True)[:batch])
        busy = WebhookDelivery.objects.filter(_in_flight(now), subscription=OuterRef("pk"))
        # Only failing subscriptions with a delivery due: the loop below costs a statement per subscription, and
        # one failing for days with nothing to send must not cost one at every sweep.
        failing = (
            WebhookSubscription.objects.filter(active=True, consecutive_failures__gt=0)
            .filter(Exists(WebhookDelivery.objects.filter(waiting, subscription=OuterRef("pk"))))
            .exclude(Exists(busy))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        for subscription_id in failing[: max(0, batch - len(ids))]:
            oldest = due.filter(subscription_id=subscription_id).values_list("pk", flat=True).first()
            if oldest is not None:
                ids.append(oldest)
        if ids:
            WebhookDelivery.objects.filter(pk__in=ids).update(dispatched_at=now)
            for delivery_id in ids:
                transaction.on_commit(partial(_send_delivery, delivery_id))
        return len(ids)


def _send_delivery(delivery_id: int) -> None:
    try:
        # ignore_result as the task declares it (only a task object's own publish would have added it).
        current_app.send_task(DELIVERY_SEND_TASK, args=(delivery_id,), ignore_result=True)
    except Exception:
        logger.exception("could not publish webhook delivery %s; the sweep will send it again", delivery_id)


# --- one attempt ------------------------------------------------------------------------------------------------


def backoff(attempt: int, spread: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    base = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
    return base * (1 + 0.1 * (secrets.randbelow(1000) / 1000 if spread is None else spread))


def delivery_send(delivery_id: int, *, now: datetime | None = None) -> str:
    """Make one attempt of a due delivery: claim it, POST it signed, record the answer. Returns "delivered",
    "retrying", "failed", "not due" (not pending, not yet due, or its subscription paused), "held" (its
    subscription is failing and another of its attempts is in flight: left for a later sweep, not attempted) or
    "fenced"."""
    claimed = _claim(delivery_id, now or timezone.now())
    if not isinstance(claimed, tuple):
        return claimed
    delivery, subscription = claimed
    started = time.monotonic()
    # The address and secrets as the claim read them: an edit meanwhile applies from the next attempt.
    status, error = _post(subscription.url, subscription.signing_secrets(timezone.now()), delivery)
    elapsed_ms = int((time.monotonic() - started) * 1000)
    return _record(delivery.pk, delivery.attempts, status, error, elapsed_ms, subscription.url)


def _claim(delivery_id: int, now: datetime) -> tuple[WebhookDelivery, WebhookSubscription] | str:
    """The delivery, leased for an attempt, and its subscription; or why no attempt is made ("not due", "held").

    A failing subscription's attempts are made one at a time (:func:`_dispatch_due`), here too: messages the sweep
    sent before the failures began would otherwise each hold a worker process for the whole timeout. Its row is
    locked without waiting (a worker that finds it locked, by another claim or a recording, holds its delivery
    rather than queue behind it), so two claims never both find nothing in flight."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("subscription")
            .filter(pk=delivery_id, state__in=[DeliveryState.PENDING, DeliveryState.RETRYING])
            .first()
        )
        if delivery is None or not delivery.subscription.active:
            return "not due"
        if delivery.next_attempt_at and delivery.next_attempt_at > now:
            return "not due"
        if delivery.subscription.consecutive_failures and _another_in_flight(delivery, now):
            delivery.dispatched_at = None  # for the sweep to send again once the attempt in flight is recorded
            delivery.save(update_fields=["dispatched_at"])
            return "held"
        delivery.state = DeliveryState.SENDING
        delivery.attempts += 1
        delivery.lease_expires_at = now + timedelta(seconds=settings.BATON_WEBHOOK_TIMEOUT * 3 + 30)
        delivery.save(update_fields=["state", "attempts", "lease_expires_at"])
        return delivery, delivery.subscription


def _another_in_flight(delivery: WebhookDelivery, now: datetime) -> bool:
    """Whether the failing subscription of ``delivery`` has another attempt under way, or is locked by a worker
    deciding or recording one (then this one waits too)."""
    locked = WebhookSubscription.objects.select_for_update(skip_locked=True).filter(pk=delivery.subscription_id)
    if not list(locked.values_list("pk", flat=True)):
        return True
    return (
        WebhookDelivery.objects.filter(
            subscription_id=delivery.subscription_id,
            state=DeliveryState.SENDING,
            lease_expires_at__gt=now,
        )
        .exclude(pk=delivery.pk)
        .exists()
    )


class _Deadline:
    """Ends an attempt that takes more than ``seconds`` in all. The socket timeout bounds each read only: a receiver
    sending a byte now and then kept the worker for as long as it liked, past the delivery's lease, when the sweep
    sent the event again beside it. At the deadline the socket is shut (a read blocked on it returns)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.passed = False
        self._timer: threading.Timer | None = None

    def left(self) -> float:
        return max(0.001, self.ends - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        self._timer = threading.Timer(self.left(), self._cut, args=(sock,))
        self._timer.daemon = True
        self._timer.start()

    def _cut(self, sock: socket.socket) -> None:
        self.passed = True
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the addresses checked, not to whatever the name resolves to a moment later (DNS rebinding),
    within the attempt's deadline."""

    def __init__(self, host: str, port: int, addresses: list[str], deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.seconds)
        self._addresses = addresses
        self._deadline = deadline

    def _open(self) -> socket.socket:
        """A socket to the first of the checked addresses that accepts, in the resolver's order, as
        ``socket.create_connection`` tries a name's: only the first was tried, so a host whose first address goes
        nowhere (an IPv6 address on a worker without IPv6, one server of a round robin down) failed every attempt
        until the subscription paused. Each address but the last gets its share of the time left, so one that
        swallows packets does not spend the whole attempt. Raises the last address's error."""
        error: OSError = OSError(f"{self.host} resolved to no address")
        for index, address in enumerate(self._addresses):
            share = self._deadline.left() / (len(self._addresses) - index)
            try:
                sock = socket.create_connection((address, self.port), share)
            except OSError as exc:
                error = exc
                continue
            self._deadline.watch(sock)
            return sock
        raise error

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPSConnection(_PinnedHTTPConnection, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addresses: list[str], deadline: _Deadline) -> None:
        http.client.HTTPSConnection.__init__(
            self, host, port, timeout=deadline.seconds, context=ssl.create_default_context()
        )
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = self._context.wrap_socket(self._open(), server_hostname=self.host)  # type: ignore[attr-defined]


def _post(url: str, secret: str | list[str], delivery: WebhookDelivery) -> tuple[int | None, str]:
    """POST the delivery signed with ``secret`` (one, or several: see :func:`sign`); (status, "") for an answer,
    (None, why) when there was none within
    ``BATON_WEBHOOK_TIMEOUT`` seconds in all. Never raises."""
    body = delivery.body.encode()
    deadline = _Deadline(settings.BATON_WEBHOOK_TIMEOUT)
    try:
        host, port, addresses = resolve(url, deadline.left())  # the look-up spends the attempt's time too
        parts = urlsplit(url)
        connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        connection = connection_class(host, port, addresses, deadline)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Baton-Webhooks/1",
            "Baton-Event": delivery.event,
            "Baton-Delivery": str(delivery.pk),
            SIGNATURE_HEADER: sign(secret, int(time.time()), body),
        }
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            if deadline.passed:
                # Cut mid-headers, http.client takes the end of the stream for their end: not an answer.
                raise TimeoutError()
            # The answer is not kept; read a little so the connection closes cleanly. The status is the answer: a
            # body cut short (or never ending, cut at the deadline) changes nothing.
            with contextlib.suppress(OSError, http.client.HTTPException):
                response.read(64 * 1024)
            location = response.getheader("Location") if 300 <= response.status < 400 else None
            if location:
                # Where a moved receiver went is what the admin needs to correct the address (on its edit page).
                return response.status, f"HTTP {response.status} to {location[:200]} (redirects are not followed)"
            return response.status, ""
        finally:
            deadline.stop()
            connection.close()
    except ValueError as exc:
        return None, f"refused: {exc}"
    except (OSError, http.client.HTTPException) as exc:
        if deadline.passed:
            return None, f"no complete answer within {deadline.seconds:g} s"
        return None, f"{type(exc).__name__}: {exc}"[:RESPONSE_KEPT]


def _record(delivery_id: int, attempt: int, status: int | None, error: str, elapsed_ms: int, url: str) -> str:
    now = timezone.now()
    ok = status is not None and 200 <= status < 300
    if not ok and not error:
        error = f"HTTP {status}" + (" (redirects are not followed)" if status and 300 <= status < 400 else "")
    # The error may quote the receiver's bytes (a garbled status line): a NUL among them failed this write, and the
    # delivery went round its lease forever without an attempt recorded.
    error = clean_text(error, RESPONSE_KEPT)
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("subscription")
            .filter(pk=delivery_id)
            .first()
        )
        if delivery is None or delivery.state != DeliveryState.SENDING or delivery.attempts != attempt:
            return "fenced"
        delivery.log = [
            *delivery.log[-(MAX_ATTEMPTS * 2) :],
            {"at": now.isoformat(), "url": url, "status": status, "error": error[:RESPONSE_KEPT], "ms": elapsed_ms},
        ]
        delivery.last_status, delivery.last_error = status, error[:RESPONSE_KEPT]
        delivery.lease_expires_at = None
        subscription = WebhookSubscription.objects.select_for_update().get(pk=delivery.subscription_id)
        if ok:
            delivery.state, delivery.delivered_at, outcome = DeliveryState.DELIVERED, now, "delivered"
            if subscription.consecutive_failures:
                subscription.consecutive_failures = 0
                subscription.failing_since = None
                subscription.save(update_fields=["consecutive_failures", "failing_since"])
        else:
            if delivery.attempts < MAX_ATTEMPTS:
                delivery.state, outcome = DeliveryState.RETRYING, "retrying"
                delivery.next_attempt_at = now + timedelta(seconds=backoff(delivery.attempts))
                delivery.dispatched_at = None
            else:
                delivery.state, outcome = DeliveryState.FAILED, "failed"
            _count_failure(subscription, now, error)
        delivery.save()
        return outcome


def _count_failure(subscription: WebhookSubscription, now: datetime, error: str) -> None:
    """One more failed attempt in a row; past the limits the subscription pauses and its owner is told."""
    if subscription.consecutive_failures == 0 or subscription.failing_since is None:
        subscription.failing_since = now
    subscription.consecutive_failures = F("consecutive_failures") + 1
    subscription.save(update_fields=["consecutive_failures", "failing_since"])
    subscription.refresh_from_db(fields=["consecutive_failures"])
    failing_since = subscription.failing_since
    if (
        subscription.active
        and subscription.consecutive_failures >= PAUSE_AFTER_FAILURES
        and now - failing_since >= PAUSE_AFTER
    ):
        subscription.active = False
        subscription.paused_at = now
        subscription.paused_reason = (
            f"paused after {subscription.consecutive_failures} failed attempts in a row since "
            f"{timezone.localtime(failing_since):%Y-%m-%d %H:%M %Z}; last: {error}"
        )[:300]
        subscription.save(update_fields=["active", "paused_at", "paused_reason"])
        _audit(SENDER, "webhook.paused", subscription, reason=subscription.paused_reason)
        _tell_owner(subscription)


def _tell_owner(subscription: WebhookSubscription) -> None:
    """Tell the owner that ``subscription`` paused, or, when the owner has left (deactivated, or no longer allowed
    on the automation pages), everyone who may resume it: a paused subscription waits for a person."""
    from django.urls import reverse

    from automation.notices import tell_owner

    tell_owner(
        subscription.owner_id,
        kind="webhook.paused",
        # The name isolated: a right-to-left override in it reversed the rest of the notice as drawn.
        message=f"Webhook {isolate(subscription.name)} paused: its deliveries keep failing",
        url=reverse("automation:webhook_detail", args=[subscription.pk]),
    )
