"""What people may type: the limits of free text and dates, shared by the forms (which show them) and the
services (which enforce them whoever calls: a page, the admin, another service or a script)."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Model, QuerySet
from django.utils import timezone

logger = logging.getLogger(__name__)

# A comment on a decision may explain; a reason for an operator action is a line or a short paragraph.
COMMENT_MAX = 4000
REASON_MAX = 1000
# A note handed over with a delegation, like a reason.
NOTE_MAX = REASON_MAX
# Search boxes and filter values: longer is never a real search (and would only cost the database).
SEARCH_MAX = 100
# The width of WorkflowInstance.idempotency_key: a longer key would fail at the database, after the work.
IDEMPOTENCY_KEY_MAX = 200

# Dates a person may enter: nothing before 2000 (a typo, not a plan) and nothing more than about ten years ahead
# (beyond, a date is a mistake; far beyond, its UTC value no longer fits Python's datetime, see check_when).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
HORIZON = timedelta(days=3653)


def drop_repeated(params: Any, labels: Mapping[str, str]) -> tuple[Any, list[str]]:
    """A query string's one-value filters given more than once (``?state=running&state=failed``), left out.

    ``params`` is a QueryDict (anything without ``getlist``, such as a plain dict, cannot repeat and comes back
    as it is); ``labels`` maps each one-value parameter to the word the page uses for it. Returns the parameters
    without the repeated ones and one message per repeated parameter. Taking the last value, as ``get`` does,
    would quietly show one state of the two asked for; leaving it out shows all, and the message says why."""
    if not hasattr(params, "getlist"):
        return params, []
    kept, problems = params.copy(), []
    for name, label in labels.items():
        count = len(params.getlist(name))
        if count > 1:
            del kept[name]
            problems.append(f"{label}: given {count} times; pick one. Showing results without it.")
    return kept, problems


class RepeatedKey(ValueError):
    """A JSON object gave one key twice (``{"amount": "1.00", "amount": "9000.00"}``); the message names it."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` for JSON that people and other systems send: the object as a dict.

    Raises :class:`RepeatedKey` (a ValueError, as the parser's own errors) naming the first key given twice. JSON
    allows writing one, but parsers differ on which value wins (Python's takes the last, others the first), so a
    proxy, a signature check or a log may read one amount and Baton another; which was meant is a guess, as with a
    query parameter given twice. The common case costs one ``dict`` and a length comparison."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _item in pairs:
            if key in seen:
                # repr, cut: the key may hold anything (a line break, a lone surrogate: repr escapes both)
                raise RepeatedKey(f"the key {key[:40]!r} is given twice in one object: give each key once")
            seen.add(key)
    return value


BUSINESS_KEY_MAX = 100  # WorkflowInstance.business_key's max_length


def business_key_form(key: str) -> str:
    """``key`` (a business key, as read from outside: API, page, command line, schedule) in the form instance_start
    stores: Unicode NFC, so "Café" typed with é as one code point or as e and a combining accent is one key, cut to
    the column's ``BUSINESS_KEY_MAX`` characters. NFC may lengthen a key (a few characters, such as U+0958, are
    excluded from composition and take two code points), so a key within the limit as typed may be cut: a lookup
    cuts it the same way, or it would look for a key no row can hold. Returns the text; raises nothing."""
    return unicodedata.normalize("NFC", key)[:BUSINESS_KEY_MAX]


def business_key_forms(key: str) -> list[str]:
    """The stored keys a lookup of ``key`` must match: its stored form (:func:`business_key_form`: every key stored
    since keys are normalised, and older ones rewritten by migration ``orchestrator.0014_business_keys_nfc``), and
    the key as given and in NFD, each cut to the column. One to three values, for an ``IN`` on the key's index."""
    # Still more than the stored form after the migration, because it leaves some keys as they were stored, as
    # typed (in practice NFC or NFD): a key whose NFC form is longer than the column (cutting it would change it),
    # and one whose NFC form a unique index of a deployment's own refuses (another instance holds it: rewriting
    # would merge two keys); and a process of the previous release, still running in a rolling upgrade after the
    # migration ran, stores keys as typed. The other values cost nothing measurable: entries in the IN on the index.
    typed = [key, unicodedata.normalize("NFD", key)]
    return list(dict.fromkeys([business_key_form(key), *(form[:BUSINESS_KEY_MAX] for form in typed)]))


def unstorable(text: str) -> str | None:
    """What in ``text`` PostgreSQL text cannot hold, said for a person (a NUL character, a lone surrogate), or None.

    A lone surrogate (half of a UTF-16 pair) is no character of UTF-8: no page sends one (Django decodes a body's
    bad bytes as U+FFFD), but a command line does (Python reads argv bytes that are not UTF-8 as lone surrogates)
    and so may any caller of a service, and the database driver then raises UnicodeEncodeError, not a refusal."""
    if "\x00" in text:
        return "the invisible NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"the invalid character \\u{ord(text[exc.start]):04x} (half of a UTF-16 pair)"
    return None


def check_text(value: str, what: str, max_length: int) -> str:
    """``value`` stripped, or ValidationError naming ``what`` when it holds a NUL character or a lone surrogate
    (PostgreSQL cannot store either in text; :func:`unstorable`) or is longer than ``max_length`` characters."""
    value = (value or "").strip()
    bad = unstorable(value)
    if bad:
        raise ValidationError(f"{what}: remove {bad} (it cannot be stored).")
    if len(value) > max_length:
        raise ValidationError(f"{what}: at most {max_length} characters (you typed {len(value)}).")
    return value


def check_when(value: datetime, what: str, *, now: datetime | None = None, future: bool = False) -> datetime:
    """``value`` in UTC, or ValidationError naming ``what`` when it is before 2000, more than about ten years
    ahead, or has no UTC value in Python's range (``9999-12-31T23:59:59-23:59`` is year 10000 in UTC:
    stored, it made every page that reads it fail). With ``future``, a time not after ``now`` is refused too
    (a pause that "ends" in the past would be lifted by the next sweep, which is not what anyone asked for)."""
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        utc = None
    now = now or timezone.now()
    if utc is None or utc < EARLIEST or utc > now + HORIZON:
        raise ValidationError(
            f"{what}: enter a date between {EARLIEST:%Y-%m-%d} and {(now + HORIZON):%Y-%m-%d}.", code="out_of_range"
        )
    if future and utc <= now:
        raise ValidationError(f"{what}: enter a time in the future.", code="in_the_past")
    return utc


# Fields that take a list or an object as their value (as does any field with a several-values widget); every
# other field takes one value (text, a number).
MANY_VALUED_FIELDS = (
    forms.MultipleChoiceField,
    forms.ModelMultipleChoiceField,
    forms.MultiValueField,
    forms.JSONField,
    forms.FileField,
)


# What a true/false field reads from JSON (json_boolean): JSON's own true and false, the words a person or a
# system writes for them (any case) and the numbers 1 and 0.
BOOLEAN_WORDS = {
    **dict.fromkeys(("true", "yes", "on", "1"), True),
    **dict.fromkeys(("false", "no", "off", "0"), False),
}
NOT_A_BOOLEAN = "Give true or false."


def json_boolean(value: Any, *, null: bool = False) -> bool | None:
    """``value``, sent as JSON for a true/false field, as True or False; with ``null``, None for JSON null.

    Accepts true and false, the strings true/false, yes/no, on/off and 1/0 in any case, and the numbers 1 and 0.
    Raises ValidationError (:data:`NOT_A_BOOLEAN`, code ``not_a_boolean``) for anything else. Django's checkbox
    reads everything but "false" and "0"-like values through ``bool()``: "nope", "no", "off", 2, or a string with
    a NUL in it was read as true, so ``{"expedite": "nope"}`` expedited; its nullable select read "maybe" as "not
    known" and a list as a TypeError."""
    if isinstance(value, bool):
        return value
    if value is None and null:
        return None
    if isinstance(value, str):
        word = BOOLEAN_WORDS.get(value.lower())
        if word is not None:
            return word
    elif isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValidationError(NOT_A_BOOLEAN, code="not_a_boolean")


FormT = TypeVar("FormT", bound=forms.BaseForm)


def bound_form(form_class: type[FormT], data: Any) -> FormT:
    """``form_class`` bound to ``data`` and validated, with an error on each field given a JSON object, list or
    true/false where it takes one value (text or a number), and on each true/false field given anything
    :func:`json_boolean` does not read as true or false (null too, unless the field is a NullBooleanField).

    A workflow's form meets JSON from the API, a schedule or another service, and Django's fields read anything
    through ``str()`` or ``bool()``: ``{"name": "Sam"}`` would become the text "{'name': 'Sam'}", ``true`` the text
    "True" and ``"no"`` a ticked box, stored as if the client had typed them. A true/false field's value is read
    by :func:`json_boolean` before the form sees it, so the cleaned data holds True or False; a number a field
    cannot read as one is given as its text (:func:`_json_single`: no input is a 500). A page's QueryDict
    holds only text and passes unchanged (a checkbox posts "on" or nothing). Call ``is_valid()`` on the result as
    on any form."""
    form = form_class(data=data)
    if not isinstance(data, Mapping) or hasattr(data, "getlist"):
        form.is_valid()
        plain_numbers(form, data)
        return form
    wrong: dict[str, ValidationError] = {}
    read: dict[str, Any] | None = None
    for name, field in form.fields.items():
        key = form.add_prefix(name)
        if field.disabled or key not in data:
            continue
        try:
            value = _json_single(field, data[key])
        except ValidationError as exc:
            wrong[name] = exc
            value = None  # the form sees no value; the error below replaces what it says of that
        if value is not data[key]:
            read = read if read is not None else dict(data)
            read[key] = value
    if read is not None:
        form.data = read
    for field in form.fields.values():  # the form's own copies: the class's fields are left alone
        field.clean = _refusing_crashes(field)  # type: ignore[method-assign]
    form.is_valid()
    plain_numbers(form, data)
    for name, refusal in wrong.items():
        form.errors.pop(name, None)  # "This field is required." for a required field: not what went wrong
        form.add_error(name, refusal)
    return form


def _refusing_crashes(field: forms.Field) -> Any:
    """``field.clean`` for JSON: what a field's reading raises instead of a ValidationError is the value refused
    (the field's "invalid" message), never a 500. A field whose widget reads keys of its own (a
    SplitDateTimeField's ``when_0`` and ``when_1``) meets JSON's numbers and objects there, past
    :func:`_json_single`: its date part called ``.strip()`` on ``20260101``. Logged, as a field's reading that
    crashes may be the workflow's own bug."""
    clean = field.clean

    def refusing(value: Any) -> Any:
        try:
            return clean(value)
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            # A warning: a field's reading that crashes may be the workflow's own form field's bug, to be seen.
            logger.warning(
                "form field %r raised %s on a JSON value: refused as invalid", field.label, type(exc).__name__
            )
            message = field.error_messages.get("invalid") or "Enter a valid value."
            raise ValidationError(message, code="invalid") from None

    return refusing


NOT_ONE_VALUE = "Give one value (text or a number), not a list or an object."
NOT_TEXT = "Give text or a number, not true or false."


def _json_single(field: forms.Field, value: Any) -> Any:
    """``value``, sent as JSON for ``field``, as the form is to see it (:func:`bound_form`); ``value`` itself when the
    field reads it as it is.

    A true/false field's value is read by :func:`json_boolean`. A field taking many values (or a JSON field) takes
    what was sent. Any other field takes one value: a list, an object or true/false is refused (ValidationError),
    and a number the field's own reading cannot take (Django's date and time fields call ``.strip()`` on it, its
    float field ``float()`` on an integer past 1e308: an AttributeError or OverflowError, a 500) is given as its
    text, as a page would post it, for the field to refuse or read as typed ("20260101" is no date)."""
    if isinstance(field, forms.BooleanField):
        return json_boolean(value, null=isinstance(field, forms.NullBooleanField))
    if isinstance(field, MANY_VALUED_FIELDS) or getattr(field.widget, "allow_multiple_selected", False):
        return value
    if isinstance(value, dict | list | tuple):
        raise ValidationError(NOT_ONE_VALUE, code="not_one_value")
    if isinstance(value, bool):
        raise ValidationError(NOT_TEXT, code="not_text")
    if not isinstance(value, int | float) or isinstance(field, forms.ModelChoiceField):
        return value  # text reads as typed; a choice of a row reads its key itself, refusing what is not one
    try:
        field.to_python(value)
    except ValidationError:
        return value  # the field refuses it itself, in its own words
    except Exception:  # a field's reading not made for a number: give it the text a page would
        try:
            return str(value)
        except ValueError:  # an integer of more digits than Python writes out (4300)
            raise ValidationError(f"Give a number of at most {DIGITS_MAX} digits.", code="too_long") from None
    return value


# What a date or time from JSON or a URL with other digits than 0-9 is told (:func:`foreign_digits`).
ASCII_DIGITS = "Give digits 0-9 (other digits, Arabic-Indic or fullwidth, are no date here)."


def foreign_digits(text: str) -> bool:
    """Whether ``text`` (a date or time as sent) holds a digit other than 0-9: Python's and Django's readers take
    fullwidth or Arabic-Indic digits for 2026 (``\\d`` and ``int()`` read any Unicode digit), which no other
    system reading the same JSON or URL does. Raises nothing."""
    return any(char.isdigit() and not char.isascii() for char in text)


# Fields that read a date, a time or a duration from text: Django's readers take any Unicode digit.
TEMPORAL_FIELDS = (forms.DateField, forms.DateTimeField, forms.TimeField, forms.DurationField)

# What a number from JSON (an API body, a schedule's input, a signal's payload) may be written with.
PLAIN_DIGITS = "Give digits 0-9, with a point for decimals (no _ or other digits)."
# The most digits a decimal may take written out in full: 1E+999999999 is a valid decimal of a billion digits.
DIGITS_MAX = 100


def plain_numbers(form: forms.BaseForm, data: Any) -> None:
    """Numbers in ``form`` (bound to ``data`` and validated) by one rule for every channel. A number field's text
    from JSON written with ``_`` (``1_000``) or with digits other than 0-9 (Arabic-Indic ones, fullwidth ones),
    which Python's ``int`` and ``Decimal`` read as 1000, is an error on the field (a page's form, typed by a person,
    is read as Django reads it). A decimal or whole number that would take more than ``DIGITS_MAX`` digits written
    out is an error too: a decimal is stored written out (``1E+3`` as ``1000``, :func:`form_json_default`). A date,
    time or duration from JSON with other digits than 0-9 is an error too (:func:`foreign_digits`). Raises nothing;
    adds errors to ``form``."""
    from_json = isinstance(data, Mapping) and not hasattr(data, "getlist")
    cleaned = getattr(form, "cleaned_data", {})
    for name, field in form.fields.items():
        if name in form.errors:
            continue
        value = data.get(name) if from_json else None
        if isinstance(field, TEMPORAL_FIELDS):
            if isinstance(value, str) and foreign_digits(value):
                form.add_error(name, ASCII_DIGITS)
            continue
        if not isinstance(field, forms.IntegerField):  # Decimal and Float fields are ones
            continue
        number = cleaned.get(name)
        if isinstance(value, str) and ("_" in value or not value.isascii()):
            form.add_error(name, PLAIN_DIGITS)
        elif isinstance(number, Decimal | int) and _too_long(number):
            form.add_error(name, f"Give a number of at most {DIGITS_MAX} digits.")


def _too_long(number: Decimal | int) -> bool:
    """Whether ``number`` written out would take more than ``DIGITS_MAX`` digits (or is no finite number): cheap to
    know from its digits and its exponent, without writing it out. A whole number (an IntegerField's) too: 10**400
    was kept, while the same value in a decimal field was refused."""
    if isinstance(number, int):
        return abs(number) >= 10**DIGITS_MAX
    _sign, digits, exponent = number.as_tuple()
    return not isinstance(exponent, int) or len(digits) + abs(exponent) > DIGITS_MAX


def _written_out(number: Decimal) -> str:
    """``number`` without an exponent (``1E+3`` as ``1000``, ``1E-7`` as ``0.0000001``), or its own text when that
    would take more than ``DIGITS_MAX`` digits."""
    return str(number) if _too_long(number) else format(number, "f")


def form_json_default(value: Any) -> Any:
    """``json.dumps``'s ``default`` for a form's cleaned data: a model instance as its primary key and a queryset as
    the list of theirs (what a ``ModelChoiceField`` / ``ModelMultipleChoiceField`` was sent), anything else (a
    Decimal, a date, a UUID) as its text, a Decimal written out (``1E+3`` as ``"1000"``: Python's own text of it
    kept the exponent, and the text "1E+3" reached steps and exports). Without it a chosen group was stored as the
    text ``"Group object (3)"`` and a multiple choice as ``"<QuerySet [...]>"``: a value no step or decision could
    use."""
    if isinstance(value, Decimal):
        return _written_out(value)
    if isinstance(value, Model):
        return value.pk
    if isinstance(value, QuerySet):
        return [obj.pk for obj in value]
    return str(value)
