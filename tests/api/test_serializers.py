"""api/serializers.py ``copied_fields``: each serializer gets fields of its own, simple ones copied shallowly and
the ones that hold other fields deep-copied as DRF does, so binding one serializer never touches another."""

from __future__ import annotations

from django.contrib.auth.models import User
from rest_framework import serializers

from api.serializers import copied_fields


class Holder(serializers.Serializer):
    name = serializers.CharField(max_length=10)
    tags = serializers.DictField(child=serializers.CharField())
    people = serializers.PrimaryKeyRelatedField(many=True, queryset=User.objects.all())
    inner = serializers.Serializer()


def test_simple_fields_are_new_objects_with_the_same_settings():
    # given
    template = Holder._declared_fields

    # when
    copies = copied_fields(template)

    # then
    assert copies["name"] is not template["name"]
    assert copies["name"].max_length == 10
    assert type(copies["name"]) is serializers.CharField


def test_binding_a_copy_leaves_the_template_and_other_copies_unbound():
    # given
    first, second = Holder(), Holder()

    # when: each serializer binds its own fields
    first_name, second_name = first.fields["name"], second.fields["name"]

    # then
    assert first_name.parent is first
    assert second_name.parent is second
    assert getattr(Holder._declared_fields["name"], "parent", None) is None


def test_fields_holding_other_fields_are_deep_copied_with_their_children_bound_to_the_copy():
    # given
    template = Holder._declared_fields

    # when
    copies = copied_fields(template)

    # then: a child bound to the template would read the template's context (the request) instead of its own
    assert copies["tags"].child is not template["tags"].child
    assert copies["tags"].child.parent is copies["tags"]
    assert copies["people"].child_relation is not template["people"].child_relation
    assert copies["people"].child_relation.parent is copies["people"]
    assert copies["inner"] is not template["inner"]


def test_bound_form_leaves_fields_that_take_several_values_alone():
    # given: a form with a multiple choice, a JSON field and a text field
    from django import forms

    from orchestrator.inputs import bound_form

    class Several(forms.Form):
        tags = forms.MultipleChoiceField(choices=[("a", "A"), ("b", "B")])
        extra = forms.JSONField()
        picked = forms.CharField(widget=forms.SelectMultiple, required=False)
        name = forms.CharField()

    # when
    ok = bound_form(Several, {"tags": ["a", "b"], "extra": {"k": [1]}, "name": "Sam"})
    bad = bound_form(Several, {"tags": ["a"], "extra": [1], "name": ["Sam"]})

    # then
    assert ok.is_valid(), ok.errors
    assert list(bad.errors) == ["name"]
