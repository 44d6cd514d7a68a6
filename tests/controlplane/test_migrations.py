"""The migrations describe the models exactly, so a deploy's `migrate` builds the schema
the code expects."""

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_model_change_is_missing_a_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit_:
        pytest.fail(f"models and migrations differ (exit {exit_.code}):\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()


# --- migrations a live table survives ----------------------------------------------------

# The tables every session start and end writes to. A plain CREATE INDEX (or a unique
# constraint, which builds one) blocks their writes for the whole build: minutes on ten
# million rows, with assignment stalled meanwhile.
LIVE_TABLES = {("rollouts", "session"), ("metrics", "outcome")}
# Written before the rule, when these tables were young; every later migration obeys it.
BEFORE_THE_RULE = {
    ("rollouts", "0002_leaner_session_indexes"),
    ("metrics", "0002_leaner_session_indexes"),
}


def _builds_or_drops_an_index(operation, model_state_before) -> bool:
    from django.db import migrations

    if isinstance(operation, migrations.AddIndex | migrations.RemoveIndex):
        return True
    if isinstance(operation, migrations.AddConstraint | migrations.RemoveConstraint):
        return True
    if isinstance(operation, migrations.AlterUniqueTogether | migrations.AlterIndexTogether):
        return True
    if isinstance(operation, migrations.AddField):
        return bool(operation.field.db_index or operation.field.unique)
    if isinstance(operation, migrations.AlterField):
        old = model_state_before.fields[operation.name]
        new = operation.field
        return (old.db_index, old.unique) != (new.db_index, new.unique)
    return False


def live_table_index_operations():
    """Every operation, in every migration of the graph, that builds or drops an index
    on a live table that existed before that migration: (migration, operation)."""
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.operations.models import CreateModel, ModelOperation
    from django.db.migrations.state import ProjectState

    loader = MigrationLoader(None, ignore_no_migrations=True)  # files only, no database
    state = ProjectState(real_apps=set())
    found = []
    plan: list = []  # every migration, each after its dependencies
    for leaf in sorted(loader.graph.leaf_nodes()):
        plan.extend(node for node in loader.graph.forwards_plan(leaf) if node not in plan)
    for app_label, name in plan:
        migration = loader.graph.nodes[(app_label, name)]
        created_here: set[str] = set()
        for operation in migration.operations:
            if isinstance(operation, ModelOperation):
                model = operation.name_lower
                if isinstance(operation, CreateModel):
                    created_here.add(model)  # an empty table: nothing to stall
            else:
                model = (getattr(operation, "model_name", None) or "").lower()
            if (app_label, model) in LIVE_TABLES and model not in created_here:
                before = state.models.get((app_label, model))
                if before is not None and _builds_or_drops_an_index(operation, before):
                    found.append((migration, operation))
            operation.state_forwards(app_label, state)
    return found


def test_every_index_change_on_a_live_table_is_concurrent_and_non_atomic():
    # Concurrent on PostgreSQL and plain on SQLite, which `make run` migrates too.
    from controlplane.migration_ops import AddIndexLive, RemoveIndexLive

    found = live_table_index_operations()
    # The walk sees them: the live-index migration of the sessions table is among them.
    assert any(m.name.endswith("live_and_ended_session_indexes") for m, _ in found), found
    offenders = [
        f"{m.app_label}.{m.name}: {op.describe()}"
        for m, op in found
        if (m.app_label, m.name) not in BEFORE_THE_RULE
        and not (isinstance(op, AddIndexLive | RemoveIndexLive) and m.atomic is False)
    ]
    assert not offenders, (
        "Index changes on sessions or outcomes must use controlplane.migration_ops."
        "AddIndexLive / RemoveIndexLive in a migration with atomic = False:\n"
        + "\n".join(offenders)
    )
