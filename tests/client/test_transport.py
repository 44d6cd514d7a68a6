"""The client's HTTP transport against a real gunicorn that closes idle connections."""

from __future__ import annotations

import time

import pytest

from prism_client.transport import Call, Transport
from tests.client.conftest import Web
from tests.endpoints import free_port


@pytest.fixture
def short_keep_alive(tmp_path):
    server = Web(free_port(), tmp_path / "gunicorn.log", "--keep-alive", "1")
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(
    short_keep_alive, harness_token
):
    short_keep_alive.start()
    calls: list[Call] = []
    transport = Transport(
        short_keep_alive.url, harness_token, retries=0, idle_s=60, observer=calls.append
    )
    assert transport.request("GET", "/api/schema/", idempotent=True).status == 200
    time.sleep(2.5)  # gunicorn closes the kept-alive connection after 1 s
    # No retries allowed: the request must not be sent on the dead connection at all.
    assert transport.request("GET", "/api/schema/", idempotent=True).status == 200
    assert [(c.status, c.error, c.stale) for c in calls] == [(200, None, False)] * 2
    transport.close()
