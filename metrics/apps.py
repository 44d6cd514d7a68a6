import json

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _sketch_merge(a: str | None, b: str | None) -> str | None:
    """SQLite's metrics_sketch_merge: PostgreSQL gets a SQL function from a migration."""
    from metrics.sketch import Sketch

    if a is None or b is None:
        return a if b is None else b
    merged = Sketch.from_json(json.loads(a)).merge(Sketch.from_json(json.loads(b)))
    return json.dumps(merged.to_json())


def _register_sqlite_functions(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            "metrics_sketch_merge", 2, _sketch_merge, deterministic=True
        )


class MetricsConfig(AppConfig):
    name = "metrics"

    def ready(self) -> None:
        connection_created.connect(
            _register_sqlite_functions, dispatch_uid="metrics-sqlite-functions"
        )
