"""What the API reads and writes. Request serializers check shapes and limits (the services check them again,
whoever calls); response serializers say what a client gets, and are what the OpenAPI schema describes."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms as django_forms
from django.contrib.auth import get_user_model
from django.forms.utils import pretty_name
from django.urls import reverse
from django.utils import timezone as django_timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from approvals.forms import DECISIONS
from approvals.models import HumanTask, Priority, TaskKind
from approvals.services.base import data_digest, decision_not_taken
from orchestrator import registry
from orchestrator.dsl import DefinitionError, Workflow
from orchestrator.inputs import (
    ASCII_DIGITS,
    COMMENT_MAX,
    EARLIEST,
    IDEMPOTENCY_KEY_MAX,
    NOTE_MAX,
    REASON_MAX,
    SEARCH_MAX,
    check_when,
    foreign_digits,
    json_boolean,
)
from orchestrator.models import InstanceState, ReceivedSignal, StepRun, WorkflowInstance
from orchestrator.selectors import STEP_PAYLOADS, hide_paths
from orchestrator.timeparse import no_such_time

ID_MAX = 2**63 - 1
# What every data_digest looks like (its length read off the function; "$" as OpenAPI patterns write it: the field
# trims a final line break first). Anything else sent as ``seen`` is no digest this API gave out, and comparing it
# would report a change of the data that nobody made.
DIGEST_PATTERN = rf"^[0-9a-f]{{{len(data_digest({}))}}}$"
# A time as the API wants one, for its messages' examples: with its offset.
EXAMPLE = "2026-12-02T09:30:00Z"
# A date and time whose offset's "+" was decoded as a space (an unencoded "+" in a query string).
PLUS_AS_SPACE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)? \d{2}(:?\d{2})?")


NOT_A_STRING = "Give a string."


class _StringOnly(serializers.CharField):
    """A text field that takes a JSON string only. DRF's CharField reads a number as its text (``{"reason": 12}``
    was the reason "12", ``{"to_user": 1e3}`` looked for the user "1000.0"): a request's text is sent as text, so
    anything else is refused, with :data:`NOT_A_STRING`, before the field's other checks."""

    default_error_messages = {"not_a_string": NOT_A_STRING}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictCharField(_StringOnly):
    """A request's CharField: a JSON string only (the schema's ``type: string``, unchanged)."""


class PlainIntegerField(serializers.IntegerField):
    """A request's whole number (a body's or a query parameter's): a JSON integer, or text of digits 0-9 (with a
    minus). DRF's IntegerField reads text through ``int()``, which takes ``1_0`` as 10 and Arabic-Indic or fullwidth
    digits as theirs: ``?version=`` with an Arabic-Indic one listed version 1 and ``{"version": "1_0"}`` asked for
    version 10, where no other system reading the same request would (``orchestrator.inputs.PLAIN_DIGITS``, the
    forms' one rule)."""

    default_error_messages = {"not_plain": "A whole number, in digits 0-9."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, str) and not re.fullmatch(r"-?[0-9]+", data):
            self.fail("not_plain")
        return int(super().to_internal_value(data))


class StrictRegexField(_StringOnly, serializers.RegexField):
    """A request's RegexField: a JSON string only, then matched as RegexField matches it."""


