"""Migration operations for tables that stay live during an upgrade.

``CREATE INDEX`` holds a lock that blocks every write to the table until the build ends,
which on a sessions table of ten million rows stalls assignment for minutes.
``CREATE INDEX CONCURRENTLY`` does not, but it cannot run inside a transaction, exists
only on PostgreSQL, and leaves an INVALID index behind when it is interrupted. These
operations build concurrently on PostgreSQL and plainly elsewhere (SQLite, the embedded
default, has nobody to stall), and a re-run first drops an invalid leftover of the same
name, so an interrupted upgrade can simply be run again. Use them in a migration with
``atomic = False``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db.migrations.operations import AddIndex, RemoveIndex


def _postgres(schema_editor: Any) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def _drop_invalid(schema_editor: Any, name: str) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s AND NOT i.indisvalid",
            [name],
        )
        if cursor.fetchone():
            schema_editor.execute(
                f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(name)}"
            )


class AddIndexLive(AddIndexConcurrently):
    """``AddIndexConcurrently`` on PostgreSQL, ``AddIndex`` elsewhere."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgres(schema_editor):
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)
            return
        self._ensure_not_in_transaction(schema_editor)
        _drop_invalid(schema_editor, self.index.name)
        super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgres(schema_editor):
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
            return
        super().database_backwards(app_label, schema_editor, from_state, to_state)


class RemoveIndexLive(RemoveIndexConcurrently):
    """``RemoveIndexConcurrently`` on PostgreSQL, ``RemoveIndex`` elsewhere."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgres(schema_editor):
            RemoveIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)
            return
        super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state) -> None:
        if not _postgres(schema_editor):
            RemoveIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
            return
        self._ensure_not_in_transaction(schema_editor)
        index = to_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
        _drop_invalid(schema_editor, index.name)
        super().database_backwards(app_label, schema_editor, from_state, to_state)
