"""Lean row I/O for the engine's hot path: the ORM's models and field conversions, without its query compiler.

An engine step is a dozen statements, and on this project's reference machine the ORM spent about 0.6 ms of
CPU building each one (``bench/README.md``), two to three times what PostgreSQL spent running it. These
helpers read and write whole model instances with SQL built once per model and field list: reads convert with
each field's own converters and build instances with ``from_db``; updates use ``get_db_prep_save``; inserts on
PostgreSQL travel as one JSON document (``jsonb_to_recordset``), elsewhere as ``get_db_prep_save`` values. So
models and FSM transitions behave as with the ORM, and everything goes through Django's connection:
transactions, ``on_commit``, query logging and ``CaptureQueriesContext`` all see these statements. SQLite (the
embedded demo) and PostgreSQL both work; PostgreSQL also gets the data-modifying WITHs that save round trips.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date, datetime
from functools import cache
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model

M = TypeVar("M", bound=Model)

_sql: dict[tuple[Any, ...], str] = {}
# Per (model, vendor, fields, guard): the UPDATE and the fields it sets.
_updates: dict[tuple[Any, ...], tuple[str, list[Any]]] = {}
# Per (model, alias): select columns, per column (converters, expression) or None, attribute names.
Reader = tuple[list[str], list[tuple[list[Callable[..., Any]], Any] | None], list[str]]
_readers: dict[tuple[type[Model], str], Reader] = {}


def _db() -> BaseDatabaseWrapper:
    # The real connection object, looked up once per call: every attribute read through
    # ``django.db.connection`` is an asgiref Local lookup, and field conversions read it dozens of times.
    return connections[DEFAULT_DB_ALIAS]


def cursor() -> Any:
    """A cursor for the hot path's statements. On PostgreSQL it binds parameters on the server and prepares each
    statement once per session, so PostgreSQL parses and plans it once instead of on every call (PostgreSQL CPU
    per step -25 to -40 %, bench/README.md); Django's own cursors keep binding on the client. Elsewhere, or with
    ``BATON_PREPARED_STATEMENTS`` off (a proxy that cannot carry prepared statements), Django's cursor."""
    connection = _db()
    if connection.vendor != "postgresql" or not settings.BATON_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Django switches preparing off for the session, and psycopg then ignores prepare=True too. Django's
        # cursors bind on the client and never prepare, whatever the threshold: only this cursor's calls do.
        raw.prepare_threshold = 1_000_000
    with connection.wrap_database_errors:
        return connection._prepare_cursor(_prepared_cursor_class()(raw))  # type: ignore[attr-defined]


@cache
def _prepared_cursor_class() -> type:
    # Imported late: the PostgreSQL backend module needs psycopg, which the SQLite demo does not load.
    from django.db.backends.postgresql.base import ServerBindingCursor  # type: ignore[attr-defined]

    class PreparedCursor(ServerBindingCursor):
        """Prepares on the first execute: Django's cursor wrapper passes no ``prepare`` argument."""

        def execute(self, query: Any, params: Any = None, *, prepare: Any = None, binary: Any = None) -> Any:
            result = super().execute(query, params, prepare=True, binary=binary)
            # psycopg keeps no query text for a prepared execution, and Django's query log (DEBUG,
            # CaptureQueriesContext) reads it from here: give it the statement, rendered only when read.
            self._query = _LoggedQuery(self.connection, query, params)
            return result

    return PreparedCursor


class _LoggedQuery:
    """What Django's ``last_executed_query`` reads (``.query``): the statement with its values in place."""

    __slots__ = ("_connection", "_params", "_sql")

    def __init__(self, connection: Any, sql: str, params: Any) -> None:
        self._connection, self._sql, self._params = connection, sql, params

    @property
    def query(self) -> bytes:
        from psycopg import ClientCursor

        return ClientCursor(self._connection).mogrify(self._sql, self._params).encode()


def _q(name: str) -> str:
    return f'"{name}"'


_writables: dict[type[Model], list[Field]] = {}
# Per model: (column, attribute, the field when its pre_save does more than read the attribute) for each column.
Getter = tuple[str, str, Field | None]
_getters: dict[tuple[type[Model], bool], list[Getter]] = {}


def _writable(model: type[Model]) -> list[Field]:
    fields = _writables.get(model)
    if fields is None:
        fields = _writables[model] = [f for f in model._meta.concrete_fields if not f.primary_key]
    return fields


def _with_pk(model: type[Model]) -> list[Field]:
    return [model._meta.pk, *_writable(model)]