class ListedChoiceField(serializers.ChoiceField):
    """A choice a request gives (a filter's ``state``, a list's ``scope``): anything else is refused naming the
    choices, "Give one of: created, running, ...", where DRF's own '"bogus" is not a valid choice.' left a client to
    find them in the schema. The value given is not repeated: it may be anything, of any length."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and data in self.choice_strings_to_values:
            return self.choice_strings_to_values[data]
        if data == "" and self.allow_blank:
            return ""
        raise serializers.ValidationError(f"Give one of: {', '.join(self.choice_strings_to_values)}.")


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date and time WITH its offset (``2026-12-01T09:00:00+01:00`` or ``…Z``), within the range
    ``orchestrator.inputs.check_when`` allows. A naive time is refused: a script's local clock is not Baton's.
    A time of that very shape but a day or hour that does not exist (``2026-02-30``, ``25:00``) is told so
    (``orchestrator.timeparse.no_such_time``), not DRF's "wrong format" (it is the format); year 0 or a time with
    no UTC in Python's range (``9999-12-31T23:59:59-01:00``) is refused with check_when's range, not "Datetime
    value out of range." (which range?). Messages name the parameter or field as the request does
    (``started_after``, ``since``), and their example carries its offset, as the API wants it."""

    default_error_messages = {"invalid": f"Not a date and time: give it in ISO 8601 with its offset, like {EXAMPLE}."}

    def _what(self) -> str:
        return str(self.field_name or self.label or "Date")

    def _out_of_range(self) -> serializers.ValidationError:
        """check_when's own refusal of a time out of its range (one day before its earliest is), for this field:
        one wording of the range for every refusal of it."""
        try:
            check_when(EARLIEST - timedelta(days=1), self._what())
        except django_forms.ValidationError as exc:
            return serializers.ValidationError(exc.messages)
        return serializers.ValidationError("Out of range.")  # never: check_when refuses a day before its earliest

    def enforce_timezone(self, value: datetime) -> datetime:
        if django_timezone.is_aware(value):
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise self._out_of_range() from None
        return super().enforce_timezone(value)

    def to_internal_value(self, value: Any) -> datetime:
        if isinstance(value, str):
            if "\x00" in value:
                raise serializers.ValidationError("Remove the NUL character (\\u0000).")
            if foreign_digits(value):  # read as 2026 by Python's regex and int(): by no other system
                raise serializers.ValidationError(ASCII_DIGITS)
            try:
                typed = parse_datetime(value.strip())
            except ValueError:  # the shape of a date and time, with no such day or hour (or year 0)
                typed, impossible = None, True
            else:
                impossible = False
            # Also when it parsed: Python reads the offset +01:60 as +02:00. None for year 0: the range says it.
            why = no_such_time(value)
            if why:
                raise serializers.ValidationError(why)
            if impossible:
                raise self._out_of_range()
            if typed is not None and typed.tzinfo is None:
                raise serializers.ValidationError("Give the time zone: an offset like +01:00, or Z for UTC.")
            if typed is None and PLUS_AS_SPACE.fullmatch(value.strip()):
                # `?started_after=2026-11-01T00:00:00+01:00` typed into a URL: the query string's "+" is a space.
                raise serializers.ValidationError(
                    "The offset's '+' arrived as a space: in a URL write it as %2B (2026-11-01T00:00:00%2B01:00), "
                    "or give the time in UTC with Z."
                )
        parsed = super().to_internal_value(value)
        try:
            return check_when(parsed, self._what())
        except django_forms.ValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None


# --- workflows ------------------------------------------------------------------------------------------


def _field_schema(name: str, field: django_forms.Field) -> dict[str, Any]:
    """A Django form field ``name`` as a JSON Schema property (what a client must send for it)."""
    # A field declared without a label has none on the class: Django's page shows its name as words ("Cost
    # centre" for cost_centre), and so does the schema, where it said "title": "".
    schema: dict[str, Any] = {"title": str(field.label) if field.label is not None else pretty_name(name)}
    if field.help_text:
        schema["description"] = str(field.help_text)
    if isinstance(field, django_forms.BooleanField):
        schema["type"] = "boolean"
    elif isinstance(field, django_forms.DecimalField | django_forms.FloatField):
        # Before IntegerField: Django's DecimalField and FloatField are subclasses of it, and were described as
        # integers. A decimal is best sent as a string ("120.00"): a JSON number may lose digits on the way.
        schema["type"] = ["string", "number"]
        schema["format"] = "decimal"
    elif isinstance(field, django_forms.IntegerField):
        schema["type"] = "integer"
    elif isinstance(field, django_forms.ChoiceField):
        schema["enum"] = [value for value, _label in list(field.choices) if value != ""]  # type: ignore[arg-type]
    elif isinstance(field, django_forms.DateTimeField):
        schema.update(type="string", format="date-time")
    elif isinstance(field, django_forms.DateField):
        schema.update(type="string", format="date")
    elif isinstance(field, django_forms.EmailField):
        schema.update(type="string", format="email")
    else:
        schema["type"] = "string"
    for attr, key in (("max_length", "maxLength"), ("min_length", "minLength")):
        if getattr(field, attr, None) is not None:
            schema[key] = getattr(field, attr)
    for attr, key in (("min_value", "minimum"), ("max_value", "maximum")):
        value = getattr(field, attr, None)
        if value is not None:
            schema[key] = float(value) if not isinstance(value, int) else value
    return schema


