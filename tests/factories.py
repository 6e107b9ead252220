"""factory_boy factories shared by every test package."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

PASSWORD = "demo"


class GroupFactory(factory.django.DjangoModelFactory):
    """An auth group; asking twice for the same name returns the same row."""

    class Meta:
        model = Group
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"group{n}")


class UserFactory(factory.django.DjangoModelFactory):
    """A user whose password is "demo"; ``groups=[...]`` takes Group objects or names."""

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    first_name = factory.LazyAttribute(lambda user: user.username.capitalize())
    password = factory.django.Password(PASSWORD)
    is_staff = False
    is_superuser = False

    @factory.post_generation
    def groups(self, create: bool, extracted: list[Group | str] | None, **kwargs: object) -> None:
        if not create or not extracted:
            return
        self.groups.add(*[g if isinstance(g, Group) else GroupFactory(name=g) for g in extracted])


class SuperUserFactory(UserFactory):
    """An administrator (superuser and staff)."""

    is_staff = True
    is_superuser = True


class OrderInputFactory(factory.DictFactory):
    """Start input of ``order_fulfilment``; an amount above 1000 needs a manager's approval."""

    order_id = factory.Sequence(lambda n: f"A-{n:04d}")
    customer = "ACME Ltd"
    email = "buyer@example.com"
    amount = "50.00"
    items = 2


class ExpenseInputFactory(factory.DictFactory):
    """Start input of ``expense_approval``; an amount above 500 needs a manager's sign-off too."""

    employee = "Sam Staff"
    amount = "120.00"
    category = "travel"
    description = factory.Sequence(lambda n: f"Train to the client, trip {n}")