def _document_getters(model: type[Model], with_pk: bool = False) -> list[Getter]:
    key = (model, with_pk)
    getters = _getters.get(key)
    if getters is None:
        getters = _getters[key] = [
            # Most fields' pre_save only reads the attribute; those that override it (dates with auto_now) keep it.
            (f.column, f.attname, f if type(f).pre_save is not Field.pre_save else None)
            for f in (_with_pk(model) if with_pk else _writable(model))
        ]
    return getters


def insert(obj: Model) -> None:
    """INSERT the new ``obj`` (every concrete field; ``auto_now_add`` applied) and set its primary key."""
    pk = _insert([obj], returning=True)
    obj.pk = pk[0]


def insert_reserving(obj: Model, other: type[Model]) -> int:
    """:func:`insert` ``obj`` and, in the same statement, take the next id of ``other``'s sequence (PostgreSQL):
    a row of ``other`` given that id can then be written later in another statement, with rows that must name
    it (its audit event), instead of in a round trip of its own."""
    sql, values = insert_statement([obj], returning=True)
    meta = other._meta
    sql += f", nextval(pg_get_serial_sequence('{_q(meta.db_table)}', '{meta.pk.column}'))"
    with cursor() as cur:
        cur.execute(sql, values)
        obj.pk, reserved = cur.fetchone()
    inserted([obj])
    return int(reserved)


def insert_many(objs: Sequence[Model]) -> None:
    """INSERT several new instances of one model in one statement (their primary keys are not read back)."""
    if objs:
        _insert(objs, returning=False)


def insert_statement(
    objs: Sequence[Model], *, returning: bool, expressions: dict[str, str] | None = None
) -> tuple[str, list[Any]]:
    """The INSERT of :func:`insert_many` and its parameters, for a caller composing a larger statement.

    ``expressions`` (PostgreSQL only) gives some columns an SQL expression instead of the objects' values, such as
    the id of a row an earlier WITH of the same statement inserts: ``{"step_id": "(SELECT id FROM new_step)"}``.
    """
    connection = _db()
    model = type(objs[0])
    # Rows given their id ahead (insert_reserving) carry it; the rest take the sequence's next.
    with_pk = objs[0].pk is not None
    fields = _with_pk(model) if with_pk else _writable(model)
    if connection.vendor == "postgresql":
        # The rows travel as one JSON document that PostgreSQL expands (jsonb_to_recordset): one parameter, so
        # the statement text stays the same whatever the number of rows and psycopg's query cache serves it,
        # and json.dumps (in C) replaces per-value literal quoting, which cost about twice the CPU here.
        given = expressions or {}
        key: tuple[Any, ...] = (
            "insert",
            model,
            "postgresql",
            returning,
            with_pk,
            tuple(sorted(given.items())) if given else (),
        )
        sql = _sql.get(key)
        if sql is None:
            types = ", ".join(f"{_q(f.column)} {f.cast_db_type(connection)}" for f in fields)  # type: ignore[attr-defined]
            values = ", ".join(given.get(f.column, _q(f.column)) for f in fields)
            sql = _sql[key] = (
                f"INSERT INTO {_q(model._meta.db_table)} ({_names(fields)}) SELECT {values}"
                f" FROM jsonb_to_recordset(%s::jsonb) AS x({types}){_returning(model, returning)}"
            )
        getters = _document_getters(model, with_pk)
        document = [
            {
                column: _plain(field.pre_save(obj, True) if field is not None else obj.__dict__[attname])
                for column, attname, field in getters
            }
            for obj in objs
        ]
        return sql, [json.dumps(document, default=str)]
    key = ("insert", model, connection.vendor, returning, with_pk, len(objs))
    sql = _sql.get(key)
    if sql is None:
        row = f"({', '.join(['%s'] * len(fields))})"
        sql = _sql[key] = (
            f"INSERT INTO {_q(model._meta.db_table)} ({_names(fields)}) VALUES {', '.join([row] * len(objs))}"
            f"{_returning(model, returning)}"
        )
    return sql, [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]


def _names(fields: Sequence[Field]) -> str:
    return ", ".join(_q(f.column) for f in fields)


def _returning(model: type[Model], returning: bool) -> str:
    return f" RETURNING {_q(model._meta.pk.column)}" if returning else ""


def inserted(objs: Sequence[Model]) -> None:
    """Mark ``objs`` as saved (what the ORM does after an INSERT)."""
    alias = _db().alias
    for obj in objs:
        obj._state.adding = False
        obj._state.db = alias


def _insert(objs: Sequence[Model], *, returning: bool) -> list[Any]:
    sql, values = insert_statement(objs, returning=returning)
    with cursor() as cur:
        cur.execute(sql, values)
        keys = [row[0] for row in cur.fetchall()] if returning else []
    inserted(objs)
    return keys