def start_input_schema(workflow: Workflow) -> dict[str, Any]:
    """The JSON Schema of ``input`` for starting ``workflow``: its start form's fields, or any object when it has
    no start form (started by other systems with data of their own)."""
    if workflow.start_form is None:
        return {"type": "object", "additionalProperties": True, "description": "Any JSON object: no start form."}
    return form_schema(workflow.start_form)


def form_schema(form_class: type[django_forms.Form]) -> dict[str, Any]:
    """The JSON Schema of an object a Django form class reads: its fields, and which of them are required."""
    fields = form_class.base_fields
    return {
        "type": "object",
        "properties": {name: _field_schema(name, field) for name, field in fields.items()},
        "required": [name for name, field in fields.items() if field.required],
    }


class WorkflowSerializer(serializers.Serializer):
    """One workflow of the catalog (its latest version unless a version was asked for)."""

    name = serializers.CharField()
    version = serializers.IntegerField()
    title = serializers.CharField(source="display_title")
    description = serializers.CharField()
    owner = serializers.CharField()
    criticality = serializers.CharField()
    versions = serializers.SerializerMethodField()
    start_input = serializers.SerializerMethodField()
    steps = serializers.SerializerMethodField()

    def get_versions(self, workflow: Workflow) -> list[int]:
        from orchestrator import registry

        return [w.version for w in registry.all_versions(workflow.name)]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_start_input(self, workflow: Workflow) -> dict[str, Any]:
        return start_input_schema(workflow)

    def get_steps(self, workflow: Workflow) -> list[str]:
        return list(workflow.nodes)


# --- instances ------------------------------------------------------------------------------------------


def copied_fields(fields: dict[str, serializers.Field]) -> dict[str, serializers.Field]:
    """A serializer's own copy of ``fields`` (name -> unbound field), cheaper than DRF's ``deepcopy``.

    DRF deep-copies every field for each serializer it makes, and a field's deep copy re-runs its constructor on
    deep copies of its arguments: for a start's request and answer, about a twelfth of the web process's CPU. A
    simple field only needs its own object (``bind`` sets its name, parent and source on it; its arguments,
    choices and validators are only read), so it is copied shallowly; a field holding other fields (a nested
    serializer, a list or dict field's ``child``, a many-relation's ``child_relation``) binds those to itself, so
    it is deep-copied as DRF does.
    """
    copies = {}
    for name, field in fields.items():
        if isinstance(field, serializers.BaseSerializer) or hasattr(field, "child") or hasattr(field, "child_relation"):
            copies[name] = copy.deepcopy(field)
        else:
            # copy.copy's own way (an empty object of the class, the attributes copied), minus its dispatch.
            twin = object.__new__(type(field))
            twin.__dict__.update(field.__dict__)
            copies[name] = twin
    return copies


class StartSerializer(serializers.Serializer):
    """``POST /api/instances/``: which workflow (latest version unless ``version``), its input, a business key."""

    workflow = StrictCharField(max_length=100)
    version = PlainIntegerField(required=False, min_value=1, max_value=2**31 - 1)
    input = serializers.DictField(child=serializers.JSONField(), required=False, default=dict)
    business_key = StrictCharField(max_length=100, required=False, allow_blank=True, default="")

    def get_fields(self) -> dict[str, serializers.Field]:
        return copied_fields(self._declared_fields)


class BuiltOnceModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer whose fields are worked out from the model once per class, then copied for each use.

    DRF rebuilds a ModelSerializer's fields from the model's metadata for every serializer it makes (for a start's
    answer, about a tenth of the web process's CPU); they depend only on the class, so the first build is kept
    and each serializer gets its own copy (:func:`copied_fields`). For classes whose fields do not depend on the
    request (no ``get_fields`` or ``__init__`` of their own).
    """

    def get_fields(self) -> dict[str, serializers.Field]:
        cls = type(self)
        built = cls.__dict__.get("_built_fields")  # the class's own: a subclass builds its own set
        if built is None:
            built = super().get_fields()
            cls._built_fields = built
        return copied_fields(built)


class InstanceSerializer(BuiltOnceModelSerializer):
    """An instance as lists show it."""

    workflow = serializers.CharField(source="workflow_name")
    version = serializers.IntegerField(source="workflow_version")
    initiator = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowInstance
        fields = [
            "id",
            "url",
            "workflow",
            "version",
            "title",
            "state",
            "business_key",
            "initiator",
            "outcome",
            "error",
            "created_at",
            "updated_at",
            "finished_at",
            "paused_until",
        ]
        # Answers only, each key always there: read-only fields are required in the schema, so a client generated
        # from it does not take "state" or "title" for optional (the omitted_for_metadata ones stay optional).
        read_only_fields = fields

    def get_initiator(self, instance: WorkflowInstance) -> str | None:
        return instance.initiator.get_username() if instance.initiator_id and instance.initiator else None

    def get_url(self, instance: WorkflowInstance) -> str:
        return reverse("api:instance-detail", args=[instance.pk])


# ``?included_data=``: ``all`` (the default: every field) or ``metadata`` (the payloads left out, in the SQL too),
# as AWS Step Functions' ``includedData=ALL_DATA|METADATA_ONLY`` and Temporal's history without payloads.
INCLUDED_DATA = "included_data"
INCLUDED_DATA_CHOICES = ("all", "metadata")
METADATA_LEAVES_OUT = "Left out with `included_data=metadata`."


def without_payloads(fields: dict[str, serializers.Field], serializer: serializers.BaseSerializer) -> None:
    """Drop ``serializer``'s :attr:`omitted_for_metadata` fields from ``fields`` when its context has
    ``metadata_only``: a field left out is never read, so a column the query deferred is not fetched row by row."""
    if serializer.context.get("metadata_only"):
        for name in getattr(serializer, "omitted_for_metadata", ()):
            fields.pop(name, None)


class StepSerializer(serializers.ModelSerializer):
    """One step run: its state, its attempts so far and the last error (its traceback's file paths cut to file
    names unless the context's ``show_paths``, as the instance page shows them to whoever may not operate), and
    ``url``, the run alone and whole. With the context's ``metadata_only`` its payloads (:attr:`omitted_for_metadata`,
    ``orchestrator.selectors.STEP_PAYLOADS``) are left out: the query read the rows without them."""

    # Not marked required in the schema (api.schema.ProblemAutoSchema): a metadata answer has no such keys.
    omitted_for_metadata = STEP_PAYLOADS

    url = serializers.SerializerMethodField(help_text="This step run alone, whole (its result and error in full).")
    error = serializers.SerializerMethodField(
        help_text="The last error with its traceback (server paths for operators only). " + METADATA_LEAVES_OUT
    )
    result = serializers.JSONField(
        read_only=True, help_text="What the step returned (joined the instance data). " + METADATA_LEAVES_OUT
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        without_payloads(fields, self)
        return fields

    def get_url(self, step: StepRun) -> str:
        return reverse("api:instance-step", args=[step.instance_id, step.pk])

    def get_error(self, step: StepRun) -> str:
        return step.error if self.context.get("show_paths") else hide_paths(step.error)

    class Meta:
        model = StepRun
        fields = [
            "id",
            "url",
            "name",
            "kind",
            "state",
            "attempt",
            "max_attempts",
            "due_at",
            "started_at",
            "finished_at",
            "error_type",
            "error",
            "result",
        ]
        # Required in the schema, as InstanceSerializer's: every answer has each key.
        read_only_fields = fields


class TaskSummarySerializer(serializers.ModelSerializer):
    """One of an instance's tasks, in short: ``url`` is the task itself (which keeps its own rule of who may read
    it)."""

    url = serializers.SerializerMethodField()

    class Meta:
        model = HumanTask
        fields = ["id", "url", "kind", "title", "state"]
        # Required in the schema, as InstanceSerializer's: every answer has each key.
        read_only_fields = fields

    def get_url(self, task: HumanTask) -> str:
        return reverse("api:task-detail", args=[task.pk])


# The most step runs and tasks an instance's detail lists, each the latest by id (an instance that looped or retried
# has runs without bound: at 10,000 the whole list was 2.3 MB and a second). The rest are at ``steps_url`` and
# ``tasks_url``, paged; the console's instance page lists as many step runs (console.ops_views.STEPS_SHOWN).
DETAIL_SHOWN = 50


class InstanceDetailSerializer(InstanceSerializer):
    """An instance with its data, its latest step runs (with attempts and errors) and tasks, how many it has of
    each, and where to page through them all.

    ``context``: ``steps`` and ``tasks`` (the latest :data:`DETAIL_SHOWN` of each, in id order), ``steps_total``
    and ``tasks_total`` (how many the instance has), ``show_paths`` and ``metadata_only`` (as
    :class:`StepSerializer`; with ``metadata_only`` the instance was read without its data, which is left out with
    its digest, and the steps were read without their payloads)."""

    steps = serializers.SerializerMethodField(
        help_text=f"The latest {DETAIL_SHOWN} step runs by id, oldest of them first (all of them when there are no "
        "more; `steps_total` says how many there are, `steps_url` pages through every one)."
    )
    steps_total = serializers.SerializerMethodField(help_text="How many step runs the instance has.")
    steps_url = serializers.SerializerMethodField(help_text="Every step run, in id order, in pages.")
    tasks = serializers.SerializerMethodField(
        help_text=f"The latest {DETAIL_SHOWN} tasks by id, oldest of them first (`tasks_total`, `tasks_url` as for "
        "steps)."
    )
    tasks_total = serializers.SerializerMethodField(help_text="How many tasks the instance has.")
    tasks_url = serializers.SerializerMethodField(help_text="Every task of the instance, in id order, in pages.")
    data = serializers.JSONField(read_only=True, help_text="The business data. " + METADATA_LEAVES_OUT)
    data_digest = serializers.SerializerMethodField(
        help_text="A fingerprint of `data` as read now: send it as `seen` with a decision, which is then refused "
        "(409) if the data changed since. " + METADATA_LEAVES_OUT
    )
    # The data can run to megabytes; its digest is worked out from it. Not marked required in the schema.
    omitted_for_metadata = ("data", "data_digest")

    class Meta(InstanceSerializer.Meta):
        fields = [
            *InstanceSerializer.Meta.fields,
            "data",
            "data_digest",
            "steps",
            "steps_total",
            "steps_url",
            "tasks",
            "tasks_total",
            "tasks_url",
        ]

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        without_payloads(fields, self)
        return fields

    def get_data_digest(self, instance: WorkflowInstance) -> str:
        return data_digest(instance.data)

    @extend_schema_field(StepSerializer(many=True))
    def get_steps(self, instance: WorkflowInstance) -> Any:
        return StepSerializer(self.context["steps"], many=True, context=self.context).data

    def get_steps_total(self, instance: WorkflowInstance) -> int:
        return int(self.context["steps_total"])

    def get_steps_url(self, instance: WorkflowInstance) -> str:
        url = reverse("api:instance-steps", args=[instance.pk])
        # A client that asked for metadata and follows the link gets metadata again, not megabytes.
        return f"{url}?{INCLUDED_DATA}=metadata" if self.context.get("metadata_only") else url

    @extend_schema_field(TaskSummarySerializer(many=True))
    def get_tasks(self, instance: WorkflowInstance) -> Any:
        return TaskSummarySerializer(self.context["tasks"], many=True).data

    def get_tasks_total(self, instance: WorkflowInstance) -> int:
        return int(self.context["tasks_total"])

    def get_tasks_url(self, instance: WorkflowInstance) -> str:
        return reverse("api:instance-tasks", args=[instance.pk])


class InstanceFilterSerializer(serializers.Serializer):
    """The instance list's query parameters, checked strictly: a bad value is a 400 naming it."""

    workflow = StrictCharField(required=False, max_length=SEARCH_MAX)
    version = PlainIntegerField(required=False, min_value=1, max_value=2**31 - 1)
    state = ListedChoiceField(required=False, choices=InstanceState.choices)
    started_after = AwareDateTimeField(required=False, help_text="Started at or after this time (with offset).")
    started_before = AwareDateTimeField(required=False, help_text="Started before this time (with offset).")
    business_key = StrictCharField(required=False, max_length=100)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """A started range the wrong way round (or empty) is refused naming ``started_before``, as the console's
        list refuses it (``console.ops_forms.InstanceListForm``): nothing could match, and an empty page would
        read as "none started then" to a script that only swapped its bounds."""
        after, before = attrs.get("started_after"), attrs.get("started_before")
        if after is not None and before is not None and after >= before:
            raise serializers.ValidationError({"started_before": ["Must be later than started_after."]})
        return attrs


