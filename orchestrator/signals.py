"""Signals the engine sends, so that apps above it (people's tasks, notifications) listen instead of being
imported by it (docs/architecture.md, "Layers")."""

from django.dispatch import Signal

# An instance reached an outcome (completed, failed, compensated, cancelled) in this unit of work. Sent by
# ``Unit.finish()`` inside the transaction, before its statements are written, with ``unit`` (the unit of work:
# a receiver adds rows to ``unit.inserts`` and live events with ``unit.notify``, so what it writes commits with
# the outcome, in the same statement) and ``instance``. A receiver must not raise: an exception rolls the outcome
# back.
instance_finished = Signal()
