"""metrics_sketch_merge(a, b): two sketches (metrics.sketch.Sketch as JSON) merged, so a
rollup upsert adds a session's sketch to a row in the same statement.

On PostgreSQL it is a SQL function made here; on SQLite the app registers a Python
function of the same name on every connection (metrics.apps)."""

from django.db import migrations

CREATE = r"""
CREATE OR REPLACE FUNCTION metrics_sketch_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN a IS NULL OR jsonb_typeof(a) <> 'object' THEN b
    WHEN b IS NULL OR jsonb_typeof(b) <> 'object' THEN a
    ELSE jsonb_build_object(
        'n', COALESCE((a ->> 'n')::bigint, 0) + COALESCE((b ->> 'n')::bigint, 0),
        'z', COALESCE((a ->> 'z')::bigint, 0) + COALESCE((b ->> 'z')::bigint, 0),
        'min', to_jsonb(LEAST((a ->> 'min')::float8, (b ->> 'min')::float8)),
        'max', to_jsonb(GREATEST((a ->> 'max')::float8, (b ->> 'max')::float8)),
        'b', COALESCE(
            (SELECT jsonb_object_agg(bucket, count)
             FROM (SELECT key AS bucket, sum(value::bigint) AS count
                   FROM (SELECT * FROM jsonb_each_text(a -> 'b')
                         UNION ALL
                         SELECT * FROM jsonb_each_text(b -> 'b')) AS buckets
                   GROUP BY key) AS summed),
            '{}'::jsonb))
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS metrics_sketch_merge(jsonb, jsonb)"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("metrics", "0003_rollups_and_sources")]

    operations = [migrations.RunPython(create, drop)]