class ReasonSerializer(serializers.Serializer):
    """An operator's action: the reason goes into the audit trail with the actor's name."""

    reason = StrictCharField(max_length=REASON_MAX, help_text="Why; written to the audit trail.")


class JsonBooleanField(serializers.BooleanField):
    """A request's true/false, read as a form's true/false fields read JSON (``orchestrator.inputs.json_boolean``:
    true/false, "true"/"false", "yes"/"no", "on"/"off", "1"/"0", 1/0); anything else is "Give true or false.", where
    DRF's own field took any of its longer list and said '"nope" is not a valid boolean.'."""

    def to_internal_value(self, data: Any) -> bool:
        try:
            return bool(json_boolean(data))
        except django_forms.ValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None


class CancelSerializer(ReasonSerializer):
    """An operator's cancel. With ``compensate`` true, what the instance did is undone first (its succeeded steps'
    compensations, latest first) and it ends ``compensated``; false or left out, it ends ``cancelled`` as it is."""

    compensate = JsonBooleanField(
        required=False,
        default=False,
        help_text="Undo what the instance did (its steps' compensations, latest first) before it ends.",
    )


class PauseSerializer(ReasonSerializer):
    until = AwareDateTimeField(required=False, allow_null=True, help_text="Resume by itself at this time.")

    def validate_until(self, value: datetime | None) -> datetime | None:
        if value is not None and value <= django_timezone.now():
            raise serializers.ValidationError("Enter a time in the future.")
        return value


