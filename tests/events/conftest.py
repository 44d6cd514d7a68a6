from __future__ import annotations

from collections.abc import Iterator

import pytest

from events.models import Webhook
from rollouts import engine
from tests.events.receiver import Receiver

SECRET = "whsec_test-secret-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def allow_private(settings):
    """The receiver listens on loopback, which webhooks may not reach by default."""
    settings.PRISM_WEBHOOKS_ALLOW_PRIVATE = True
    settings.PRISM_WEBHOOK_BACKOFF_BASE_S = 0.4
    settings.PRISM_WEBHOOK_TIMEOUT_S = 5
    return settings


@pytest.fixture
def webhook(agent, receiver, allow_private) -> Webhook:
    return Webhook.objects.create(agent=agent, url=receiver.url, secret=SECRET)


@pytest.fixture
def v1(agent, make_version):
    """The stable version."""
    version = make_version(agent, "v1")
    engine.set_stable(agent, version, actor="test")
    return version


@pytest.fixture
def v2(agent, make_version):
    return make_version(agent, "v2")
