# The sessions table stays live during this upgrade: the new indexes are built before
# the old ones are dropped, each CONCURRENTLY on PostgreSQL, so assignment never waits
# on a table lock and no query is left without an index in between.

from django.db import migrations, models

from controlplane.migration_ops import AddIndexLive, RemoveIndexLive


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("rollouts", "0006_evaluation_history"),
        ("versions", "0001_initial"),
    ]

    operations = [
        AddIndexLive(
            model_name="session",
            index=models.Index(
                condition=models.Q(("state", "live")),
                fields=["agent", "version", "started_at"],
                name="session_live",
            ),
        ),
        AddIndexLive(
            model_name="session",
            index=models.Index(
                condition=models.Q(("state", "live"), _negated=True),
                fields=["agent", "ended_at"],
                name="session_ended",
            ),
        ),
        RemoveIndexLive(model_name="session", name="session_version_state"),
        RemoveIndexLive(model_name="session", name="session_live_by_agent"),
    ]