# --- tasks ----------------------------------------------------------------------------------------------


class TaskSerializer(serializers.ModelSerializer):
    """A human task as the inbox shows it."""

    url = serializers.SerializerMethodField()
    instance = serializers.SerializerMethodField()
    assignee = serializers.SerializerMethodField()
    # The stored value, and its label beside it: the label alone ("Normal") was no value of the schema's enum.
    priority = serializers.ChoiceField(choices=Priority.choices, read_only=True, help_text="Higher is more urgent.")
    priority_label = serializers.CharField(
        source="get_priority_display", read_only=True, help_text="As the inbox shows it."
    )

    class Meta:
        model = HumanTask
        fields = [
            "id",
            "url",
            "instance",
            "kind",
            "title",
            "description",
            "state",
            "priority",
            "priority_label",
            "assignee",
            "quorum",
            "approvals",
            "due_at",
            "snoozed_until",
            "created_at",
            "claimed_at",
            "completed_at",
            "decision",
            "comment",
        ]
        # Required in the schema, as InstanceSerializer's: every answer has each key.
        read_only_fields = fields

    def get_url(self, task: HumanTask) -> str:
        return reverse("api:task-detail", args=[task.pk])

    @extend_schema_field(
        {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "title": {"type": "string"}, "url": {"type": "string"}},
        }
    )
    def get_instance(self, task: HumanTask) -> dict[str, Any]:
        return {
            "id": task.instance_id,
            "title": str(task.instance),
            "url": reverse("api:instance-detail", args=[task.instance_id]),
        }

    def get_assignee(self, task: HumanTask) -> str | None:
        return task.assignee.get_username() if task.assignee_id and task.assignee else None


class TaskDetailSerializer(TaskSerializer):
    """One task, with what its decision takes: a form task's ``data`` as a JSON Schema (``form_input``), as a
    workflow's ``start_input`` gives a start's. Without it a client had to read the workflow's code to learn the
    fields, and a choice field's refusal ("x is not one of the available choices") never named the choices."""

    form_input = serializers.SerializerMethodField(
        help_text="A form task's `data` for `decide` (JSON Schema of its form's fields); null for other tasks, and "
        "when the workflow's definition is not deployed."
    )

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "form_input"]

    @extend_schema_field({"type": "object", "nullable": True})
    def get_form_input(self, task: HumanTask) -> dict[str, Any] | None:
        if task.kind != TaskKind.FORM:
            return None
        try:
            node = registry.get(task.instance.workflow_name, task.instance.workflow_version).node(task.step.name)
        except (registry.UnknownWorkflow, DefinitionError):
            return None  # the definition is gone (its module removed): the task cannot be decided either
        form_class = getattr(node, "form", None)
        return form_schema(form_class) if form_class is not None else None


class TaskFilterSerializer(serializers.Serializer):
    scope = ListedChoiceField(
        choices=[("mine", "Assigned to me"), ("queue", "My team's queue: open tasks I may claim")],
        required=False,
        default="mine",
    )