def _plain(value: Any) -> Any:
    # What JSON carries as it is (numbers, strings, None, the JSON fields' own values); times as ISO 8601 text,
    # which PostgreSQL reads back exactly; anything else (Decimal, UUID) as its text through default=str.
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


Fence = tuple[Model, Sequence[str], str, Sequence[Any]]


def _update_statement(obj: Model, fields: Sequence[str], where: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    connection = _db()
    model = type(obj)
    key = ("update", model, connection.vendor, tuple(fields), where)
    cached = _updates.get(key)
    if cached is None:
        meta = model._meta
        concrete: list[Any] = [meta.get_field(name) for name in fields]
        assignments = ", ".join(f"{_q(f.column)} = %s" for f in concrete)
        guard = f" AND ({where})" if where else ""
        sql = f"UPDATE {_q(meta.db_table)} SET {assignments} WHERE {_q(meta.pk.column)} = %s{guard}"
        cached = _updates[key] = (sql, concrete)
    sql, concrete = cached
    values = [f.get_db_prep_save(f.pre_save(obj, False), connection) for f in concrete]
    return sql, [*values, obj.pk, *params]


def update(
    obj: Model,
    fields: Sequence[str],
    *,
    where: str = "",
    params: Sequence[Any] = (),
    insert_first: Sequence[Model] = (),
    update_first: Sequence[Fence] = (),
) -> bool:
    """UPDATE ``fields`` of ``obj`` (``auto_now`` fields among them get the time); True if the row matched.

    ``where`` adds conditions to ``pk = %s`` (a fencing guard, say ``"state = %s AND attempt = %s"``) with
    their ``params``; a guarded update that matches nothing changes nothing and returns False.
    ``insert_first`` are new rows (of any models) written before the update, and ``update_first`` guarded
    updates of other rows, ``(obj, fields, where, params)``, that must all match for this one to count: on
    PostgreSQL in the same statement (data-modifying WITHs), which saves round trips, since a worker waits on
    round trips more than it computes. With ``update_first`` a False return means one of them, or this update,
    matched nothing, and the caller must roll back: the other writes of the statement did happen.
    """
    connection = _db()
    sql, values = _update_statement(obj, fields, where, params)
    postgres = connection.vendor == "postgresql"
    if postgres and (insert_first or update_first):
        ctes, cte_values = _insert_ctes(insert_first)
        for index, (other, other_fields, other_where, other_params) in enumerate(update_first):
            update_sql, update_values = _update_statement(other, other_fields, other_where, other_params)
            ctes.append(f"updated_{index} AS ({update_sql} RETURNING 1)")
            cte_values += update_values
            sql += f" AND EXISTS (SELECT 1 FROM updated_{index})"
        sql = f"WITH {', '.join(ctes)} {sql}"
        values = [*cte_values, *values]
    elif insert_first or update_first:
        for same_model in _by_model(insert_first):
            insert_many(same_model)
        for other, other_fields, other_where, other_params in update_first:
            if not update(other, other_fields, where=other_where, params=other_params):
                return False
    with cursor() as cur:
        cur.execute(sql, values)
        matched = cur.rowcount > 0
    if insert_first:
        inserted(insert_first)
    return matched


def on_postgresql() -> bool:
    """Whether the PostgreSQL-only helpers (:func:`guarded_write`, :func:`insert_reserving`) can run here."""
    return _db().vendor == "postgresql"


def guarded_write(
    obj: Model,
    fields: Sequence[str],
    *,
    guard: tuple[str, Sequence[Any]],
    update: Fence,
    insert: Sequence[Model],
) -> bool:
    """One statement, all or nothing: lock ``obj``'s row if ``guard`` still holds on it, then the guarded
    ``update`` of another row, then ``insert``, then ``fields`` of ``obj``; True if all of it was written.

    For a write prepared from a read taken without a lock: ``guard`` re-checks what the read saw on ``obj``
    (``("audit_seq = %s", [seq])``), ``update`` is ``(other, fields, where, params)`` fenced the same way, and each
    later part runs only if the one before matched, so a moved row leaves everything as it was. The lock is
    taken on ``obj`` first, the order every writer follows.
    """
    model = type(obj)
    meta = model._meta
    guard_where, guard_params = guard
    other, other_fields, other_where, other_params = update
    update_sql, update_values = _update_statement(
        other, other_fields, f"({other_where}) AND EXISTS (SELECT 1 FROM guard)", other_params
    )
    ctes = [
        f"guard AS (SELECT 1 FROM {_q(meta.db_table)} WHERE {_q(meta.pk.column)} = %s AND ({guard_where}) FOR UPDATE)",
        f"updated AS ({update_sql} RETURNING 1)",
    ]
    insert_ctes, insert_values = _insert_ctes(insert, " WHERE EXISTS (SELECT 1 FROM updated)")
    ctes += insert_ctes
    values: list[Any] = [obj.pk, *guard_params, *update_values, *insert_values]
    main_sql, main_values = _update_statement(obj, fields, "EXISTS (SELECT 1 FROM updated)", ())
    with cursor() as cur:
        cur.execute(f"WITH {', '.join(ctes)} {main_sql}", [*values, *main_values])
        written = cur.rowcount > 0
    if written:
        inserted(insert)
    return written


def _insert_ctes(objs: Sequence[Model], condition: str = "") -> tuple[list[str], list[Any]]:
    """``inserted_<n> AS (INSERT ...)`` for each model among ``objs`` (each row inserted only if ``condition``,
    a ``WHERE`` clause, holds), and their parameters: for a data-modifying WITH."""
    ctes: list[str] = []
    values: list[Any] = []
    for index, same_model in enumerate(_by_model(objs)):
        insert_sql, insert_values = insert_statement(same_model, returning=False)
        ctes.append(f"inserted_{index} AS ({insert_sql}{condition})")
        values += insert_values
    return ctes, values


def _by_model(objs: Sequence[Model]) -> list[list[Model]]:
    # One INSERT per model, and apart for rows that carry an id given ahead (insert_reserving).
    groups: dict[tuple[type[Model], bool], list[Model]] = {}
    for obj in objs:
        groups.setdefault((type(obj), obj.pk is None), []).append(obj)
    return list(groups.values())


def _reader(model: type[Model], alias: str) -> Reader:
    key = (model, alias)
    reader = _readers.get(key)
    if reader is None:
        connection = _db()
        fields = list(model._meta.concrete_fields)
        columns = [f"{alias}.{_q(f.column)}" for f in fields]
        converters: list[tuple[list[Callable[..., Any]], Any] | None] = []
        for f in fields:
            col = f.get_col(alias)
            found = connection.ops.get_db_converters(col) + f.get_db_converters(connection)  # type: ignore[attr-defined]
            converters.append((found, col) if found else None)
        reader = _readers[key] = (columns, converters, [f.attname for f in fields])
    return reader


def columns(model: type[Model], alias: str) -> str:
    """The select list for ``model``'s concrete fields under table alias ``alias`` (for :func:`select`)."""
    return ", ".join(_reader(model, alias)[0])


def select(
    models: Sequence[tuple[type[Model], str]], tail: str, params: Sequence[Any], *, extra: Sequence[str] = ()
) -> list[tuple[Any, ...]]:
    """Run ``SELECT <every field of each (model, alias)>[, <extra>] <tail>``; instances built with ``from_db``.

    ``tail`` is the rest of the statement after the select list (``FROM ... WHERE ... [FOR UPDATE]``); each
    row comes back as the model instances followed by the ``extra`` expressions' values. ``params`` fill the
    placeholders in statement order (those of ``extra`` first).
    """
    connection = _db()
    readers = [_reader(model, alias) for model, alias in models]
    key = ("select", tuple(models), tail, tuple(extra))
    sql = _sql.get(key)
    if sql is None:
        select_list = ", ".join([*(", ".join(reader[0]) for reader in readers), *extra])
        sql = _sql[key] = f"SELECT {select_list} {tail}"
    with cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    result = []
    for row in rows:
        built = []
        offset = 0
        for (model, _alias), (cols, converters, attnames) in zip(models, readers, strict=True):
            values = list(row[offset : offset + len(cols)])
            offset += len(cols)
            for i, conversion in enumerate(converters):
                if conversion is not None:
                    convs, expression = conversion
                    value = values[i]
                    for convert in convs:
                        value = convert(value, expression, connection)
                    values[i] = value
            built.append(model.from_db(connection.alias, attnames, values))
        result.append((*built, *row[offset:]))
    return result


def get(model: type[M], pk: int, *, lock: bool = False) -> M | None:
    """The instance with primary key ``pk`` (row-locked with ``lock`` where the database can), or None."""
    table = _q(model._meta.db_table)
    tail = f"FROM {table} t WHERE t.{_q(model._meta.pk.column)} = %s"
    if lock and _db().features.has_select_for_update:
        tail += " FOR UPDATE"
    found = select([(model, "t")], tail, [pk])
    return found[0][0] if found else None


def lock_clause(of: str = "") -> str:
    """`` FOR UPDATE [OF of]`` where the database locks rows (SQLite serialises writers with IMMEDIATE
    transactions, so it needs none)."""
    if not _db().features.has_select_for_update:
        return ""
    return f" FOR UPDATE OF {of}" if of else " FOR UPDATE"
