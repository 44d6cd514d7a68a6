"""The floor: the least a Django view can do for one pin on the same stack.

Plain Django (no DRF, no authentication): parse the JSON body, run one raw
``INSERT … ON CONFLICT DO NOTHING`` into a table with a unique key, answer a tiny JSON
body. It goes through the same middleware, connection settings and gunicorn workers as
Prism's endpoint, so the gap between the two is what Prism adds.
"""

from __future__ import annotations

import json

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

TABLE = "bench_floor_pin"

CREATE_TABLE = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
    id bigserial PRIMARY KEY,
    session_id varchar(200) NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

_INSERT = f"INSERT INTO {TABLE} (session_id) VALUES (%s) ON CONFLICT (session_id) DO NOTHING"


@csrf_exempt
@require_POST
def floor(request: HttpRequest) -> JsonResponse:
    try:
        session_id = json.loads(request.body)["session_id"]
    except (ValueError, TypeError, KeyError):
        return JsonResponse({"detail": "session_id is required"}, status=400)
    with connection.cursor() as cursor:
        cursor.execute(_INSERT, [session_id])
        created = cursor.rowcount == 1
    return JsonResponse(
        {"session_id": session_id, "created": created}, status=201 if created else 200
    )