class DecisionField(serializers.ChoiceField):
    """A task's decision, one of ``DECISIONS``. Anything else (a typo, "aprove", or a value that is no string) is
    refused naming the decisions the task in the serializer's context (``task``) takes, as the service names them
    for a decision of another kind of task (``approvals.services.base.decision_not_taken``): DRF's own answer,
    '"aprove" is not a valid choice.', did not say what is. Without a task, it names every decision."""

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, str) and data in self.choice_strings_to_values:
            return str(self.choice_strings_to_values[data])
        task = self.context.get("task")
        if task is not None:
            raise serializers.ValidationError(decision_not_taken(task, data))
        raise serializers.ValidationError(f"Give one of: {', '.join(self.choice_strings_to_values)}.")


class DecideSerializer(serializers.Serializer):
    """A decision: approve or reject (approvals), submit (form tasks, with ``data``), or an escalation's answer."""

    # Read with the context's ``task``, the task decided: a wrong ``decision`` names the ones it takes (the
    # docstring above is the schema's description, so the note is here).

    decision = DecisionField(choices=DECISIONS)
    comment = StrictCharField(max_length=COMMENT_MAX, required=False, allow_blank=True, default="")
    data = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        default=dict,
        help_text="A form task's fields (for an approval or an escalation: none, else 400).",
    )
    seen = StrictRegexField(
        DIGEST_PATTERN,
        required=False,
        allow_blank=True,
        default="",
        error_messages={"invalid": "Send the instance's data_digest as read, unchanged (or leave seen out)."},
        help_text="The instance's `data_digest` as the caller read it: the decision is refused (409) if the data "
        "changed since; a value no `data_digest` has is a 400. Left out, not checked.",
    )


class DelegateSerializer(serializers.Serializer):
    to_user = StrictCharField(max_length=150, help_text="The username of the person to hand the task to.")
    note = StrictCharField(max_length=NOTE_MAX, required=False, allow_blank=True, default="")
    expected_holder = StrictCharField(
        max_length=150,
        required=False,
        allow_blank=True,
        help_text='The username of the task\'s holder as the caller saw it ("": nobody held it): if the task '
        "changed hands since (someone claimed it, was handed it, or released it), the delegation is refused (409, "
        "code `holder_changed`, naming who holds it now) rather than taking it from them. Left out, not checked.",
    )

    def validate_to_user(self, value: str) -> Any:
        user = get_user_model().objects.filter(username=value, is_active=True).first()
        if user is None:
            raise serializers.ValidationError(f"No active user named {value[:150]!r}.")
        return user

    def validate_expected_holder(self, value: str) -> int:
        """The holder's id as the service compares it (0: nobody), for a username of anyone (a holder seen may have
        been deactivated since: the task then changed hands, a 409, not bad input)."""
        if value == "":
            return 0
        pk = get_user_model().objects.filter(username=value).values_list("pk", flat=True).first()
        if pk is None:
            raise serializers.ValidationError(f"No user named {value[:150]!r}.")
        return pk


# --- signals --------------------------------------------------------------------------------------------


class SignalSerializer(serializers.Serializer):
    """``POST /api/instances/{id}/signals/``: the event, the sender's id of it, and its payload."""

    event = StrictCharField(max_length=100, help_text="The event's name, as the workflow's Signal node has it.")
    signal_id = StrictCharField(
        max_length=IDEMPOTENCY_KEY_MAX,
        help_text="The sender's id of this event, unique per instance: sending it again changes nothing.",
    )
    payload = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        default=dict,
        help_text="Validated by the Signal node's form or schema, then merged into the instance data.",
    )


class SignalByKeySerializer(SignalSerializer):
    """``POST /api/signals/``: the same, to the one open instance with ``business_key``."""

    business_key = StrictCharField(max_length=100, help_text="The business key of exactly one open instance.")
    workflow = StrictCharField(
        max_length=100, required=False, help_text="Only this workflow's instances (when a key is shared)."
    )


class ReceivedSignalSerializer(serializers.ModelSerializer):
    """A delivered signal: ``state`` is ``consumed`` (a waiting step took it; its payload joined the data),
    ``kept`` (the instance has not reached a step waiting for its event yet; the first such step takes it, if its
    node accepts the payload) or ``rejected`` (the node that came to consume it refused its payload: ``rejection``
    holds the node, the step and the errors; the wait goes on waiting; or the instance ended or began undoing while
    it was kept: ``rejection`` then has no node or step, and its ``reason`` says what happened)."""

    instance = serializers.IntegerField(source="instance_id")
    instance_url = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField()
    step = serializers.IntegerField(source="step_id", allow_null=True, help_text="The step that consumed it.")

    class Meta:
        model = ReceivedSignal
        fields = [
            "id",
            "instance",
            "instance_url",
            "event",
            "signal_id",
            "payload",
            "state",
            "sender",
            "received_at",
            "consumed_at",
            "step",
            "rejected_at",
            "rejection",
        ]
        # Required in the schema, as InstanceSerializer's: every answer has each key.
        read_only_fields = fields

    def get_instance_url(self, signal: ReceivedSignal) -> str:
        return reverse("api:instance-detail", args=[signal.instance_id])

    @extend_schema_field({"type": "string", "enum": ["consumed", "kept", "rejected"]})
    def get_state(self, signal: ReceivedSignal) -> str:
        # rejected: kept, then refused by the node that came to consume it (``rejection`` says which and why).
        if signal.consumed_at is not None:
            return "consumed"
        return "rejected" if signal.rejected_at is not None else "kept"


# --- skip -----------------------------------------------------------------------------------------------


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}]})
class StepRefField(serializers.Field):
    """A step of the instance: its id (a number) or its name (a string, the node's name)."""

    def to_internal_value(self, data: Any) -> int | str:
        if isinstance(data, bool) or not isinstance(data, int | str):
            raise serializers.ValidationError("Give the step's id (a number) or its name (a string).")
        if isinstance(data, int):
            if not 0 < data <= ID_MAX:
                raise serializers.ValidationError("Not a step id.")
            return data
        name = data.strip()
        if not name or len(name) > 100:
            raise serializers.ValidationError("A step name has 1-100 characters.")
        return name

    def to_representation(self, value: Any) -> Any:
        return value


class SkipSerializer(ReasonSerializer):
    """``POST /api/instances/{id}/skip/``: the failed step to skip, what it would have returned, and why."""

    step = StepRefField(help_text="The failed step: its id, or its name.")
    output = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        default=dict,
        help_text="What the step would have returned: joins the instance data, where later steps read it.",
    )


# --- audit ----------------------------------------------------------------------------------------------


class AuditFilterSerializer(serializers.Serializer):
    """The audit timeline's filters (``audit.forms.AuditFilterForm`` checks them: this class only describes them
    in the schema)."""

    actor = StrictCharField(required=False, help_text="A username, or a label such as system:worker.")
    action = StrictCharField(required=False, help_text="Exact (task.completed), or a prefix (task.).")
    workflow = StrictCharField(required=False)
    instance = PlainIntegerField(required=False, min_value=1)
    subject_type = StrictCharField(required=False)
    subject_id = PlainIntegerField(required=False, min_value=0)
    since = serializers.DateTimeField(
        required=False, help_text="At or after this time, with its offset (Z or +01:00; a time without one is 400)."
    )
    until = serializers.DateTimeField(
        required=False, help_text="Before this time, with its offset (Z or +01:00; a time without one is 400)."
    )
    q = StrictCharField(required=False, help_text="Text in reasons and comments.")
    request_id = StrictCharField(required=False, help_text="Every event one request caused.")


class AuditPageQuerySerializer(AuditFilterSerializer):
    """The filters, and where the page starts and how long it is."""

    cursor = StrictCharField(required=False, help_text="The `next` link's cursor: older events.")
    limit = PlainIntegerField(required=False, min_value=1, max_value=200, help_text="1-200, default 50.")


class AuditEventSerializer(serializers.Serializer):
    """One event of the trail, as the export writes it (its hashed content, times in UTC)."""

    id = serializers.IntegerField()
    chain = serializers.CharField()
    seq = serializers.IntegerField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()
    key_id = serializers.CharField()
    occurred_at = serializers.DateTimeField()
    actor_label = serializers.CharField()
    actor_id = serializers.IntegerField(allow_null=True)
    action = serializers.CharField()
    instance_id = serializers.IntegerField(allow_null=True)
    subject_type = serializers.CharField()
    subject_id = serializers.IntegerField(allow_null=True)
    from_state = serializers.CharField()
    to_state = serializers.CharField()
    reason = serializers.CharField()
    payload = serializers.JSONField()
    request_meta = serializers.JSONField()
    request_id = serializers.CharField()


class AuditPageSerializer(serializers.Serializer):
    """A page of events, newest first; ``next`` is the link to older ones (null on the last page)."""

    next = serializers.CharField(allow_null=True)
    results = AuditEventSerializer(many=True)
